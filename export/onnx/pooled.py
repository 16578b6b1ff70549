"""The torch module that becomes the ONNX graph: Qwen2 body over a K/V cache, rewards at every token.

Inputs: ``input_ids`` and ``attention_mask`` [B,S] (the new tokens, right-padded), ``past_length``
[B] (positions already in the cache), and per layer a cache buffer ``past_key_values.{i}.key`` /
``.value`` [B, kv_heads, C, head_dim] with C >= past_length + S. Outputs: ``token_step_rewards`` and
``token_trajectory_rewards`` [B,S] (the step head and the trajectory head, sigmoid, on the final
normed hidden state of every new token: the reward of the prefix that ends there), and
``present.{i}.key`` / ``.value``, the buffers with the new tokens written in.

One graph serves every use: a whole trace is one call with an empty past; a long trace or a trace
whose prefix is cached is a call per chunk with the cache so far. No [B,T,H] state leaves the
graph, only two scalars per token. With right padding and causal attention, real positions never
see padding, so results do not depend on batch composition or on how a trace is cut into chunks.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..quantize.rotation import block_rotate, down_rotation
from .attention import cached_gqa


def _rms(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """RMSNorm as x / sqrt(mean(x^2) + eps) * w: the pattern ONNX Runtime fuses into one
    SimplifiedLayerNormalization kernel (x * rsqrt(...) exports as Reciprocal + Mul, which it does not)."""
    var = x.pow(2).mean(-1, keepdim=True)
    return norm.weight * (x / torch.sqrt(var + norm.variance_epsilon))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, d: int) -> torch.Tensor:
    B, S, _ = x.shape
    x = x.view(B, S, heads, d).transpose(1, 2)
    return (x * cos + _rotate_half(x) * sin).transpose(1, 2).reshape(B, S, heads * d)


class PooledPRM(nn.Module):
    def __init__(self, body: nn.Module, head: nn.Module, step_head: nn.Module | None = None):
        super().__init__()
        cfg = body.config
        self.embed_tokens = body.embed_tokens
        self.layers = body.layers
        self.norm = body.norm
        self.rotary_emb = body.rotary_emb
        self.head = head
        self.step_head = step_head if step_head is not None else head
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def _attention(self, layer: nn.Module, h, cos, sin, past_k, past_v, past_length, lengths):
        attn = layer.self_attn
        q = _rotary(attn.q_proj(h), cos, sin, self.n_heads, self.head_dim)
        k = _rotary(attn.k_proj(h), cos, sin, self.n_kv, self.head_dim)
        o, present_k, present_v = cached_gqa(q, k, attn.v_proj(h), past_k, past_v, past_length, lengths,
                                             self.n_heads, self.n_kv)
        return attn.o_proj(o), present_k, present_v

    def forward(self, input_ids, attention_mask, past_length, *past):
        S = input_ids.shape[1]
        x = self.embed_tokens(input_ids)
        positions = past_length.unsqueeze(1) + torch.arange(S, device=input_ids.device).unsqueeze(0)
        cos, sin = self.rotary_emb(x, positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        lengths = attention_mask.sum(-1)
        presents = []
        for i, layer in enumerate(self.layers):
            o, present_k, present_v = self._attention(layer, _rms(x, layer.input_layernorm), cos, sin,
                                                      past[2 * i], past[2 * i + 1], past_length, lengths)
            presents += [present_k, present_v]
            x = x + o
            h = _rms(x, layer.post_attention_layernorm)
            mlp = layer.mlp
            a = F.silu(mlp.gate_proj(h)) * mlp.up_proj(h)
            rotation = down_rotation(mlp)
            if rotation is not None:  # an INT8 export's online Hadamard (quantize.rotation), left in fp32
                a = block_rotate(a, rotation)
            x = x + mlp.down_proj(a)
        final = _rms(x, self.norm)
        step = torch.sigmoid(self.step_head(final).squeeze(-1))
        trajectory = torch.sigmoid(self.head(final).squeeze(-1))
        return (step, trajectory, *presents)

    def empty_cache(self, batch: int, capacity: int) -> list[torch.Tensor]:
        """Zeroed cache buffers for every layer (key, value, key, value, ...)."""
        shape = (batch, self.n_kv, capacity, self.head_dim)
        return [torch.zeros(shape) for _ in range(2 * len(self.layers))]
