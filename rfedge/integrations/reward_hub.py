"""rfedge as a reward_hub process reward model. ``pip install 'rfedge[reward-hub]'``.

``score(messages, step_sep="\\n\\n", aggregation_method="last", return_full_prm_result=False)`` as
reward_hub's backends take it: a conversation (a list of ``{"role", "content"}``) or a list of them;
the last message is the response, split into steps at ``step_sep``, the last user message before it
is the problem. Returns one float per conversation, or ``PRMResult``s (per-step scores and their
product, min and last) with ``return_full_prm_result=True``. ``aggregation_method="model"`` uses
the trajectory reward (the model's verdict on the whole response).

    from rfedge.integrations.reward_hub import ProcessRewardModel

    prm = ProcessRewardModel()
    prm.score([[{"role": "user", "content": "What is 2 + 3?"},
                {"role": "assistant", "content": "2 + 3 = 5\\n\\nThe answer is 5."}]])
"""

from __future__ import annotations

from ..constants import DEFAULT_ALPHA, STEP_SEPARATOR
from ..extras import require
from ..traces import Trace
from .common import chat_trace, join_steps, load_scorer, score_all

_base = require("reward_hub.base", "reward-hub", "rfedge.integrations.reward_hub")


class ProcessRewardModel(_base.AbstractProcessRewardModel):
    def __init__(self, model: str | None = None, *, scorer=None, alpha: float = DEFAULT_ALPHA, **options):
        self.scorer = load_scorer(model, scorer, alpha=alpha, **options)

    def score(self, messages, max_input_tokens: int = 8192, step_sep: str = STEP_SEPARATOR,
              aggregation_method=_base.AggregationMethod.LAST, return_full_prm_result: bool = False,
              step_separator: str | None = None, **kwargs):
        """Per-step rewards of each conversation's last message, aggregated as reward_hub does.

        ``max_input_tokens``: the model's max length applies (steps past it are left out, as the
        other backends truncate); ``step_separator`` is accepted as reward_hub's hf backend spells it.
        """
        sep = step_separator or step_sep
        method = _base.AggregationMethod(getattr(aggregation_method, "value", aggregation_method))
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        traces = []
        for conv in conversations:
            trace = chat_trace(conv)
            traces.append(Trace(trace.problem, join_steps(trace.completion, sep)))
        results = []
        for r in score_all(self.scorer, traces):
            steps = [] if r is None else [s.reward for s in r.steps if s.reward is not None]
            if method is _base.AggregationMethod.MODEL or not steps:
                steps = [0.0 if r is None else r.trajectory_reward]
            results.append(_base.PRMResult(steps, method))
        return results if return_full_prm_result else [res.score for res in results]
