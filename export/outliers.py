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
