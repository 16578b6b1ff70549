"""How good the demo pair is, on held-out traces: the numbers and the bounds ``rfedge demo`` gates on."""

from __future__ import annotations

from pathlib import Path

from rfedge.synth import generate
from rfedge.traces import parse_trace

from ..bounds import Bound, failures
from ..parity.metrics import auroc

HELDOUT_SEED = 424242  # a fresh seed never used for training
# INT8 vs fp32 trajectory rewards are bounded at the 99th percentile: the demo's heads are steep, and
# the one or two of 400 traces whose fp32 reward sits at the decision boundary (~0.5) move by up to
# ~0.3 (reported as int8_vs_fp32_max_abs_trajectory, not gated; the export gate bounds the max on its
# own held-out traces).
BOUNDS = (Bound("teacher_step_auroc", ">=", 0.95), Bound("student_int8_trajectory_auroc", ">=", 0.95),
          Bound("student_int8_step_auroc", ">=", 0.95), Bound("int8_vs_fp32_p99_abs_trajectory", "<=", 0.03),
          Bound("int8_vs_fp32_spearman", ">=", 0.99))


def evaluate_demo(teacher_dir: Path, fp32_dir: Path, int8_dir: Path, n: int = 400,
                  seed: int = HELDOUT_SEED) -> dict:
    """The quality numbers of the demo pair on ``n`` held-out traces; ``missed`` lists missed bounds."""
    import numpy as np
    from scipy.stats import spearmanr

    from rfedge.scorer import Scorer

    from ..parity.references import load_reference

    records = list(generate("arith", n, seed))
    traces = [parse_trace(r) for r in records]
    teacher = load_reference(str(teacher_dir), "two-class")
    t_scores, t_labels = [], []
    for r, t in zip(records, traces, strict=True):
        t_scores += [p for sec, _, p in teacher.score_trace(t).steps if sec == "thinking"]
        t_labels += [bool(x) for x in r["labels"]]
    fp32 = Scorer.load(fp32_dir, device="cpu").score_many(traces)
    int8 = Scorer.load(int8_dir, device="cpu").score_many(traces)
    correct = [bool(r["correct"]) for r in records]
    a = np.array([x.trajectory_reward for x in fp32])
    b = np.array([x.trajectory_reward for x in int8])
    s_scores = [st.reward for x in int8 for st in x.steps if st.section == "thinking"]
    metrics = {
        "heldout_traces": n, "heldout_seed": seed,
        "teacher_step_auroc": auroc(t_scores, t_labels),
        "student_fp32_trajectory_auroc": auroc(a, correct),
        "student_int8_trajectory_auroc": auroc(b, correct),
        "student_int8_step_auroc": auroc(s_scores, t_labels),
        "int8_vs_fp32_max_abs_trajectory": float(np.abs(a - b).max()),
        "int8_vs_fp32_p99_abs_trajectory": float(np.percentile(np.abs(a - b), 99)),
        "int8_vs_fp32_spearman": float(spearmanr(a, b).statistic),
    }
    metrics["missed"] = failures(list(BOUNDS), metrics)
    return metrics


def quality_table(m: dict) -> str:
    bounds = {b.metric: b for b in BOUNDS}
    rows = ["| metric | value | bound | ok |", "|---|---|---|---|"]
    for k, v in m.items():
        if isinstance(v, float):
            b = bounds.get(k)
            ok = "" if b is None else ("yes" if b.holds(m) else "NO")
            rows.append(f"| {k} | {v:.4f} | {b or ''} | {ok} |")
    return "\n".join(rows)
