"""rfedge as a TRL reward function (GRPOTrainer's ``reward_funcs``). ``pip install 'rfedge[trl]'``.

``reward_function()`` returns a callable ``f(prompts, completions, **kwargs) -> list[float]`` in the
standard format (strings) and the conversational one (lists of ``{"role", "content"}``), named for
TRL's logs (``rewards/<name>/mean``). The G completions of one prompt share its tokens, which run
once (the scorer's prefix cache). A completion that cannot be scored gets None (TRL leaves it out).

    from trl import GRPOConfig, GRPOTrainer
    from rfedge.integrations.trl import reward_function

    trainer = GRPOTrainer(model=policy, reward_funcs=[reward_function()], args=GRPOConfig(...),
                          train_dataset=dataset)
"""

from __future__ import annotations

from typing import Any, Callable

from ..constants import DEFAULT_ALPHA
from ..extras import require
from ..traces import Trace
from .common import aggregator, chat_trace, load_scorer, score_all

require("trl", "trl", "rfedge.integrations.trl")


def _trace(prompt: Any, completion: Any) -> Trace:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        return chat_trace(list(prompt) + list(completion))
    if isinstance(prompt, list):
        return chat_trace(prompt, completion)
    return Trace(prompt, completion)


def reward_function(model: str | None = None, *, scorer=None, aggregation: str = "score",
                    alpha: float = DEFAULT_ALPHA, name: str = "rfedge_prm", **options) -> Callable[..., list]:
    """A GRPO reward function over an rfedge scorer (``aggregation``: see
    :data:`rfedge.integrations.common.AGGREGATIONS`; default rfedge's score rescaled to [0, 1])."""
    scorer = load_scorer(model, scorer, alpha=alpha, **options)
    aggregate = aggregator(aggregation)

    def reward(prompts: list, completions: list, **kwargs) -> list[float | None]:
        traces = [_trace(p, c) for p, c in zip(prompts, completions, strict=True)]
        return [None if r is None else float(aggregate(r, alpha)) for r in score_all(scorer, traces)]

    reward.__name__ = reward.__qualname__ = name
    reward.scorer = scorer
    return reward
