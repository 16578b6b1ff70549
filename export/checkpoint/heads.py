"""Reward heads over a final hidden state: the 1.5B's Linear(h,1) and the distilled step head."""

from __future__ import annotations

from pathlib import Path

from rfedge.errors import ModelFilesError


def make_step_head(hidden: int, kind: str = "mlp"):
    import torch.nn as nn

    if kind == "linear":
        return nn.Sequential(nn.Linear(hidden, 1))
    return nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))


def step_head_from_state(state: dict, hidden: int, where: Path):
    kind = "mlp" if "2.weight" in state else "linear"
    head = make_step_head(hidden, kind)
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        raise ModelFilesError(f"{where}: not a step head for hidden size {hidden} ({str(e).splitlines()[0]})") from None
    return head.eval()
