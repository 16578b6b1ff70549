"""Graphs for the device they run on: the manifest's devices, what --device does with them, the fp16
graph against the CUDA execution provider's kernel table, and quantized references refused cleanly."""

import json

import pytest
from click.testing import CliRunner

from rfedge.errors import MissingExtraError, ModelFilesError, UsageError
from rfedge.manifest import load_manifest
from rfedge.session import providers_for

CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]
CPU = ["CPUExecutionProvider"]


def test_exports_say_what_they_are_built_for(int8_export, fp16_export, fp32_export):
    devices = {d: json.loads((d / "rfedge.json").read_text())["devices"] for d in (int8_export, fp16_export, fp32_export)}
    assert list(devices.values()) == [["cpu"], ["cuda"], ["cpu"]]
    assert load_manifest(fp16_export).devices == ("cuda",)


def test_cuda_with_a_cpu_graph_says_what_to_export(int8_export, fp32_export):
    for export, precision, why in ((int8_export, "int8", "its MatMulIntegerToFloat and float32 attention have no "
                                    "CUDA kernels"), (fp32_export, "fp32", "its float32 GroupQueryAttention has no "
                                                      "CUDA kernel")):
        m = load_manifest(export)
        for available in (CUDA, CPU):  # the graph is the reason, whatever is installed
            with pytest.raises(UsageError) as e:
                providers_for("cuda", available, m)
            assert str(e.value) == (f"--device cuda: {m.describe()} is an {precision} graph built for CPUs ({why}); "
                                    "score it with --device cpu, or export one for the GPU: "
                                    "rfedge export SOURCE --precision fp16")


def test_auto_picks_the_device_the_graph_is_built_for(int8_export, fp16_export):
    m8, m16 = load_manifest(int8_export), load_manifest(fp16_export)
    assert providers_for("auto", CUDA, m8) == (CPU, [
        "--device auto: scoring on the CPU, not CUDA: this int8 graph is built for CPUs "
        "(export with --precision fp16 for the GPU)"])
    assert providers_for("auto", CUDA, m16) == (CUDA, [])
    assert providers_for("cuda", CUDA, m16) == (CUDA, [])
    slow = ["this fp16 graph is built for CUDA; on the CPU it runs several times slower than an int8 export "
            "(rfedge export SOURCE --int8)"]
    assert providers_for("auto", CPU, m16) == (CPU, slow) and providers_for("cpu", CUDA, m16) == (CPU, slow)
    assert providers_for("cpu", CUDA, m8) == (CPU, [])
    with pytest.raises(UsageError, match="this ONNX Runtime has no CUDAExecutionProvider"):
        providers_for("cuda", CPU, m16)


def test_cli_refuses_cuda_for_int8_in_one_line(int8_export, tmp_path):
    from rfedge.cli import main

    trace = tmp_path / "t.json"
    trace.write_text(json.dumps({"problem": "1 + 1?", "completion": "1 + 1 = 2"}))
    r = CliRunner().invoke(main, ["score", str(trace), "--model", str(int8_export), "--device", "cuda"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.output.strip().splitlines()[-1].startswith("rfedge: error: --device cuda: ")
    assert "export one for the GPU: rfedge export SOURCE --precision fp16" in r.output


def test_cli_notes_an_fp16_graph_on_the_cpu(fp16_export, tmp_path):
    from rfedge.cli import main

    trace = tmp_path / "t.json"
    trace.write_text(json.dumps({"problem": "1 + 1?", "completion": "1 + 1 = 2"}))
    r = CliRunner().invoke(main, ["score", str(trace), "--model", str(fp16_export), "--device", "cpu"])
    assert r.exit_code == 0
    assert "rfedge: note: this fp16 graph is built for CUDA; on the CPU it runs several times slower" in r.output


def test_manifests_without_devices_default_by_precision(fp16_export, tmp_path):
    from rfedge.manifest import parse_manifest

    data = json.loads((fp16_export / "rfedge.json").read_text())
    del data["devices"]
    path = fp16_export / "rfedge.json"
    assert parse_manifest(fp16_export, data, path).devices == ("cuda",)
    for bad in (["gpu"], [], "cpu", ["cpu", "cpu"]):
        with pytest.raises(ModelFilesError) as e:
            parse_manifest(fp16_export, {**data, "devices": bad}, path)
        assert str(e.value) == (f"{path}: malformed manifest, field 'devices' must be a non-empty list of \"cpu\" "
                                "and \"cuda\"; re-export the model")


def test_fp16_graph_uses_only_cuda_kernels_and_the_others_do_not(fp16_export, int8_export, fp32_export):
    """The table is ONNX Runtime's own (export/onnx/cuda_kernels.json): a graph change that puts a
    node CUDA cannot run into the fp16 graph fails here, and the CPU graphs are CPU graphs for a reason."""
    from rfedge_export.onnx.cuda import cuda_gaps, load_graph

    assert cuda_gaps(load_graph(fp16_export / "model.onnx")) == []
    assert cuda_gaps(load_graph(fp32_export / "model.onnx")) == [
        "com.microsoft.GroupQueryAttention: no CUDA kernel for float inputs (takes bfloat16, float16)"]
    assert "com.microsoft.MatMulIntegerToFloat: no CUDA kernel" in cuda_gaps(load_graph(int8_export / "model.onnx"))


@pytest.mark.parametrize("input_type,gaps", [
    (1, ["com.example.NoSuchOp: no CUDA kernel",
         "com.microsoft.GroupQueryAttention: no CUDA kernel for float inputs (takes bfloat16, float16)"]),
    (10, ["com.example.NoSuchOp: no CUDA kernel"]),
])
def test_the_gap_walker_sees_types_through_unknown_operators(input_type, gaps):
    """GroupQueryAttention reads RotaryEmbedding's output, which ONNX shape inference cannot type
    (a com.microsoft operator): the type is carried from RotaryEmbedding's input. Where's first
    input is a bool (its schema's B), not a gap."""
    from onnx import TensorProto, helper

    from rfedge_export.onnx.cuda import cuda_gaps

    nodes = [helper.make_node("RotaryEmbedding", ["x", "p", "c", "s"], ["r"], domain="com.microsoft"),
             helper.make_node("GroupQueryAttention", ["r"], ["y"], domain="com.microsoft"),
             helper.make_node("Where", ["b", "y", "y"], ["w"]),
             helper.make_node("NoSuchOp", ["w"], ["z"], domain="com.example")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", input_type, [1]),
                                           helper.make_tensor_value_info("b", TensorProto.BOOL, [1])],
                              [helper.make_tensor_value_info("z", input_type, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    assert cuda_gaps(model) == gaps


@pytest.mark.parametrize("option,quant,device,message", [
    ("--reference-quant", "int8", "cpu", "--reference-quant int8: bitsandbytes 8-bit (LLM.int8()) loads the reference "
     "on CUDA; add --device cuda on a machine with an NVIDIA GPU, or drop --reference-quant"),
    ("--teacher-quant", "nf4", "cpu", "--teacher-quant nf4: bitsandbytes 4-bit NF4 loads the reference on CUDA; add "
     "--device cuda on a machine with an NVIDIA GPU, or drop --teacher-quant"),
])
def test_quantized_reference_refused_without_cuda(option, quant, device, message):
    from rfedge_export.checkpoint.quantized import check_quant

    with pytest.raises(UsageError) as e:
        check_quant(quant, device, option)
    assert str(e.value) == message
    check_quant("none", "cpu", option)  # no quantization: nothing to check


def test_quantized_reference_refused_without_a_gpu_or_bitsandbytes(monkeypatch):
    import sys

    import torch

    from rfedge_export.checkpoint.quantized import check_quant

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError) as e:
        check_quant("int8", "cuda")
    assert str(e.value) == ("--reference-quant int8: torch sees no CUDA device; run on a machine with an NVIDIA GPU, "
                            "or drop --reference-quant")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # not installed
    with pytest.raises(MissingExtraError) as e:
        check_quant("nf4", "cuda")
    assert str(e.value) == "--reference-quant nf4 needs bitsandbytes: pip install 'bitsandbytes>=0.45'"


def test_parity_and_distill_refuse_before_reading_anything(int8_export, tmp_path):
    from rfedge.cli import main

    runner = CliRunner()
    out = tmp_path / "report"
    r = runner.invoke(main, ["parity", str(tmp_path / "missing.jsonl"), "--reference", str(tmp_path / "none"),
                             "--candidate", str(int8_export), "--out", str(out), "--reference-quant", "nf4"])
    assert r.exit_code == 2 and "--reference-quant nf4: bitsandbytes 4-bit NF4 loads the reference on CUDA" in r.output
    assert not out.exists() and "Traceback" not in r.output
    r = runner.invoke(main, ["distill", str(tmp_path / "missing.jsonl"), "--teacher", "t", "--student", "s",
                             "--out", str(tmp_path / "d"), "--teacher-quant", "int8"])
    assert r.exit_code == 2 and "--teacher-quant int8: bitsandbytes 8-bit (LLM.int8()) loads" in r.output
    assert not (tmp_path / "d").exists()

