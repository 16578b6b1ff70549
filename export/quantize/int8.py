"""Weight-by-weight dynamic INT8 with per-token activation scales, in bounded memory.

Each transformer-layer MatMul weight is read from the fp32 graph's external data one at a time
(memory-mapped) and quantized symmetric per output channel. Its input is quantized at run time
with one scale per token (row), not one per tensor as ``DynamicQuantizeLinear`` does, so a token
with a massive activation does not flatten every other token of the batch, and a trace scores
the same alone or in any batch:

    scale_t = max_k |x_tk| / 127;   xq = round(x / scale_t) + 128   (uint8, zero point 128)
    y = float(MatMulInteger(xq, Wq, 128)) * scale_t * w_scale

MatMulInteger with a scalar zero point runs ONNX Runtime's fast uint8 x int8 GEMM (int8 x int8 has
no fast kernel on AVX2 CPUs: measured 59 vs 320 GOP/s here). MatMuls that share an input (q/k/v,
gate/up) share one quantized copy of it. Peak memory is the int8 model plus one fp32 weight, not two
copies of the fp32 model as ``quantize_dynamic`` needs.

Weights use 7 bits (|q| <= 63) with the fast uint8 x int8 kernel: on x86 CPUs without VNNI, ONNX
Runtime's u8 x s8 kernel adds pairs of products in int16 (vpmaddubsw) and saturates with
full-range int8 weights (measured here: 22% error on an adversarial input; 0.03% with 7 bits).
Linears that need full 8-bit weights store them as uint8 with zero point 128 (uint8 x uint8
kernel, no saturation). The exported graph must be right on whatever CPU scores it, so the recipe
does not depend on the exporting machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .formats import FORMATS

LAYER_SCOPE = "layers."  # only transformer-layer linears; the reward heads stay fp32


def _scope(node) -> str:
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            return p.value
    return ""


def read_initializer(init, base: Path) -> np.ndarray:
    """An initializer as an array; external data is memory-mapped, not read whole."""
    import onnx
    from onnx import numpy_helper

    if init.data_location != onnx.TensorProto.EXTERNAL:
        return numpy_helper.to_array(init)
    info = {e.key: e.value for e in init.external_data}
    dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
    count = int(np.prod(init.dims)) if init.dims else 1
    mm = np.memmap(base / info["location"], dtype=dtype, mode="r", offset=int(info.get("offset", 0)), shape=(count,))
    return mm.reshape(tuple(init.dims))


def _const(name: str, value, dtype):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.array(value, dtype=dtype), name)


def _quantize_rows(x: str, prefix: str) -> tuple[list, str, str]:
    """Nodes that quantize x per row (last axis) to uint8 with zero point 128: (nodes, xq, scale)."""
    from onnx import TensorProto, helper

    n = lambda op, ins, out, **kw: helper.make_node(op, ins, [out], name=f"{prefix}_{out.rsplit('_', 1)[-1]}", **kw)
    return [
        n("Abs", [x], f"{prefix}_abs"),
        n("ReduceMax", [f"{prefix}_abs", "rfq_axes"], f"{prefix}_amax", keepdims=1),
        n("Mul", [f"{prefix}_amax", "rfq_inv127"], f"{prefix}_raw"),
        n("Max", [f"{prefix}_raw", "rfq_tiny"], f"{prefix}_scale"),
        n("Div", [x, f"{prefix}_scale"], f"{prefix}_div"),
        n("Round", [f"{prefix}_div"], f"{prefix}_round"),
        n("Add", [f"{prefix}_round", "rfq_128f"], f"{prefix}_shift"),
        n("Cast", [f"{prefix}_shift"], f"{prefix}_xq", to=TensorProto.UINT8),
    ], f"{prefix}_xq", f"{prefix}_scale"


def _module(scope: str) -> str | None:
    """'layers.3.mlp.down_proj' from the exporter's name-scope metadata, if the node has one."""
    for part in scope.strip("[]").replace("'", "").split(","):
        part = part.strip()
        if part.startswith(LAYER_SCOPE):
            return part
    return None


def dynamic_int8(src: Path, formats: dict[str, str]):
    """Load ``src`` (fp32 graph); return (quantized ModelProto with all data in memory, counts).

    ``formats`` maps layer module names to "int8-7bit" (|q| <= 63, uint8 x int8 kernel),
    "int8-8bit" (|q| <= 127 stored as uint8 with zero point 128, uint8 x uint8 kernel: full 8-bit
    weights without int16 saturation) or "fp32"; MatMuls of modules not listed stay fp32.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src), load_external_data=False)
    base = src.parent
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    new_nodes, replaced, counts = [], set(), dict.fromkeys(FORMATS, 0)
    new_inits = [_const("rfq_axes", [-1], np.int64), _const("rfq_inv127", 1 / 127, np.float32),
                 _const("rfq_tiny", 1e-12, np.float32), _const("rfq_128f", 128, np.float32),
                 _const("rfq_zp", 128, np.uint8)]
    quantized_inputs: dict[str, tuple[str, str]] = {}
    for node in model.graph.node:
        init = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        fmt = formats.get(_module(_scope(node)) or "", "fp32") if init is not None else "fp32"
        if fmt not in FORMATS or len(init.dims) != 2 or consumers[init.name] != 1:
            new_nodes.append(node)
            continue
        x = node.input[0]
        if x not in quantized_inputs:
            nodes, xq, scale = _quantize_rows(x, f"rfq{len(quantized_inputs)}")
            new_nodes += nodes
            quantized_inputs[x] = (xq, scale)
        xq, xscale = quantized_inputs[x]
        q, wscale = FORMATS[fmt].codes(read_initializer(init, base))
        wzp = ["rfq_zp"] if FORMATS[fmt].unsigned else []
        w = init.name
        new_inits += [numpy_helper.from_array(q, w + "_q"), numpy_helper.from_array(wscale, w + "_scale")]
        replaced.add(w)
        base_name = node.name or w
        new_nodes += [
            helper.make_node("MatMulInteger", [xq, w + "_q", "rfq_zp", *wzp], [base_name + "_i32"],
                             name=base_name + "_mmi"),
            helper.make_node("Cast", [base_name + "_i32"], [base_name + "_f"], name=base_name + "_cast", to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", [base_name + "_f", xscale], [base_name + "_xs"], name=base_name + "_mulx"),
            helper.make_node("Mul", [base_name + "_xs", w + "_scale"], list(node.output), name=base_name + "_mulw"),
        ]
        counts[fmt] += 1
    kept = []
    for init in model.graph.initializer:
        if init.name in replaced:
            continue
        kept.append(numpy_helper.from_array(np.array(read_initializer(init, base)), init.name))
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + new_inits)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    return model, counts
