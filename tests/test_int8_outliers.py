"""The shipped INT8 recipe on models with activation outliers, judged on traces it never fitted to.

Outlier models: the tiny 1.5B-layout checkpoint (4 layers, h=128) with a few RMSNorm channels and
one up_proj row per layer scaled by alpha, as trained LLMs have them, or only down_proj's input
channels scaled (rfedge_export.testing.outliers). The gate's held-out traces (word problems, algebra,
code, chat, other languages) are never seen by the fit.
"""

import numpy as np
import pytest

from rfedge import Scorer
from rfedge.errors import ValidationError

from conftest import make_scalar_checkpoint

TIGHT = {"max_abs_step": 0.03, "max_abs_trajectory": 0.03}


@pytest.fixture(scope="module")
def outlier_ckpt(tmp_path_factory, tokenizer_dir):
    made = {}

    def make(alpha, channels=(3, 17, 42), kind="norm"):
        key = (alpha, channels, kind)
        if key not in made:
            from rfedge_export.testing.outliers import inject_down_input_outliers, inject_outliers

            path = make_scalar_checkpoint(tmp_path_factory.mktemp("outliers") / "ck", tokenizer_dir, seed=1,
                                          layers=4, head_scale=1.0, hidden=128)
            if alpha:
                (inject_outliers if kind == "norm" else inject_down_input_outliers)(path, alpha, channels)
            made[key] = path
        return made[key]
    return make


def _export(ckpt, out, recipe=None, tolerance=None):
    from rfedge_export.export import export_model

    return export_model(str(ckpt), out, precision="int8", recipe=recipe, tolerance=tolerance, log=lambda m: None,
                        progress=None)


def test_plain_per_tensor_dynamic_quantization_fails_on_outliers(outlier_ckpt, tmp_path):
    with pytest.raises(ValidationError, match=r"export validation failed for int8 .*\n- fit: step_rewards max "):
        _export(outlier_ckpt(30), tmp_path / "plain", recipe="int8-dynamic")
    assert not (tmp_path / "plain").exists()


@pytest.mark.parametrize("alpha,channels,kind,tolerance,max_fp32", [
    (0, (3, 17, 42), "norm", TIGHT, 0), (10, (3, 17, 42), "norm", TIGHT, 0), (30, (0, 64, 127), "norm", TIGHT, 0),
    # the two hardest models: the default gate (0.05), a few fp32 linears allowed (README, INT8 fidelity)
    (30, (3, 17, 42), "norm", None, 3), (30, (5, 77), "down", None, 3)])
def test_shipped_recipe_holds_on_held_out_traces(outlier_ckpt, tmp_path, alpha, channels, kind, tolerance, max_fp32):
    manifest = _export(outlier_ckpt(alpha, channels, kind), tmp_path / "m", tolerance=tolerance)
    q, v = manifest["quantization"], manifest["validation"]
    bound = (tolerance or {"max_abs_step": 0.05})["max_abs_step"]
    assert q["recipe"] == "int8-rotate" and v["passed"]
    assert v["held_out"]["max_abs_step"] <= bound and v["held_out"]["max_abs_trajectory"] <= bound
    assert len(q["kept_fp32"]) <= max_fp32 and sum(q["matmuls"].values()) == 4 * 7 - len(q["kept_fp32"])
    assert manifest["calibration"] == {"source": "built-in", "fit_traces": 22, "held_out_traces": 16}
    assert q["fit"]["rotation"]["down_proj_online_hadamard_block"] == 128


def test_fit_simulates_what_the_graph_does(outlier_ckpt, tmp_path):
    """The end-to-end fit's last simulated deltas are the written graph's deltas on the fit traces.
    (alpha 10: at alpha 30 the model amplifies the int8 roundings that differ between torch's and ONNX
    Runtime's summation order, ~0.006 here; the export measures the graph itself, and rebuilds on drift.)"""
    manifest = _export(outlier_ckpt(10), tmp_path / "m")
    last, v = manifest["quantization"]["fit"]["fit"]["rounds"][-1], manifest["validation"]["fit"]
    assert abs(last["max_abs_step"] - v["max_abs_step"]) <= 2e-3
    assert abs(last["max_abs_trajectory"] - v["max_abs_trajectory"]) <= 2e-3


