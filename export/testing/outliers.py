"""Activation outliers injected into a checkpoint, as trained LLMs have them.

Trained models carry a few hidden channels tens to thousands of times larger than the rest
(SmoothQuant; Sun et al., "Massive activations", 2024); random test weights do not, so they hide
what per-tensor activation quantization does to real models. ``inject_outliers`` scales a few
RMSNorm weight channels (outliers at every q/k/v and gate/up input) and one ``up_proj`` row (an
outlier at the ``down_proj`` input) per layer by ``alpha``, in a saved 1.5B-layout checkpoint.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_CHANNELS = (3, 17, 42)


def inject_outliers(path: Path, alpha: float, channels: tuple[int, ...] = DEFAULT_CHANNELS,
                    up_row: int = 5) -> dict:
    """Rewrite ``path``'s model.safetensors in place; return what was changed."""
    from safetensors.torch import load_file, save_file

    f = Path(path) / "model.safetensors"
    state = load_file(str(f))
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("model.layers.")})
    for i in layers:
        p = f"model.layers.{i}."
        for norm in ("input_layernorm", "post_attention_layernorm"):
            state[p + norm + ".weight"][list(channels)] *= alpha
        state[p + "mlp.up_proj.weight"][up_row] *= alpha
    save_file(state, str(f), metadata={"format": "pt"})
    return {"alpha": alpha, "norm_channels": list(channels), "up_proj_row": up_row, "layers": len(layers)}


def inject_down_input_outliers(path: Path, alpha: float, channels: tuple[int, ...] = (5, 77)) -> dict:
    """Outliers at down_proj's input only (after SiLU x up, which neither per-token scales nor the
    RMSNorm-fed SmoothQuant points reach): the gate and up rows of ``channels`` scaled by sqrt(alpha)."""
    from safetensors.torch import load_file, save_file

    f = Path(path) / "model.safetensors"
    state = load_file(str(f))
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("model.layers.")})
    for i in layers:
        for m in ("mlp.gate_proj", "mlp.up_proj"):
            state[f"model.layers.{i}.{m}.weight"][list(channels)] *= alpha ** 0.5
    save_file(state, str(f), metadata={"format": "pt"})
    return {"alpha": alpha, "down_proj_input_channels": list(channels), "layers": len(layers)}


def inject_residual_outliers(path: Path, alpha: float, channels: tuple[int, ...] = (7, 50), seed: int = 0) -> dict:
    """Massive residual-stream channels (Sun et al., 2024), a different shape from :func:`inject_outliers`:
    the embedding and every o_proj/down_proj write ``channels`` alpha times larger, and the intermediate
    channels of a few gate/up rows are scaled so down_proj's input carries outliers of its own."""
    import torch
    from safetensors.torch import load_file, save_file

    f = Path(path) / "model.safetensors"
    state = load_file(str(f))
    ch = list(channels)
    state["model.embed_tokens.weight"][:, ch] *= alpha
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("model.layers.")})
    g = torch.Generator().manual_seed(seed)
    for i in layers:
        p = f"model.layers.{i}."
        for m in ("self_attn.o_proj", "mlp.down_proj"):
            state[p + m + ".weight"][ch] *= alpha
        rows = torch.randperm(state[p + "mlp.up_proj.weight"].shape[0], generator=g)[:2].tolist()
        for m in ("mlp.gate_proj", "mlp.up_proj"):
            state[p + m + ".weight"][rows] *= alpha ** 0.5
    save_file(state, str(f), metadata={"format": "pt"})
    return {"alpha": alpha, "residual_channels": ch, "layers": len(layers)}


def tiny_checkpoint(path: Path, tokenizer_dir: Path, seed: int = 0, layers: int = 2,
                           head_format: str = "pt", kv_heads: int = 2, head_scale: float = 4.0,
                           hidden: int = 64) -> Path:
    """A tiny ReasonFlux-PRM-1.5B-layout checkpoint (Qwen2ForCausalLM dir + reward head), random weights.

    Real Qwen2.5 vocabulary size, so the real tokenizer files in ``tokenizer_dir`` fit it.
    """
    import shutil

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=151936, hidden_size=hidden, intermediate_size=128,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=kv_heads,
                      max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=True,
                      eos_token_id=151643, bos_token_id=151643)
    model = Qwen2ForCausalLM(cfg)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    head = torch.nn.Linear(hidden, 1)
    with torch.no_grad():
        head.weight.normal_(0, head_scale / hidden ** 0.5)
    if head_format == "pt":
        torch.save(head.state_dict(), path / "reward_head.pt")
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(path / "reward_head.safetensors"))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_dir / f, path / f)
    return path
