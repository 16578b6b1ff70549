"""torch -> ONNX: the pooled PRM module with dynamic batch, new-token and cache-capacity axes."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

from rfedge.interface import cached_io

EXTERNAL_DATA_BYTES = 1 << 30  # above this the weights go to model.onnx.data
OPSET = 20


def example_inputs(module) -> tuple:
    """Two rows with different pasts, new tokens right-padded in one (values only shape the trace)."""
    import torch

    ids = torch.tensor([[16, 17, 18, 19, 20, 271, 9707, 1879]], dtype=torch.long).repeat(2, 1)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    past_length = torch.tensor([3, 4], dtype=torch.long)
    return (ids, mask, past_length, *module.empty_cache(2, 12))


def export_onnx(module, out_path: Path, param_bytes: int) -> Path:
    """Export ``module`` (a :class:`~rfedge_export.onnx.pooled.PooledPRM`) to ``out_path``."""
    import torch

    from .attention import translation_table

    args = example_inputs(module)
    inputs, outputs = cached_io(len(module.layers))
    batch, seq, capacity = torch.export.Dim("batch"), torch.export.Dim("seq"), torch.export.Dim("capacity")
    cache_axes = [{0: batch, 2: capacity}] * (len(args) - 3)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, args, dynamo=True, input_names=inputs, output_names=outputs, opset_version=OPSET,
            optimize=True, verbose=False, custom_translation_table=translation_table(),
            dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}, {0: batch}, tuple(cache_axes)))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(out_path), external_data=param_bytes > EXTERNAL_DATA_BYTES)
    del program
    forget_matched_graphs()
    return out_path


def forget_matched_graphs() -> None:
    """Make onnxscript's rewrite rules let go of the last graph they matched.

    The rules run by ``optimize=True`` are module-level objects that keep the last matched graph, and
    its initializers wrap the module's parameters: without this the whole torch model (6.7 GB at the
    1.5B shape) stays resident until the process ends, under the quantizer's peak.
    """
    import gc

    from onnxscript.rewriter import _matcher

    for obj in gc.get_objects():
        if isinstance(obj, _matcher.PatternMatcher):
            for attr in ("_graph", "_match", "_current_node", "_tracer"):
                if hasattr(obj, attr):
                    setattr(obj, attr, None)
