"""Precision recipes: a registry of what each ``--precision`` does to the fp32 graph.

Each recipe reads the exported fp32 ``model.onnx`` and writes the final graph; what it did is
recorded in the manifest. Tolerances for export validation live with the recipe.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..onnx.to_onnx import EXTERNAL_DATA_BYTES


@dataclass(frozen=True)
class Tolerance:
    max_abs_step: float
    max_abs_trajectory: float
    min_spearman: float
    max_chunk_delta: float = 1e-4  # per-token rewards, chunked or cached scoring vs one pass


@dataclass(frozen=True)
class Recipe:
    name: str
    precision: str
    description: str
    apply: Callable[..., dict]  # (src, dst, formats=None) -> what it did
    tolerance: Tolerance
    smooth: bool = False  # search and fold SmoothQuant scales into the weights before export
    token_independent: bool = True  # a token's numbers do not depend on the other tokens of a call
    fast_error: float = 0.03  # simulated error bound for 7-bit weights (the fast kernel)
    max_error: float = 0.05  # ... for 8-bit weights; a linear above both stays fp32


def _load(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=True)


def _save(model, dst: Path) -> None:
    import onnx

    sparsify_initializers(model)
    # ByteSize() itself fails past protobuf's 2 GB limit, so count the weights instead.
    large = sum(len(t.raw_data) for t in model.graph.initializer) > EXTERNAL_DATA_BYTES
    onnx.save_model(model, str(dst), save_as_external_data=large, all_tensors_to_one_file=True,
                    location=dst.name + ".data" if large else None, size_threshold=1024)


def _fp32(src: Path, dst: Path, formats=None) -> dict:
    _save(_load(src), dst)
    return {"method": "none"}


def _fp16(src: Path, dst: Path, formats=None) -> dict:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # Normalisation and softmax statistics stay fp32: squares of outlier activations overflow fp16.
    blocked = ["Pow", "ReduceMean", "Sqrt", "Reciprocal", "Softmax", "Sigmoid"]
    model = convert_float_to_float16(_load(src), keep_io_types=True, op_block_list=blocked)
    _save(model, dst)
    return {"method": "float16", "kept_fp32_ops": blocked}


EMBEDDING_MIN_ROWS = 1024
EMBEDDING_BLOCK = 32


def quantize_embedding_int8(model, block: int = EMBEDDING_BLOCK) -> int:
    """Replace the token-embedding Gather by an int8 table with one fp32 scale per block of a row.

    Gather(int8 rows) -> Cast -> Reshape [.., H/block, block] -> Mul(Gather(block scales)) ->
    Reshape [.., H], the layout of llama.cpp's Q8_0: standard ONNX ops, so every execution provider
    runs it. Blocks of 32 halve the error of one scale per row (a row's max is set by its largest
    of H values), for a scale table of 1/8 the int8 table's size. Returns the tables quantized.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    count = 0
    new_nodes = []
    for node in model.graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        if table is None or len(table.dims) != 2 or table.dims[0] < EMBEDDING_MIN_ROWS or \
                table.data_type != onnx.TensorProto.FLOAT:
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(table)
        V, H = w.shape
        b = block if H % block == 0 else H
        blocks = w.reshape(V, H // b, b)
        scale = np.maximum(np.abs(blocks).max(axis=2), 1e-12) / 127.0  # [V, H/b]
        q = np.clip(np.rint(blocks / scale[..., None]), -127, 127).astype(np.int8).reshape(V, H)
        name = table.name
        model.graph.initializer.remove(table)
        base = (node.name or name) + "_q8"
        model.graph.initializer.extend([
            numpy_helper.from_array(q, name + "_int8"), numpy_helper.from_array(scale.astype(np.float32), name + "_scale"),
            numpy_helper.from_array(np.array([0, 0, -1, b], np.int64), base + "_blocked_shape"),
            numpy_helper.from_array(np.array([0, 0, -1], np.int64), base + "_row_shape"),
            numpy_helper.from_array(np.array([-1], np.int64), base + "_last_axis")])
        ids = node.input[1]
        new_nodes += [
            helper.make_node("Gather", [name + "_int8", ids], [base + "_rows"], name=base + "_gather", axis=0),
            helper.make_node("Cast", [base + "_rows"], [base + "_float"], name=base + "_cast",
                             to=onnx.TensorProto.FLOAT),
            helper.make_node("Reshape", [base + "_float", base + "_blocked_shape"], [base + "_blocked"], name=base + "_reshape"),
            helper.make_node("Gather", [name + "_scale", ids], [base + "_s"], name=base + "_gather_scale", axis=0),
            helper.make_node("Unsqueeze", [base + "_s", base + "_last_axis"], [base + "_s1"], name=base + "_unsqueeze"),
            helper.make_node("Mul", [base + "_blocked", base + "_s1"], [base + "_scaled"], name=base + "_mul"),
            helper.make_node("Reshape", [base + "_scaled", base + "_row_shape"], [node.output[0]], name=base + "_unreshape"),
        ]
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    return count


def _quantize_embedding(model) -> str:
    """Quantize the embedding table(s) in place; the manifest's description of what was done."""
    return f"int8, one scale per {EMBEDDING_BLOCK} values ({quantize_embedding_int8(model)} table)"


SPARSE_MIN_ELEMENTS = 1 << 20
SPARSE_MIN_ZERO_FRACTION = 0.9


def sparsify_initializers(model) -> list[str]:
    """Store large initializers that are at least 90% zeros as ONNX sparse initializers.

    ONNX Runtime densifies them when it loads the graph, so this changes file size only. It never
    triggers on trained LLM weights; it does on tables whose unused rows are zero (the demo model's
    embedding keeps only the rows of its task's tokens).
    """
    import numpy as np
    from onnx import numpy_helper
    from onnx.helper import make_sparse_tensor

    names = []
    for init in list(model.graph.initializer):
        n = int(np.prod(init.dims)) if init.dims else 0
        if n < SPARSE_MIN_ELEMENTS:
            continue
        w = numpy_helper.to_array(init)
        nz = np.flatnonzero(w)
        if len(nz) > (1 - SPARSE_MIN_ZERO_FRACTION) * n:
            continue
        values = numpy_helper.from_array(w.reshape(-1)[nz], init.name)
        indices = numpy_helper.from_array(nz.astype(np.int64), init.name + "_indices")
        model.graph.initializer.remove(init)
        model.graph.sparse_initializer.append(make_sparse_tensor(values, indices, list(init.dims)))
        names.append(init.name)
    return names


def _quiet():
    logging.getLogger().setLevel(logging.ERROR)
    return contextlib.redirect_stdout(io.StringIO())


def _int8_dynamic(src: Path, dst: Path, formats=None) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"],
                         # always: the source's .onnx file is small when its weights sit in .onnx.data,
                         # and a single protobuf over 2 GB cannot be written (the 1.5B shape's is 2.4 GB)
                         use_external_data_format=True)
    model = _load(dst)
    embedding = _quantize_embedding(model)
    for f in dst.parent.iterdir():
        f.unlink()
    _save(model, dst)
    return {"embedding": embedding, "method": "onnxruntime.quantization.quantize_dynamic", "weights": "int8 per-channel",
            "activations": "uint8 dynamic per-tensor", "ops": ["MatMul"]}


