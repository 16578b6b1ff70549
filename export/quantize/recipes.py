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
from .embedding import EMBEDDING, INT8_BLOCKS, quantize_embedding, sparsify_initializers


@dataclass(frozen=True)
class Tolerance:
    max_abs_step: float
    max_abs_trajectory: float
    min_spearman: float
    max_chunk_delta: float = 1e-4  # per-token rewards, chunked or cached scoring vs one pass


# Chunked attention sums in another order; in a quantized graph an fp32 difference of 1e-7 can flip
# an activation's int8 rounding, which moves the rewards after it by up to ~1e-3 (measured 3e-4).
INT8 = Tolerance(0.05, 0.05, 0.95, 2e-3)


@dataclass(frozen=True)
class Recipe:
    name: str
    precision: str
    description: str
    apply: Callable[..., dict]  # (src, dst, formats=None) -> what it did
    tolerance: Tolerance
    smooth: bool = False  # search and fold SmoothQuant scales into the weights before export
    rotate: bool = False  # fold a Hadamard rotation of the residual stream in first (quantize.rotation)
    token_independent: bool = True  # a token's numbers do not depend on the other tokens of a call
    # a recipe fitted next, from the source's weights again, when this one (chosen by default, not
    # named with --recipe) keeps fp32 linears or stops: the export keeps the better of the two
    fallback: str | None = None
    fast_error: float = 0.03  # simulated error bound for 7-bit weights (the fast kernel)
    max_error: float = 0.05  # ... for the finer integer formats; a linear above all of them stays fp32

    @property
    def fitted(self) -> bool:
        """Per-linear formats chosen by sensitivity and fitted end to end (quantize.fitting)."""
        return self.smooth or self.rotate


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
    # Div is the norms' x / sqrt(...) (the graph's only Div), kept fp32 as the reciprocal was before.
    blocked = ["Pow", "ReduceMean", "Sqrt", "Div", "Softmax", "Sigmoid"]
    model = convert_float_to_float16(_load(src), keep_io_types=True, op_block_list=blocked)
    _save(model, dst)
    return {"method": "float16", "kept_fp32_ops": blocked}


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
    embedding = quantize_embedding(model)
    for f in dst.parent.iterdir():
        f.unlink()
    _save(model, dst)
    return {"embedding": embedding, "method": "onnxruntime.quantization.quantize_dynamic", "weights": "int8 per-channel",
            "activations": "uint8 dynamic per-tensor", "ops": ["MatMul"]}


def _int8_formats(src: Path, dst: Path, formats=None) -> dict:
    from .int8 import dynamic_int8

    formats = formats or {}
    model, counts = dynamic_int8(src, formats)
    embedding = quantize_embedding(model, formats.get(EMBEDDING, INT8_BLOCKS))
    _save(model, dst)
    return {"method": "per-linear formats: MatMulIntegerToFloat with per-token int8 activations, or "
                      "MatMulNBits with int8 activations per token and block of 32", "matmuls": counts,
            "weights": "7-bit per output channel (no int16 saturation on non-VNNI CPUs), 8-bit per output "
                       "channel (run as two 7-bit halves), or 8-bit per block of 32; see quantize.formats",
            "kept_fp32": sorted(k for k, v in formats.items() if v == "fp32"),
            "embedding": embedding, "heads": "fp32"}


def _nbits(bits: int, block: int, accuracy_level: int) -> Callable[[Path, Path], dict]:
    def apply(src: Path, dst: Path, formats=None) -> dict:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        with _quiet():
            q = MatMulNBitsQuantizer(_load(src), bits=bits, block_size=block, is_symmetric=True,
                                     accuracy_level=accuracy_level)
            q.process()
        embedding = quantize_embedding(q.model.model)
        _save(q.model.model, dst)
        return {"embedding": embedding, "method": "onnxruntime MatMulNBits", "bits": bits, "block_size": block,
                "accuracy_level": accuracy_level, "ops": ["MatMul"]}
    return apply


RECIPES: tuple[Recipe, ...] = (
    Recipe("fp32", "fp32", "no quantization", _fp32, Tolerance(1e-4, 1e-4, 0.999, 1e-5)),
    Recipe("fp16", "fp16", "float16 weights and compute, norms and softmax in fp32", _fp16,
           Tolerance(2e-2, 2e-2, 0.99)),
    Recipe("int8-rotate", "int8", "Hadamard rotation of the residual stream and of down_proj's input (QuaRot) "
           "and SmoothQuant folded into the weights, then INT8 with per-token activation scales, each linear's "
           "weight format (7-bit, 8-bit, 8-bit per block of 32) fitted to the tolerance; int8 embedding, fp32 heads",
           _int8_formats, INT8, smooth=True, rotate=True, fallback="int8-smooth"),
    Recipe("int8-smooth", "int8", "SmoothQuant folded into the weights (no rotation), then the same formats "
           "and fit as int8-rotate", _int8_formats, INT8, smooth=True),
    Recipe("int8-block32", "int8", "MatMulNBits 8-bit weights, block 32, int8 compute per block; "
           "int8 embedding", _nbits(8, 32, 4), INT8),
    Recipe("int8-dynamic", "int8", "quantize_dynamic: int8 per-channel weights, per-tensor uint8 "
           "activations (fast, fragile with activation outliers); int8 embedding",
           _int8_dynamic, INT8, token_independent=False),
    Recipe("int4-block32", "int4", "MatMulNBits 4-bit weights, block 32; int8 embedding",
           _nbits(4, 32, 4), Tolerance(0.1, 0.1, 0.9, 2e-3)),
)
DEFAULT_RECIPE = {"fp32": "fp32", "fp16": "fp16", "int8": "int8-rotate", "int4": "int4-block32"}


def recipes_to_fit(precision: str, name: str | None = None) -> list[Recipe]:
    """The recipe ``name`` alone, or the precision's default followed by its fallbacks."""
    chain = [get_recipe(precision, name)]
    while name is None and chain[-1].fallback:
        chain.append(get_recipe(precision, chain[-1].fallback))
    return chain


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
