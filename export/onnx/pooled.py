"""The torch module that becomes the ONNX graph: Qwen2 body + in-graph step-boundary pooling.

Inputs ``input_ids`` [B,T], ``attention_mask`` [B,T] (right padding), ``step_index`` [B,S] (-1 pads);
outputs ``step_rewards`` [B,S] (NaN where step_index is -1 or past the row's length) and ``trajectory_reward`` [B].
Only the [B,S,H] boundary states are gathered and normed: no [B,T,H] output, no lm_head, no cache.
With right padding and causal attention, real positions never see padding, so no padding mask is
needed inside attention and results do not depend on batch composition.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import causal_gqa


def _rms(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    var = x.pow(2).mean(-1, keepdim=True)
    return norm.weight * (x * torch.rsqrt(var + norm.variance_epsilon))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


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

    def _attention(self, layer: nn.Module, h: torch.Tensor, cos, sin) -> torch.Tensor:
        B, T, _ = h.shape
        attn = layer.self_attn
        q = attn.q_proj(h).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q = (q * cos + _rotate_half(q) * sin).transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        k = (k * cos + _rotate_half(k) * sin).transpose(1, 2).reshape(B, T, self.n_kv * self.head_dim)
        o = causal_gqa(q, k, attn.v_proj(h), self.n_heads, self.n_kv)
        return attn.o_proj(o)

    def forward(self, input_ids, attention_mask, step_index):
        B, T = input_ids.shape
        x = self.embed_tokens(input_ids)
        positions = torch.arange(T, device=input_ids.device).unsqueeze(0)
        cos, sin = self.rotary_emb(x, positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        for layer in self.layers:
            x = x + self._attention(layer, _rms(x, layer.input_layernorm), cos, sin)
            h = _rms(x, layer.post_attention_layernorm)
            mlp = layer.mlp
            x = x + mlp.down_proj(F.silu(mlp.gate_proj(h)) * mlp.up_proj(h))
        H = x.shape[-1]
        lengths = attention_mask.sum(-1)
        last = (lengths - 1).clamp(min=0)
        traj_h = _rms(torch.gather(x, 1, last.view(B, 1, 1).expand(B, 1, H)).squeeze(1), self.norm)
        trajectory = torch.sigmoid(self.head(traj_h).squeeze(-1))
        S = step_index.shape[1]
        valid = (step_index >= 0) & (step_index < lengths.unsqueeze(-1))
        idx = torch.where(valid, step_index, torch.zeros_like(step_index)).unsqueeze(-1).expand(B, S, H)
        step_h = _rms(torch.gather(x, 1, idx), self.norm)
        step = torch.sigmoid(self.step_head(step_h).squeeze(-1))
        step = torch.where(valid, step, torch.full_like(step, float("nan")))
        return step, trajectory
