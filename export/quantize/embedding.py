"""The token embedding in INT8 (Q8_0-style blocks), and tables stored sparse when mostly zero.

The embedding is the largest tensor of a small PRM (151,936 x 1,536 at the 1.5B shape) and only
gathered, never multiplied, so one int8 code per value with one fp32 scale per block of 32 values
costs little accuracy and a quarter of the memory.
"""

from __future__ import annotations

EMBEDDING_MIN_ROWS = 1024
EMBEDDING_BLOCK = 32

# The embedding's formats, cheapest first, in the fit's ``formats`` under the key EMBEDDING: int8
# blocks by default, float16 where the fit finds the int8 rows move the rewards (a model that
# amplifies a few residual channels amplifies the table's rounding in them too).
EMBEDDING = "embed_tokens"
INT8_BLOCKS, FP16 = "int8-b32", "fp16"
EMBEDDING_PROMOTES = {INT8_BLOCKS: FP16}


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

    def rewrite(node, table) -> list:
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
        return [
            helper.make_node("Gather", [name + "_int8", ids], [base + "_rows"], name=base + "_gather", axis=0),
            helper.make_node("Cast", [base + "_rows"], [base + "_float"], name=base + "_cast",
                             to=onnx.TensorProto.FLOAT),
            helper.make_node("Reshape", [base + "_float", base + "_blocked_shape"], [base + "_blocked"], name=base + "_reshape"),
            helper.make_node("Gather", [name + "_scale", ids], [base + "_s"], name=base + "_gather_scale", axis=0),
            helper.make_node("Unsqueeze", [base + "_s", base + "_last_axis"], [base + "_s1"], name=base + "_unsqueeze"),
            helper.make_node("Mul", [base + "_blocked", base + "_s1"], [base + "_scaled"], name=base + "_mul"),
            helper.make_node("Reshape", [base + "_scaled", base + "_row_shape"], [node.output[0]], name=base + "_unreshape"),
        ]
    return _rewrite_tables(model, rewrite)


def simulate_embedding(rows, fmt: str = INT8_BLOCKS, block: int = EMBEDDING_BLOCK):
    """The embedding format in torch, on gathered rows [..., H]: what the graph's Gather returns."""
    import torch

    if fmt == FP16:
        return rows.half().to(rows.dtype)
    h = rows.shape[-1]
    b = block if h % block == 0 else h
    x = rows.reshape(*rows.shape[:-1], h // b, b)
    scale = torch.clamp(x.abs().amax(-1, keepdim=True), min=1e-12) / 127
    return (torch.round(x / scale) * scale).reshape(rows.shape)


def embedding_fp16(model) -> int:
    """Store the embedding table(s) in float16, cast to fp32 right after the Gather."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    def rewrite(node, table) -> list:
        half = numpy_helper.from_array(numpy_helper.to_array(table).astype(np.float16), table.name + "_fp16")
        model.graph.initializer.remove(table)
        model.graph.initializer.append(half)
        base = (node.name or table.name) + "_f16"
        return [helper.make_node("Gather", [half.name, node.input[1]], [base + "_rows"], name=base + "_gather", axis=0),
                helper.make_node("Cast", [base + "_rows"], [node.output[0]], name=base + "_cast",
                                 to=onnx.TensorProto.FLOAT)]
    return _rewrite_tables(model, rewrite)


def _rewrite_tables(model, rewrite) -> int:
    """Replace each token-embedding Gather (a float32 table of at least EMBEDDING_MIN_ROWS rows) by
    the nodes ``rewrite(node, table)`` returns; the number of tables rewritten."""
    import onnx

    inits = {i.name: i for i in model.graph.initializer}
    count, new_nodes = 0, []
    for node in model.graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        if table is None or len(table.dims) != 2 or table.dims[0] < EMBEDDING_MIN_ROWS or \
                table.data_type != onnx.TensorProto.FLOAT:
            new_nodes.append(node)
            continue
        new_nodes += rewrite(node, table)
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    return count


def quantize_embedding(model, fmt: str = INT8_BLOCKS) -> str:
    """Store the embedding table(s) in ``fmt`` in place; the manifest's description of what was done."""
    if fmt == FP16:
        return f"float16 ({embedding_fp16(model)} table)"
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


