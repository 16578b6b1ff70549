"""Token sequences through the cached graph: a reward per token, in batches, chunks, reusing prefixes.

:meth:`Engine.rewards` takes token id sequences and returns, for every token, the step head's and
the trajectory head's reward of the prefix that ends there. Before it runs anything it looks up
each sequence's longest cached prefix (whole blocks, :mod:`rfedge.kvcache`) and runs only the
rest; prefixes shared by several sequences of one call (Best-of-N candidates, beams) are computed
once first. Sequences longer than ``chunk_tokens`` run alone, chunk by chunk, over one cache buffer,
so attention never builds more than chunk x length and memory per token stays the K/V cache.
:meth:`Engine.start` and :meth:`Engine.extend` do the same for one sequence whose cache buffer the
caller owns (the streaming API of :mod:`rfedge.stream`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .batching import length_buckets, pad_right
from .interface import CacheShape
from .kvcache import BLOCK_TOKENS, Block, KVBuffers, PrefixCache, chain_keys


@dataclass
class TokenRewards:
    step: np.ndarray  # float32 [n]: step head at every token
    trajectory: np.ndarray  # float32 [n]: trajectory head at every token

    @classmethod
    def join(cls, parts: list["TokenRewards"]) -> "TokenRewards":
        if not parts:
            return cls(np.zeros(0, np.float32), np.zeros(0, np.float32))
        return cls(np.concatenate([p.step for p in parts]), np.concatenate([p.trajectory for p in parts]))


@dataclass
class _Job:
    ids: np.ndarray
    keys: list[bytes]
    past: list[Block] = field(default_factory=list)
    new: TokenRewards | None = None

    @property
    def past_len(self) -> int:
        return len(self.past) * BLOCK_TOKENS

    @property
    def todo(self) -> int:
        return len(self.ids) - self.past_len

    def result(self) -> TokenRewards:
        cached = TokenRewards.join([TokenRewards(b.step_rewards, b.trajectory_rewards) for b in self.past])
        return TokenRewards.join([cached, self.new]) if self.new is not None else cached


def _waves(prefixes: list[_Job]) -> list[list[_Job]]:
    """Shared prefixes in rounds: a prefix runs after every other one it extends (its round is how
    many of them its chain holds), so it finds those blocks cached and runs only its own."""
    ends = {p.keys[-1] for p in prefixes}
    waves: dict[int, list[_Job]] = {}
    for p in sorted(prefixes, key=lambda p: len(p.keys)):
        waves.setdefault(len(ends.intersection(p.keys[:-1])), []).append(p)
    return [waves[n] for n in sorted(waves)]


class Engine:
    def __init__(self, session, shape: CacheShape, cache: PrefixCache, batch_size: int, batch_tokens: int,
                 chunk_tokens: int, pad_id: int):
        self.session = session
        self.shape = shape
        self.cache = cache
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.chunk_tokens = chunk_tokens
        self.pad_id = pad_id

    def rewards(self, sequences: list[np.ndarray]) -> list[TokenRewards]:
        """Per-token rewards of each sequence (int64 ids, at most the model's max length)."""
        jobs = [_Job(ids, chain_keys(ids) if self.cache.enabled else []) for ids in sequences]
        if self.cache.enabled:
            for wave in _waves(self._shared_prefixes(jobs)):
                self._run(wave)
        self._run(jobs)
        return [job.result() for job in jobs]

    def extend(self, kv: KVBuffers, ids: np.ndarray, start: int) -> TokenRewards:
        """Run ``ids[start:]`` into row 0 of ``kv``, whose positions ``[0, start)`` hold ``ids[:start]``."""
        parts = []
        for lo in range(start, len(ids), self.chunk_tokens):
            piece = ids[lo:lo + self.chunk_tokens][None]
            step, traj = self.session.run_cached(piece, np.ones_like(piece), np.array([lo], np.int64), kv)
            parts.append(TokenRewards(step[0], traj[0]))
        return TokenRewards.join(parts)

    def _shared_prefixes(self, jobs: list[_Job]) -> list[_Job]:
        """Every prefix (whole blocks) that two or more sequences share, once each, at each depth
        where fewer sequences go on sharing (a root all candidates share, then the deeper prefixes
        of the groups that branch from it), unless already cached: run first, shortest first
        (:func:`_waves`), they make every sequence that shares them a cache hit."""
        counts = Counter(k for job in jobs for k in job.keys)
        prefixes: dict[bytes, _Job] = {}
        for job in jobs:
            for depth in range(1, len(job.keys) + 1):
                shared = counts[job.keys[depth - 1]]
                if shared < 2:
                    break
                key = job.keys[depth - 1]
                ends = depth == len(job.keys) or counts[job.keys[depth]] < shared
                if ends and key not in prefixes and not self.cache.contains(key):
                    prefixes[key] = _Job(job.ids[:depth * BLOCK_TOKENS], job.keys[:depth])
        return list(prefixes.values())

    def _run(self, jobs: list[_Job]) -> None:
        for job in jobs:
            job.past = self.cache.lookup(job.keys)
        todo = [job for job in jobs if job.todo > 0]
        for job in todo:
            if job.todo > self.chunk_tokens:
                self._run_single(job, KVBuffers(self.shape, 1, len(job.ids)))
        short = [job for job in todo if job.todo <= self.chunk_tokens]
        cost = lambda b: len(b) * (max(j.past_len for j in b) + max(j.todo for j in b))  # noqa: E731
        for batch in length_buckets(short, lambda j: j.todo, self.batch_size, self.batch_tokens, cost):
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Job]) -> None:
        longest = max(job.todo for job in batch)
        kv = KVBuffers(self.shape, len(batch), max(job.past_len for job in batch) + longest)
        for row, job in enumerate(batch):
            kv.write(row, 0, job.past)
        ids, mask = pad_right([job.ids[job.past_len:] for job in batch], self.pad_id)
        past_length = np.array([job.past_len for job in batch], dtype=np.int64)
        step, traj = self.session.run_cached(ids, mask, past_length, kv)
        for row, job in enumerate(batch):
            job.new = TokenRewards(step[row, :job.todo], traj[row, :job.todo])
            self._store(kv, row, job)

    def start(self, ids: np.ndarray, capacity: int) -> tuple[KVBuffers, TokenRewards]:
        """A batch-1 buffer of ``capacity`` holding ``ids`` (from the prefix cache as far as it
        has them), and their per-token rewards."""
        job = _Job(ids, chain_keys(ids) if self.cache.enabled else [])
        job.past = self.cache.lookup(job.keys)
        kv = KVBuffers(self.shape, 1, capacity)
        self._run_single(job, kv)
        return kv, job.result()

    def _run_single(self, job: _Job, kv: KVBuffers) -> None:
        kv.write(0, 0, job.past)
        job.new = self.extend(kv, job.ids, job.past_len)
        self._store(kv, 0, job)

    def _store(self, kv: KVBuffers, row: int, job: _Job) -> None:
        """Put the job's new full blocks in the prefix cache."""
        if not self.cache.enabled:
            return
        for k in range(len(job.past), len(job.keys)):
            lo = k * BLOCK_TOKENS
            new = slice(lo - job.past_len, lo - job.past_len + BLOCK_TOKENS)
            self.cache.put(job.keys[k], Block(kv.read(row, lo), job.new.step[new].copy(),
                                              job.new.trajectory[new].copy()))
