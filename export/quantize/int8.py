"""The INT8 graph rewrite: each layer linear's MatMul becomes its weight format's integer kernel.

Weights are read from the fp32 graph's external data one at a time (memory-mapped) and quantized
as :mod:`.formats` says, so peak memory is the int8 model plus one fp32 weight. Per-channel formats
quantize their input per token (row) at run time and share one quantized copy among the MatMuls
that read the same input (q/k/v, gate/up):

    scale_t = max(max_k |x_tk| / 127, 1e-12);  xq = QuantizeLinear(x, scale_t, 128, block K)   (uint8)
    y = MatMulIntegerToFloat(xq, Wq, scale_t, w_scale, 128)   (int32 GEMM, dequantized in it)

8-bit codes run as two 7-bit halves on ``Concat(xq, xq)`` (see :mod:`.formats`).

One scale per token, not per tensor: a token with a massive activation does not flatten the others,
and a trace scores the same alone, in any batch, or in chunks. The per-block format runs
``MatMulNBits`` (8-bit blocks, int8 activations per token and block) on the fp32 input. MatMuls of
modules without a format stay fp32, the reward heads and the online rotation among them.
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


def _module(scope: str) -> str | None:
    """'layers.3.mlp.down_proj' from the exporter's name-scope metadata, if the node has one."""
    for part in scope.strip("[]").replace("'", "").split(","):
        part = part.strip()
        if part.startswith(LAYER_SCOPE):
            return part
    return None


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


HALF = 63  # a 7-bit half of the split 8-bit codes
SHARED = [("rfq_axes", [-1], np.int64), ("rfq_inv127", 1 / 127, np.float32), ("rfq_tiny", 1e-12, np.float32),
          ("rfq_zp", 128, np.uint8), ("rfq_zp1", [128], np.uint8), ("rfq_lo", -HALF, np.int8),
          ("rfq_hi", HALF, np.int8)]
OPSET = 21  # QuantizeLinear with block_size (the per-row quantization below)


def _quantize_rows(x: str, k: int, p: str) -> tuple[list, str, str]:
    """Nodes that quantize x [.., K] per row to uint8 (zero point 128): (nodes, xq, scale).

    max |x| per row as max(ReduceMax, -ReduceMin) (two reads; Abs then ReduceMax writes a copy
    first), and one QuantizeLinear with one block per row (``block_size`` K along the last axis),
    which ONNX Runtime runs as fast as per-tensor quantization; per-axis QuantizeLinear on the
    flattened rows took 3x as long. Both give the same codes (tested): at T=2048 the subgraph of
    down_proj's input (K=8,960) went from 17.0 to 5.6 ms (``bench/int8_kernels.py``).
    """
    from onnx import helper

    def n(op, ins, out, **kw):
        return helper.make_node(op, ins, [out], name=out, **kw)
    nodes = [
        n("ReduceMax", [x, "rfq_axes"], f"{p}_max", keepdims=1),
        n("ReduceMin", [x, "rfq_axes"], f"{p}_min", keepdims=1),
        n("Neg", [f"{p}_min"], f"{p}_negmin"),
        n("Max", [f"{p}_max", f"{p}_negmin"], f"{p}_amax"),
        n("Mul", [f"{p}_amax", "rfq_inv127"], f"{p}_raw"),
        n("Max", [f"{p}_raw", "rfq_tiny"], f"{p}_scale"),  # [.., T, 1]: MatMulIntegerToFloat's a_scale
        n("Shape", [f"{p}_scale"], f"{p}_rows"),
        n("Expand", ["rfq_zp1", f"{p}_rows"], f"{p}_zps"),
        n("QuantizeLinear", [x, f"{p}_scale", f"{p}_zps"], f"{p}_xq", axis=-1, block_size=k),
    ]
    return nodes, f"{p}_xq", f"{p}_scale"


