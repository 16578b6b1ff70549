"""Export validation: the written graph, through the runtime, against the torch source in fp32.

Measured on two parts, both gated: the traces the export fitted its quantization to, and held-out
traces it never saw (the built-in held-out set, plus the held-out share of ``--calibration``):
max |delta| of step and trajectory rewards and the Spearman of trajectory rewards, with the same
:func:`measure` the end-to-end fit uses on its simulation. For recipes whose tokens are
independent of each other, also the max |delta| of every token's rewards between scoring each
trace in one pass and in three chunks over the K/V cache. A missed tolerance raises
:class:`~rfedge.errors.ValidationError` with one line per output.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from rfedge.errors import ValidationError
from rfedge.kvcache import KVBuffers

from .bounds import Bound, failures
from .checkpoint.rewards import scalar_rewards
from .quantize.recipes import Tolerance


@dataclass(frozen=True)
class Measured:
    """One set of traces: how far the candidate's rewards are from the reference's."""

    traces: int
    steps: int
    max_abs_step: float
    max_abs_trajectory: float
    spearman_trajectory: float | None
    worst_step: str


def measure(references, candidates, ids) -> Measured:
    """``references`` and ``candidates``: (step rewards array, trajectory reward) per trace."""
    from scipy.stats import spearmanr

    max_step, worst, n_steps = 0.0, "none", 0
    for tid, (ref_steps, _), (cand_steps, _) in zip(ids, references, candidates, strict=True):
        if len(cand_steps) != len(ref_steps):
            raise ValidationError(f"trace {tid}: {len(cand_steps)} scored steps, reference has {len(ref_steps)}")
        n_steps += len(ref_steps)
        if len(ref_steps):
            d = np.abs(np.asarray(cand_steps, np.float64) - ref_steps)
            k = int(np.argmax(d))
            if not d[k] <= max_step:  # NaN counts as the worst
                max_step = float(d[k]) if math.isfinite(d[k]) else math.inf
                worst = f"trace {tid}, step {k}: reference {ref_steps[k]:.4f}, candidate {cand_steps[k]:.4f}"
    ref = np.array([t for _, t in references], np.float64)
    cand = np.array([t for _, t in candidates], np.float64)
    d_traj = np.abs(ref - cand)
    max_traj = float(d_traj.max()) if len(d_traj) and np.all(np.isfinite(d_traj)) else (0.0 if not len(d_traj) else math.inf)
    rho = None
    if len(ref) >= 3 and np.ptp(ref) > 0 and np.ptp(cand) > 0:
        rho = float(spearmanr(ref, cand).statistic)
    return Measured(len(ids), n_steps, max_step, max_traj, rho, worst)


def tolerance_bounds(t: Tolerance, measured: Measured, prefix: str = "") -> list[Bound]:
    """The tolerance as bounds on what was measured (Spearman needs 3 traces with different rewards)."""
    out = [Bound("max_abs_step", "<=", t.max_abs_step, f"{prefix}step_rewards max |delta|"),
           Bound("max_abs_trajectory", "<=", t.max_abs_trajectory, f"{prefix}trajectory_reward max |delta|")]
    if measured.spearman_trajectory is not None:
        out.append(Bound("spearman_trajectory", ">=", t.min_spearman, f"{prefix}trajectory Spearman"))
    return out


def misses(t: Tolerance, measured: Measured, prefix: str = "") -> list[str]:
    lines = failures(tolerance_bounds(t, measured, prefix), asdict(measured))
    return [f"{line} ({measured.worst_step})" if " step_rewards " in f" {line[2:]}" else line for line in lines]


@dataclass(frozen=True)
class ValidationReport:
    precision: str
    tolerance: Tolerance
    parts: dict = field(default_factory=dict)  # "fit" / "held_out" -> Measured
    max_abs_chunked: float | None = None  # None: not checked (the recipe's tokens depend on each other)

    @property
    def failures(self) -> list[str]:
        out = [line for name, m in self.parts.items() for line in misses(self.tolerance, m, f"{name}: ")]
        if self.max_abs_chunked is not None and not self.max_abs_chunked <= self.tolerance.max_chunk_delta:
            out.append(f"- chunked scoring vs one pass, max |delta|: {self.max_abs_chunked:.4g}, "
                       f"bound <= {self.tolerance.max_chunk_delta:g}")
        return out

    def to_dict(self) -> dict:
        d = {"precision": self.precision, "tolerance": asdict(self.tolerance), **self.worst(),
             **{name: asdict(m) for name, m in self.parts.items()}, "max_abs_chunked": self.max_abs_chunked}
        d["passed"] = not self.failures
        return d

    def worst(self) -> dict:
        """The worst of the parts per criterion (what a reader of the manifest checks first)."""
        ms = list(self.parts.values())
        sps = [m.spearman_trajectory for m in ms if m.spearman_trajectory is not None]
        return {"max_abs_step": max((m.max_abs_step for m in ms), default=0.0),
                "max_abs_trajectory": max((m.max_abs_trajectory for m in ms), default=0.0),
                "spearman_trajectory": min(sps) if sps else None}

    def summary(self) -> str:
        parts = []
        for name, m in self.parts.items():
            sp = "n/a" if m.spearman_trajectory is None else f"{m.spearman_trajectory:.4f}"
            parts.append(f"{name} ({m.traces} traces, {m.steps} steps): max |delta| step {m.max_abs_step:.3g}, "
                         f"trajectory {m.max_abs_trajectory:.3g}, Spearman {sp}")
        chunked = "" if self.max_abs_chunked is None else f"; chunked vs one pass {self.max_abs_chunked:.2g}"
        return "; ".join(parts) + chunked

    def raise_on_failure(self) -> None:
        if self.failures:
            raise ValidationError(
                f"export validation failed for {self.precision} ({self.summary()}):\n" + "\n".join(self.failures)
                + "\nloosen with --max-step-delta/--max-trajectory-delta/--min-spearman only if you accept it")


def reference_rewards(prm, tokenizer, traces, progress=None) -> list[tuple[np.ndarray, float]]:
    """The source model's (step rewards, trajectory reward) per trace, in torch fp32, on the tokens
    the runtime scores (``tokenizer`` truncates at the export's max length).

    Computed before export (and before any weight folding), so the torch model can be freed before
    quantization; only these numbers are kept.
    """
    out = []
    for trace in (progress(traces) if progress else traces):
        enc = tokenizer.encode(trace)
        out.append(scalar_rewards(prm, enc.ids, enc.step_tokens[enc.step_tokens < len(enc.ids)]))
    return out


def graph_rewards(scorer, traces) -> list[tuple[np.ndarray, float]]:
    """What the runtime scores, in :func:`measure`'s shape."""
    return [(np.array([s.reward for s in r.steps if s.reward is not None], np.float64), r.trajectory_reward)
            for r in scorer.score_many(traces)]


def chunked_delta(scorer, traces) -> float:
    """Max |delta| of per-token rewards, each trace in one pass vs in three chunks (cuts at 1/3, 2/3).

    On an engine of its own whose chunk holds a whole trace: the scorer's default chunks (256 tokens
    on the CPU) would cut the "one pass" too."""
    engine, worst = copy.copy(scorer.engine), 0.0
    for trace in traces:
        ids = scorer.tokenizer.encode(trace).ids
        engine.chunk_tokens = max(len(ids), 1)
        _, whole = engine.start(ids, len(ids))
        kv, parts, start = KVBuffers(engine.shape, 1, len(ids)), [], 0
        for cut in (len(ids) // 3, 2 * len(ids) // 3, len(ids)):
            if cut > start:
                parts.append(engine.extend(kv, ids[:cut], start))
                start = cut
        step = np.concatenate([p.step for p in parts])
        traj = np.concatenate([p.trajectory for p in parts])
        d = max(float(np.abs(step - whole.step).max()), float(np.abs(traj - whole.trajectory).max()))
        worst = max(worst, d if math.isfinite(d) else math.inf)
    return worst


def validate(references: dict, scorer, traces: dict, tolerance: Tolerance) -> ValidationReport:
    """``references`` and ``traces``: by part ("fit", "held_out")."""
    parts = {name: measure(references[name], graph_rewards(scorer, traces[name]), [t.id for t in traces[name]])
             for name in traces}
    every = [t for name in traces for t in traces[name]]
    chunked = chunked_delta(scorer, every) if scorer.engine is not None and scorer.manifest.token_independent else None
    return ValidationReport(scorer.manifest.precision, tolerance, parts, chunked)
