"""rfedge as the reward model of its_hub (Red Hat's inference-time scaling: BeamSearch,
ParticleFiltering, ParticleGibbs, BestOfN). ``pip install 'rfedge[its-hub]'``.

:class:`ProcessRewardModel` is what its_hub's step-wise searches call: ``ascore(prompt, responses)``
with each response a candidate's steps so far, joined by the StepGeneration ``step_token``; it
returns one score in [0, 1] per response (ParticleGibbs turns them into log-odds). Beams that extend
a response scored before run only the new step (the scorer's prefix cache).
:class:`OutcomeRewardModel` is what BestOfN calls: ``ascore(conversations)``, one score each.

    from its_hub.core.algorithms.beam_search import BeamSearch
    from its_hub.core.lms.step_generation import StepGeneration
    from rfedge.integrations.its_hub import ProcessRewardModel

    search = BeamSearch(StepGeneration(max_steps=8, step_token="\\n\\n"), ProcessRewardModel(), beam_width=4)
    result = search.infer(lm, "What is 12 + 7 - 5?", budget=16, return_response_only=False)
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..constants import DEFAULT_ALPHA, STEP_SEPARATOR
from ..extras import require
from ..traces import Trace
from .common import aggregator, chat_trace, join_steps, load_scorer, score_all

_api = require("its_hub.api", "its-hub", "rfedge.integrations.its_hub")

UNSCORABLE = 0.0  # a response that cannot be scored (no text at all) ranks last


class _Adapter:
    def __init__(self, model: str | None, scorer, aggregation: str, alpha: float, step_separator: str, **options):
        self.scorer = load_scorer(model, scorer, alpha=alpha, **options)
        self.aggregation, self._aggregate = aggregation, aggregator(aggregation)
        self.alpha, self.step_separator = alpha, step_separator

    def _values(self, traces: list[Trace]) -> list[float]:
        return [UNSCORABLE if r is None else float(self._aggregate(r, self.alpha))
                for r in score_all(self.scorer, traces)]


class ProcessRewardModel(_Adapter, _api.AbstractProcessRewardModel):
    """its_hub's process reward model interface over an rfedge :class:`~rfedge.Scorer`.

    ``aggregation``: how a response's step rewards become its score, one of
    :data:`rfedge.integrations.common.AGGREGATIONS` (default ``last``: the reward of the partial
    trace so far). ``step_separator``: the StepGeneration ``step_token`` (with
    ``include_stop_str_in_output=False``, its_hub joins steps with it).
    """

    def __init__(self, model: str | None = None, *, scorer=None, aggregation: str = "last",
                 alpha: float = DEFAULT_ALPHA, step_separator: str = STEP_SEPARATOR, **options):
        super().__init__(model, scorer, aggregation, alpha, step_separator, **options)

    def _trace(self, prompt_or_messages: Any, response: str) -> Trace:
        completion = join_steps(response, self.step_separator)
        if isinstance(prompt_or_messages, str):
            return Trace(prompt_or_messages, completion)
        return chat_trace(_api.ChatMessages.from_prompt_or_messages(prompt_or_messages).to_chat_messages(),
                          completion)

    def score(self, prompt_or_messages, steps: str | list[str]) -> float | list[float]:
        responses = [steps] if isinstance(steps, str) else list(steps)
        values = self._values([self._trace(prompt_or_messages, r) for r in responses])
        return values[0] if isinstance(steps, str) else values

    async def ascore(self, prompt_or_messages, steps: str | list[str]) -> float | list[float]:
        return await asyncio.to_thread(self.score, prompt_or_messages, steps)  # off the event loop


class OutcomeRewardModel(_Adapter, _api.AbstractOutcomeRewardModel):
    """its_hub's outcome reward model interface (BestOfN): a whole response per conversation.

    ``aggregation`` defaults to ``score``: rfedge's aggregate, rescaled to [0, 1].
    """

    def __init__(self, model: str | None = None, *, scorer=None, aggregation: str = "score",
                 alpha: float = DEFAULT_ALPHA, step_separator: str = STEP_SEPARATOR, **options):
        super().__init__(model, scorer, aggregation, alpha, step_separator, **options)

    def score(self, messages, **kwargs) -> float | list[float]:
        single = not messages or not isinstance(messages[0], (list, tuple))
        conversations = [messages] if single else list(messages)
        traces = []
        for conv in conversations:
            trace = chat_trace(list(conv))
            traces.append(Trace(trace.problem, join_steps(trace.completion, self.step_separator)))
        values = self._values(traces)
        return values[0] if single else values

    async def ascore(self, messages, orchestrator=None, **kwargs) -> float | list[float]:
        return await asyncio.to_thread(self.score, messages)
