"""``rfedge parity``: how far an edge model's decisions are from a full-precision reference PRM.

Scores the same traces with the reference (torch, cached per trace, :mod:`.cache`) and the
candidate (an rfedge export, through the runtime), then reports agreement (:mod:`.report`). Bounds
turn it into a gate: a missed bound raises :class:`~rfedge.errors.ValidationError` (exit 1).

Reference aggregate: rfedge's ``score`` formula applied to the reference: mean of its step rewards
+ alpha x its trajectory reward, where a step-only reference (two-class, lm-tokens) uses its last
step's reward as the trajectory term (the whole trace's verdict).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rfedge.errors import ValidationError
from rfedge.sources import read_traces
from rfedge.traces import Trace

from ..bounds import failures
from ..progress import log as _log
from .cache import RewardCache
from .report import compute_report, gate_bounds, markdown, plots


@dataclass
class Scored:
    id: str
    group: str
    labels: tuple | None
    ref_steps: list  # [(section, index, reward)]
    ref_trajectory: float | None
    ref_score: float
    cand_steps: list  # [(section, index, reward|None)]
    cand_trajectory: float
    cand_score: float


def reference_aggregate(steps: list, trajectory: float | None, alpha: float) -> float:
    rewards = [r for _, _, r in steps]
    term = trajectory if trajectory is not None else (rewards[-1] if rewards else 0.0)
    return (float(np.mean(rewards)) if rewards else 0.0) + alpha * term


def score_both(traces: list[Trace], reference, scorer, cache: RewardCache, alpha: float, progress=None) -> list[Scored]:
    cand = scorer.score_many(traces)
    out = []
    items = list(zip(traces, cand, strict=True))
    for i, (trace, c) in enumerate(progress(items) if progress else items):
        row = cache.rewards(reference, trace)
        ref_steps = [tuple(s) for s in row["steps"]]
        group = trace.extra.get("group", trace.problem)
        out.append(Scored(
            id=str(trace.id if trace.id is not None else i), group=str(group), labels=trace.labels,
            ref_steps=ref_steps, ref_trajectory=row["trajectory"],
            ref_score=reference_aggregate(ref_steps, row["trajectory"], alpha),
            cand_steps=[(s.section, s.index, s.reward) for s in c.steps], cand_trajectory=c.trajectory_reward,
            cand_score=c.score))
    return out


def _write_scores(rows: list[Scored], path: Path) -> None:
    steps = lambda xs: [{"section": s, "index": i, "reward": x} for s, i, x in xs]  # noqa: E731
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"id": r.id, "group": r.group,
                                "reference": {"score": r.ref_score, "trajectory_reward": r.ref_trajectory,
                                              "steps": steps(r.ref_steps)},
                                "candidate": {"score": r.cand_score, "trajectory_reward": r.cand_trajectory,
                                              "steps": steps(r.cand_steps)}}) + "\n")


def run_parity(data: str, reference_source: str, candidate: str, out: Path, layout: str | None = None,
               dtype: str = "fp32", device: str = "cpu", alpha: float = 1.0, cache: Path | None = None,
               bounds: dict | None = None, positive_token: int | None = None, negative_token: int | None = None,
               log=_log, progress=None, quant: str = "none") -> dict:
    from rfedge.scorer import Scorer

    from ..checkpoint.quantized import check_quant
    from .references import load_reference

    check_quant(quant, device)  # before anything is read or written
    traces = read_traces(data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scorer = Scorer.load(candidate, device="auto" if device == "cuda" else "cpu", alpha=alpha)
    log(f"rfedge parity: {len(traces)} traces; loading reference {reference_source}")
    reference = load_reference(reference_source, layout, dtype, device, quant, positive_token=positive_token,
                               negative_token=negative_token)
    cache_obj = RewardCache(Path(cache) if cache else out / "reference_cache.jsonl")
    rows = score_both(traces, reference, scorer, cache_obj, alpha, progress)
    log(f"rfedge parity: reference rewards from cache for {cache_obj.hits} of {len(traces)} traces")
    report = compute_report(rows, fidelity=reference.layout == "scalar")
    meta = {"reference": reference.source_id, "reference_layout": reference.layout, "reference_dtype": dtype, "reference_quant": quant,
            "candidate": str(candidate), "candidate_precision": scorer.manifest.precision, "alpha": alpha,
            "traces": data}
    gates = gate_bounds(bounds or {})
    missed = failures(gates, report)
    full = {"meta": meta, **report, "bounds": {b.metric: str(b) for b in gates}, "passed": not missed}
    (out / "report.json").write_text(json.dumps(full, indent=2))
    (out / "report.md").write_text(markdown(report, meta))
    _write_scores(rows, out / "scores.jsonl")
    full["plots"] = plots(rows, report, out)
    if missed:
        raise ValidationError("parity bounds missed:\n" + "\n".join(missed) + f"\nreport: {out / 'report.md'}")
    return full
