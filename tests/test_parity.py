"""Parity: metric definitions on hand-made cases, and the harness on tiny checkpoints of each layout."""

import json
import shutil

import numpy as np
import pytest
from scipy import stats

from rfedge_export.parity import metrics as M


def test_topk_overlap():
    assert M.topk_overlap([5, 4, 3, 2, 1], [1, 4, 3, 2, 5], 0.4) == 0.5
    assert M.topk_overlap([1, 2, 3], [1, 2, 3], 0.25) == 1.0


def test_best_of_n_hand_made():
    r = M.best_of_n(["a", "a", "a", "b", "b", "c"], [0.9, 0.5, 0.1, 0.2, 0.8, 0.3], [0.1, 0.6, 0.2, 0.1, 0.9, 0.5])
    assert r["groups"] == 2  # "c" has one candidate
    assert r["winner_agreement"] == 0.5
    assert r["mean_regret"] == pytest.approx(0.2)
    assert r["pairwise_agreement"] == 0.5


def test_processbench_f1_hand_made():
    r = M.processbench_f1([-1, 2, 0, -1], [-1, 2, 1, 0])
    assert (r["error_accuracy"], r["correct_accuracy"], r["f1"]) == (0.5, 0.5, 0.5)
    assert M.first_error([0.9, 0.7, 0.2, 0.9]) == 2 and M.first_error([0.9]) == -1


def test_auroc_hand_made():
    assert M.auroc([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0]) == 0.75
    assert M.auroc([0.5, 0.5], [1, 0]) == 0.5
    assert np.isnan(M.auroc([0.1, 0.2], [1, 1]))


def test_correlations_are_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.random(30), rng.random(30)
    c = M.correlations(a, b)
    assert c["spearman"] == pytest.approx(stats.spearmanr(a, b).statistic)
    assert c["kendall"] == pytest.approx(stats.kendalltau(a, b).statistic)
    assert c["pearson"] == pytest.approx(stats.pearsonr(a, b).statistic)


@pytest.fixture(scope="module")
def math_tokenizer_dir(tmp_path_factory):
    from rfedge_export.qwen_vocab import QWEN25_MATH_PRM_SPECIALS, write_tokenizer_files

    d = tmp_path_factory.mktemp("math-tok")
    write_tokenizer_files(d, QWEN25_MATH_PRM_SPECIALS)
    return d


@pytest.fixture(scope="module")
def two_class_ckpt(tmp_path_factory, math_tokenizer_dir):
    import torch

    from rfedge_export.demo.models import DemoConfig, _teacher_module, save_teacher

    torch.manual_seed(1)
    t = _teacher_module(DemoConfig(hidden=32, layers=1, intermediate=64), range(10))
    with torch.no_grad():
        t.score[2].weight.mul_(20)
    return save_teacher(t.eval(), tmp_path_factory.mktemp("two-class") / "ckpt", math_tokenizer_dir)


@pytest.fixture(scope="module")
def traces_file(tmp_path_factory):
    from rfedge.synth import generate

    rows = list(generate("arith", 12, seed=11))
    for i, r in enumerate(rows):
        r["group"] = f"g{i // 4}"
    path = tmp_path_factory.mktemp("parity-data") / "traces.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_two_class_report_is_recomputable(two_class_ckpt, fp32_export, traces_file, tmp_path):
    from rfedge_export.parity.run import run_parity

    out = tmp_path / "rep"
    report = run_parity(str(traces_file), str(two_class_ckpt), str(fp32_export), out, log=lambda m: None)
    assert report["meta"]["reference_layout"] == "two-class"
    assert {p.name for p in out.iterdir()} >= {"report.json", "report.md", "scores.jsonl", "scatter.png",
                                               "step_hist.png", "agreement.png", "reference_cache.jsonl"}
    rows = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    ref = [r["reference"]["score"] for r in rows]
    cand = [r["candidate"]["score"] for r in rows]
    assert report["trace"]["spearman"] == pytest.approx(stats.spearmanr(ref, cand).statistic)
    for r in rows:  # reference aggregate: mean of steps + alpha x last step
        steps = [s["reward"] for s in r["reference"]["steps"]]
        assert r["reference"]["score"] == pytest.approx(np.mean(steps) + steps[-1])
    assert report["best_of_n"]["groups"] == 3
    assert "auroc_vs_gold_candidate" in report["step"] and "processbench_candidate" in report["step"]


