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


@pytest.mark.parametrize("alpha,channels,kind,recipe,rotate_did", [
    (0, (3, 17, 42), "norm", "int8-rotate", None), (10, (3, 17, 42), "norm", "int8-rotate", None),
    (30, (0, 64, 127), "norm", "int8-rotate", None), (30, (5, 77), "down", "int8-rotate", None),
    # the hardest model: the rotation keeps fp32 linears, so the default falls back to SmoothQuant
    # alone (refitted from the source's weights), which needs none
    (30, (3, 17, 42), "norm", "int8-smooth", "kept 2 linears fp32")])
def test_default_int8_holds_on_held_out_traces_with_no_fp32_linear(outlier_ckpt, tmp_path, alpha, channels, kind,
                                                                    recipe, rotate_did):
    manifest = _export(outlier_ckpt(alpha, channels, kind), tmp_path / "m", tolerance=TIGHT)
    q, v = manifest["quantization"], manifest["validation"]
    assert q["recipe"] == recipe and v["passed"]
    assert v["held_out"]["max_abs_step"] <= 0.03 and v["held_out"]["max_abs_trajectory"] <= 0.03
    assert q["kept_fp32"] == [] and sum(q["matmuls"].values()) == 4 * 7
    assert manifest["calibration"] == {"source": "built-in", "fit_traces": 22, "held_out_traces": 16}
    tried = q["fit"].get("tried")
    if rotate_did is None:
        assert tried == [{"recipe": "int8-rotate", "result": "kept 0 linears fp32"}]
        assert q["fit"]["rotation"]["down_proj_online_hadamard_block"] == 128
    else:
        assert [t["recipe"] for t in tried] == ["int8-rotate", "int8-smooth"] and q["fit"]["rotation"] is None
        assert tried[0]["result"].startswith(rotate_did) and tried[1]["result"] == "kept 0 linears fp32"


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


def test_the_embedding_moves_to_fp16_only_as_the_main_cause_or_the_last_resort():
    """fp16 doubles the largest table (205 MB at the 1.5B shape): a float format, like fp32 for a
    linear, taken before integer ones only when the embedding carries the largest share."""
    from rfedge_export.quantize.embedding import EMBEDDING
    from rfedge_export.quantize.fitting import promote_by_share

    widths = {"a": 128, "b": 128}
    formats = {EMBEDDING: "int8-b32", "a": "int8-7bit", "b": "int8-8bit"}
    promote_by_share(formats, {"a": 9.0, EMBEDDING: 1.0, "b": 0.5}, widths)
    assert formats == {EMBEDDING: "int8-b32", "a": "int8-8bit", "b": "int8-8bit"}
    promote_by_share(formats, {EMBEDDING: 9.0, "a": 1.0, "b": 0.5}, widths)
    assert formats[EMBEDDING] == "fp16"
    formats = {EMBEDDING: "int8-b32", "a": "int8-g32", "b": "int8-g32"}  # nothing to blame stays integer:
    promote_by_share(formats, {"a": 9.0, EMBEDDING: 1.0, "b": 0.5}, widths)  # by share alone
    assert formats == {EMBEDDING: "int8-b32", "a": "fp32", "b": "int8-g32"}


