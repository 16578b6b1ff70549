"""Export validation: the written graph, through the runtime, against the torch source in fp32.

Records max |delta| of step and trajectory rewards and the Spearman of trajectory rewards; a missed
tolerance raises :class:`~rfedge.errors.ValidationError` with one line per output.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from rfedge.errors import ValidationError

from .quantize.recipes import Tolerance
from .checkpoint.rewards import scalar_rewards


@dataclass(frozen=True)
class ValidationReport:
    precision: str
    traces: int
    steps: int
    max_abs_step: float
    max_abs_trajectory: float
    spearman_trajectory: float | None
    tolerance: Tolerance
    worst_step: str

    @property
    def failures(self) -> list[str]:
        t = self.tolerance
        out = []
        if not self.max_abs_step <= t.max_abs_step:
            out.append(f"- step_rewards: max |delta| {self.max_abs_step:.4g} > {t.max_abs_step:g} ({self.worst_step})")
        if not self.max_abs_trajectory <= t.max_abs_trajectory:
            out.append(f"- trajectory_reward: max |delta| {self.max_abs_trajectory:.4g} > {t.max_abs_trajectory:g}")
        if self.spearman_trajectory is not None and not self.spearman_trajectory >= t.min_spearman:
            out.append(f"- trajectory Spearman: {self.spearman_trajectory:.4f} < {t.min_spearman:g}")
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = not self.failures
        return d

    def summary(self) -> str:
        sp = "n/a" if self.spearman_trajectory is None else f"{self.spearman_trajectory:.4f}"
        return (f"{self.traces} traces, {self.steps} steps: max |delta| step {self.max_abs_step:.3g}, "
                f"trajectory {self.max_abs_trajectory:.3g}; Spearman {sp}")

    def raise_on_failure(self) -> None:
        if self.failures:
            raise ValidationError(
                f"export validation failed for {self.precision} ({self.summary()}):\n"
                + "\n".join(self.failures)
                + "\nloosen with --max-step-delta/--max-trajectory-delta/--min-spearman only if you accept it")


def reference_rewards(prm, tokenizer, traces, max_len: int, progress=None) -> list[tuple[np.ndarray, float]]:
    """The source model's (step rewards, trajectory reward) per trace, in torch fp32.

    Computed before export (and before any weight folding), so the torch model can be freed before
    quantization; only these numbers are kept.
    """
    out = []
    for trace in (progress(traces) if progress else traces):
        enc = tokenizer.encode(trace)
        n = min(len(enc.ids), max_len)
        out.append(scalar_rewards(prm, enc.ids[:n], enc.step_tokens[enc.step_tokens < n]))
    return out


def validate(references, scorer, traces, precision: str, tolerance: Tolerance) -> ValidationReport:
    from scipy.stats import spearmanr

    results = scorer.score_many(traces)
    ref_traj, cand_traj = [], []
    max_step, worst, n_steps = 0.0, "none", 0
    for trace, result, (ref_steps, ref_t) in zip(traces, results, references):
        cand_steps = np.array([s.reward for s in result.steps if s.reward is not None], dtype=np.float64)
        if len(cand_steps) != len(ref_steps):
            raise ValidationError(f"trace {trace.id}: {len(cand_steps)} scored steps, reference has {len(ref_steps)}")
        if len(ref_steps):
            d = np.abs(cand_steps - ref_steps)
            k = int(np.argmax(d))
            if not d[k] <= max_step:  # NaN counts as the worst
                max_step = float(d[k]) if math.isfinite(d[k]) else math.inf
                s = [s for s in result.steps if s.reward is not None][k]
                worst = (f"trace {trace.id}, {s.section} step {s.index}: reference {ref_steps[k]:.4f}, "
                         f"onnx {cand_steps[k]:.4f}")
        n_steps += len(ref_steps)
        ref_traj.append(ref_t)
        cand_traj.append(result.trajectory_reward)
    ref_traj, cand_traj = np.array(ref_traj), np.array(cand_traj)
    d_traj = np.abs(ref_traj - cand_traj)
    max_traj = float(d_traj.max()) if np.all(np.isfinite(d_traj)) else math.inf
    rho = None
    if len(ref_traj) >= 3 and np.ptp(ref_traj) > 0 and np.ptp(cand_traj) > 0:
        rho = float(spearmanr(ref_traj, cand_traj).statistic)
    return ValidationReport(precision, len(traces), n_steps, max_step, max_traj, rho, tolerance, worst)
