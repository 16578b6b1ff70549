"""What the adapters share: loading the scorer, turning a chat into a trace, aggregating rewards."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from ..constants import STEP_SEPARATOR
from ..errors import TraceFormatError, UsageError
from ..scorer import ScoreResult, Scorer
from ..traces import Trace


def load_scorer(model: str | None = None, scorer: Scorer | None = None, **options) -> Scorer:
    """``scorer`` as given, else ``Scorer.load`` on ``model`` (default: the model ``rfedge score`` picks)."""
    if scorer is not None:
        return scorer
    from ..home import resolve_model

    return Scorer.load(resolve_model(model).path, **options)


def _steps(result: ScoreResult) -> list[float]:
    return [s.reward for s in result.steps if s.reward is not None]


def _last(result: ScoreResult, alpha: float) -> float:
    steps = _steps(result)
    return steps[-1] if steps else result.trajectory_reward


def _min(result: ScoreResult, alpha: float) -> float:
    return min(_steps(result), default=result.trajectory_reward)


def _mean(result: ScoreResult, alpha: float) -> float:
    steps = _steps(result)
    return sum(steps) / len(steps) if steps else result.trajectory_reward


def _score(result: ScoreResult, alpha: float) -> float:
    return result.score / (1 + alpha) if alpha >= 0 else result.score


# name -> (what it is, result -> float in [0, 1]); no scored step: the trajectory reward stands in
AGGREGATIONS: dict[str, tuple[str, Callable[[ScoreResult, float], float]]] = {
    "last": ("the last scored step's reward (the reward of the partial trace so far)", _last),
    "min": ("the lowest step reward", _min),
    "mean": ("the mean step reward", _mean),
    "trajectory": ("the trajectory reward (the trajectory head at the last token)",
                   lambda r, alpha: r.trajectory_reward),
    "score": ("rfedge's score, mean step reward + alpha x trajectory reward, divided by 1 + alpha", _score),
}


def aggregator(name: str) -> Callable[[ScoreResult, float], float]:
    if name not in AGGREGATIONS:
        raise UsageError(f"unknown aggregation '{name}': choose one of {', '.join(AGGREGATIONS)}")
    return AGGREGATIONS[name][1]


def join_steps(response: str, separator: str) -> str:
    """A response whose steps are separated by ``separator``, with rfedge's separator instead."""
    return response if separator == STEP_SEPARATOR else STEP_SEPARATOR.join(response.split(separator))


def _text(content: Any) -> str:
    """A message's text: a string, or OpenAI-style content parts ``[{"type": "text", "text": ...}]``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    raise TraceFormatError(f"a message's content must be text, got {type(content).__name__}")


def chat_trace(messages: Sequence[Any], completion: str | None = None, id: Any = None) -> Trace:
    """A chat as a trace: the problem is the last user message; the completion is ``completion``
    or, when None, the last message (which must be the assistant's). Messages are dicts or objects
    with ``role`` and ``content``."""
    role = lambda m: m["role"] if isinstance(m, dict) else m.role  # noqa: E731
    content = lambda m: _text(m["content"] if isinstance(m, dict) else m.content)  # noqa: E731
    if completion is None:
        if not messages or role(messages[-1]) != "assistant":
            raise TraceFormatError("the conversation's last message must be the assistant's response to score")
        completion, messages = content(messages[-1]), messages[:-1]
    users = [m for m in messages if role(m) == "user"]
    if not users:
        raise TraceFormatError("the conversation has no user message; the last one is the problem")
    return Trace(content(users[-1]), completion, id)


def score_all(scorer: Scorer, traces: Iterable[Trace]) -> list[ScoreResult | None]:
    """Results in order; None for a trace that cannot be scored (empty text), never an exception."""
    return [None if isinstance(r, TraceFormatError) else r for _, r in scorer.score_records(traces)]