def _int8_smooth(src: Path, dst: Path, formats=None) -> dict:
    from .int8 import dynamic_int8

    model, counts = dynamic_int8(src, formats or {})
    embedding = _quantize_embedding(model)
    _save(model, dst)
    return {"method": "MatMulInteger, per-token dynamic activations", "matmuls": counts,
            "weights": "int8 per output channel: 7-bit range (uint8 x int8 kernel, no int16 saturation on "
                       "non-VNNI CPUs) or full 8-bit as uint8 with zero point 128 (uint8 x uint8 kernel)",
            "activations": "int8 per token (uint8, zero point 128), after SmoothQuant equalization",
            "kept_fp32": sorted(k for k, v in (formats or {}).items() if v == "fp32"),
            "embedding": embedding, "heads": "fp32"}


def _nbits(bits: int, block: int, accuracy_level: int) -> Callable[[Path, Path], dict]:
    def apply(src: Path, dst: Path, formats=None) -> dict:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        with _quiet():
            q = MatMulNBitsQuantizer(_load(src), bits=bits, block_size=block, is_symmetric=True,
                                     accuracy_level=accuracy_level)
            q.process()
        embedding = _quantize_embedding(q.model.model)
        _save(q.model.model, dst)
        return {"embedding": embedding, "method": "onnxruntime MatMulNBits", "bits": bits, "block_size": block,
                "accuracy_level": accuracy_level, "ops": ["MatMul"]}
    return apply


RECIPES: tuple[Recipe, ...] = (
    Recipe("fp32", "fp32", "no quantization", _fp32, Tolerance(1e-4, 1e-4, 0.999, 1e-5)),
    Recipe("fp16", "fp16", "float16 weights and compute, norms and softmax in fp32", _fp16,
           Tolerance(2e-2, 2e-2, 0.99)),
    Recipe("int8-smooth", "int8", "SmoothQuant equalization folded into the weights, then dynamic INT8 "
           "with per-token activation scales and per-channel 7- or 8-bit weights chosen by sensitivity; "
           "int8 embedding, fp32 heads",
           _int8_smooth, Tolerance(0.05, 0.05, 0.95), smooth=True),
    Recipe("int8-block32", "int8", "MatMulNBits 8-bit weights, block 32, int8 compute per block; "
           "int8 embedding", _nbits(8, 32, 4), Tolerance(0.05, 0.05, 0.95)),
    Recipe("int8-dynamic", "int8", "quantize_dynamic: int8 per-channel weights, per-tensor uint8 "
           "activations (fast, fragile with activation outliers); int8 embedding",
           _int8_dynamic, Tolerance(0.05, 0.05, 0.95), token_independent=False),
    Recipe("int4-block32", "int4", "MatMulNBits 4-bit weights, block 32; int8 embedding",
           _nbits(4, 32, 4), Tolerance(0.1, 0.1, 0.9)),
)
DEFAULT_RECIPE = {"fp32": "fp32", "fp16": "fp16", "int8": "int8-smooth", "int4": "int4-block32"}


def get_recipe(precision: str, name: str | None = None) -> Recipe:
    from rfedge.errors import UsageError

    name = name or DEFAULT_RECIPE[precision]
    for r in RECIPES:
        if r.name == name:
            if r.precision != precision:
                raise UsageError(f"recipe '{name}' gives {r.precision}, not {precision}")
            return r
    known = ", ".join(r.name for r in RECIPES if r.precision == precision)
    raise UsageError(f"unknown recipe '{name}' for {precision}: known recipes are {known}")
