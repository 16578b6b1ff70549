"""Causal grouped-query attention as one graph node.

PyTorch's scaled_dot_product_attention exports as MatMul/Softmax over a materialized [B,H,T,T]
score tensor plus a [T,T] mask, and repeats K/V to all query heads first: 3.9 GB per layer at
T=8192 and twice the work of a kernel that knows the grouping. Here attention is a torch custom op
(eager: SDPA, the same math as transformers) that the exporter translates into ONNX Runtime's
``com.microsoft.GroupQueryAttention``, whose CPU and CUDA kernels are causal, group-aware and keep
memory linear in T. Rotary embedding stays outside (applied before the op, as in the HF model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.library.custom_op("rfedge::causal_gqa", mutates_args=())
def causal_gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, kv_heads: int) -> torch.Tensor:
    """q [B,T,H*D], k and v [B,T,KV*D] (rotary applied) -> causal attention output [B,T,H*D]."""
    B, T, _ = q.shape
    d = q.shape[-1] // num_heads
    qh = q.view(B, T, num_heads, d).transpose(1, 2)
    kh = k.view(B, T, kv_heads, d).transpose(1, 2).repeat_interleave(num_heads // kv_heads, dim=1)
    vh = v.view(B, T, kv_heads, d).transpose(1, 2).repeat_interleave(num_heads // kv_heads, dim=1)
    o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)
    return o.transpose(1, 2).reshape(B, T, num_heads * d).contiguous()


@causal_gqa.register_fake
def _(q, k, v, num_heads, kv_heads):
    return torch.empty_like(q)


def onnx_causal_gqa(q, k, v, num_heads: int, kv_heads: int):
    """The ONNX translation: GroupQueryAttention in prompt mode, every row attending causally.

    ``seqlens_k`` is T-1 for every row (right padding: real positions never see pads, so rows need
    no per-row length and a trace scores the same alone or in any batch).
    """
    import onnxscript
    from onnxscript import opset20 as op

    gqa = onnxscript.values.Op(onnxscript.values.Opset("com.microsoft", 1), "GroupQueryAttention", _gqa_schema())
    shape = op.Shape(q)
    length = op.Slice(shape, [1], [2])  # int64 [1]
    seqlens = op.Cast(op.Expand(op.Sub(length, [1]), op.Slice(shape, [0], [1])), to=6)  # int32 [B]
    total = op.Cast(op.Squeeze(length, [0]), to=6)  # int32 scalar
    out, _, _ = gqa(q, k, v, None, None, seqlens, total, num_heads=num_heads, kv_num_heads=kv_heads,
                    _outputs=3)
    return out


def _gqa_schema():
    """The part of ORT's GroupQueryAttention schema we use (ONNX ships no contrib-op schemas)."""
    from onnx.defs import OpSchema

    P, A = OpSchema.FormalParameter, OpSchema.Attribute
    opt = OpSchema.FormalParameterOption.Optional
    return OpSchema(
        "GroupQueryAttention", "com.microsoft", 1,
        inputs=[P("query", "T"), P("key", "T"), P("value", "T"), P("past_key", "T", param_option=opt),
                P("past_value", "T", param_option=opt), P("seqlens_k", "M"), P("total_sequence_length", "M")],
        outputs=[P("output", "T"), P("present_key", "T"), P("present_value", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], ""),
                          ("M", ["tensor(int32)"], "")],
        attributes=[A("num_heads", OpSchema.AttrType.INT, ""), A("kv_num_heads", OpSchema.AttrType.INT, "")])


def translation_table() -> dict:
    return {torch.ops.rfedge.causal_gqa.default: onnx_causal_gqa}