def _split_halves(name: str) -> tuple[list, str]:
    """Nodes turning ``name + "_q"`` (int8 codes, |q| <= 2 x HALF) into [hi; lo] along K, each half
    within +-HALF: constant, so ONNX Runtime folds them once when the session starts. All in int8:
    every intermediate a fold makes stays allocated until the folding pass ends, and int32 ones put
    2.5 GB on the 1.5B shape's load peak."""
    from onnx import helper

    q = name + "_q"
    return [helper.make_node("Clip", [q, "rfq_lo", "rfq_hi"], [f"{q}_hi"], name=f"{q}_hi"),
            helper.make_node("Sub", [q, f"{q}_hi"], [f"{q}_lo"], name=f"{q}_lo"),
            helper.make_node("Concat", [f"{q}_hi", f"{q}_lo"], [f"{q}_halves"], name=f"{q}_halves", axis=0)
            ], f"{q}_halves"


def _rewrite(node, fmt, w: np.ndarray, x_q: tuple[str, str, str | None] | None, name: str) -> tuple[list, list]:
    """(nodes, initializers) computing ``node``'s output with format ``fmt``."""
    from onnx import helper, numpy_helper

    q, scale = fmt.codes(w)
    inits = [numpy_helper.from_array(q, name + "_q"), numpy_helper.from_array(scale, name + "_scale")]
    if fmt.block is not None:
        k, n = w.shape
        return [helper.make_node("MatMulNBits", [node.input[0], name + "_q", name + "_scale"], list(node.output),
                                 name=name + "_nbits", domain="com.microsoft", K=k, N=n, bits=8,
                                 block_size=fmt.block, accuracy_level=4)], inits
    xq, xscale, doubled = x_q
    nodes, weights = [], name + "_q"
    if fmt.split:
        nodes, weights = _split_halves(name)
        xq = doubled
    return nodes + [helper.make_node("MatMulIntegerToFloat", [xq, weights, xscale, name + "_scale", "rfq_zp"],
                                     list(node.output), name=name + "_mmi", domain="com.microsoft")], inits


def dynamic_int8(src: Path, formats: dict[str, str]):
    """Load ``src`` (fp32 graph); return (quantized ModelProto with all data in memory, counts by format).

    ``formats`` maps layer module names to a format of :data:`~.formats.FORMATS` (anything else,
    and modules not listed, stay fp32).
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
    new_inits = [_const(name, value, dtype) for name, value, dtype in SHARED]
    quantized_inputs: dict[str, tuple[str, str]] = {}
    for node in model.graph.node:
        init = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        fmt = FORMATS.get(formats.get(_module(_scope(node)) or "", "")) if init is not None else None
        if fmt is None or len(init.dims) != 2 or consumers[init.name] != 1 or not fmt.fits(init.dims[0]):
            new_nodes.append(node)
            continue
        x = node.input[0]
        if fmt.block is None and x not in quantized_inputs:
            nodes, xq, scale = _quantize_rows(x, init.dims[0], f"rfq{len(quantized_inputs)}")
            new_nodes += nodes
            quantized_inputs[x] = [xq, scale, None]
        if fmt.split and quantized_inputs[x][2] is None:  # [xq, xq] along K, once per input
            xq = quantized_inputs[x][0]
            new_nodes.append(helper.make_node("Concat", [xq, xq], [xq + "2"], name=xq + "2", axis=-1))
            quantized_inputs[x][2] = xq + "2"
        nodes, extra = _rewrite(node, fmt, read_initializer(init, base), quantized_inputs.get(x), node.name or init.name)
        new_nodes += nodes
        new_inits += extra
        replaced.add(init.name)
        counts[fmt.name] += 1
    kept = [numpy_helper.from_array(np.array(read_initializer(i, base)), i.name)
            for i in model.graph.initializer if i.name not in replaced]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + new_inits)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    for o in model.opset_import:  # opset 21 changes no op the graph uses; it adds blocked quantization
        if o.domain in ("", "ai.onnx"):
            o.version = max(o.version, OPSET)
    return model, counts
