"""Reading trace inputs: a ``.jsonl`` file, a ``.json`` file, a Parquet file, or stdin.

JSONL is streamed as bytes and split at ``\\n`` only (a ``\\r``, U+2028 or U+0085 inside a record
never splits it), each line decoded and parsed on its own: a line that is not UTF-8, not JSON,
nested too deep or holding an absurd number is one bad record, and the run goes on (N records in,
N results out; lines of JSON whitespace only are not records). A line over ``max_record_bytes`` is
skipped unread, in bounded memory, and reported in its place. stdin is JSONL unless its first line
is not a whole JSON value (then it is one JSON document, read whole); ``format`` forces either.
A ``.json`` file is one object (one result out) or a list, read whole (at most ``max_record_bytes``).
Parquet (pyarrow, the ``parquet`` extra) is read a batch of rows at a time.
"""

from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from .errors import TraceFormatError, UsageError
from .traces import Record, parse_trace, valid_id

DEFAULT_MAX_RECORD_BYTES = 64 << 20
FORMATS = ("auto", "jsonl", "json", "parquet")
_SKIP = object()  # a blank line: not a record


@dataclass
class Row:
    """One input record as read: the decoded JSON value, or why it could not be read."""

    where: str
    value: Any = None
    error: TraceFormatError | None = None


@dataclass
class TraceSource:
    """An opened trace input. ``single`` is True when it held one JSON object (one result out)."""

    name: str
    single: bool
    rows: Iterator[Row]

    @property
    def records(self) -> Iterator[Record]:
        return (to_record(row) for row in self.rows)


def display_name(path: str) -> str:
    """A path as text that can always be printed and written as JSON (undecodable bytes escaped)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def to_record(row: Row) -> Record:
    if row.error is not None:
        return Record(where=row.where, error=row.error)
    rid = row.value.get("id") if isinstance(row.value, dict) else None
    rid = rid if valid_id(rid) else None
    try:
        return Record(where=row.where, trace=parse_trace(row.value), id=rid)
    except TraceFormatError as e:
        return Record(where=row.where, error=TraceFormatError(e.reason, row.where), id=rid)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def parse_json(text: str) -> Any:
    """``json.loads`` with every failure as one :class:`TraceFormatError` line (no position prefix)."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise TraceFormatError(f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise TraceFormatError("invalid JSON: nested too deeply to read") from None
    except ValueError as e:  # NaN/Infinity, or an integer of more digits than Python converts
        if str(e).endswith("is not JSON"):
            raise TraceFormatError(f"invalid JSON: {e}") from None
        raise TraceFormatError("invalid JSON: a number too long to read (over 4300 digits)") from None


def _line_row(where: str, raw: bytes) -> Row | object:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Row(where, error=TraceFormatError(f"not UTF-8 text (byte {e.start + 1} of the line); "
                                                 "save the file as UTF-8", where))
    try:
        return Row(where, parse_json(text))
    except TraceFormatError as e:
        return Row(where, error=TraceFormatError(e.reason.replace(" at line 1, column", " at column"), where))


def _lines(f: BinaryIO, max_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes without the newline) per ``\\n``-ended line; None for one over ``max_bytes``."""
    lineno = 0
    while line := f.readline(max_bytes + 1):
        lineno += 1
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass  # skip the rest of the oversized line without holding it
            yield lineno, None
            continue
        yield lineno, line[:-1] if line.endswith(b"\n") else line


def is_blank(raw: bytes) -> bool:
    return not raw.strip(b" \t\r")


def line_row(name: str, lineno: int, raw: bytes | None, max_bytes: int) -> Row:
    """The row of a non-blank JSONL line (``raw`` None: it was over ``max_bytes``)."""
    where = f"{name}:{lineno}"
    if raw is None:
        return Row(where, error=TraceFormatError(
            f"record larger than {max_bytes >> 20} MB, skipped (--max-record-mb raises the limit)", where))
    return _line_row(where, raw)


def jsonl_lines(f: BinaryIO, max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes or None when over ``max_bytes``) of each non-blank line."""
    for lineno, raw in _lines(f, max_bytes):
        if raw is None or not is_blank(raw):
            yield lineno, raw


