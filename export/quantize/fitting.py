"""End-to-end fit of the per-linear weight formats to every criterion the export gate checks.

The sensitivity pass (:mod:`.smoothing`) bounds each linear's own error; how much that moves the
rewards depends on where the linear sits and on the traces (a trained head can be steep where they
are, an early layer's error can be amplified by everything after it). So the quantized model is
simulated in torch, with exactly each format's computation hooked into every layer linear (and
the int8 embedding), on the fit traces, and measured with the gate's own :func:`measure` against
its criteria scaled by ``margin`` (max |delta| of step and trajectory rewards, trajectory Spearman).

While any is missed, the fit asks which linears cause the misses: a first-order attribution (one
forward and backward pass per trace) of each linear's quantization error to the reward deltas it
simulated, weighted toward the largest ones (and toward the trajectory rewards when their order is
what misses). The linears with the largest share move up a format, 7-bit -> 8-bit -> per-block ->
fp32 (the embedding int8 blocks -> fp16), and to a float format only once no module that is still to
blame can move to a finer integer format.
The fit sees only the fit traces; the gate judges held-out ones too. Each round goes into the
manifest.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import asdict, replace

import numpy as np
import torch

from .embedding import EMBEDDING, EMBEDDING_PROMOTES, simulate_embedding
from .formats import FORMATS, FP32, format_counts, promote

MARGIN = 0.6  # aim this far inside the tolerance on the fit traces: held-out traces are not seen
PROMOTE_SHARE = 0.25  # at most this share of the promotable linears moves per round
COVER = 0.5  # ... and only as many as carry this share of the attributed error
POWER = 4  # reward deltas are weighted by |delta|^POWER: the attribution looks at the worst ones


def _hook(weight: torch.Tensor, fmt):
    """Replace a linear's output by the graph's computation. The hook keeps the int8 codes and scales
    and dequantizes them per call: a dequantized fp32 copy of every linear beside the fp32 model
    (4.5 GB more at the 1.5B shape) would set the export's peak memory."""
    wq = fmt.quantize_weight(weight.float())

    def hook(mod, args, out):
        y = fmt.simulate(args[0].flatten(0, -2).float(), wq)
        if mod.bias is not None:
            y = y + mod.bias
        return y.reshape(out.shape).to(out.dtype)
    return hook


def simulated_rewards(prm, encoded, formats: dict[str, str]) -> list:
    """(step rewards, trajectory reward) per trace of the quantized model as the graph computes it
    (the embedding in ``formats[EMBEDDING]`` if given, else fp32)."""
    from ..checkpoint.rewards import scalar_rewards

    hooks = []
    try:
        if formats.get(EMBEDDING):
            hooks.append(prm.body.embed_tokens.register_forward_hook(
                lambda mod, args, out: simulate_embedding(out, formats[EMBEDDING])))
        for name, fmt in formats.items():
            if fmt in FORMATS:
                mod = prm.body.get_submodule(name)
                hooks.append(mod.register_forward_hook(_hook(mod.weight.detach(), FORMATS[fmt])))
        return [scalar_rewards(prm, ids, step_tokens) for ids, step_tokens in encoded]
    finally:
        for h in hooks:
            h.remove()


def _weights(deltas: np.ndarray, scale: float) -> torch.Tensor:
    return torch.as_tensor(np.sign(deltas) * (np.abs(deltas) / scale) ** POWER, dtype=torch.float32)


