"""The parity report: metrics over scored traces, the gates, markdown and plots.

Trace level: Spearman, Kendall, Pearson and top-10%/25% overlap of the aggregate scores (data
selection); Best-of-N winner agreement, regret and pairwise order within groups; step level:
Spearman aligned by (section, index), AUROC against reference verdicts and gold labels,
ProcessBench first-error F1; in fidelity mode (a scalar reference) max/mean |delta|.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..bounds import Bound
from . import metrics as M

GATES = {  # option name -> (metric path, direction)
    "min_spearman": ("trace.spearman", ">="),
    "min_bon_agreement": ("best_of_n.winner_agreement", ">="),
    "min_topk_overlap": ("trace.top_10pct_overlap", ">="),
    "min_step_spearman": ("step.spearman", ">="),
    "min_step_auroc": ("step.auroc_vs_reference", ">="),
    "max_abs_delta": ("fidelity.max_abs_step", "<="),
}


def gate_bounds(options: dict) -> list[Bound]:
    """The bounds a run was given (``--min-spearman`` ...), unset ones left out."""
    return [Bound(*GATES[name], value) for name, value in options.items() if value is not None]


def _aligned_steps(rows: list):
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


def compute_report(rows: list, fidelity: bool) -> dict:
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
            gold_first, [M.first_error([x for _, _, x in r.cand_steps[:n]]) for r, n in zip(with_labels, n_lab, strict=True)])
        step["processbench_reference"] = M.processbench_f1(
            gold_first, [M.first_error([x for _, _, x in r.ref_steps[:n]]) for r, n in zip(with_labels, n_lab, strict=True)])
    report = {"trace": trace, "best_of_n": bon, "step": step}
    if fidelity:
        d_step = np.abs(s_ref - s_cand) if len(s_ref) else np.zeros(1)
        d_traj = np.abs(np.array([r.ref_trajectory for r in rows]) - np.array([r.cand_trajectory for r in rows]))
        report["fidelity"] = {"max_abs_step": float(d_step.max()), "mean_abs_step": float(d_step.mean()),
                              "max_abs_trajectory": float(d_traj.max()), "mean_abs_trajectory": float(d_traj.mean())}
    return report


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def markdown(report: dict, meta: dict) -> str:
    lines = ["# rfedge parity report", "",
             f"reference: `{meta['reference']}` ({meta['reference_layout']}, {meta['reference_dtype']}"
             f"{', bitsandbytes ' + meta['reference_quant'] if meta.get('reference_quant', 'none') != 'none' else ''}); "
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


def plots(rows: list, report: dict, out: Path) -> list[str]:
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