def test_two_class_matches_independent_softmax(two_class_ckpt, fp32_export, traces_file, tmp_path):
    """The reference step reward is softmax(score(h))[1] at each <extra_0>, recomputed by hand here."""
    import torch
    from safetensors.torch import load_file
    from tokenizers import Tokenizer
    from transformers import Qwen2Model

    from rfedge_export.parity.run import run_parity

    out = tmp_path / "rep"
    run_parity(str(traces_file), str(two_class_ckpt), str(fp32_export), out, log=lambda m: None)
    first = json.loads((out / "scores.jsonl").read_text().splitlines()[0])
    record = json.loads(traces_file.read_text().splitlines()[0])
    steps = record["trajectory"] + [record["response"]]
    text = ("<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
            f"<|im_start|>user\n{record['problem']}<|im_end|>\n<|im_start|>assistant\n"
            + "".join(s + "<extra_0>" for s in steps) + "<|im_end|><|endoftext|>")
    ids = Tokenizer.from_file(str(two_class_ckpt / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    w = load_file(str(two_class_ckpt / "model.safetensors"))
    body = Qwen2Model.from_pretrained(str(two_class_ckpt)).eval()
    with torch.no_grad():
        h = body(input_ids=torch.tensor([ids])).last_hidden_state[0]
        z = torch.relu(h @ w["score.0.weight"].T + w["score.0.bias"]) @ w["score.2.weight"].T + w["score.2.bias"]
        p = torch.softmax(z, -1)[:, 1]
    expected = [p[i].item() for i, t in enumerate(ids) if t == 151651]
    assert [s["reward"] for s in first["reference"]["steps"]] == pytest.approx(expected, abs=1e-5)


def test_reference_cache_avoids_recompute(two_class_ckpt, fp32_export, traces_file, tmp_path, monkeypatch):
    from rfedge_export.parity import references
    from rfedge_export.parity import run as parity

    cache = tmp_path / "cache.jsonl"
    parity.run_parity(str(traces_file), str(two_class_ckpt), str(fp32_export), tmp_path / "a", cache=cache,
                      log=lambda m: None)
    calls = []
    original = references._two_class

    def counting(*a, **k):
        fn = original(*a, **k)
        return lambda t: calls.append(1) or fn(t)

    monkeypatch.setitem(references.LOADERS, "two-class", counting)
    r = parity.run_parity(str(traces_file), str(two_class_ckpt), str(fp32_export), tmp_path / "b", cache=cache,
                          log=lambda m: None)
    assert calls == [] and r["trace"]["n"] == 12


def test_fidelity_mode_and_gate(scalar_ckpt, fp32_export, int8_export, traces_file, tmp_path):
    from click.testing import CliRunner

    from rfedge.cli import main
    from rfedge_export.parity.run import run_parity

    r = run_parity(str(traces_file), str(scalar_ckpt), str(fp32_export), tmp_path / "f", log=lambda m: None)
    assert r["meta"]["reference_layout"] == "scalar"
    assert r["fidelity"]["max_abs_step"] <= 1e-4 and r["fidelity"]["max_abs_trajectory"] <= 1e-4
    cli = CliRunner().invoke(main, ["parity", str(traces_file), "--reference", str(scalar_ckpt), "--candidate",
                                    str(int8_export), "--out", str(tmp_path / "g"), "--max-abs-delta", "1e-6"])
    assert cli.exit_code == 1
    assert "rfedge: error: parity bounds missed:\n- fidelity.max_abs_step: " in cli.stderr
    report = json.loads((tmp_path / "g" / "report.json").read_text())
    assert report["passed"] is False and report["fidelity"]["max_abs_step"] > 1e-6


def test_lm_tokens_reference(tmp_path, scalar_ckpt, math_tokenizer_dir, fp32_export, traces_file):
    import torch
    from tokenizers import Tokenizer
    from transformers import Qwen2ForCausalLM

    from rfedge_export.parity.run import run_parity

    ck = tmp_path / "lm"
    shutil.copytree(scalar_ckpt, ck)
    (ck / "reward_head.pt").unlink()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(math_tokenizer_dir / f, ck / f)
    pos, neg = 10, 20
    r = run_parity(str(traces_file), str(ck), str(fp32_export), tmp_path / "rep", layout="lm-tokens",
                   positive_token=pos, negative_token=neg, log=lambda m: None)
    first = json.loads((tmp_path / "rep" / "scores.jsonl").read_text().splitlines()[0])
    record = json.loads(traces_file.read_text().splitlines()[0])
    from rfedge_export.parity.chat import render_prm_chat

    ids = Tokenizer.from_file(str(ck / "tokenizer.json")).encode(
        render_prm_chat(record["problem"], record["trajectory"] + [record["response"]]), add_special_tokens=False).ids
    model = Qwen2ForCausalLM.from_pretrained(str(ck)).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    expected = [torch.softmax(logits[i, [pos, neg]], -1)[0].item() for i, t in enumerate(ids) if t == 151651]
    assert [s["reward"] for s in first["reference"]["steps"]] == pytest.approx(expected, abs=1e-5)
    assert r["meta"]["reference_layout"] == "lm-tokens"
