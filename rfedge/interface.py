"""The graph interfaces a model directory can have: input and output names, what they mean.

``cached`` (manifest format 2, what ``rfedge export`` writes): new tokens plus a K/V cache buffer per
layer in, a reward per new token (step head and trajectory head) and the updated buffers out; one
graph scores whole traces (an empty past), chunks of long traces, and suffixes of cached prefixes.

``pooled`` (manifest format 1, exports of rfedge 0.1): whole traces only, step boundaries gathered
inside the graph; still scored, without prefix reuse.
"""

from __future__ import annotations

from dataclasses import dataclass

POOLED_INPUTS = ("input_ids", "attention_mask", "step_index")
POOLED_OUTPUTS = ("step_rewards", "trajectory_reward")
CACHED_INPUTS = ("input_ids", "attention_mask", "past_length")
CACHED_OUTPUTS = ("token_step_rewards", "token_trajectory_rewards")


def past_names(layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def present_names(layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


@dataclass(frozen=True)
class CacheShape:
    """One layer's K/V buffer is [batch, kv_heads, capacity, head_dim] float32, keys and values."""

    layers: int
    kv_heads: int
    head_dim: int

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * 4

    def to_dict(self) -> dict:
        return {"layers": self.layers, "kv_heads": self.kv_heads, "head_dim": self.head_dim, "dtype": "float32"}


def cached_io(layers: int) -> tuple[list[str], list[str]]:
    """(inputs, outputs) of the cached interface for a model of ``layers`` layers."""
    return [*CACHED_INPUTS, *past_names(layers)], [*CACHED_OUTPUTS, *present_names(layers)]
