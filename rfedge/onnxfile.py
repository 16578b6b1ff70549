"""The files an ONNX graph reads besides itself, found without the ``onnx`` package.

A TensorProto may keep its bytes in another file: ``external_data`` entries whose ``location`` ONNX
Runtime resolves against the graph's directory. ONNX Runtime 1.32 itself refuses ``..`` and absolute
paths, but reads any file of the directory, hashed or not, and rfedge does not lean on one runtime
version's checks (it supports 1.20 on; ``*/_ORT_MEM_ADDR_/*`` means a memory address to some).
:func:`external_data_locations` reads every location from the protobuf wire format directly: the
model's graph, its training graphs and functions, every node's attributes (tensors, sparse tensors,
subgraphs of If, Loop and Scan, at any depth up to protobuf's own limit of 100), stepping over
tensor bytes by their length through a memory map, so inline weights cost nothing to skip. A file it
cannot read as a protobuf is refused: a location it could not see would reach ONNX Runtime unchecked.

:func:`check_external_data` holds a model directory to its manifest: every location must be a plain
name of a file listed under ``files``; :func:`~rfedge.manifest.verify_files` (``Scorer.load``) checked
each listed file's size and sha256 and refused it as a symbolic link.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from .constants import MANIFEST_NAME
from .errors import ModelFilesError
from .manifest import Manifest, is_plain_name

# Which length-delimited fields hold which messages (onnx.proto field numbers); other fields are skipped.
_MESSAGES = {
    "model": {7: "graph", 20: "training", 25: "function"},  # graph, training_info, functions
    "training": {1: "graph", 2: "graph"},  # initialization, algorithm
    "function": {7: "node", 11: "attribute"},  # node, attribute_proto
    "graph": {1: "node", 5: "tensor", 15: "sparse"},  # node, initializer, sparse_initializer
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},  # values, indices
    "tensor": {13: "entry"},  # external_data: StringStringEntryProto
}
MAX_DEPTH = 100  # protobuf's own default recursion limit
_VARINT, _FIXED64, _BYTES, _GROUP_START, _GROUP_END, _FIXED32 = range(6)


class _Malformed(Exception):
    def __init__(self, at: int):
        self.at = at


def _varint(buf, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise _Malformed(i)
        b = buf[i]
        value |= (b & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if b < 0x80:
            return value, i


def _skip(buf, i: int, end: int, key: int, depth: int = 0) -> int:
    """The index past the value of a field with ``key`` (a deprecated group is walked to its end)."""
    wire = key & 7
    if wire == _VARINT:
        return _varint(buf, i, end)[1]
    if wire in (_FIXED64, _FIXED32):
        return i + (8 if wire == _FIXED64 else 4)
    if wire == _BYTES:
        size, i = _varint(buf, i, end)
        return i + size
    if wire == _GROUP_START and depth < MAX_DEPTH:
        while True:
            inner, i = _varint(buf, i, end)
            if inner == (key >> 3) << 3 | _GROUP_END:
                return i
            i = _skip(buf, i, end, inner, depth + 1)
    raise _Malformed(i)


def _fields(buf, i: int, end: int):
    """(field number, start, stop) of each length-delimited field in ``buf[i:end]``; others skipped."""
    while i < end:
        key, i = _varint(buf, i, end)
        if key >> 3 == 0:
            raise _Malformed(i)
        start = _varint(buf, i, end)[1] if key & 7 == _BYTES else i
        stop = _skip(buf, i, end, key)
        if stop > end:
            raise _Malformed(end)
        if key & 7 == _BYTES:
            yield key >> 3, start, stop
        i = stop


def _entry_locations(buf, start: int, stop: int) -> list[bytes]:
    """The values of an ``external_data`` entry whose key is ``location`` (every value, if keys repeat)."""
    keys, values = [], []
    for number, a, b in _fields(buf, start, stop):
        (keys if number == 1 else values if number == 2 else []).append(bytes(buf[a:b]))
    return values if b"location" in keys else []


def _locations(buf, end: int) -> list[bytes]:
    found, stack = [], [("model", 0, end, 0)]
    while stack:
        kind, start, stop, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _Malformed(start)
        if kind == "entry":
            found += _entry_locations(buf, start, stop)
            continue
        children = _MESSAGES[kind]
        inner = [(children[n], a, b, depth + 1) for n, a, b in _fields(buf, start, stop) if n in children]
        stack += reversed(inner)  # popped in file order
    return found


def external_data_locations(path: Path) -> list[str]:
    """Every external-data ``location`` in the ONNX file at ``path``, in file order, repeats kept
    (bytes that are not UTF-8 kept as surrogate escapes, as file names are)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return []
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                found = _locations(buf, size)
    except _Malformed as e:
        raise ModelFilesError(f"{path}: not an ONNX graph (malformed protobuf at byte {e.at}); "
                              "re-export the model") from None
    except OSError as e:
        raise ModelFilesError(f"{path}: cannot be read ({e.strerror or e})") from None
    return [os.fsdecode(loc) for loc in found]


def check_external_data(m: Manifest) -> None:
    """Refuse a graph that reads data from anything but a listed (and verified) file of its directory."""
    for location in external_data_locations(m.graph_path):
        shown = ascii(location)[1:-1]
        if not is_plain_name(location):
            raise ModelFilesError(
                f"{m.graph_path}: reads external data from '{shown}', which is not a file of the model directory "
                "itself; a model directory never reaches outside itself, re-export the model")
        if location not in m.files:
            raise ModelFilesError(
                f"{m.graph_path}: reads external data from '{shown}', which is not listed in {MANIFEST_NAME} "
                "with its sha256; re-export the model")
