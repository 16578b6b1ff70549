"""Export + score against an independent reference: HF Qwen2 on each prefix, in torch fp32."""

import json

import numpy as np
import pytest

from rfedge import Scorer
from rfedge.manifest import load_manifest
from rfedge_export.calibration import builtin_traces

TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "int8": 5e-2}

TRACES = [
    {"id": "a", "problem": "Start with 12. Then add 7 and subtract 5. What is the final number?",
     "trajectory": ["12 + 7 = 19", "19 - 5 = 14"], "response": "The final number is 14."},
    {"id": "b", "problem": "Solve 2x = 8.", "completion": "<think>\nDivide by 2.\n\nx = 4.\n</think>\n\nx = 4 ✓"},
    {"id": "c", "prompt": "Name a prime.", "completions": ["2 is prime.", "It has divisors 1 and 2 only."]},
    {"id": "d", "messages": [{"role": "user", "content": "1+1?"},
                             {"role": "assistant", "reasoning_content": "1+1 = 2", "content": "2"}]},
    {"id": "e", "problem": "No steps here", "completion": "\n\n"},
]


def prefix_reward(prm, ids):
    """Reference: run the HF body on exactly this prefix, head at its last token, sigmoid."""
    import torch

    with torch.no_grad():
        h = prm.body(input_ids=torch.as_tensor(ids)[None]).last_hidden_state[0, -1]
        return torch.sigmoid(prm.head(h)).item()


@pytest.fixture(scope="module")
def fp32_scorer(fp32_export):
    return Scorer.load(fp32_export, device="cpu")


def test_every_step_reward_is_its_prefix_reward(fp32_scorer, scalar_prm):
    for obj in TRACES:
        result = fp32_scorer.score(obj)
        enc = fp32_scorer.tokenizer.encode(__import__("rfedge").parse_trace(obj))
        assert result.num_tokens == len(enc.ids)
        for step in result.steps:
            expected = prefix_reward(scalar_prm, enc.ids[: step.token_index + 1])
            assert abs(step.reward - expected) <= 1e-4, (obj["id"], step)
        assert abs(result.trajectory_reward - prefix_reward(scalar_prm, enc.ids)) <= 1e-4


def test_trace_formats_give_expected_steps(fp32_scorer):
    sections = {o["id"]: [(s.section, s.index) for s in fp32_scorer.score(o).steps] for o in TRACES}
    assert sections == {
        "a": [("thinking", 0), ("thinking", 1), ("response", 0)],
        "b": [("thinking", 0), ("thinking", 1), ("response", 0)],
        "c": [("response", 0), ("response", 1)],
        "d": [("thinking", 0), ("response", 0)],
        "e": [],
    }


def test_score_is_mean_step_plus_alpha_trajectory(fp32_export):
    scorer = Scorer.load(fp32_export, device="cpu", alpha=0.5)
    r = scorer.score(TRACES[0])
    assert r.score == pytest.approx(np.mean([s.reward for s in r.steps]) + 0.5 * r.trajectory_reward)
    assert scorer.score(TRACES[4]).score == pytest.approx(0.5 * scorer.score(TRACES[4]).trajectory_reward)


def test_batch_and_padding_invariance(fp32_export):
    alone = Scorer.load(fp32_export, device="cpu", batch_size=1)
    batched = Scorer.load(fp32_export, device="cpu", batch_size=16)
    traces = TRACES + [{"id": t.id, "problem": t.problem, "completion": t.completion} for t in builtin_traces()]
    a, b = alone.score_many(traces), batched.score_many(traces)
    for x, y in zip(a, b, strict=True):
        assert x.id == y.id
        assert abs(x.trajectory_reward - y.trajectory_reward) <= 1e-5
        for s, t in zip(x.steps, y.steps, strict=True):
            assert abs(s.reward - t.reward) <= 1e-5


def test_truncation_marks_unscored_steps(fp32_export, scalar_prm, tmp_path):
    scorer = Scorer.load(fp32_export, device="cpu")
    long = {"problem": "Count.", "trajectory": [f"step {i} " + "word " * 40 for i in range(30)], "response": "Done."}
    r = scorer.score(long)
    assert r.truncated and r.num_tokens > scorer.manifest.max_length
    scored = [s for s in r.steps if s.reward is not None]
    assert scored and len(scored) < len(r.steps)
    assert all(s.token_index < scorer.manifest.max_length for s in scored)
    assert all(s.reward is None and s.token_index >= scorer.manifest.max_length for s in r.steps[len(scored):])
    enc = scorer.tokenizer.encode(__import__("rfedge").parse_trace(long))
    assert abs(r.trajectory_reward - prefix_reward(scalar_prm, enc.ids[: scorer.manifest.max_length])) <= 1e-4


