"""K/V cache buffers for the cached graph, and the automatic prefix cache of the Scorer.

:class:`KVBuffers`: one ``[batch, kv_heads, capacity, head_dim]`` float32 array per layer for keys
and one for values, the graph's ``past_key_values.*`` inputs; the session binds each to the
matching ``present.*`` output, so ONNX Runtime writes the new tokens into it in place.

:class:`PrefixCache`: what the Scorer has already computed, in blocks of :data:`BLOCK_TOKENS`
tokens keyed by a hash chain over token ids (as vLLM's automatic prefix caching keys its blocks):
block k's key is ``sha256(key of block k-1 + ids of block k)``, so a key names the whole prefix up
to that block, and two traces share a block only when every token before it is the same. A block
holds the keys and values of its tokens in every layer and the two rewards of each of its tokens
(the step head's and the trajectory head's: the reward of the prefix that ends there), so a trace
that starts with cached blocks runs only the rest and still knows the reward at any position.
Bounded by bytes, least recently used blocks evicted first, safe to share between threads.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .interface import CacheShape

BLOCK_TOKENS = 16


class KVBuffers:
    """Cache buffers of one batch: ``arrays[2 * layer]`` keys, ``arrays[2 * layer + 1]`` values."""

    def __init__(self, shape: CacheShape, batch: int, capacity: int):
        self.shape = shape
        dims = (batch, shape.kv_heads, capacity, shape.head_dim)
        self.arrays = [np.zeros(dims, dtype=np.float32) for _ in range(2 * shape.layers)]

    @property
    def capacity(self) -> int:
        return self.arrays[0].shape[2]

    def write(self, row: int, start: int, blocks: list["Block"]) -> None:
        """Copy ``blocks`` (consecutive) into ``row`` from position ``start``."""
        for n, block in enumerate(blocks):
            lo = start + n * BLOCK_TOKENS
            for a, kv in zip(self.arrays, block.kv, strict=True):
                a[row, :, lo:lo + BLOCK_TOKENS] = kv

    def read(self, row: int, start: int) -> np.ndarray:
        """Positions ``[start, start + BLOCK_TOKENS)`` of ``row`` in every layer: [2L, KV, block, D]."""
        return np.stack([a[row, :, start:start + BLOCK_TOKENS] for a in self.arrays])

    def copy_prefix(self, n: int, capacity: int) -> "KVBuffers":
        """A new batch-1 buffer of ``capacity`` holding positions ``[0, n)`` of row 0."""
        out = KVBuffers(self.shape, 1, capacity)
        for dst, src in zip(out.arrays, self.arrays, strict=True):
            dst[0, :, :n] = src[0, :, :n]
        return out


@dataclass(frozen=True)
class Block:
    kv: np.ndarray  # [2 * layers, kv_heads, BLOCK_TOKENS, head_dim] float32
    step_rewards: np.ndarray  # [BLOCK_TOKENS] float32
    trajectory_rewards: np.ndarray  # [BLOCK_TOKENS] float32

    @property
    def nbytes(self) -> int:
        return self.kv.nbytes + self.step_rewards.nbytes + self.trajectory_rewards.nbytes


def chain_keys(ids: np.ndarray) -> list[bytes]:
    """The hash-chain key of every full block of ``ids`` (int64), in order."""
    keys, parent = [], b""
    for k in range(len(ids) // BLOCK_TOKENS):
        parent = hashlib.sha256(parent + ids[k * BLOCK_TOKENS:(k + 1) * BLOCK_TOKENS].tobytes()).digest()
        keys.append(parent)
    return keys


class PrefixCache:
    """Blocks by chain key, LRU within ``max_bytes``; ``hits`` and ``misses`` count blocks looked up."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self._blocks: OrderedDict[bytes, Block] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._blocks)

    def lookup(self, keys: list[bytes]) -> list[Block]:
        """The cached blocks of the longest cached prefix of ``keys`` (marked recently used)."""
        found: list[Block] = []
        if not self.enabled:
            return found
        with self._lock:
            for key in keys:
                block = self._blocks.get(key)
                if block is None:
                    break
                self._blocks.move_to_end(key)
                found.append(block)
            self.hits += len(found)
            self.misses += len(keys) - len(found)
        return found

    def contains(self, key: bytes) -> bool:
        with self._lock:
            return key in self._blocks

    def put(self, key: bytes, block: Block) -> None:
        if not self.enabled or block.nbytes > self.max_bytes:
            return
        with self._lock:
            if key in self._blocks:
                self._blocks.move_to_end(key)
                return
            self._blocks[key] = block
            self._bytes += block.nbytes
            while self._bytes > self.max_bytes:
                _, old = self._blocks.popitem(last=False)
                self._bytes -= old.nbytes
                self.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._bytes = 0

    def stats(self) -> dict:
        with self._lock:
            return {"blocks": len(self._blocks), "bytes": self._bytes, "max_bytes": self.max_bytes,
                    "hits": self.hits, "misses": self.misses, "evictions": self.evictions}
