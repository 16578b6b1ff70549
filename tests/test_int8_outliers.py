"""The shipped INT8 recipe on models with activation outliers, next to plain per-tensor quantization.

Outlier models: the tiny 1.5B-layout checkpoint (4 layers, h=128) with a few RMSNorm channels and
one up_proj row per layer scaled by alpha, as trained LLMs have them (rfedge_export.testing.outliers).
"""

import pytest

from rfedge import Scorer
from rfedge.errors import ValidationError

from conftest import make_scalar_checkpoint


@pytest.fixture(scope="module")
def outlier_ckpt(tmp_path_factory, tokenizer_dir):
    made = {}

    def make(alpha, channels=(3, 17, 42)):
        key = (alpha, channels)
        if key not in made:
            from rfedge_export.testing.outliers import inject_outliers

            path = make_scalar_checkpoint(tmp_path_factory.mktemp("outliers") / "ck", tokenizer_dir, seed=1,
                                          layers=4, head_scale=1.0, hidden=128)
            if alpha:
                inject_outliers(path, alpha, channels)
            made[key] = path
        return made[key]
    return make


def _export(ckpt, out, recipe=None):
    from rfedge_export.export import export_model

    return export_model(str(ckpt), out, precision="int8", recipe=recipe, log=lambda m: None, progress=None)


def test_plain_per_tensor_dynamic_quantization_fails_on_outliers(outlier_ckpt, tmp_path):
    with pytest.raises(ValidationError, match=r"export validation failed for int8 .*\n- step_rewards max \|delta\|: "):
        _export(outlier_ckpt(30), tmp_path / "plain", recipe="int8-dynamic")
    assert not (tmp_path / "plain").exists()


@pytest.mark.parametrize("alpha,channels", [(0, (3, 17, 42)), (10, (3, 17, 42)), (30, (3, 17, 42)),
                                            (30, (0, 64, 127))])
def test_shipped_recipe_keeps_the_bound_with_outliers(outlier_ckpt, tmp_path, alpha, channels):
    manifest = _export(outlier_ckpt(alpha, channels), tmp_path / "m")
    q, v = manifest["quantization"], manifest["validation"]
    assert q["recipe"] == "int8-smooth" and v["passed"]
    assert v["max_abs_step"] <= 0.05 and v["max_abs_trajectory"] <= 0.05
    assert q["smoothing"]["method"].startswith("smoothquant") and isinstance(q["kept_fp32"], list)
    assert sum(q["matmuls"].values()) + len(q["kept_fp32"]) == 4 * 7  # every layer linear is int8 or listed fp32


def test_fit_simulates_what_the_graph_does(outlier_ckpt, tmp_path):
    """The end-to-end fit's last simulated deltas are the written graph's validation deltas."""
    manifest = _export(outlier_ckpt(30), tmp_path / "m")
    last, v = manifest["quantization"]["smoothing"]["fit"]["rounds"][-1], manifest["validation"]
    assert abs(last["max_abs_step"] - v["max_abs_step"]) <= 2e-3
    assert abs(last["max_abs_trajectory"] - v["max_abs_trajectory"]) <= 2e-3


@pytest.mark.parametrize("tolerance,quantized_after", [(1.0, 28), (0.0, 0)])
def test_fit_promotes_linears_until_the_simulation_is_within_tolerance(outlier_ckpt, tolerance, quantized_after):
    from rfedge.tokenization import TraceTokenizer
    from rfedge_export.calibration import builtin_traces
    from rfedge_export.quantize.fitting import fit_formats
    from rfedge_export.quantize.recipes import Tolerance
    from rfedge_export.quantize.smoothing import smooth_and_select
    from rfedge_export.checkpoint.source import load_scalar_prm, resolve_source
    from rfedge_export.validate import reference_rewards

    ckpt = outlier_ckpt(30)
    prm, tokenizer = load_scalar_prm(resolve_source(str(ckpt))), TraceTokenizer(ckpt / "tokenizer.json", 1024)
    traces = builtin_traces()[:4]
    references = reference_rewards(prm, tokenizer, traces)
    encoded = [(e.ids, e.step_tokens) for e in map(tokenizer.encode, traces)]
    _, formats, errors = smooth_and_select(prm.body, [ids for ids, _ in encoded], 1.0, 1.0)
    fitted, summary = fit_formats(prm, references, encoded, formats, errors, Tolerance(tolerance, tolerance, 0.0))
    rounds = summary["rounds"]
    assert rounds[0]["quantized"] == 28 and rounds[-1]["quantized"] == quantized_after
    assert sum(f != "fp32" for f in fitted.values()) == quantized_after
    if tolerance == 0.0:  # all fp32: the simulation is the source model again (no int8 embedding here)
        assert rounds[-1]["max_abs_step"] <= 1e-4


