"""Requests to traces, results to responses: vLLM's pooling API for process reward models, and rfedge's own.

``POST /pooling`` takes vLLM's request: ``input`` (a string or a list of strings) or ``messages``
(a chat), optionally ``model``. A string may be what vLLM's PRM users send, Qwen2.5-Math-PRM's chat
template with the steps joined and ended by ``<extra_0>``: its last user message is the problem and
its assistant message the completion, each ``<extra_0>`` a step end. Without the template, the
string is the completion with no problem (``<extra_0>`` still ends steps). Otherwise steps are found
as rfedge finds them (``"\\n\\n"``, think sections). Each input's ``data`` is one
``[P(wrong), P(right)]`` pair per scored step, as vLLM returns for Qwen2.5-Math-PRM; steps past the
model's max length are left out.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from ..constants import STEP_SEPARATOR
from ..scorer import ScoreResult
from ..sources import Row, to_record
from ..errors import TraceFormatError
from ..traces import Record, Trace, parse_trace

STEP_TAG = "<extra_0>"
_TURN = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?=<\|im_end\|>|<\|im_start\|>|\Z)", re.S)
_END = ("<|im_end|>", "<|endoftext|>")


class RequestError(Exception):
    """A request that cannot be served: HTTP ``status``, vLLM's error ``type``, the offending ``param``."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def _steps(completion: str) -> str:
    """``<extra_0>``-ended steps as rfedge's separated steps."""
    for end in _END:
        completion = completion.replace(end, "")
    if STEP_TAG not in completion:
        return completion
    return STEP_SEPARATOR.join(s.strip() for s in completion.split(STEP_TAG) if s.strip())


def text_trace(text: str) -> Trace:
    """One pooling ``input`` string as a trace (see the module doc)."""
    turns = _TURN.findall(text)
    if turns:
        users = [c for role, c in turns if role == "user"]
        answers = [c for role, c in turns if role == "assistant"]
        return Trace(users[-1] if users else "", _steps(answers[-1] if answers else ""))
    return Trace("", _steps(text))


def messages_trace(messages: Any) -> Trace:
    """A pooling ``messages`` chat as a trace: the last user message is the problem."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise RequestError(400, "'messages' must be a list of objects with 'role' and 'content'", "messages")
    flat = [{**m, "content": _content(m.get("content"))} for m in messages]
    try:
        trace = parse_trace({"messages": flat})
    except TraceFormatError as e:
        raise RequestError(400, f"'messages': {e.reason}", "messages") from None
    return Trace(trace.problem, _steps(trace.completion))


def _content(content: Any) -> Any:
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content


def pooling_traces(body: Any, served: str) -> list[Trace]:
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != served:
        raise RequestError(404, f"The model `{model}` does not exist.", "model")
    if "messages" in body:
        return [messages_trace(body["messages"])]
    inputs = body.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(400, "'input' must be a string or a non-empty list of strings (or send 'messages')",
                           "input")
    if not all(isinstance(x, str) for x in inputs):
        raise RequestError(400, "'input' as token ids is not supported by rfedge; send text", "input")
    return [text_trace(x) for x in inputs]


def pooling_response(results: list[ScoreResult], served: str) -> dict:
    tokens = sum(r.num_tokens for r in results)
    return {
        "id": f"pooling-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": served,
        "data": [{"index": i, "object": "pooling",
                  "data": [[1.0 - s.reward, s.reward] for s in r.steps if s.reward is not None]}
                 for i, r in enumerate(results)],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
                  "prompt_tokens_details": None},
    }


def score_records(body: Any) -> tuple[list[Record], bool]:
    """``POST /v1/score``: one trace object or a list; (records, whether one object was sent)."""
    single = isinstance(body, dict)
    items = [body] if single else body
    if not isinstance(items, list):
        raise RequestError(400, "the request body must be a trace object or a list of them")
    return [to_record(Row("request" if single else f"request[{i}]", item)) for i, item in enumerate(items)], single


def models_response(served: str, root: str, max_length: int, created: int) -> dict:
    return {"object": "list", "data": [{"id": served, "object": "model", "created": created, "owned_by": "rfedge",
                                        "root": root, "parent": None, "max_model_len": max_length}]}


def error_body(status: int, message: str, param: str | None = None) -> dict:
    """vLLM's error shape (0.10.1 and later)."""
    kind = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError", 413: "RequestTooLarge",
            422: "UnprocessableEntity", 503: "ServiceUnavailable"}.get(status, "InternalServerError")
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}