def jsonl_rows(name: str, f: BinaryIO, max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[Row]:
    for lineno, raw in jsonl_lines(f, max_bytes):
        yield line_row(name, lineno, raw, max_bytes)


def _whole_json(name: str, data: bytes) -> TraceSource:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TraceFormatError(f"not UTF-8 text (byte {e.start + 1}); save the file as UTF-8", name) from None
    try:
        obj = parse_json(text)
    except TraceFormatError as e:
        raise TraceFormatError(e.reason, name) from None
    if isinstance(obj, list):
        return TraceSource(name, False, iter([Row(f"{name}[{i}]", o) for i, o in enumerate(obj)]))
    row = Row(name, obj)
    record = to_record(row)
    if record.error is not None:
        raise record.error
    return TraceSource(name, True, iter([row]))


def parquet_rows(path: Path, name: str, batch_rows: int = 256) -> Iterator[Row]:
    from .extras import require

    pq = require("pyarrow.parquet", "parquet", "reading Parquet")
    try:
        batches = pq.ParquetFile(str(path)).iter_batches(batch_size=batch_rows)
        index = 0
        for batch in batches:
            for value in batch.to_pylist():
                index += 1
                yield Row(f"{name}:row {index}", value)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid and ArrowIOError are these
        raise TraceFormatError(f"not a readable Parquet file ({str(e).splitlines()[0]})", name) from None


def _stdin(fmt: str, max_bytes: int) -> TraceSource:
    """stdin: JSONL when its first line is a JSON object (streamed, as a file is); otherwise one JSON
    document (an object or a list, perhaps over several lines), read whole; if that does not parse
    either, JSONL after all, so each bad line is reported in its place."""
    stream = sys.stdin.buffer
    if fmt == "json":
        return _whole_json("<stdin>", stream.read(max_bytes + 1))
    head = stream.readline(max_bytes + 1)
    first = head.rstrip(b"\n")
    row = _line_row("<stdin>", first) if (head.endswith(b"\n") or len(head) <= max_bytes) and not is_blank(first) \
        else _SKIP
    if fmt == "auto" and (row is _SKIP or row.error is not None or not isinstance(row.value, dict)) and head.strip():
        head += stream.read(max_bytes + 1 - len(head))
        try:
            return _whole_json("<stdin>", head)
        except TraceFormatError:
            pass
    return TraceSource("<stdin>", False, jsonl_rows("<stdin>", _Prepend(head, stream), max_bytes))


class _Prepend:
    """A binary stream that yields ``head`` before the rest of ``stream`` (stdin cannot seek back)."""

    def __init__(self, head: bytes, stream: BinaryIO):
        self._head, self._stream = io.BytesIO(head), stream

    def readline(self, size: int = -1) -> bytes:
        line = self._head.readline(size)
        if line.endswith(b"\n") or (0 <= size <= len(line)):
            return line
        return line + self._stream.readline(-1 if size < 0 else size - len(line))


def input_format(path: str, fmt: str = "auto") -> str:
    """The format of ``path``: given, or by its suffix (.jsonl, .json, .parquet)."""
    if fmt != "auto" or path == "-":
        return fmt
    suffix = Path(path).suffix.lower()
    return {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}.get(suffix, "jsonl")


def check_input(path: str) -> Path:
    """``path`` as a Path, or the one-line error for a file that is not there."""
    if not Path(path).is_file():
        raise TraceFormatError("no such trace file; pass a .jsonl, .json or .parquet file, or - for stdin",
                               display_name(path))
    return Path(path)


def open_traces(path: str, fmt: str = "auto", max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                name: str | None = None) -> TraceSource:
    """Open ``path`` (``-`` for stdin) in ``fmt`` (``auto``: by suffix; stdin: JSONL unless it is one
    JSON document over several lines). ``name``: what messages call the file (default: its path)."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format '{fmt}': choose one of {', '.join(FORMATS)}")
    if path == "-":
        return _stdin(fmt, max_record_bytes)
    name, p = name or display_name(path), check_input(path)
    fmt = input_format(path, fmt)
    if fmt == "parquet":
        return TraceSource(name, False, parquet_rows(p, name))
    if fmt == "json":
        if p.stat().st_size > max_record_bytes:
            raise TraceFormatError(f".json files are read whole and this one is over {max_record_bytes >> 20} MB; "
                                   "write it as JSONL (one record per line) or raise --max-record-mb", name)
        return _whole_json(name, p.read_bytes())
    return TraceSource(name, False, _file_rows(p, name, max_record_bytes))


def _file_rows(p: Path, name: str, max_bytes: int) -> Iterator[Row]:
    with p.open("rb") as f:
        yield from jsonl_rows(name, f, max_bytes)


def read_traces(path: str) -> list:
    """All traces of ``path``, raising on the first bad record (for tools that need a clean set)."""
    out = []
    for record in open_traces(path).records:
        if record.error is not None:
            raise record.error
        out.append(record.trace)
    return out
