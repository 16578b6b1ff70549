"""Scoring a trace while it is written: the explicit state API for generation loops.

``state = scorer.start(problem)``; ``state.extend(text)`` appends to the completion and returns the
steps that are new or changed; ``state.fork()`` branches (beams share the prefix, copied on write);
``state.result()`` is the :class:`~rfedge.scorer.ScoreResult` of the text so far.

Appended text can change how the end of the old text tokenizes (BPE merges across the junction,
e.g. ``"19"`` + ``"5"``): ``extend`` re-encodes the whole text, keeps the cached keys and values only
up to the first token that differs, and runs the rest. Results therefore always equal scoring the
whole text at once (within float tolerance: a different cut into chunks sums in another order).
A step that is still being written (no separator after it yet) is reported again as it grows.
A state is not thread-safe; fork it for another thread.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .engine import TokenRewards
from .traces import Trace


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


class ScoringState:
    def __init__(self, scorer, problem: str, completion: str = "", id: Any = None):
        self._scorer = scorer
        self.problem = problem
        self.completion = ""
        self.id = id
        self._ids = np.zeros(0, dtype=np.int64)  # tokens whose keys, values and rewards are known
        self._rewards = TokenRewards.join([])
        self._kv = None  # a batch-1 KVBuffers
        self._shared = False  # the buffer is also another state's (after fork): copy before writing
        self._result = None
        self._reported: dict[tuple[str, int], Any] = {}
        if problem or completion:
            self.extend(completion)

    def extend(self, text: str) -> list:
        """Append ``text`` to the completion; the steps that are new or whose reward or boundary changed."""
        self.completion += text
        trace = Trace(self.problem, self.completion, self.id)
        enc = self._scorer._encode(trace)
        if self._scorer.engine is None:  # a format-1 graph: no cache, score the whole text again
            self._result = self._scorer.score(trace)
        else:
            self._advance(enc.ids)
            self._result = self._scorer.result(trace, enc, self._rewards.step, self._rewards.trajectory)
        changed = [s for s in self._result.steps if self._reported.get((s.section, s.index)) != s]
        self._reported = {(s.section, s.index): s for s in self._result.steps}
        return changed

    def _advance(self, ids: np.ndarray) -> None:
        keep = _common_prefix(self._ids, ids)
        if keep == len(ids) == len(self._ids):
            return
        engine = self._scorer.engine
        capacity = min(self._scorer.manifest.max_length, max(len(ids), 2 * len(self._ids)))
        if self._kv is None:  # the first text: the prefix cache may already have its start
            self._kv, self._rewards = engine.start(ids, capacity)
            self._ids = ids
            return
        if self._kv.capacity < len(ids) or self._shared:
            self._kv, self._shared = self._kv.copy_prefix(keep, capacity), False
        new = engine.extend(self._kv, ids, keep)
        self._rewards = TokenRewards.join([TokenRewards(self._rewards.step[:keep], self._rewards.trajectory[:keep]),
                                           new])
        self._ids = ids

    def fork(self) -> "ScoringState":
        """An independent copy that shares this state's cache until either one is extended."""
        other = ScoringState.__new__(ScoringState)
        other.__dict__.update(self.__dict__)
        other._reported = dict(self._reported)
        self._shared = other._shared = self._kv is not None
        return other

    def result(self):
        """The :class:`~rfedge.scorer.ScoreResult` of ``problem + completion`` so far."""
        if self._result is None:
            raise ValueError("nothing scored yet: the problem and the completion are empty")
        return self._result