class _Changes:
    """Forward hooks that record, per quantized module, its fp32 output (kept in the autograd graph)
    and what its format changes in that output."""

    def __init__(self, prm, formats: dict[str, str]):
        self.prm, self.formats = prm, formats
        self.quantized = {n: FORMATS[f] for n, f in formats.items() if f in FORMATS}
        self.wq = {n: f.quantize_weight(prm.body.get_submodule(n).weight.detach().float())
                   for n, f in self.quantized.items()}
        self.names, self.outs, self.changes = [], [], []

    def _leaf(self, mod, args, out):
        out = out.detach().requires_grad_()
        if self.formats.get(EMBEDDING) in EMBEDDING_PROMOTES:  # the embedding's share, like a linear's
            self._add(EMBEDDING, out, simulate_embedding(out.detach(), self.formats[EMBEDDING]) - out.detach())
        return out

    def _linear(self, name: str):
        def hook(mod, args, out):
            with torch.no_grad():
                y = self.quantized[name].simulate(args[0].flatten(0, -2).float(), self.wq[name])
                change = (y + (mod.bias if mod.bias is not None else 0)).reshape(out.shape) - out
            self._add(name, out, change)
        return hook

    def _add(self, name, out, change):
        self.names.append(name)
        self.outs.append(out)
        self.changes.append(change)

    def shares(self, objective_of) -> dict[str, float]:
        """Run ``objective_of()`` (a forward pass) with the hooks; each module's gradient x change."""
        self.names, self.outs, self.changes = [], [], []
        body = self.prm.body
        hooks = [body.embed_tokens.register_forward_hook(self._leaf)]
        hooks += [body.get_submodule(n).register_forward_hook(self._linear(n)) for n in self.quantized]
        try:
            with torch.enable_grad():
                objective = objective_of()
                grads = torch.autograd.grad(objective, self.outs, allow_unused=True) if self.outs else []
        finally:
            for h in hooks:
                h.remove()
        return {name: float((g * change).sum()) for name, g, change in zip(self.names, grads, self.changes, strict=True)
                if g is not None}


def attribute(prm, encoded, references, simulated, formats: dict[str, str], trajectory_weight: float = 1.0
              ) -> dict[str, float]:
    """Each quantized linear's (and the embedding's) first-order share of the simulated reward deltas
    (positive: it pushes the rewards the way they moved). The gradient of the delta-weighted rewards
    with respect to the module's output, in the fp32 model, times what its format changes in that output."""
    from ..checkpoint.rewards import reward_tensors

    scale = max([float(np.abs(s - r).max()) for (s, _), (r, _) in zip(simulated, references, strict=True) if len(r)]
                + [abs(t - rt) for (_, t), (_, rt) in zip(simulated, references, strict=True)] + [1e-12])
    shares: dict[str, float] = defaultdict(float)
    changes = _Changes(prm, formats)
    for (ids, step_tokens), (steps, traj), (ref_steps, ref_traj) in zip(encoded, simulated, references, strict=True):
        def objective(ids=ids, step_tokens=step_tokens, steps=steps, traj=traj, ref_steps=ref_steps, ref_traj=ref_traj):
            step_t, traj_t = reward_tensors(prm, ids, step_tokens)
            return (_weights(steps - ref_steps, scale) * step_t).sum() + \
                trajectory_weight * _weights(np.array(traj - ref_traj), scale) * traj_t
        for name, v in changes.shares(objective).items():
            shares[name] += v
    return dict(shares)


def _promote(formats: dict[str, str], name: str, in_features: dict[str, int]) -> str:
    if name == EMBEDDING:
        return EMBEDDING_PROMOTES[formats[name]]
    return promote(formats[name], in_features[name])


def _promotable(formats: dict[str, str], name: str) -> bool:
    return formats.get(name) in (EMBEDDING_PROMOTES if name == EMBEDDING else FORMATS)


def _to_float(formats: dict[str, str], name: str, in_features: dict[str, int]) -> bool:
    """Whether the next format up is a float one: a linear to fp32, the embedding to fp16."""
    return name == EMBEDDING or _promote(formats, name, in_features) == FP32


def promote_by_share(formats: dict[str, str], shares: dict[str, float], in_features: dict[str, int]) -> int:
    """Move the linears (and the embedding) with the largest positive share up a format, to integer
    formats first: float ones (fp32 linears, the fp16 embedding) only once nothing to blame can move
    to a finer integer format, except the embedding when it alone has the largest share (fp16
    doubles the largest table, 205 MB more at the 1.5B shape: only for the main cause)."""
    blamed = [n for n, v in sorted(shares.items(), key=lambda kv: -kv[1]) if v > 0 and _promotable(formats, n)]
    integer = [n for n in blamed if not _to_float(formats, n, in_features) or n == EMBEDDING == blamed[0]]
    candidates = integer or blamed
    if not candidates:
        return 0
    total, covered, moved = sum(shares[n] for n in candidates), 0.0, []
    for name in candidates[:max(1, math.ceil(PROMOTE_SHARE * len(candidates)))]:
        moved.append(name)
        covered += shares[name]
        if covered >= COVER * total:
            break
    for name in moved:
        formats[name] = _promote(formats, name, in_features)
    return len(moved)


