"""Reading reasoning traces: the accepted record formats and the files that hold them.

A record becomes a :class:`Trace` (problem + completion text, optional id and labels). Formats:

1. ``{"problem", "trajectory", "response"}``: completion = ``"<think>\\n" + T + "\\n</think>\\n\\n" + R``
   (a list of steps is joined with ``"\\n\\n"``);
2. ``{"problem", "completion"}``: the completion as given;
3. TRL stepwise ``{"prompt", "completions", "labels"?}``: steps joined with ``"\\n\\n"``;
4. chat ``{"messages": [...]}``: problem = last user message; the last assistant message gives
   trajectory = ``reasoning_content`` and response = ``content`` when ``reasoning_content`` is
   present, else completion = ``content``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import TraceFormatError

STEP_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Trace:
    problem: str
    completion: str
    id: Any = None
    labels: tuple | None = None
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def text(self) -> str:
        return self.problem + self.completion


@dataclass(frozen=True)
class Record:
    """One input record: a parsed trace, or the error that stopped it (batch jobs lose nothing)."""

    where: str
    trace: Trace | None = None
    error: TraceFormatError | None = None
    id: Any = None


def render_think(trajectory: str, response: str) -> str:
    return "<think>\n" + trajectory + "\n</think>\n\n" + response


def _text_or_steps(obj: dict, key: str) -> str:
    value = obj[key]
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        for i, step in enumerate(value):
            if not isinstance(step, str):
                raise TraceFormatError(
                    f"field '{key}[{i}]' must be a string, got {type(step).__name__}")
        return STEP_SEPARATOR.join(value)
    raise TraceFormatError(
        f"field '{key}' must be a string or a list of strings, got {type(value).__name__}")


def _string(obj: dict, key: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise TraceFormatError(f"field '{key}' must be a string, got {type(value).__name__}")
    return value


def _labels(obj: dict) -> tuple | None:
    labels = obj.get("labels")
    if labels is None:
        return None
    if not isinstance(labels, list) or not all(
            isinstance(x, (bool, int, float)) and not isinstance(x, str) for x in labels):
        raise TraceFormatError("field 'labels' must be a list of numbers or booleans")
    return tuple(float(x) for x in labels)


def _from_messages(obj: dict) -> tuple[str, str]:
    messages = obj["messages"]
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise TraceFormatError("field 'messages' must be a list of objects with 'role' and 'content'")
    users = [m for m in messages if m.get("role") == "user"]
    assistants = [m for m in messages if m.get("role") == "assistant"]
    if not users:
        raise TraceFormatError("field 'messages' has no user message; the last one is the problem")
    if not assistants:
        raise TraceFormatError("field 'messages' has no assistant message to score")
    problem = users[-1].get("content")
    if not isinstance(problem, str):
        raise TraceFormatError("field 'messages': the last user message's 'content' must be a string")
    last = assistants[-1]
    content = last.get("content")
    if not isinstance(content, str):
        raise TraceFormatError("field 'messages': the last assistant message's 'content' must be a string")
    reasoning = last.get("reasoning_content")
    if reasoning is None:
        return problem, content
    if not isinstance(reasoning, str):
        raise TraceFormatError("field 'messages': 'reasoning_content' must be a string")
    return problem, render_think(reasoning, content)


# Each format: the keys that identify it and how it becomes (problem, completion). First match wins.
FORMATS: tuple[tuple[str, tuple[str, ...], Any], ...] = (
    ("trajectory/response", ("problem", "trajectory", "response"),
     lambda o: (_string(o, "problem"), render_think(_text_or_steps(o, "trajectory"),
                                                    _text_or_steps(o, "response")))),
    ("completion", ("problem", "completion"),
     lambda o: (_string(o, "problem"), _string(o, "completion"))),
    ("trl-stepwise", ("prompt", "completions"),
     lambda o: (_string(o, "prompt"), _text_or_steps(o, "completions"))),
    ("chat", ("messages",), _from_messages),
)
FORMAT_HINT = ("expected one of: {problem, trajectory, response}, {problem, completion}, "
               "{prompt, completions}, {messages}")


def parse_trace(obj: Any) -> Trace:
    """Turn one decoded JSON record into a :class:`Trace` or raise :class:`TraceFormatError`."""
    if not isinstance(obj, dict):
        raise TraceFormatError(f"a trace must be a JSON object, got {_json_type(obj)}")
    for _name, keys, convert in FORMATS:
        if all(k in obj for k in keys):
            problem, completion = convert(obj)
            trace_id = obj.get("id")
            if trace_id is not None and not isinstance(trace_id, (str, int)):
                raise TraceFormatError("field 'id' must be a string or an integer")
            return Trace(problem=problem, completion=completion, id=trace_id, labels=_labels(obj),
                         extra={k: obj[k] for k in ("group", "correct") if k in obj})
    present = ", ".join(k.encode("unicode_escape").decode("ascii") for k in sorted(obj)) or "none"
    raise TraceFormatError(f"unrecognised trace fields ({present}); {FORMAT_HINT}")


def _json_type(obj: Any) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number",
            bool: "a boolean", type(None): "null"}.get(type(obj), type(obj).__name__)


def _record(where: str, obj: Any) -> Record:
    rid = obj.get("id") if isinstance(obj, dict) else None
    try:
        return Record(where=where, trace=parse_trace(obj), id=rid)
    except TraceFormatError as e:
        return Record(where=where, error=TraceFormatError(e.reason, where), id=rid)


@dataclass
class TraceSource:
    """An opened trace input. ``single`` is True when it held one JSON object (one result out)."""

    name: str
    single: bool
    records: Iterator[Record]


def _json_error(name: str, err: json.JSONDecodeError, line_offset: int = 0) -> TraceFormatError:
    return TraceFormatError(
        f"invalid JSON at line {err.lineno + line_offset}, column {err.colno}: {err.msg}", name)


def _jsonl_records(name: str, lines) -> Iterator[Record]:
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{name}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield Record(where=where, error=TraceFormatError(f"invalid JSON: {e.msg}", where))
            continue
        yield _record(where, obj)


def _whole_json(name: str, text: str) -> TraceSource:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise _json_error(name, e) from None
    if isinstance(obj, list):
        return TraceSource(name, False, iter([_record(f"{name}[{i}]", o) for i, o in enumerate(obj)]))
    record = _record(name, obj)
    if record.error is not None:
        raise record.error
    return TraceSource(name, True, iter([record]))


def open_traces(path: str) -> TraceSource:
    """Open ``path`` (``.json``, ``.jsonl`` or ``-`` for stdin). JSONL is streamed line by line."""
    if path == "-":
        text = sys.stdin.read()
        stripped = text.lstrip()
        try:
            return _whole_json("<stdin>", text)
        except TraceFormatError:
            if stripped.startswith("{") and "\n" in stripped.strip():
                return TraceSource("<stdin>", False, _jsonl_records("<stdin>", text.splitlines()))
            raise
    p = Path(path)
    if not p.is_file():
        raise TraceFormatError("no such trace file; pass a .json or .jsonl file, or - for stdin", path)
    if p.suffix == ".jsonl":
        def lines():
            with p.open(encoding="utf-8", errors="strict") as f:
                yield from f
        return TraceSource(path, False, _guard_decode(path, _jsonl_records(path, lines())))
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TraceFormatError(f"not UTF-8 text (byte {e.start}); save the file as UTF-8", path) from None
    return _whole_json(path, text)


def read_traces(path: str) -> list[Trace]:
    """All traces of ``path``, raising on the first bad record (for tools that need a clean set)."""
    out = []
    for record in open_traces(path).records:
        if record.error is not None:
            raise record.error
        out.append(record.trace)
    return out


def _guard_decode(name: str, records: Iterator[Record]) -> Iterator[Record]:
    try:
        yield from records
    except UnicodeDecodeError as e:
        raise TraceFormatError(f"not UTF-8 text (byte {e.start}); save the file as UTF-8", name) from None
