"""Right-padded batches: the one place sequences of different lengths become [B, T] arrays.

Right padding under a causal model means real positions never see the padding, so a sequence
scores the same alone or in any batch. Used by the scorer, and by the export tooling (distillation,
demo training, benchmarks) through ``torch.from_numpy``.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from .constants import PAD_TOKEN_ID

T = TypeVar("T")


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int = PAD_TOKEN_ID, length: int | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) int64 [len(seqs), T], T the longest sequence (or ``length``), padded on the right."""
    T = max((len(s) for s in seqs), default=0) if length is None else length
    ids = np.full((len(seqs), T), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), T), dtype=np.int64)
    for b, s in enumerate(seqs):
        ids[b, :len(s)] = s
        mask[b, :len(s)] = 1
    return ids, mask


def length_buckets(items: Iterable[T], size: Callable[[T], int], max_count: int, max_tokens: int,
                   cost: Callable[[list[T]], int] | None = None) -> Iterator[list[T]]:
    """Sort by ``size`` and cut into batches of at most ``max_count`` items whose padded cost
    (``cost(batch)``, default: count x the longest size) stays within ``max_tokens``; a single item
    always forms a batch."""
    cost = cost or (lambda batch: len(batch) * max(size(x) for x in batch))
    batch: list[T] = []
    for item in sorted(items, key=size):
        if batch and (len(batch) >= max_count or cost(batch + [item]) > max_tokens):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch
