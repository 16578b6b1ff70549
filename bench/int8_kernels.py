"""One transformer layer's seven linears at the ReasonFlux-PRM-1.5B shape, in each INT8 kernel the
export can write, side by side (ONNX Runtime, this machine, batch 1, T tokens).

- ``per-token`` (the shipped formats 7-bit/8-bit): the graph's per-token quantize subgraph
  (ReduceMax, ReduceMin, Max, QuantizeLinear with one block per row) once per distinct input, then
  ``MatMulIntegerToFloat``;
- ``MatMulNBits`` 8-bit, block B, accuracy level 4 (int8 activations per token and block, quantized
  inside the kernel: nothing separate to fuse), B = 32, 64, 128, 256;
- fp32 ``MatMul``;
- the per-token graph's GEMMs alone: ``MatMulIntegerToFloat`` on inputs quantized beforehand, the
  same with one activation scale for all tokens (ONNX Runtime fuses a scalar scale into the GEMM
  and applies per-token scales in a pass of its own over the output), and ``MatMulInteger`` (int32
  out, not dequantized: the kernel of ``bench/speed.py``'s ceiling).

The four inputs are those of a real layer: attention input (q, k, v), attention output (o), MLP
input (gate, up) and down_proj's input. The graphs are built by the exporter's own rewrite
(``rfedge_export.quantize.int8.dynamic_int8``), so they are what an export writes.

    python bench/int8_kernels.py                 # T = 512, 2048
    python bench/int8_kernels.py --T 2048 --reps 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _worker import best_time  # noqa: E402
from speed import save  # noqa: E402

HIDDEN, INTER, KV = 1536, 8960, 256
LINEARS = [("self_attn.q_proj", "a", HIDDEN, HIDDEN), ("self_attn.k_proj", "a", HIDDEN, KV),
           ("self_attn.v_proj", "a", HIDDEN, KV), ("self_attn.o_proj", "b", HIDDEN, HIDDEN),
           ("mlp.gate_proj", "c", HIDDEN, INTER), ("mlp.up_proj", "c", HIDDEN, INTER),
           ("mlp.down_proj", "d", INTER, HIDDEN)]
INPUTS = {"a": HIDDEN, "b": HIDDEN, "c": HIDDEN, "d": INTER}


def fp32_layer(path: Path) -> None:
    """The seven MatMuls of one layer, with the exporter's name-scope metadata, weights external."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    for name, x, k, n in LINEARS:
        w = numpy_helper.from_array((rng.standard_normal((k, n)) * 0.02).astype(np.float32), name + ".weight")
        inits.append(w)
        node = helper.make_node("MatMul", [x, w.name], [name + ".out"], name=name)
        node.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=f"['', 'layers.0.{name}', 'linear']")
        nodes.append(node)
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["T", k])
                                               for x, k in INPUTS.items()],
                              [helper.make_tensor_value_info(n + ".out", TensorProto.FLOAT, None) for n, *_ in LINEARS],
                              inits)
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path),
                    save_as_external_data=True, location=path.name + ".data")


def graphs(src: Path) -> dict:
    import onnx

    from rfedge_export.quantize.formats import FP32, FORMATS, WeightFormat
    from rfedge_export.quantize.int8 import dynamic_int8

    out = {"fp32 MatMul": onnx.load(str(src))}
    for fmt in ("int8-7bit", "int8-8bit"):
        out[f"per-token {fmt}"] = dynamic_int8(src, {f"layers.0.{n}": fmt for n, *_ in LINEARS})[0]
    for block in (32, 64, 128, 256):
        name = f"int8-g{block}"
        FORMATS.setdefault(name, WeightFormat(name, 127, FP32, block=block))
        out[f"MatMulNBits 8-bit block {block}"] = dynamic_int8(src, {f"layers.0.{n}": name for n, *_ in LINEARS})[0]
    return out