def test_equalization_is_exact_in_fp32(outlier_ckpt, qwen_tokenizer):
    import numpy as np

    from rfedge_export.checkpoint.rewards import scalar_rewards
    from rfedge_export.quantize.smoothing import smooth_and_select
    from rfedge_export.checkpoint.source import load_scalar_prm, resolve_source

    prm = load_scalar_prm(resolve_source(str(outlier_ckpt(30))))
    ids = np.array(qwen_tokenizer.encode("Start with 3. Then add 4.\n\n3 + 4 = 7\n\nThe final number is 7.").ids)
    steps = np.array([5, 12, len(ids) - 1])
    before = scalar_rewards(prm, ids, steps)
    summary, _, _ = smooth_and_select(prm.body, [ids], fast_error=1.0, max_error=1.0)
    after = scalar_rewards(prm, ids, steps)
    assert sum(v for k, v in summary["alpha_chosen"].items() if k != "None") > 0  # something was folded
    assert np.abs(before[0] - after[0]).max() <= 1e-4 and abs(before[1] - after[1]) <= 1e-4


def test_per_token_int8_scores_a_trace_the_same_alone_or_in_a_batch(int8_export):
    from rfedge.synth import generate

    traces = list(generate("arith", 9, seed=4))
    batched = Scorer.load(int8_export, device="cpu", batch_size=9).score_many(traces)
    alone = Scorer.load(int8_export, device="cpu", batch_size=1).score_many(traces)
    for a, b in zip(batched, alone, strict=True):
        assert abs(a.trajectory_reward - b.trajectory_reward) <= 1e-5
        assert all(abs(x.reward - y.reward) <= 1e-5 for x, y in zip(a.steps, b.steps, strict=True))


@pytest.mark.parametrize("fmt", ["int8-7bit", "int8-8bit"])
def test_graph_quantization_is_what_the_search_simulates(tmp_path, fmt):
    """The rewritten MatMul (per-token uint8 x per-channel int8/uint8 weights) equals the torch
    simulation the sensitivity search uses, on an input with a massive token and a large channel."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from rfedge_export.quantize.int8 import dynamic_int8
    from rfedge_export.quantize.formats import FORMATS, fake_quant_activations

    rng = np.random.default_rng(0)
    w = rng.standard_normal((96, 40)).astype(np.float32)
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    node.metadata_props.add(key="pkg.torch.onnx.name_scopes", value="['', 'layers.0.mlp.down_proj', 'linear']")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", 96])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(tmp_path / "m.onnx"))
    model, counts = dynamic_int8(tmp_path / "m.onnx", {"layers.0.mlp.down_proj": fmt})
    assert counts[fmt] == 1 and not any(n.op_type == "MatMul" for n in model.graph.node)
    x = rng.standard_normal((7, 96)).astype(np.float32)
    x[2] *= 300  # a massive token
    x[:, 5] *= 20  # a large channel
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    sim = (fake_quant_activations(torch.from_numpy(x)) @ FORMATS[fmt].simulate(torch.from_numpy(w.T.copy())).T).numpy()
    assert np.abs(y - sim).max() <= 1e-4 * np.abs(sim).max()
    ref = x @ w
    small = [0, 1, 3]  # the ordinary tokens keep their precision next to the massive one
    assert np.abs(y[small] - ref[small]).max() <= 0.05 * np.abs(ref[small]).max()


def test_plain_dynamic_recipe_writes_its_intermediate_with_external_data(monkeypatch, tmp_path):
    """quantize_dynamic of the 1.5B shape is a 2.4 GB model: one protobuf cannot hold it, whatever
    the size of the source's .onnx file (small when its weights sit in .onnx.data)."""
    import onnxruntime.quantization as q

    from rfedge_export.quantize.recipes import get_recipe

    seen = {}

    def fake(src, dst, **kw):
        seen.update(kw)
        raise RuntimeError("stop here")

    monkeypatch.setattr(q, "quantize_dynamic", fake)
    src = tmp_path / "model.onnx"
    src.write_bytes(b"")
    with pytest.raises(RuntimeError, match="stop here"):
        get_recipe("int8", "int8-dynamic").apply(src, tmp_path / "out" / "model.onnx")
    assert seen["use_external_data_format"] is True
