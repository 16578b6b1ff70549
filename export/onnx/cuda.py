"""Which nodes of a graph the CUDA execution provider cannot run, from ONNX Runtime's kernel table.

``cuda_kernels.json`` is ONNX Runtime's own list of CUDA kernels (docs/OperatorKernels.md, the
CUDAExecutionProvider section, with the type constraints of each kernel). :func:`cuda_gaps` walks a
graph's nodes against it: an operator with no CUDA kernel, or one whose inputs have a type none of
its kernels take (float32 GroupQueryAttention, say), would run on the CPU, with copies between the
devices, or not at all. Tensor types come from ONNX shape inference (or the types the graph states, where inference
objects), then are carried forward
through nodes it does not know (com.microsoft operators) from their inputs.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

KERNELS_FILE = Path(__file__).with_name("cuda_kernels.json")
DEFAULT_DOMAIN = "ai.onnx"
# Operators whose output type is not their first input's (for carrying types through unknown nodes).
BOOL_OUTPUTS = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Xor", "IsNaN",
                "IsInf"}
INT64_OUTPUTS = {"Shape", "Size", "NonZero", "ArgMax", "ArgMin"}


@cache
def kernels() -> dict:
    """{domain: {operator: {"versions", "types": {constraint: [type names]}}}}."""
    return json.loads(KERNELS_FILE.read_text())["domains"]


def _type_name(elem_type: int) -> str:
    import onnx

    return onnx.TensorProto.DataType.Name(elem_type).lower()  # FLOAT16 -> float16, the table's spelling


def tensor_types(model) -> dict[str, str]:
    """Element type name of every tensor of the main graph that can be typed."""
    import onnx

    try:
        graph = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    except onnx.shape_inference.InferenceError:  # a graph it disagrees with: the types the graph states
        graph = model.graph
    types = {i.name: _type_name(i.data_type) for i in graph.initializer}
    for v in list(graph.input) + list(graph.value_info) + list(graph.output):
        if v.type.tensor_type.elem_type:
            types[v.name] = _type_name(v.type.tensor_type.elem_type)
    for node in graph.node:
        for out in node.output:
            if out and out not in types:
                guessed = _carried(node, types)
                if guessed:
                    types[out] = guessed
    return types


def _carried(node, types: dict) -> str | None:
    if node.op_type == "Cast":
        return next((_type_name(a.i) for a in node.attribute if a.name == "to"), None)
    if node.op_type in BOOL_OUTPUTS:
        return "bool"
    if node.op_type in INT64_OUTPUTS:
        return "int64"
    if node.op_type == "Constant":
        return next((_type_name(a.t.data_type) for a in node.attribute if a.name == "value"), None)
    return next((types[i] for i in node.input if i in types), None)


def cuda_gaps(model) -> list[str]:
    """One line per (operator, reason) the CUDA execution provider cannot run, sorted; [] when none."""
    table, types, gaps = kernels(), tensor_types(model), set()
    for node in model.graph.node:
        domain = node.domain or DEFAULT_DOMAIN
        entry = table.get(domain, {}).get(node.op_type)
        if entry is None:
            gaps.add(f"{domain}.{node.op_type}: no CUDA kernel")
            continue
        accepted = _first_input_types(entry.get("types", {}), _first_constraint(node.op_type, domain))
        first = node.input[0] if node.input else ""
        if first in types and accepted and types[first] not in accepted:
            gaps.add(f"{domain}.{node.op_type}: no CUDA kernel for {types[first]} inputs "
                     f"(takes {', '.join(sorted(accepted))})")
    return sorted(gaps)


def _first_constraint(op_type: str, domain: str) -> str | None:
    """The type constraint of an operator's first input, from ONNX's own schema where it has one
    (Where's first input is B, a bool, not T); None for operators ONNX does not define."""
    import onnx

    try:
        schema = onnx.defs.get_schema(op_type, domain="" if domain == DEFAULT_DOMAIN else domain)
    except onnx.defs.SchemaError:
        return None
    return schema.inputs[0].type_str if schema.inputs else None


def _first_input_types(constraints: dict, first: str | None) -> set[str]:
    """The types a kernel takes for its first input: its schema's constraint, else T (or T1), else
    any of its types."""
    for name in (first, "T", "T1"):
        if name in constraints:
            return set(constraints[name])
    return {t for names in constraints.values() for t in names}


def load_graph(path: Path):
    """The graph's structure without its weights (external data stays on disk)."""
    import onnx

    return onnx.load(str(path), load_external_data=False)
