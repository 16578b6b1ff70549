"""The scorer: traces in, step rewards, trajectory reward and the aggregate score out.

``Scorer.load(dir)`` verifies the model directory, builds the session and scores traces in
length-bucketed batches. With a cached graph (format 2) it keeps the keys and values of what it
scored in a prefix cache bounded by ``cache_bytes``: a trace that starts with tokens it has seen
(the same prompt again, the same partial trace one step longer) runs only the rest, and long traces
run chunk by chunk. Results never depend on batch composition, chunking or cache hits (right
padding under a causal model; per-token quantization).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .batching import length_buckets, pad_right
from .constants import DEFAULT_ALPHA, DEFAULT_BATCH_SIZE, DEFAULT_BATCH_TOKENS, DEFAULT_CHUNK_TOKENS
from .engine import Engine
from .errors import TraceFormatError, UsageError
from .kvcache import PrefixCache
from .manifest import Manifest, check_pad_token, load_manifest
from .session import GraphSession
from .tokenization import Encoded, TraceTokenizer
from .traces import Record, Trace, parse_trace

DEFAULT_CACHE_BYTES = 512 << 20  # the prefix cache: 512 MiB of keys and values


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


def as_trace(trace: Trace | dict) -> Trace:
    return parse_trace(trace) if isinstance(trace, dict) else trace


class Scorer:
    def __init__(self, manifest: Manifest, session: GraphSession, tokenizer: TraceTokenizer,
                 alpha: float = DEFAULT_ALPHA, batch_size: int = DEFAULT_BATCH_SIZE,
                 batch_tokens: int | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 chunk_tokens: int | None = None):
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        if not math.isfinite(alpha):
            raise UsageError(f"alpha must be a finite number, got {alpha}")
        if chunk_tokens is None:  # the device's default (constants.DEFAULT_CHUNK_TOKENS)
            chunk_tokens = DEFAULT_CHUNK_TOKENS[session.device]
        if cache_bytes < 0 or chunk_tokens < 1:
            raise UsageError(f"cache_bytes must be >= 0 and chunk_tokens >= 1, got {cache_bytes} and {chunk_tokens}")
        self.manifest = manifest
        self.session = session
        self.tokenizer = tokenizer
        self.alpha = alpha
        self.batch_size = batch_size
        if batch_tokens is None:  # the device's default (constants.DEFAULT_BATCH_TOKENS)
            batch_tokens = DEFAULT_BATCH_TOKENS[session.device]
        self.batch_tokens = max(batch_tokens, min(manifest.max_length, chunk_tokens))
        reuse = manifest.cached and manifest.token_independent
        self.cache = PrefixCache(cache_bytes if reuse else 0)
        self.engine = None
        if manifest.cached:
            self.engine = Engine(session, manifest.cache, self.cache, batch_size, self.batch_tokens,
                                 chunk_tokens if manifest.token_independent else manifest.max_length,
                                 manifest.pad_token_id)

    @classmethod
    def load(cls, directory: str | Path, device: str = "auto", alpha: float = DEFAULT_ALPHA,
             batch_size: int = DEFAULT_BATCH_SIZE, batch_tokens: int | None = None,
             threads: int = 0, cache_bytes: int = DEFAULT_CACHE_BYTES,
             chunk_tokens: int | None = None) -> "Scorer":
        """Verify ``directory`` (``~`` expanded) and build a scorer. ``batch_tokens``: padded tokens
        a batch may hold (None: 2048 on the CPU, 16384 on CUDA); ``cache_bytes``: the prefix
        cache's budget (0 turns prefix reuse off); ``chunk_tokens``: longer traces run in chunks of this
        many tokens (None: 256 on the CPU, 2048 on CUDA)."""
        return cls.from_manifest(load_manifest(directory), device, threads, alpha=alpha, batch_size=batch_size,
                                 batch_tokens=batch_tokens, cache_bytes=cache_bytes, chunk_tokens=chunk_tokens)

    @classmethod
    def from_manifest(cls, manifest: Manifest, device: str = "auto", threads: int = 0, **options) -> "Scorer":
        """A scorer for an already checked manifest (``load`` checks it; the export builds one in memory)."""
        tokenizer = TraceTokenizer(manifest.tokenizer_path, manifest.max_length)
        check_pad_token(manifest, tokenizer.vocab_size)
        return cls(manifest, GraphSession(manifest, device=device, threads=threads), tokenizer, **options)

    @property
    def device(self) -> str:
        return self.session.device

    def score(self, trace: Trace | dict) -> ScoreResult:
        """Score one trace (a :class:`Trace` or a record dict in any accepted format)."""
        trace = as_trace(trace)
        return self._score_encoded([(trace, self._encode(trace))])[0]

    def score_many(self, traces: Iterable[Trace | dict]) -> list[ScoreResult]:
        """Score many traces; results in input order. Raises on the first bad record, naming it."""
        out = []
        for _, result in self.score_records(traces):
            if isinstance(result, TraceFormatError):
                raise result
            out.append(result)
        return out

    def best_of_n(self, problem: str, candidates: Sequence[str | Trace | dict], k: int = 1
                  ) -> list[tuple[int, ScoreResult]]:
        """The ``k`` best candidates for ``problem`` as (candidate index, result), best first.

        A candidate is a completion string (``problem`` + it is scored), or a trace in any accepted
        format. Ties keep the candidates' order. The problem's tokens are computed once.
        """
        if k < 1:
            raise UsageError(f"k must be at least 1, got {k}")
        traces = [Trace(problem, c) if isinstance(c, str) else as_trace(c) for c in candidates]
        results = self.score_many(traces)
        order = sorted(range(len(results)), key=lambda i: -results[i].score)
        return [(i, results[i]) for i in order[:k]]

    def start(self, problem: str, completion: str = "", id: Any = None):
        """A :class:`~rfedge.stream.ScoringState` for a generation loop that owns its state."""
        from .stream import ScoringState

        return ScoringState(self, problem, completion, id)

    def score_records(self, records: Iterable[Record | Trace | dict], window: int = 256
                      ) -> Iterator[tuple[Record, ScoreResult | TraceFormatError]]:
        """Stream records through the model, ``window`` at a time, yielding each in input order.

        Records may be :class:`Record`, :class:`Trace` or dicts; a bad record yields its
        :class:`TraceFormatError` (naming the record) in place; nothing is dropped.
        """
        buf: list[Record] = []
        for i, record in enumerate(records):
            buf.append(_as_record(record, i))
            if len(buf) >= window:
                yield from self._score_window(buf)
                buf = []
        if buf:
            yield from self._score_window(buf)

    def cache_stats(self) -> dict:
        """The prefix cache's blocks, bytes and hit/miss/eviction counters (blocks of 16 tokens)."""
        return self.cache.stats()

    def _encode(self, trace: Trace) -> Encoded:
        enc = self.tokenizer.encode(trace)
        if enc.total == 0:
            raise TraceFormatError("trace has no text to score (problem and completion are empty)")
        return enc

    def _score_window(self, records: list[Record]):
        results: list[Any] = [None] * len(records)
        todo, where = [], []
        for i, record in enumerate(records):
            if record.error is not None:
                results[i] = record.error
                continue
            try:
                todo.append((record.trace, self._encode(record.trace)))
                where.append(i)
            except TraceFormatError as e:
                results[i] = TraceFormatError(e.reason, record.where)
        for i, result in zip(where, self._score_encoded(todo), strict=True):
            results[i] = result
        return list(zip(records, results, strict=True))

    def _score_encoded(self, items: list[tuple[Trace, Encoded]]) -> list[ScoreResult]:
        if self.engine is not None:
            rewards = self.engine.rewards([enc.ids for _, enc in items])
            return [self.result(trace, enc, r.step, r.trajectory) for (trace, enc), r in zip(items, rewards, strict=True)]
        return self._score_pooled(items)

    def result(self, trace: Trace, enc: Encoded, token_step: np.ndarray, token_traj: np.ndarray) -> ScoreResult:
        """The result from per-token rewards of ``enc.ids`` (truncated to max length)."""
        n = len(enc.ids)
        rewards = [float(token_step[t]) if t < n else None for t in enc.step_tokens]
        return self._make(trace, enc, rewards, float(token_traj[n - 1]))

    def _make(self, trace: Trace, enc: Encoded, rewards: list[float | None], trajectory: float) -> ScoreResult:
        steps = tuple(StepResult(s.section, s.index, r, int(t))
                      for s, r, t in zip(enc.steps, rewards, enc.step_tokens, strict=True))
        return ScoreResult(id=trace.id, score=aggregate(rewards, trajectory, self.alpha),
                           trajectory_reward=trajectory, steps=steps, num_tokens=enc.total,
                           truncated=enc.truncated)

    def _score_pooled(self, items: list[tuple[Trace, Encoded]]) -> list[ScoreResult]:
        """Format-1 graphs: whole traces, boundaries gathered in the graph."""
        out: list[Any] = [None] * len(items)
        for batch in length_buckets(range(len(items)), lambda i: len(items[i][1].ids), self.batch_size,
                                    self.batch_tokens):
            encs = [items[i][1] for i in batch]
            ids, mask = pad_right([e.ids for e in encs], self.manifest.pad_token_id)
            step_index = np.full((len(batch), max(1, max(len(e.steps) for e in encs))), -1, dtype=np.int64)
            for b, e in enumerate(encs):
                step_index[b, :len(e.step_tokens)] = np.where(e.step_tokens < len(e.ids), e.step_tokens, -1)
            step, traj = self.session.run(ids, mask, step_index)
            for b, i in enumerate(batch):
                rewards = [float(step[b, k]) if step_index[b, k] >= 0 else None for k in range(len(encs[b].steps))]
                out[i] = self._make(items[i][0], encs[b], rewards, float(traj[b]))
        return out


def _as_record(record: Record | Trace | dict, i: int) -> Record:
    if isinstance(record, Record):
        return record
    where = f"trace {i}"
    try:
        trace = as_trace(record)
    except TraceFormatError as e:
        return Record(where=where, error=TraceFormatError(e.reason, where),
                      id=record.get("id") if isinstance(record, dict) else None)
    return Record(where=where, trace=trace, id=trace.id)
