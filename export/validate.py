"""Export validation: the written graph, through the runtime, against the torch source in fp32.

Records max |delta| of step and trajectory rewards, the Spearman of trajectory rewards, and (for
recipes whose tokens are independent of each other) the max |delta| of every token's rewards
between scoring each trace in one pass and in three chunks over the K/V cache; a missed tolerance
raises :class:`~rfedge.errors.ValidationError` with one line per output.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from rfedge.errors import ValidationError
from rfedge.kvcache import KVBuffers

from .bounds import Bound, failures
from .checkpoint.rewards import scalar_rewards
from .quantize.recipes import Tolerance


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
    max_abs_chunked: float | None = None  # None: not checked (the recipe's tokens depend on each other)

    def bounds(self) -> list[Bound]:
        """The tolerance as bounds on what was measured (Spearman needs 3 traces; the chunked check
        runs for recipes whose tokens are independent)."""
        t = self.tolerance
        out = [Bound("max_abs_step", "<=", t.max_abs_step, "step_rewards max |delta|"),
               Bound("max_abs_trajectory", "<=", t.max_abs_trajectory, "trajectory_reward max |delta|")]
        if self.spearman_trajectory is not None:
            out.append(Bound("spearman_trajectory", ">=", t.min_spearman, "trajectory Spearman"))
        if self.max_abs_chunked is not None:
            out.append(Bound("max_abs_chunked", "<=", t.max_chunk_delta, "chunked scoring vs one pass, max |delta|"))
        return out

    @property
    def failures(self) -> list[str]:
        lines = failures(self.bounds(), asdict(self))
        return [f"{line} ({self.worst_step})" if line.startswith("- step_rewards") else line for line in lines]

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():  # strict JSON: an infinite delta (NaN from the graph) is written as null
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = None
        d["passed"] = not self.failures
        return d

    def summary(self) -> str:
        sp = "n/a" if self.spearman_trajectory is None else f"{self.spearman_trajectory:.4f}"
        chunked = "" if self.max_abs_chunked is None else f"; chunked vs one pass {self.max_abs_chunked:.2g}"
        return (f"{self.traces} traces, {self.steps} steps: max |delta| step {self.max_abs_step:.3g}, "
                f"trajectory {self.max_abs_trajectory:.3g}; Spearman {sp}{chunked}")

    def raise_on_failure(self) -> None:
        if self.failures:
            raise ValidationError(
                f"export validation failed for {self.precision} ({self.summary()}):\n"
                + "\n".join(self.failures)
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


def chunked_delta(scorer, traces) -> float:
    """Max |delta| of per-token rewards, each trace in one pass vs in three chunks (cuts at 1/3, 2/3)."""
    engine, worst = scorer.engine, 0.0
    for trace in traces:
        ids = scorer.tokenizer.encode(trace).ids
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


def validate(references, scorer, traces, tolerance: Tolerance) -> ValidationReport:
    from scipy.stats import spearmanr

    results = scorer.score_many(traces)
    ref_traj, cand_traj = [], []
    max_step, worst, n_steps = 0.0, "none", 0
    for trace, result, (ref_steps, ref_t) in zip(traces, results, references, strict=True):
        scored = [s for s in result.steps if s.reward is not None]
        cand_steps = np.array([s.reward for s in scored], dtype=np.float64)
        if len(cand_steps) != len(ref_steps):
            raise ValidationError(f"trace {trace.id}: {len(cand_steps)} scored steps, reference has {len(ref_steps)}")
        if len(ref_steps):
            d = np.abs(cand_steps - ref_steps)
            k = int(np.argmax(d))
            if not d[k] <= max_step:  # NaN counts as the worst
                max_step = float(d[k]) if math.isfinite(d[k]) else math.inf
                worst = (f"trace {trace.id}, {scored[k].section} step {scored[k].index}: reference "
                         f"{ref_steps[k]:.4f}, onnx {cand_steps[k]:.4f}")
        n_steps += len(ref_steps)
        ref_traj.append(ref_t)
        cand_traj.append(result.trajectory_reward)
    ref_traj, cand_traj = np.array(ref_traj), np.array(cand_traj)
    d_traj = np.abs(ref_traj - cand_traj)
    max_traj = float(d_traj.max()) if np.all(np.isfinite(d_traj)) else math.inf
    rho = None
    if len(ref_traj) >= 3 and np.ptp(ref_traj) > 0 and np.ptp(cand_traj) > 0:
        rho = float(spearmanr(ref_traj, cand_traj).statistic)
    chunked = chunked_delta(scorer, traces) if scorer.engine is not None and scorer.manifest.token_independent else None
    return ValidationReport(scorer.manifest.precision, len(traces), n_steps, max_step, max_traj, rho, tolerance, worst,
                            chunked)
