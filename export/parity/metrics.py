"""Agreement metrics between a reference PRM and a candidate: plain functions over arrays.

Correlations come from scipy.stats; everything else is small and spelled out so a reader can check
it against the definitions in the parity report.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np


def _nan_if_constant(fn, a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(fn(a, b).statistic)


def correlations(ref, cand) -> dict:
    from scipy.stats import kendalltau, pearsonr, spearmanr

    return {"spearman": _nan_if_constant(spearmanr, ref, cand),
            "kendall": _nan_if_constant(kendalltau, ref, cand),
            "pearson": _nan_if_constant(pearsonr, ref, cand)}


def topk_overlap(ref, cand, fraction: float) -> float:
    """|top-k by reference ∩ top-k by candidate| / k, k = ceil(fraction x n) (data selection)."""
    ref, cand = np.asarray(ref, float), np.asarray(cand, float)
    k = max(1, math.ceil(fraction * len(ref)))
    top_r = set(np.argsort(-ref, kind="stable")[:k].tolist())
    top_c = set(np.argsort(-cand, kind="stable")[:k].tolist())
    return len(top_r & top_c) / k


def auroc(scores, labels) -> float:
    """Area under the ROC curve (Mann-Whitney U; ties count half); NaN with one class only."""
    from scipy.stats import mannwhitneyu

    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float(mannwhitneyu(pos, neg, alternative="two-sided").statistic / (len(pos) * len(neg)))


def best_of_n(groups: list[str], ref, cand) -> dict:
    """Within each group of >= 2 candidates for one problem: same winner? regret? pair order?

    regret = reference score of the reference's pick - reference score of the candidate's pick
    (mean over all groups, 0 where they agree). Pairwise agreement counts pairs the reference
    orders strictly.
    """
    by = defaultdict(list)
    for i, g in enumerate(groups):
        by[g].append(i)
    ref, cand = np.asarray(ref, float), np.asarray(cand, float)
    n_groups = agree = 0
    regrets, pairs_same, pairs = [], 0, 0
    for idx in by.values():
        if len(idx) < 2:
            continue
        n_groups += 1
        r, c = ref[idx], cand[idx]
        wr, wc = int(np.argmax(r)), int(np.argmax(c))
        agree += r[wr] == r[wc]
        regrets.append(float(r[wr] - r[wc]))
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                if r[a] != r[b]:
                    pairs += 1
                    pairs_same += (r[a] - r[b]) * (c[a] - c[b]) > 0
    return {"groups": n_groups,
            "winner_agreement": agree / n_groups if n_groups else float("nan"),
            "mean_regret": float(np.mean(regrets)) if regrets else float("nan"),
            "pairwise_agreement": pairs_same / pairs if pairs else float("nan")}


def first_error(rewards, threshold: float = 0.5) -> int:
    """Index of the first step judged wrong (reward < threshold), -1 when none is."""
    for i, r in enumerate(rewards):
        if r is not None and r < threshold:
            return i
    return -1


def processbench_f1(gold_first: list[int], pred_first: list[int]) -> dict:
    """ProcessBench: accuracy on erroneous traces (exact first-error index), on correct traces
    (predicting none), and their harmonic mean."""
    err = [(g, p) for g, p in zip(gold_first, pred_first, strict=True) if g >= 0]
    ok = [(g, p) for g, p in zip(gold_first, pred_first, strict=True) if g < 0]
    acc_err = sum(g == p for g, p in err) / len(err) if err else float("nan")
    acc_ok = sum(p < 0 for _, p in ok) / len(ok) if ok else float("nan")
    f1 = 2 * acc_err * acc_ok / (acc_err + acc_ok) if err and ok and acc_err + acc_ok > 0 else float("nan")
    if err and ok and acc_err + acc_ok == 0:
        f1 = 0.0
    return {"error_accuracy": acc_err, "correct_accuracy": acc_ok, "f1": f1}
