"""Reasoning traces: the accepted record formats, parsed into :class:`Trace` (:mod:`.sources` reads files).

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

from dataclasses import dataclass, field
from typing import Any

from .constants import STEP_SEPARATOR, THINK_CLOSE, THINK_OPEN
from .errors import TraceFormatError


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
    return f"{THINK_OPEN}\n{trajectory}\n{THINK_CLOSE}\n\n{response}"


def valid_id(value: Any) -> bool:
    """An id rfedge echoes: an integer, or a string that is valid Unicode (no unpaired surrogate)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return True
        except UnicodeEncodeError:
            return False
    return False


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
            if trace_id is not None and not valid_id(trace_id):
                raise TraceFormatError("field 'id' must be a string (valid Unicode) or an integer")
            return Trace(problem=problem, completion=completion, id=trace_id, labels=_labels(obj),
                         extra={k: obj[k] for k in ("group", "correct") if k in obj})
    present = ", ".join(k.encode("unicode_escape").decode("ascii") for k in sorted(obj)) or "none"
    raise TraceFormatError(f"unrecognised trace fields ({present}); {FORMAT_HINT}")


def _json_type(obj: Any) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number",
            bool: "a boolean", type(None): "null"}.get(type(obj), type(obj).__name__)