def gemm_only(model):
    """The per-token graph with the quantize subgraphs cut out: its uint8 inputs and scales become
    graph inputs (fed already quantized)."""
    from onnx import TensorProto, helper

    mmi = [n for n in model.graph.node if n.op_type == "MatMulIntegerToFloat"]
    kept = {n.name for n in mmi}
    graph = model.graph
    feeds = sorted({n.input[0] for n in mmi} | {n.input[2] for n in mmi})
    new = helper.make_graph([n for n in graph.node if n.name in kept], "gemm",
                            [helper.make_tensor_value_info(f, TensorProto.UINT8 if f.endswith("_xq") else TensorProto.FLOAT,
                                                           None) for f in feeds],
                            list(graph.output), list(graph.initializer))
    m = helper.make_model(new, opset_imports=list(model.opset_import))
    return m, feeds


def variant(model, op: str):
    """The gemm-only graph with each MatMulIntegerToFloat given a scalar activation scale
    (``scalar-scale``: what ONNX Runtime fuses into the GEMM; per-token scales are applied in a
    separate pass over the output) or replaced by MatMulInteger (``int32``: no dequantization at
    all, the kernel of bench/speed.py's ceiling)."""
    from onnx import TensorProto, helper, numpy_helper

    m = type(model)()
    m.CopyFrom(model)
    nodes = []
    for n in m.graph.node:
        if op == "scalar-scale":
            n.input[2] = "one"
            nodes.append(n)
        else:
            nodes.append(helper.make_node("MatMulInteger", [n.input[0], n.input[1], "rfq_zp"], list(n.output), name=n.name))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    m.graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), "one"))
    if op == "int32":
        for o in m.graph.output:
            o.type.tensor_type.elem_type = TensorProto.INT32
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", default="512,2048")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results" / "int8_kernels.json"))
    a = ap.parse_args()
    rng = np.random.default_rng(1)
    results = {"rows": []}
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "layer.onnx"
        fp32_layer(src)
        models = graphs(src)
        for T in map(int, a.T.split(",")):
            x = {k: rng.standard_normal((T, n)).astype(np.float32) for k, n in INPUTS.items()}
            ops = sum(2 * T * k * n for _, _, k, n in LINEARS)
            rows = {}
            for label, model in models.items():
                rows[label] = best_time(model, x, a.reps, a.threads)
            m, feeds = gemm_only(models["per-token int8-7bit"])
            qfeeds = {}
            for f in feeds:  # the same shapes the quantize subgraph feeds: uint8 codes, [T, 1] scales
                src_input = next(k for k in INPUTS if f.startswith(_input_prefix(models["per-token int8-7bit"], k)))
                qfeeds[f] = (rng.integers(0, 256, (T, INPUTS[src_input])).astype(np.uint8) if f.endswith("_xq")
                             else np.full((T, 1), 0.01, np.float32))
            rows["gemm only (MatMulIntegerToFloat, 7-bit)"] = best_time(m, qfeeds, a.reps, a.threads)
            rows["gemm only, one scale for all tokens"] = best_time(variant(m, "scalar-scale"), qfeeds, a.reps, a.threads)
            rows["MatMulInteger, int32 out (the ceiling's kernel)"] = best_time(variant(m, "int32"), qfeeds, a.reps,
                                                                             a.threads)
            base = rows["per-token int8-7bit"]
            for label, s in rows.items():
                results["rows"].append({"T": T, "kernel": label, "seconds_per_layer": s, "gop_per_s": ops / s / 1e9,
                                        "x_per_token_7bit": base / s})
                print(f"T={T:5} {label:44} {s * 1e3:8.1f} ms/layer {ops / s / 1e9:7.0f} GOP/s  x{base / s:.2f}",
                      file=sys.stderr, flush=True)
            save(a.out, results)
    print("| T | kernel | ms per layer | GOP/s | speed vs per-token 7-bit |")
    print("|---|---|---|---|---|")
    for r in results["rows"]:
        print(f"| {r['T']} | {r['kernel']} | {r['seconds_per_layer'] * 1e3:.1f} | {r['gop_per_s']:.0f} | "
              f"{r['x_per_token_7bit']:.2f} |")


def _input_prefix(model, x: str) -> str:
    """The prefix of the quantize subgraph that reads graph input ``x`` (rfq0_, rfq1_, ...)."""
    for n in model.graph.node:
        if n.op_type == "ReduceMax" and n.input[0] == x:
            return n.output[0][:-len("max")]
    raise KeyError(x)


if __name__ == "__main__":
    main()