def test_manifest_records_what_was_exported(fp32_export):
    m = load_manifest(fp32_export)
    data = json.loads((fp32_export / "rfedge.json").read_text())
    assert m.precision == "fp32" and m.max_length == 512
    assert set(data["files"]) == {"model.onnx", "tokenizer.json"}
    v = data["validation"]
    assert v["passed"] and v["max_abs_step"] <= 1e-4 and v["spearman_trajectory"] >= 0.999
    assert data["source"]["layout"] == "scalar-head"
    assert data["format_version"] == 2 and data["cache"] == {"layers": 2, "kv_heads": 2, "head_dim": 16,
                                                             "dtype": "float32"}
    assert data["inputs"] == ["input_ids", "attention_mask", "past_length", "past_key_values.0.key",
                              "past_key_values.0.value", "past_key_values.1.key", "past_key_values.1.value"]
    assert v["max_abs_chunked"] <= 1e-5 and data["token_independent"] is True


def test_graph_has_no_hidden_state_output(fp32_export):
    """Two scalars per token and the K/V buffers leave the graph, never a [B,T,H] hidden state."""
    import onnx

    g = onnx.load(str(fp32_export / "model.onnx"), load_external_data=False).graph
    outs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in g.output}
    assert set(outs) == {"token_step_rewards", "token_trajectory_rewards", "present.0.key", "present.0.value",
                         "present.1.key", "present.1.value"}
    assert len(outs["token_step_rewards"]) == 2 and len(outs["token_trajectory_rewards"]) == 2
    assert outs["present.0.key"][1:2] + outs["present.0.key"][3:] == [2, 16]  # [B, kv_heads, C, head_dim]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_every_rms_norm_runs_as_one_fused_kernel(precision, request, tmp_path):
    """ONNX Runtime fuses each RMSNorm (2 per layer + the final one) into SimplifiedLayerNormalization:
    as Pow/ReduceMean/Add/Sqrt/Reciprocal/Mul they cost 3% of an INT8 run at the 1.5B shape."""
    import onnx
    import onnxruntime as ort

    out = request.getfixturevalue(f"{precision}_export")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False).graph.node]
    assert ops.count("SimplifiedLayerNormalization") == 2 * 2 + 1
    assert "Reciprocal" not in ops and "Sqrt" not in ops


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_quantized_within_tolerance(precision, scalar_prm, request):
    out = request.getfixturevalue(f"{precision}_export")
    scorer = Scorer.load(out, device="cpu")
    assert scorer.manifest.precision == precision
    tol = TOLERANCE[precision]
    for obj in TRACES[:4]:
        r = scorer.score(obj)
        enc = scorer.tokenizer.encode(__import__("rfedge").parse_trace(obj))
        for s in r.steps:
            assert abs(s.reward - prefix_reward(scalar_prm, enc.ids[: s.token_index + 1])) <= tol


def test_int8_is_smaller(int8_export, fp32_export):
    size = lambda d: (d / "model.onnx").stat().st_size
    assert size(int8_export) < 0.4 * size(fp32_export)


def test_export_lets_go_of_the_torch_weights(scalar_ckpt, tmp_path):
    """After export_onnx, nothing but the caller keeps the module's weights alive (the export then
    frees them before quantizing: at the 1.5B shape that is 6.7 GB under the quantizer's peak)."""
    import gc
    import weakref

    import torch

    from rfedge_export.onnx.pooled import PooledPRM
    from rfedge_export.onnx.to_onnx import export_onnx
    from rfedge_export.checkpoint.source import load_scalar_prm, resolve_source

    prm = load_scalar_prm(resolve_source(str(scalar_ckpt)))
    module = PooledPRM(prm.body, prm.head, prm.step_head).eval()
    weight = weakref.ref(next(p for n, p in module.named_parameters() if n.endswith("up_proj.weight")))
    with torch.no_grad():
        export_onnx(module, tmp_path / "model.onnx", 0)
    del module, prm
    gc.collect()
    assert weight() is None


def test_an_ungated_export_writes_strict_json(scalar_ckpt, tmp_path):
    """An infinite tolerance (no gate) is written as null: the manifest stays strict JSON and loads."""
    import math

    from rfedge_export.export import export_model

    out = tmp_path / "ungated"
    body = export_model(str(scalar_ckpt), out, precision="fp32", log=lambda m: None, progress=None,
                        tolerance={"max_abs_step": math.inf, "max_abs_trajectory": math.inf})
    assert body["validation"]["tolerance"]["max_abs_step"] is None and body["validation"]["passed"] is True
    assert Scorer.load(out, device="cpu").manifest.validation["tolerance"]["max_abs_trajectory"] is None