@pytest.fixture(scope="module")
def fit_case(outlier_ckpt):
    """A rotated, smoothed outlier model, its fit traces, references, formats and errors."""
    from rfedge.tokenization import TraceTokenizer
    from rfedge_export.calibration import builtin_traces
    from rfedge_export.checkpoint.source import load_scalar_prm, resolve_source
    from rfedge_export.quantize.rotation import online, rotate
    from rfedge_export.quantize.smoothing import smooth_and_select
    from rfedge_export.validate import reference_rewards

    ckpt = outlier_ckpt(30)
    prm, tokenizer = load_scalar_prm(resolve_source(str(ckpt))), TraceTokenizer(ckpt / "tokenizer.json", 1024)
    traces = builtin_traces()
    references = reference_rewards(prm, tokenizer, traces)
    encoded = [(e.ids, e.step_tokens) for e in map(tokenizer.encode, traces)]
    rotate(prm)
    with online(prm.body):
        _, formats, errors = smooth_and_select(prm.body, [ids for ids, _ in encoded], 1.0, 1.0)
    return prm, references, encoded, [t.id for t in traces], formats, errors


def _fit(fit_case, tolerance):
    from rfedge_export.quantize.fitting import fit_formats, simulated_rewards
    from rfedge_export.quantize.rotation import online
    from rfedge_export.validate import measure

    prm, references, encoded, ids, formats, errors = fit_case
    with online(prm.body):
        start = measure(references, simulated_rewards(prm, encoded, formats), ids)
        fitted, summary = fit_formats(prm, references, encoded, ids, formats, errors, tolerance, margin=1.0)
    return start, fitted, summary


@pytest.mark.parametrize("criterion", ["max_abs_step", "max_abs_trajectory", "min_spearman"])
def test_the_fit_reacts_to_every_gate_criterion(fit_case, criterion):
    """Only one criterion missed at the start: the fit promotes linears until it is met (and no further)."""
    from rfedge_export.quantize.recipes import Tolerance

    loose = Tolerance(1.0, 1.0, -1.0)
    start, fitted, summary = _fit(fit_case, loose)
    assert len(summary["rounds"]) == 1 and fitted == fit_case[4]  # nothing missed, nothing moved
    measured = {"max_abs_step": start.max_abs_step, "max_abs_trajectory": start.max_abs_trajectory,
                "min_spearman": start.spearman_trajectory}[criterion]
    target = measured * 0.5 if criterion != "min_spearman" else min(1.0, measured + 0.5 * (1 - measured))
    _, fitted, summary = _fit(fit_case, Tolerance(**{**loose.__dict__, criterion: target}))
    rounds = summary["rounds"]
    assert len(rounds) > 1 and summary["met"] and fitted != fit_case[4]
    key = {"min_spearman": "spearman_trajectory"}.get(criterion, criterion)
    assert (rounds[-1][key] >= target) if criterion == "min_spearman" else (rounds[-1][key] <= target)


def test_fp32_only_after_every_linear_reached_the_finest_integer_format():
    from rfedge_export.quantize.fitting import promote_by_share

    formats = {"a": "int8-7bit", "b": "int8-g32", "c": "int8-8bit"}
    widths = {"a": 128, "b": 128, "c": 128}
    assert promote_by_share(formats, {"b": 5.0, "a": 1.0, "c": 0.5}, widths) >= 1
    assert formats["b"] == "int8-g32" and formats["a"] == "int8-8bit"  # b is to blame most, but a can move first
    formats = {"a": "int8-g32", "b": "int8-g32"}
    promote_by_share(formats, {"b": 5.0, "a": 1.0}, widths)
    assert formats == {"a": "int8-g32", "b": "fp32"}


def test_rotation_and_equalization_are_exact_in_fp32(outlier_ckpt, qwen_tokenizer):
    from rfedge_export.checkpoint.rewards import scalar_rewards
    from rfedge_export.checkpoint.source import load_scalar_prm, resolve_source
    from rfedge_export.quantize.rotation import online, rotate
    from rfedge_export.quantize.smoothing import smooth_and_select

    prm = load_scalar_prm(resolve_source(str(outlier_ckpt(30))))
    ids = np.array(qwen_tokenizer.encode("Start with 3. Then add 4.\n\n3 + 4 = 7\n\nThe final number is 7.").ids)
    steps = np.array([5, 12, len(ids) - 1])
    before = scalar_rewards(prm, ids, steps)
    info = rotate(prm)
    with online(prm.body):
        rotated = scalar_rewards(prm, ids, steps)
        summary, _, _ = smooth_and_select(prm.body, [ids], fast_error=1.0, max_error=1.0)
        after = scalar_rewards(prm, ids, steps)
    assert info["residual"] == "hadamard" and info["down_proj_online_hadamard_block"] == 128
    assert sum(v for k, v in summary["alpha_chosen"].items() if k != "None") > 0  # something was folded
    for got in (rotated, after):
        assert np.abs(before[0] - got[0]).max() <= 1e-4 and abs(before[1] - got[1]) <= 1e-4


