"""End-to-end fit of the per-linear weight formats to the export tolerance.

The sensitivity pass (:mod:`.smoothing`) bounds each linear's own error; how much that moves the
rewards depends on the model (a trained head can be steep where the calibration traces sit). So
before export the quantized model is simulated in torch, with exactly the graph's quantization
(per-token int8 activations, 7- or 8-bit per-channel weights) hooked into every layer linear, on
the calibration traces; while its rewards miss a margin inside the tolerance, the linears with the
largest simulated error move up one format (7-bit -> 8-bit -> fp32). What the fit did goes into the
manifest. The export's validation of the written graph stays the gate.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .embedding import simulate_embedding
from .formats import FORMATS, fake_quant_activations

MARGIN = 0.8  # aim inside the tolerance: the simulation is close to the graph, not bit-exact
PROMOTE_SHARE = 0.25  # of the still-quantized linears, per round (few rounds: each is a calibration pass)


def _hook(weight: torch.Tensor, fmt):
    """Replace a linear's output by the graph's computation. The weight is kept as int8 codes and
    scales and dequantized per call, so the simulation costs a quarter of the fp32 weights, not a copy."""
    codes, scale = fmt.simulate_codes(weight)

    def hook(mod, args, out):
        x = args[0]
        y = fake_quant_activations(x.flatten(0, -2).float()) @ (codes.float() * scale).T
        if mod.bias is not None:
            y = y + mod.bias
        return y.reshape(out.shape).to(out.dtype)
    return hook


def _embedding_hook(block: int):
    """The int8 embedding's values (one scale per ``block`` values of a row) for the gathered rows."""
    return lambda mod, args, out: simulate_embedding(out, block)


def simulated_deltas(prm, references, encoded, formats: dict[str, str],
                     embedding_block: int | None = None) -> tuple[float, float]:
    """Max |delta| of (step, trajectory) rewards of the simulated quantized model vs ``references``."""
    from ..checkpoint.rewards import scalar_rewards

    hooks = []
    try:
        if embedding_block:
            hooks.append(prm.body.embed_tokens.register_forward_hook(_embedding_hook(embedding_block)))
        for name, fmt in formats.items():
            if fmt in FORMATS:
                mod = prm.body.get_submodule(name)
                hooks.append(mod.register_forward_hook(_hook(mod.weight.detach(), FORMATS[fmt])))
        step, traj = 0.0, 0.0
        for (ids, step_tokens), (ref_steps, ref_traj) in zip(encoded, references, strict=True):
            steps, t = scalar_rewards(prm, ids, step_tokens)
            if len(steps):
                step = max(step, float(np.abs(steps - ref_steps).max()))
            traj = max(traj, abs(t - ref_traj))
    finally:
        for h in hooks:
            h.remove()
    return step, traj


def fit_formats(prm, references, encoded, formats: dict[str, str], errors: dict[str, dict[str, float]],
                tolerance, embedding_block: int | None = None, log=None) -> tuple[dict[str, str], dict]:
    """Promote the most sensitive linears until the simulated rewards are within MARGIN x tolerance.

    ``encoded``: (token ids, step token indices) per calibration trace, as the references were made;
    ``errors``: each linear's simulated error per format from the sensitivity pass. Returns the new
    formats and a summary for the manifest. ``embedding_block``: simulate the int8 embedding too.
    """
    formats = dict(formats)
    goal = (MARGIN * tolerance.max_abs_step, MARGIN * tolerance.max_abs_trajectory)
    history = []
    while True:
        step, traj = simulated_deltas(prm, references, encoded, formats, embedding_block)
        history.append({"max_abs_step": round(step, 5), "max_abs_trajectory": round(traj, 5),
                        "quantized": sum(1 for f in formats.values() if f in FORMATS)})
        if log:
            log(f"      simulated INT8 rewards on the calibration traces: max |delta| step {step:.3g}, "
                f"trajectory {traj:.3g} (aim: {goal[0]:.3g}, {goal[1]:.3g})")
        quantized = [n for n, f in formats.items() if f in FORMATS]
        if (step <= goal[0] and traj <= goal[1]) or not quantized:
            break
        worst = sorted(quantized, key=lambda n: -errors[n][formats[n]])
        for name in worst[:max(1, math.ceil(PROMOTE_SHARE * len(quantized)))]:
            formats[name] = FORMATS[formats[name]].promotes_to
    summary = {"method": "promote the linears with the largest simulated error until the simulated "
                         f"rewards are within {MARGIN} x the tolerance", "rounds": history}
    return formats, summary