@pytest.mark.parametrize("fmt", ["int8-7bit", "int8-8bit", "int8-g32"])
def test_the_fit_keeps_int8_codes_that_dequantize_to_exactly_the_simulated_weights(fmt):
    """The fit's hooks hold int8 codes + scales (a quarter of an fp32 copy of every linear) and
    dequantize per call: bit for bit the weights the per-format simulation multiplies by."""
    import torch

    from rfedge_export.quantize.formats import FORMATS

    f = FORMATS[fmt]
    w = torch.from_numpy(np.random.default_rng(3).standard_normal((48, 96)).astype(np.float32))
    w[5, 7] = 40.0  # an outlier weight
    stored = f.quantize_weight(w)
    assert stored.codes.dtype == torch.int8 and stored.codes.numel() == w.numel()
    if f.block is None:
        scale = torch.clamp(w.abs().amax(1, keepdim=True), min=1e-12) / f.qmax
        expected = torch.clamp(torch.round(w / scale), -f.qmax, f.qmax) * scale
    else:
        blocks = w.reshape(48, 96 // f.block, f.block)
        scale = torch.clamp(blocks.abs().amax(2, keepdim=True), min=1e-12) / f.qmax
        expected = (torch.clamp(torch.round(blocks / scale), -f.qmax, f.qmax) * scale).reshape(48, 96)
    assert torch.equal(stored.dequantized(), expected)
    x = torch.from_numpy(np.random.default_rng(4).standard_normal((5, 96)).astype(np.float32))
    assert torch.equal(f.simulate(x, stored), f.simulate(x, expected))


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
    # the default recipe's fallback was fitted too, from the source's weights, and stopped the same way
    assert lines[-2].startswith("int8-smooth, fitted next, stopped: the fit stopped (time: 1e-09 minutes, 1 rounds, ")
    assert lines[-2].endswith(") while the fit traces still miss the gate in simulation")
    assert lines[-1] == "try --fit-minutes 2e-09, --recipe int8-block32, --precision fp16, or a looser tolerance"
    assert not out.exists() and not list(tmp_path.iterdir())


def test_calibration_inputs_are_subsampled_as_each_trace_runs(outlier_ckpt):
    """The smoothing search keeps every stride-th token of the traces joined end to end, written as
    each trace runs into one tensor per point (lists joined at the end held them twice: 5.5 GB at the
    1.5B shape): the same rows as striding all of them."""
    import torch

    from rfedge_export.checkpoint.source import load_scalar_prm, resolve_source
    from rfedge_export.quantize.smoothing import POINTS, capture_inputs

    body = load_scalar_prm(resolve_source(str(outlier_ckpt(0)))).body
    rng = np.random.default_rng(0)
    traces = [rng.integers(100, 5000, size=n).tolist() for n in (37, 5, 64, 23)]
    every = [{p: [] for p in POINTS} for _ in body.layers]
    hooks = [layer.get_submodule(p).register_forward_pre_hook(
        lambda mod, args, i=i, p=p: every[i][p].append(args[0].detach().flatten(0, -2)))
        for i, layer in enumerate(body.layers) for p in POINTS]
    with torch.no_grad():
        for ids in traces:
            body(input_ids=torch.as_tensor(ids).unsqueeze(0))
    for h in hooks:
        h.remove()
    captured = capture_inputs(body, traces, max_tokens=10)  # 129 tokens: every 12th
    for layer_every, layer_captured in zip(every, captured, strict=True):
        for p in POINTS:
            assert layer_captured[p].shape[0] == 11
            assert torch.equal(layer_captured[p], torch.cat(layer_every[p])[::12])


@pytest.mark.parametrize("shape", [(5, 96), (2, 3, 96)])
def test_per_token_quantization_codes_are_exact(shape):
    """The graph's per-row quantization (max |x| from ReduceMax/ReduceMin, QuantizeLinear with one
    block per row) gives exactly round-half-even(x / scale) + 128 with scale = max |x| / 127."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from rfedge_export.quantize.int8 import OPSET, SHARED, _const, _quantize_rows

    nodes, xq, scale = _quantize_rows("x", shape[-1], "p")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info(xq, TensorProto.UINT8, list(shape)),
                               helper.make_tensor_value_info(scale, TensorProto.FLOAT, [*shape[:-1], 1])],
                              [_const(n, v, t) for n, v, t in SHARED])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(np.float32)
    x.reshape(-1, shape[-1])[1] *= 500  # a massive token
    x.reshape(-1, shape[-1])[2, 7] = -40  # its largest value negative
    x.reshape(-1, shape[-1])[3] = 0  # an all-zero row
    got_q, got_s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    s = np.maximum(np.abs(x).max(-1, keepdims=True) * np.float32(1 / 127), np.float32(1e-12))
    assert np.array_equal(got_s, s)
    assert np.array_equal(got_q, (np.clip(np.rint(x / s), -128, 127) + 128).astype(np.uint8))


def test_only_the_default_recipe_falls_back():
    from rfedge_export.quantize.recipes import recipes_to_fit

    assert [r.name for r in recipes_to_fit("int8")] == ["int8-rotate", "int8-smooth"]
    assert [r.name for r in recipes_to_fit("int8", "int8-rotate")] == ["int8-rotate"]
    assert [r.name for r in recipes_to_fit("int8", "int8-block32")] == ["int8-block32"]
    assert [r.name for r in recipes_to_fit("fp16")] == ["fp16"]


def test_the_fallback_keeps_the_fit_with_fewer_fp32_linears(monkeypatch):
    """rotate keeps 1 fp32 linear, smooth 2: rotate's fitted formats are kept, on the source's weights
    loaded and rotated again (not fitted again: a fit's time budget could end it elsewhere)."""
    from rfedge.errors import ValidationError
    from rfedge_export import export as ex
    from rfedge_export.quantize.recipes import recipes_to_fit

    loads, prepared = [], []
    outcomes = {"int8-rotate": {"a": "fp32", "b": "int8-7bit"}, "int8-smooth": {"a": "fp32", "b": "fp32"}}

    def fake_fit(prm, tokenizer, cal, references, rec, *args):
        return ex.Fit(dict(outcomes[rec.name]), {}, {}, {"recipe": rec.name})

    monkeypatch.setattr(ex, "_fit", fake_fit)
    monkeypatch.setattr(ex, "_prepare", lambda prm, enc, rec, log: prepared.append((prm, rec.name)))
    monkeypatch.setattr(ex, "_encode", lambda tokenizer, traces: [])
    cal = type("Cal", (), {"fit": []})()
    prm, rec, fit = ex._fit_recipes(["model"], lambda: loads.append(1) or f"load {len(loads)}", None, cal, {},
                                    recipes_to_fit("int8"), None, lambda m: None, None)
    assert rec.name == "int8-rotate" and fit.summary["recipe"] == "int8-rotate"
    assert fit.summary["tried"] == [{"recipe": "int8-rotate", "result": "kept 1 linear fp32"},
                                    {"recipe": "int8-smooth", "result": "kept 2 linears fp32"}]
    assert (prm, prepared) == ("load 2", [("load 2", "int8-rotate")])  # reloaded for smooth, then for rotate

    outcomes["int8-smooth"] = {"a": "fp32", "b": "int8-8bit"}  # a tie: the one fitted last, nothing reloaded
    loads.clear(), prepared.clear()
    prm, rec, _ = ex._fit_recipes(["model"], lambda: loads.append(1) or f"load {len(loads)}", None, cal, {},
                                  recipes_to_fit("int8"), None, lambda m: None, None)
    assert (rec.name, prm, prepared) == ("int8-smooth", "load 1", [])

    def stops(prm, tokenizer, cal, references, rec, *args):
        raise ValidationError(f"export stopped before writing a graph: {rec.name} stopped:\n- a miss\ntry this")

    monkeypatch.setattr(ex, "_fit", stops)
    with pytest.raises(ValidationError) as e:
        ex._fit_recipes(["model"], lambda: "again", None, cal, {}, recipes_to_fit("int8"), None, lambda m: None, None)
    assert str(e.value).splitlines() == ["export stopped before writing a graph: int8-rotate stopped:", "- a miss",
                                         "int8-smooth, fitted next, stopped: int8-smooth stopped", "try this"]
