"""SmoothQuant-style equalization, folded exactly into the fp32 weights before export.

Per-tensor dynamic INT8 gives every MatMul input one scale, so a few activation channels tens of
times larger than the rest (trained LLMs have them) flatten all other channels to a handful of
levels. Equalization divides each input channel j by s_j = max|X_j|^alpha / max|W_j|^(1-alpha)
and multiplies the matching weight column by s_j, leaving the product unchanged (Xiao et al.,
SmoothQuant, 2023). Every division is folded into an op that already exists, so the graph and the
fp32 function stay the same:

- q/k/v input  = input_layernorm(x):          divide the norm weight, scale q/k/v columns;
- gate/up input = post_attention_layernorm(x): divide the norm weight, scale gate/up columns;
- down input   = silu(gate) * up:              divide up_proj rows (the product is linear in up);
- o_proj input = attention(v):                 divide v_proj rows and bias (attention is linear in
  v); one scale per kv-head channel, shared by the query heads of its group.

Channel statistics come from a forward pass of the source model over calibration traces.
"""

from __future__ import annotations

import torch

from .formats import FORMATS, ORDER, WeightFormat, format_counts

FAST = FORMATS["int8-7bit"]

ALPHAS = (None, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # None: no equalization at that point
# An alpha is folded in only if it cuts the point's simulated error below this share of the error
# without equalization: behind a rotation most points are flat already, and a small gain on the fit
# traces' activations is as likely to cost on other traces (measured on the outlier test models).
MIN_GAIN = 0.8
MAX_TOKENS = 1024  # calibration tokens kept per point for the search (a strided subset)
POINTS = ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")
CONSUMERS = {"self_attn.q_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
             "self_attn.o_proj": ("self_attn.o_proj",), "mlp.gate_proj": ("mlp.gate_proj", "mlp.up_proj"),
             "mlp.down_proj": ("mlp.down_proj",)}


def capture_inputs(body, token_lists, max_tokens: int = MAX_TOKENS) -> list[dict[str, torch.Tensor]]:
    """Per layer and smoothing point, the input activations [tokens, K] over the calibration traces:
    every ``stride``-th token of the traces joined end to end (stride = tokens // ``max_tokens``),
    written as each trace runs into one tensor per point sized for them. Lists of every trace's
    activations joined at the end held them twice: 5.5 GB at the 1.5B shape for the built-in fit
    traces (1,764 tokens, 1.5 MB each over 28 layers), the export's peak."""
    total = sum(len(ids) for ids in token_lists)
    stride = max(1, total // max_tokens)
    kept = len(range(0, total, stride))
    out: list[dict[str, torch.Tensor]] = [{} for _ in body.layers]
    hooks, at = [], {"offset": 0, "row": 0}  # where the running trace starts: in all tokens, in kept rows
    for i, layer in enumerate(body.layers):
        for point in POINTS:
            def hook(_mod, args, i=i, point=point):
                rows = args[0].detach().flatten(0, -2)[(-at["offset"]) % stride::stride]
                if point not in out[i]:
                    out[i][point] = torch.empty(kept, rows.shape[1], dtype=torch.float32)
                out[i][point][at["row"]:at["row"] + len(rows)] = rows
            hooks.append(layer.get_submodule(point).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for ids in token_lists:
                body(input_ids=torch.as_tensor(ids, dtype=torch.long).unsqueeze(0))
                at["row"] += len(range((-at["offset"]) % stride, len(ids), stride))
                at["offset"] += len(ids)
    finally:
        for h in hooks:
            h.remove()
    return out


def quant_error(x: torch.Tensor, weights: list[torch.Tensor], fmt: WeightFormat, refs=None) -> list[float]:
    """Worst per-token error of each x @ W^T as ``fmt`` computes it, relative to a typical token.

    Per token, not over the whole tensor: one scale serves every token of the call, so a token
    far below the largest loses most precision, and an L2 norm over all tokens hides it. The
    error is divided by the RMS output norm over tokens (not the token's own norm), so tokens whose
    output is tiny anyway do not dominate. ``refs``: the fp32 products, when already computed.
    """
    errs = []
    for k, w in enumerate(weights):
        ref = x @ w.T if refs is None else refs[k]
        diff = (fmt.simulate(x, fmt.simulate_weight(w)) - ref).norm(dim=1)
        typical = ref.norm(dim=1).pow(2).mean().sqrt().clamp(min=1e-12)
        errs.append(float(diff.max() / typical))
    return errs


def _scales(act_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float | None) -> torch.Tensor:
    if alpha is None:
        return torch.ones_like(act_absmax)
    w = torch.stack([m.abs().amax(0) for m in weights]).amax(0)  # per input channel
    s = act_absmax.clamp(min=1e-5).pow(alpha) / w.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5)


def _alphas(layer, point: str, alphas) -> tuple:
    """down_proj's input behind an online rotation is not up_proj's output channel by channel, so
    no scale can be folded into up_proj there: that point is left as it is."""
    from .rotation import down_rotation

    return (None,) if point == "mlp.down_proj" and down_rotation(layer.mlp) is not None else alphas


def _group_scales(s: torch.Tensor, n_kv: int, group: int, d: int) -> torch.Tensor:
    """o_proj input channel (head h, dim i) carries v channel (kv head h // group, dim i): share s."""
    return s.view(n_kv, group, d).amax(1).view(n_kv, 1, d).expand(n_kv, group, d).reshape(-1)


def smooth_and_select(body, token_lists, fast_error: float, max_error: float,
                      alphas=ALPHAS) -> tuple[dict, dict[str, str], dict[str, dict[str, float]]]:
    """Fold the best equalization per point into ``body``; choose each linear's weight format.

    For each layer and smoothing point, try each alpha on the captured calibration inputs, with
    the quantization the graph will use (per-token int8 activations, 7-bit per-channel weights),
    and keep the alpha with the smallest error. Then each linear gets the cheapest format of
    :data:`~.formats.ORDER` whose simulated error is within bounds (``fast_error`` for 7-bit weights,
    ``max_error`` for the finer ones), else fp32. Returns (summary, {module name: format}, {module
    name: {format: simulated error}}).
    """
    cfg = body.config
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    group = n_heads // n_kv
    captured = capture_inputs(body, token_lists)
    chosen, formats, errors, worst = {}, {}, {}, 0.0
    with torch.no_grad():
        for i, (layer, xs) in enumerate(zip(body.layers, captured, strict=True)):
            for point in POINTS:
                mods = [layer.get_submodule(c) for c in CONSUMERS[point]]
                x = xs[point]
                act, weights = x.abs().amax(0), [m.weight for m in mods]
                refs = [x @ w.T for w in weights]  # equalization leaves the fp32 product unchanged
                alpha, s, errs = _best_alpha(x, act, weights, refs, _alphas(layer, point, alphas),
                                             (n_kv, group, d) if point == "self_attn.o_proj" else None)
                chosen[f"layers.{i}.{point}"] = alpha
                per_format = {FAST.name: errs, **{f.name: quant_error(x / s, [w * s for w in weights], f, refs)
                                                  for f in FORMATS.values() if f is not FAST and f.fits(x.shape[1])}}
                if alpha is not None:
                    _fold_point(layer, point, s, n_kv, d)
                for k, c in enumerate(CONSUMERS[point]):
                    name = f"layers.{i}.{c}"
                    errors[name] = {f: e[k] for f, e in per_format.items()}
                    formats[name] = _cheapest(errors[name], fast_error, max_error)
                    worst = max(worst, errors[name].get(formats[name], 0.0))
    summary = {"method": "smoothquant, alpha searched per layer and input", "alphas": list(alphas),
               "calibration_tokens_per_point": int(captured[0]["mlp.down_proj"].shape[0]) if captured else 0,
               "alpha_chosen": {str(a): sum(1 for v in chosen.values() if v == a) for a in alphas},
               "formats": format_counts(formats), "fast_error": fast_error, "max_error": max_error,
               "worst_simulated_error": round(worst, 5)}
    return summary, formats, errors


def _best_alpha(x, act, weights, refs, alphas, kv_groups) -> tuple:
    """(alpha, scales, errors) of the alpha with the smallest error, None unless one gains MIN_GAIN."""
    tried = []
    for alpha in alphas:
        s = _scales(act, weights, alpha)
        if kv_groups:
            s = _group_scales(s, *kv_groups)
        tried.append((alpha, s, quant_error(x / s, [w * s for w in weights], FAST, refs)))
    best = min(tried, key=lambda t: max(t[2]))
    plain = next((t for t in tried if t[0] is None), None)
    return plain if plain and max(best[2]) > MIN_GAIN * max(plain[2]) else best


def _cheapest(errors: dict[str, float], fast_error: float, max_error: float) -> str:
    """The cheapest format whose simulated error is within its bound (the fast one's, else max_error);
    if none is, the integer format with the smallest error (fp32 is only the end-to-end fit's to give)."""
    for name in ORDER[:-1]:
        if name in errors and errors[name] <= (fast_error if name == FAST.name else max_error):
            return name
    return min(errors, key=errors.get)


def _fold_point(layer, point: str, s: torch.Tensor, n_kv: int, d: int) -> None:
    attn, mlp = layer.self_attn, layer.mlp
    if point == "self_attn.q_proj":
        layer.input_layernorm.weight.div_(s)
        for m in (attn.q_proj, attn.k_proj, attn.v_proj):
            m.weight.mul_(s)
    elif point == "mlp.gate_proj":
        layer.post_attention_layernorm.weight.div_(s)
        for m in (mlp.gate_proj, mlp.up_proj):
            m.weight.mul_(s)
    elif point == "mlp.down_proj":
        mlp.up_proj.weight.div_(s.unsqueeze(1))
        mlp.down_proj.weight.mul_(s)
    else:  # o_proj: s is already shared across each kv group
        sv = s.view(n_kv, -1, d)[:, 0, :].reshape(-1)
        attn.v_proj.weight.div_(sv.unsqueeze(1))
        if attn.v_proj.bias is not None:
            attn.v_proj.bias.div_(sv)
        attn.o_proj.weight.mul_(s)
