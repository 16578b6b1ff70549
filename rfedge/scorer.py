"""The scorer: traces in, step rewards, trajectory reward and the aggregate score out.

``Scorer.load(dir)`` verifies the manifest, builds the session, and scores traces in length-bucketed
batches; results never depend on batch composition (right padding under a causal model).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .errors import TraceFormatError, UsageError
from .manifest import Manifest, load_manifest
from .session import GraphSession
from .tokenization import Encoded, TraceTokenizer
from .traces import Record, Trace, parse_trace

DEFAULT_ALPHA = 1.0
DEFAULT_BATCH_SIZE = 8
DEFAULT_BATCH_TOKENS = 16384


@dataclass(frozen=True)
class StepResult:
    section: str
    index: int
    reward: float | None  # None when the step lies past max length
    token_index: int


@dataclass(frozen=True)
class ScoreResult:
    id: Any
    score: float
    trajectory_reward: float
    steps: tuple[StepResult, ...]
    num_tokens: int
    truncated: bool

    def to_dict(self) -> dict:
        d = asdict(self)
        d["steps"] = [asdict(s) for s in self.steps]
        if self.id is None:
            del d["id"]
        return d


def aggregate(step_rewards: Iterable[float | None], trajectory_reward: float, alpha: float) -> float:
    """Mean of the scored step rewards + alpha x trajectory reward (no scored steps: step term 0)."""
    scored = [r for r in step_rewards if r is not None]
    mean = sum(scored) / len(scored) if scored else 0.0
    return mean + alpha * trajectory_reward


class Scorer:
    def __init__(self, manifest: Manifest, session: GraphSession, tokenizer: TraceTokenizer,
                 alpha: float = DEFAULT_ALPHA, batch_size: int = DEFAULT_BATCH_SIZE,
                 batch_tokens: int = DEFAULT_BATCH_TOKENS):
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        if not math.isfinite(alpha):
            raise UsageError(f"alpha must be a finite number, got {alpha}")
        self.manifest = manifest
        self.session = session
        self.tokenizer = tokenizer
        self.alpha = alpha
        self.batch_size = batch_size
        self.batch_tokens = max(batch_tokens, manifest.max_length)

    @classmethod
    def load(cls, directory: str | Path, device: str = "auto", alpha: float = DEFAULT_ALPHA,
             batch_size: int = DEFAULT_BATCH_SIZE, batch_tokens: int = DEFAULT_BATCH_TOKENS,
             threads: int = 0) -> "Scorer":
        manifest = load_manifest(Path(directory))
        session = GraphSession(manifest, device=device, threads=threads)
        return cls(manifest, session, TraceTokenizer(manifest.tokenizer_path), alpha, batch_size,
                   batch_tokens)

    @property
    def device(self) -> str:
        return self.session.device

    def score(self, trace: Trace | dict) -> ScoreResult:
        """Score one trace (a :class:`Trace` or a record dict in any accepted format)."""
        if isinstance(trace, dict):
            trace = parse_trace(trace)
        return self._score_batch([(0, trace, self._encode(trace))])[0][1]

    def score_many(self, traces: Iterable[Trace | dict]) -> list[ScoreResult]:
        """Score many traces; results in input order. Raises on the first bad record."""
        parsed = [parse_trace(t) if isinstance(t, dict) else t for t in traces]
        records = [Record(where=f"trace {i}", trace=t, id=t.id) for i, t in enumerate(parsed)]
        out = []
        for record, result in self.score_records(records):
            if isinstance(result, TraceFormatError):
                raise result
            out.append(result)
        return out

    def score_records(self, records: Iterable[Record], window: int = 256
                      ) -> Iterator[tuple[Record, ScoreResult | TraceFormatError]]:
        """Stream records through the model, ``window`` at a time, yielding each in input order.

        A bad record yields its :class:`TraceFormatError` in place; nothing is dropped.
        """
        buf: list[Record] = []
        for record in records:
            buf.append(record)
            if len(buf) >= window:
                yield from self._score_window(buf)
                buf = []
        if buf:
            yield from self._score_window(buf)

    def _encode(self, trace: Trace) -> Encoded:
        enc = self.tokenizer.encode(trace)
        if len(enc.ids) == 0:
            raise TraceFormatError("trace has no text to score (problem and completion are empty)")
        return enc

    def _score_window(self, records: list[Record]):
        results: list[Any] = [None] * len(records)
        todo = []
        for i, record in enumerate(records):
            if record.error is not None:
                results[i] = record.error
                continue
            try:
                todo.append((i, record.trace, self._encode(record.trace)))
            except TraceFormatError as e:
                results[i] = TraceFormatError(e.reason, record.where)
        for batch in self._batches(todo):
            for i, result in self._score_batch(batch):
                results[i] = result
        return list(zip(records, results))

    def _batches(self, items):
        """Length bucketing: sort by length, cut batches by count and by padded-token budget."""
        items = sorted(items, key=lambda it: min(len(it[2].ids), self.manifest.max_length))
        batch: list = []
        for it in items:
            n = min(len(it[2].ids), self.manifest.max_length)
            if batch and (len(batch) >= self.batch_size or n * (len(batch) + 1) > self.batch_tokens):
                yield batch
                batch = []
            batch.append(it)
        if batch:
            yield batch

    def _score_batch(self, batch) -> list[tuple[int, ScoreResult]]:
        max_len = self.manifest.max_length
        lengths = [min(len(enc.ids), max_len) for _, _, enc in batch]
        T = max(lengths)
        S = max(1, max(len(enc.steps) for _, _, enc in batch))
        ids = np.full((len(batch), T), self.manifest.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(batch), T), dtype=np.int64)
        step_index = np.full((len(batch), S), -1, dtype=np.int64)
        for b, (_, _, enc) in enumerate(batch):
            n = lengths[b]
            ids[b, :n] = enc.ids[:n]
            mask[b, :n] = 1
            k = len(enc.step_tokens)
            step_index[b, :k] = np.where(enc.step_tokens < n, enc.step_tokens, -1)
        step_rewards, traj = self.session.run(ids, mask, step_index)
        out = []
        for b, (i, trace, enc) in enumerate(batch):
            steps = tuple(
                StepResult(s.section, s.index,
                           float(step_rewards[b, k]) if step_index[b, k] >= 0 else None,
                           int(enc.step_tokens[k]))
                for k, s in enumerate(enc.steps))
            t = float(traj[b])
            out.append((i, ScoreResult(
                id=trace.id, score=aggregate((s.reward for s in steps), t, self.alpha),
                trajectory_reward=t, steps=steps, num_tokens=len(enc.ids),
                truncated=len(enc.ids) > max_len)))
        return out