def promote_round(formats: dict[str, str], errors: dict[str, dict[str, float]], in_features: dict[str, int],
                  share: float = PROMOTE_SHARE) -> int:
    """Without an attribution: the ``share`` of linears with the largest own error moves up a format
    (integer formats first). Used when the written graph drifts from the simulation."""
    integer = [n for n, f in formats.items() if f in FORMATS and promote(f, in_features[n]) != FP32]
    candidates = integer or [n for n, f in formats.items() if f in FORMATS]
    if not candidates:
        return 0
    worst = sorted(candidates, key=lambda n: -errors[n].get(formats[n], math.inf))
    moved = worst[:max(1, math.ceil(share * len(candidates)))]
    for name in moved:
        formats[name] = promote(formats[name], in_features[name])
    return len(moved)


def aim(tolerance, margin: float = MARGIN):
    """The tolerance tightened by ``margin`` (Spearman: that share of the distance to 1 kept free)."""
    return replace(tolerance, max_abs_step=margin * tolerance.max_abs_step,
                   max_abs_trajectory=margin * tolerance.max_abs_trajectory,
                   min_spearman=1 - margin * (1 - tolerance.min_spearman))


def in_features_of(prm, names) -> dict[str, int]:
    return {n: prm.body.get_submodule(n).in_features for n in names if n != EMBEDDING}


def fit_formats(prm, references, encoded, ids, formats: dict[str, str], errors: dict[str, dict[str, float]],
                tolerance, log=None, margin: float = MARGIN, seconds: float | None = None
                ) -> tuple[dict[str, str], dict]:
    """Promote linears until the simulated fit traces meet every criterion at ``margin``, or until
    ``seconds`` have passed (None: no limit); ``summary["missed_at_tolerance"]`` then lists what the
    last round still misses at the tolerance itself (what the gate would fail).

    ``encoded``: (token ids, step token indices) per fit trace, as the references were made; ``ids``:
    the traces' ids for messages; ``formats``: each linear's format and the embedding's under
    :data:`EMBEDDING` (optional); ``errors``: each linear's simulated error per format (to break
    ties when nothing can be attributed). Returns the formats and a summary for the manifest.
    """
    from ..validate import measure, misses

    formats, goal, history, stopped = dict(formats), aim(tolerance, margin), [], "met"
    in_features = in_features_of(prm, formats)
    deadline = None if seconds is None else time.monotonic() + seconds
    while True:
        simulated = simulated_rewards(prm, encoded, formats)
        measured = measure(references, simulated, ids)
        missed = misses(goal, measured)
        history.append({**{k: v for k, v in asdict(measured).items() if k not in ("worst_step", "traces", "steps")},
                        "formats": format_counts(formats), "embedding": formats.get(EMBEDDING)})
        if log:
            sp = "n/a" if measured.spearman_trajectory is None else f"{measured.spearman_trajectory:.4f}"
            log(f"      simulated on the fit traces: max |delta| step {measured.max_abs_step:.3g}, trajectory "
                f"{measured.max_abs_trajectory:.3g}, Spearman {sp} (aim: {goal.max_abs_step:.3g}, "
                f"{goal.max_abs_trajectory:.3g}, {goal.min_spearman:.3g}); linears {format_counts(formats)}"
                + (f", embedding {formats[EMBEDDING]}" if EMBEDDING in formats else ""))
        if not missed:
            break
        if deadline is not None and time.monotonic() > deadline:
            stopped = f"time: {seconds / 60:g} minutes"
            break
        shares = attribute(prm, encoded, references, simulated, formats,
                           4.0 if any("Spearman" in m for m in missed) else 1.0)
        if not promote_by_share(formats, shares, in_features) and not promote_round(formats, errors, in_features):
            stopped = "nothing left to promote"
            break
    summary = {"method": "promote the linears to which the simulated reward deltas are attributed (first order) "
                         f"up a format until the fit traces meet every gate criterion at {margin} of the tolerance",
               "aim": asdict(goal), "rounds": history, "met": not missed, "stopped": stopped,
               "missed_at_tolerance": misses(tolerance, measured)}
    return formats, summary
