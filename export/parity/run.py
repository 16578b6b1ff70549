"""``rfedge parity``: how far an edge model's decisions are from a full-precision reference PRM.

Scores the same traces with the reference (torch, cached per trace) and the candidate (an rfedge
export, through the runtime), then reports agreement for data selection (correlations, top-k),
Best-of-N (winner agreement, regret, pairwise order) and step-level feedback (step Spearman, AUROC
against reference verdicts and gold labels, ProcessBench first-error F1). Bounds turn it into a
gate: a missed bound raises :class:`~rfedge.errors.ValidationError` (exit 1).

Reference aggregate: rfedge's ``score`` formula applied to the reference: mean of its step rewards
+ alpha x its trajectory reward, where a step-only reference (two-class, lm-tokens) uses its last
step's reward as the trajectory term (the whole trace's verdict).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rfedge.errors import ValidationError
from rfedge.traces import Trace, read_traces

from . import metrics as M

GATES = {  # option name -> (metric path, direction)
    "min_spearman": ("trace.spearman", ">="),
    "min_bon_agreement": ("best_of_n.winner_agreement", ">="),
    "min_topk_overlap": ("trace.top_10pct_overlap", ">="),
    "min_step_spearman": ("step.spearman", ">="),
    "min_step_auroc": ("step.auroc_vs_reference", ">="),
    "max_abs_delta": ("fidelity.max_abs_step", "<="),
}


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


def _cache_key(reference, trace: Trace) -> str:
    h = hashlib.sha256()
    h.update(reference.key().encode())
    h.update(b"\0" + trace.problem.encode("utf-8", "surrogatepass") + b"\0" + trace.completion.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


class RewardCache:
    """Reference rewards on disk, one JSON line per trace key: a rerun never pays for the reference twice."""

    def __init__(self, path: Path | None):
        self.path = path
        self.data: dict = {}
        if path and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.data[row["key"]] = row
        self.hits = 0

    def get(self, key):
        row = self.data.get(key)
        if row is not None:
            self.hits += 1
        return row

    def put(self, key, steps, trajectory):
        row = {"key": key, "steps": steps, "trajectory": trajectory}
        self.data[key] = row
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        return row


def reference_aggregate(steps: list, trajectory: float | None, alpha: float) -> float:
    rewards = [r for _, _, r in steps]
    term = trajectory if trajectory is not None else (rewards[-1] if rewards else 0.0)
    return (float(np.mean(rewards)) if rewards else 0.0) + alpha * term


def score_both(traces: list[Trace], reference, scorer, cache: RewardCache, alpha: float, progress=None) -> list[Scored]:
    cand = scorer.score_many(traces)
    out = []
    items = list(zip(traces, cand))
    for i, (trace, c) in enumerate(progress(items) if progress else items):
        key = _cache_key(reference, trace)
        row = cache.get(key)
        if row is None:
            r = reference.score_trace(trace)
            row = cache.put(key, [list(s) for s in r.steps], r.trajectory)
        ref_steps = [tuple(s) for s in row["steps"]]
        group = trace.extra.get("group", trace.problem)
        out.append(Scored(
            id=str(trace.id if trace.id is not None else i), group=str(group), labels=trace.labels,
            ref_steps=ref_steps, ref_trajectory=row["trajectory"],
            ref_score=reference_aggregate(ref_steps, row["trajectory"], alpha),
            cand_steps=[(s.section, s.index, s.reward) for s in c.steps], cand_trajectory=c.trajectory_reward,
            cand_score=c.score))
    return out


def _aligned_steps(rows: list[Scored]):
    """(reference, candidate, gold label or None) for steps present in both, by (section, index)."""
    ref, cand, gold = [], [], []
    for r in rows:
        c = {(s, i): x for s, i, x in r.cand_steps}
        for k, (s, i, x) in enumerate(r.ref_steps):
            y = c.get((s, i))
            if y is None:
                continue
            ref.append(x)
            cand.append(y)
            gold.append(r.labels[k] if r.labels is not None and k < len(r.labels) else None)
    return np.array(ref), np.array(cand), gold


def compute_report(rows: list[Scored], fidelity: bool) -> dict:
    ref = np.array([r.ref_score for r in rows])
    cand = np.array([r.cand_score for r in rows])
    trace = {"n": len(rows), **M.correlations(ref, cand),
             "top_10pct_overlap": M.topk_overlap(ref, cand, 0.10),
             "top_25pct_overlap": M.topk_overlap(ref, cand, 0.25)}
    bon = M.best_of_n([r.group for r in rows], ref, cand)
    s_ref, s_cand, gold = _aligned_steps(rows)
    step = {"n": int(len(s_ref)), "spearman": M.correlations(s_ref, s_cand)["spearman"],
            "auroc_vs_reference": M.auroc(s_cand, s_ref >= 0.5) if len(s_ref) else float("nan")}
    labelled = [i for i, g in enumerate(gold) if g is not None]
    if labelled:
        g = np.array([gold[i] for i in labelled]) >= 0.5
        step["auroc_vs_gold_candidate"] = M.auroc(s_cand[labelled], g)
        step["auroc_vs_gold_reference"] = M.auroc(s_ref[labelled], g)
        with_labels = [r for r in rows if r.labels is not None]
        gold_first = [M.first_error([1.0 if x >= 0.5 else 0.0 for x in r.labels]) for r in with_labels]
        n_lab = [len(r.labels) for r in with_labels]
        step["processbench_candidate"] = M.processbench_f1(
            gold_first, [M.first_error([x for _, _, x in r.cand_steps[:n]]) for r, n in zip(with_labels, n_lab)])
        step["processbench_reference"] = M.processbench_f1(
            gold_first, [M.first_error([x for _, _, x in r.ref_steps[:n]]) for r, n in zip(with_labels, n_lab)])
    report = {"trace": trace, "best_of_n": bon, "step": step}
    if fidelity:
        d_step = np.abs(s_ref - s_cand) if len(s_ref) else np.zeros(1)
        d_traj = np.abs(np.array([r.ref_trajectory for r in rows]) - np.array([r.cand_trajectory for r in rows]))
        report["fidelity"] = {"max_abs_step": float(d_step.max()), "mean_abs_step": float(d_step.mean()),
                              "max_abs_trajectory": float(d_traj.max()), "mean_abs_trajectory": float(d_traj.mean())}
    return report


def _get(report: dict, path: str):
    node = report
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def check_gates(report: dict, bounds: dict) -> list[str]:
    failures = []
    for name, bound in bounds.items():
        if bound is None:
            continue
        path, op = GATES[name]
        value = _get(report, path)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            failures.append(f"- {path}: not measured on these traces (bound {op} {bound})")
        elif (op == ">=" and not value >= bound) or (op == "<=" and not value <= bound):
            failures.append(f"- {path}: {value:.4f}, bound {op} {bound}")
    return failures


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def markdown(report: dict, meta: dict) -> str:
    lines = ["# rfedge parity report", "",
             f"reference: `{meta['reference']}` ({meta['reference_layout']}, {meta['reference_dtype']}); "
             f"candidate: `{meta['candidate']}` ({meta['candidate_precision']}); alpha {meta['alpha']}", ""]
    for section, values in report.items():
        lines += [f"## {section}", "", "| metric | value |", "|---|---|"]
        for k, v in values.items():
            if isinstance(v, dict):
                for kk, vv in v.items():
                    lines.append(f"| {k}.{kk} | {_fmt(vv)} |")
            else:
                lines.append(f"| {k} | {_fmt(v)} |")
        lines.append("")
    return "\n".join(lines)


def plots(rows: list[Scored], report: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter([r.ref_score for r in rows], [r.cand_score for r in rows], s=10, alpha=0.6)
    ax.set_xlabel("reference aggregate score")
    ax.set_ylabel("candidate aggregate score")
    ax.set_title(f"trace scores (Spearman {report['trace']['spearman']:.3f})")
    fig.tight_layout()
    fig.savefig(out / "scatter.png", dpi=110)
    written.append("scatter.png")
    plt.close(fig)
    s_ref, s_cand, _ = _aligned_steps(rows)
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 21)
    ax.hist(s_cand[s_ref >= 0.5], bins=bins, alpha=0.6, label="reference says correct (>= 0.5)")
    ax.hist(s_cand[s_ref < 0.5], bins=bins, alpha=0.6, label="reference says wrong (< 0.5)")
    ax.set_xlabel("candidate step reward")
    ax.set_ylabel("steps")
    ax.legend()
    ax.set_title("candidate step rewards by reference verdict")
    fig.tight_layout()
    fig.savefig(out / "step_hist.png", dpi=110)
    written.append("step_hist.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    bon = report["best_of_n"]
    names = ["winner agreement", "pairwise agreement", "top-10% overlap", "top-25% overlap"]
    vals = [bon["winner_agreement"], bon["pairwise_agreement"], report["trace"]["top_10pct_overlap"],
            report["trace"]["top_25pct_overlap"]]
    vals = [0 if (isinstance(v, float) and math.isnan(v)) else v for v in vals]
    ax.bar(names, vals, color=["#3b7dd8", "#5aa469", "#d8a03b", "#d8703b"])
    ax.set_ylim(0, 1)
    for i, v in enumerate(vals):
        ax.text(i, v + 0.02, f"{v:.2f}", ha="center")
    ax.set_title(f"selection agreement ({bon['groups']} Best-of-N groups)")
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(out / "agreement.png", dpi=110)
    written.append("agreement.png")
    plt.close(fig)
    return written


def run_parity(data: str, reference_source: str, candidate: str, out: Path, layout: str | None = None,
               dtype: str = "fp32", device: str = "cpu", alpha: float = 1.0, cache: Path | None = None,
               bounds: dict | None = None, positive_token: int | None = None, negative_token: int | None = None,
               log=None, progress=None) -> dict:
    from rfedge.scorer import Scorer

    from .references import load_reference

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    traces = read_traces(data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scorer = Scorer.load(candidate, device="auto" if device == "cuda" else "cpu", alpha=alpha)
    log(f"rfedge parity: {len(traces)} traces; loading reference {reference_source}")
    reference = load_reference(reference_source, layout, dtype, device, positive_token=positive_token,
                               negative_token=negative_token)
    cache_obj = RewardCache(Path(cache) if cache else out / "reference_cache.jsonl")
    rows = score_both(traces, reference, scorer, cache_obj, alpha, progress)
    log(f"rfedge parity: reference rewards from cache for {cache_obj.hits} of {len(traces)} traces")
    report = compute_report(rows, fidelity=reference.layout == "scalar")
    meta = {"reference": reference.source_id, "reference_layout": reference.layout, "reference_dtype": dtype,
            "candidate": str(candidate), "candidate_precision": scorer.manifest.precision, "alpha": alpha,
            "traces": data}
    failures = check_gates(report, bounds or {})
    full = {"meta": meta, **report, "bounds": {k: v for k, v in (bounds or {}).items() if v is not None},
            "passed": not failures}
    (out / "report.json").write_text(json.dumps(full, indent=2))
    (out / "report.md").write_text(markdown(report, meta))
    with (out / "scores.jsonl").open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"id": r.id, "group": r.group,
                                "reference": {"score": r.ref_score, "trajectory_reward": r.ref_trajectory,
                                              "steps": [{"section": s, "index": i, "reward": x} for s, i, x in r.ref_steps]},
                                "candidate": {"score": r.cand_score, "trajectory_reward": r.cand_trajectory,
                                              "steps": [{"section": s, "index": i, "reward": x} for s, i, x in r.cand_steps]}})
                    + "\n")
    full["plots"] = plots(rows, report, out)
    if failures:
        raise ValidationError("parity bounds missed:\n" + "\n".join(failures) + f"\nreport: {out / 'report.md'}")
    return full
