"""Causal grouped-query attention over a K/V cache, as one graph node.

PyTorch's scaled_dot_product_attention exports as MatMul/Softmax over a materialized [B,H,T,T]
score tensor and repeats K/V to every query head. Here attention is a torch custom op (eager: SDPA
with a causal mask offset by each row's past, the same math as transformers) that the exporter
translates into ONNX Runtime's ``com.microsoft.GroupQueryAttention``, whose CPU kernel is causal,
group-aware and tiled (ONNX Runtime's fp32 flash path: no [T, T] buffer, whole key blocks above the
causal diagonal skipped).

The cache is a buffer of fixed capacity C per layer, ``[B, kv_heads, C, head_dim]``: row b holds
``past_length[b]`` valid positions, the new tokens are written at ``[past_length[b], past_length[b]
+ S)`` (so C >= past_length + S), and the op returns the buffer with them written in. Present and
past have the same shape, so a caller can bind one buffer to both and ONNX Runtime updates it in
place (it detects the aliasing itself). Rotary embedding stays outside (applied before the op, at
positions ``past_length[b] + i``, as in the HF model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.library.custom_op("rfedge::cached_gqa", mutates_args=())
def cached_gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past_key: torch.Tensor,
               past_value: torch.Tensor, past_length: torch.Tensor, lengths: torch.Tensor, num_heads: int,
               kv_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [B,S,H*D], k and v [B,S,KV*D] (rotary applied), past [B,KV,C,D], past_length and lengths
    (valid new tokens) [B] -> (output [B,S,H*D], present key, present value [B,KV,C,D])."""
    B, S, _ = q.shape
    d = q.shape[-1] // num_heads
    present_k, present_v = past_key.clone(), past_value.clone()
    out = torch.zeros_like(q)
    for b in range(B):
        p = int(past_length[b])
        present_k[b, :, p:p + S] = k[b].view(S, kv_heads, d).transpose(0, 1)
        present_v[b, :, p:p + S] = v[b].view(S, kv_heads, d).transpose(0, 1)
        keys = present_k[b, :, :p + S].repeat_interleave(num_heads // kv_heads, dim=0)
        values = present_v[b, :, :p + S].repeat_interleave(num_heads // kv_heads, dim=0)
        causal = (torch.arange(p + S, device=q.device).unsqueeze(0)
                  <= (p + torch.arange(S, device=q.device)).unsqueeze(1))  # [S, p+S]
        o = F.scaled_dot_product_attention(q[b].view(S, num_heads, d).transpose(0, 1), keys, values,
                                           attn_mask=causal)
        out[b] = o.transpose(0, 1).reshape(S, num_heads * d)
    return out, present_k, present_v


@cached_gqa.register_fake
def _(q, k, v, past_key, past_value, past_length, lengths, num_heads, kv_heads):
    return torch.empty_like(q), torch.empty_like(past_key), torch.empty_like(past_value)


def onnx_cached_gqa(q, k, v, past_key, past_value, past_length, lengths, num_heads: int, kv_heads: int):
    """The ONNX translation: GroupQueryAttention with a static-capacity cache and per-row lengths.

    ``seqlens_k`` = past + valid new tokens - 1 per row, ``query_seqlens`` = valid new tokens (rows
    may have different pasts and right-padded new tokens), ``total_sequence_length`` = the capacity
    C, so present has past's shape and can share its buffer.
    """
    import onnxscript
    from onnxscript import opset20 as op

    gqa = onnxscript.values.Op(onnxscript.values.Opset("com.microsoft", 1), "GroupQueryAttention", _gqa_schema())
    seqlens_k = op.Cast(op.Sub(op.Add(past_length, lengths), [1]), to=6)  # int32 [B]
    capacity = op.Cast(op.Squeeze(op.Slice(op.Shape(past_key), [2], [3]), [0]), to=6)  # int32 scalar
    query_seqlens = op.Cast(lengths, to=6)
    out, present_k, present_v = gqa(q, k, v, past_key, past_value, seqlens_k, capacity, None, None, None, None,
                                    None, None, None, None, None, query_seqlens, num_heads=num_heads,
                                    kv_num_heads=kv_heads, _outputs=3)
    return out, present_k, present_v


def _gqa_schema():
    """The part of ORT's GroupQueryAttention schema we use (ONNX ships no contrib-op schemas).

    Input 16, ``query_seqlens``, exists from ONNX Runtime 1.32 on.
    """
    from onnx.defs import OpSchema

    P, A = OpSchema.FormalParameter, OpSchema.Attribute
    opt = OpSchema.FormalParameterOption.Optional
    optional = [P(name, "T", param_option=opt) for name in ("cos_cache", "sin_cache")] + [
        P("position_ids", "I", param_option=opt), P("attention_bias", "T", param_option=opt),
        P("head_sink", "T", param_option=opt), P("k_scale", "T", param_option=opt),
        P("v_scale", "T", param_option=opt), P("q_norm_weight", "T", param_option=opt),
        P("k_norm_weight", "T", param_option=opt)]
    return OpSchema(
        "GroupQueryAttention", "com.microsoft", 1,
        inputs=[P("query", "T"), P("key", "T"), P("value", "T"), P("past_key", "T", param_option=opt),
                P("past_value", "T", param_option=opt), P("seqlens_k", "M"), P("total_sequence_length", "M"),
                *optional, P("query_seqlens", "M", param_option=opt)],
        outputs=[P("output", "T"), P("present_key", "T"), P("present_value", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], ""),
                          ("M", ["tensor(int32)"], ""), ("I", ["tensor(int64)"], "")],
        attributes=[A("num_heads", OpSchema.AttrType.INT, ""), A("kv_num_heads", OpSchema.AttrType.INT, "")])


def translation_table() -> dict:
    return {torch.ops.rfedge.cached_gqa.default: onnx_cached_gqa}