def test_hadamard_matrices():
    from rfedge_export.quantize.rotation import hadamard, random_orthogonal

    for n in (16, 128, 1536, 2560, 12, 20):
        h = hadamard(n)
        assert np.array_equal(h @ h.T, n * np.eye(n)) and set(np.unique(h)) == {-1.0, 1.0}
    assert hadamard(896) is None  # 7 x 128: a random orthogonal matrix stands in
    q = random_orthogonal(896).numpy()
    assert np.abs(q @ q.T - np.eye(896)).max() < 1e-5


def test_per_token_int8_scores_a_trace_the_same_alone_or_in_a_batch(int8_export):
    from rfedge.synth import generate

    traces = list(generate("arith", 9, seed=4))
    batched = Scorer.load(int8_export, device="cpu", batch_size=9).score_many(traces)
    alone = Scorer.load(int8_export, device="cpu", batch_size=1).score_many(traces)
    for a, b in zip(batched, alone, strict=True):
        assert abs(a.trajectory_reward - b.trajectory_reward) <= 1e-5
        assert all(abs(x.reward - y.reward) <= 1e-5 for x, y in zip(a.steps, b.steps, strict=True))


@pytest.mark.parametrize("fmt", ["int8-7bit", "int8-8bit", "int8-g32"])
@pytest.mark.parametrize("rows", [(7,), (2, 5)])
def test_graph_quantization_is_what_the_search_simulates(tmp_path, fmt, rows):
    """Each format's rewritten MatMul equals the torch simulation the search and the fit use, on an
    input with a massive token and a large channel, for 2-D and 3-D inputs."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from rfedge_export.quantize.int8 import dynamic_int8
    from rfedge_export.quantize.formats import FORMATS

    rng = np.random.default_rng(0)
    w = rng.standard_normal((96, 40)).astype(np.float32)
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    node.metadata_props.add(key="pkg.torch.onnx.name_scopes", value="['', 'layers.0.mlp.down_proj', 'linear']")
    shape = ["B", "T", 96] if len(rows) == 2 else ["T", 96]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(tmp_path / "m.onnx"))
    model, counts = dynamic_int8(tmp_path / "m.onnx", {"layers.0.mlp.down_proj": fmt})
    assert counts[fmt] == 1 and not any(n.op_type == "MatMul" for n in model.graph.node)
    x = rng.standard_normal((*rows, 96)).astype(np.float32)
    x.reshape(-1, 96)[2] *= 300  # a massive token
    x[..., 5] *= 20  # a large channel
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    f = FORMATS[fmt]
    sim = f.simulate(torch.from_numpy(x), f.simulate_weight(torch.from_numpy(w.T.copy()))).numpy()
    x, y, sim = x.reshape(-1, 96), y.reshape(-1, 40), sim.reshape(-1, 40)
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


def test_the_fit_stops_when_its_time_is_spent(fit_case):
    """Out of time with criteria still missed: one round, the reason, and what the gate would fail."""
    from rfedge_export.quantize.fitting import fit_formats
    from rfedge_export.quantize.recipes import Tolerance
    from rfedge_export.quantize.rotation import online

    prm, references, encoded, ids, formats, errors = fit_case
    with online(prm.body):
        fitted, summary = fit_formats(prm, references, encoded, ids, formats, errors, Tolerance(1e-6, 1.0, -1.0),
                                      seconds=0.0)
    assert len(summary["rounds"]) == 1 and fitted == formats and not summary["met"]
    assert summary["stopped"] == "time: 0 minutes"
    assert [m.split(":")[0] for m in summary["missed_at_tolerance"]] == ["- step_rewards max |delta|"]


def test_an_export_whose_fit_runs_out_of_time_stops_before_writing_with_the_reason(scalar_ckpt, tmp_path):
    from rfedge.errors import ValidationError
    from rfedge_export.export import export_model

    out = tmp_path / "m"
    with pytest.raises(ValidationError) as e:
        export_model(str(scalar_ckpt), out, precision="int8", tolerance={"max_abs_step": 1e-7},
                     fit_minutes=1e-9, log=lambda m: None, progress=None)
    lines = str(e.value).splitlines()
    assert lines[0].startswith("export stopped before writing a graph: the fit stopped (time: 1e-09 minutes, 1 rounds, "
                               "linears {")
    assert lines[0].endswith(") while the fit traces still miss the gate in simulation:")
    assert lines[1].startswith("- step_rewards max |delta|: ") and ", bound <= 1e-07 (trace " in lines[1]
    assert lines[-1] == "try --fit-minutes 2e-09, --recipe int8-smooth or int8-block32, --precision fp16, or a looser tolerance"
    assert not out.exists() and not list(tmp_path.iterdir())
