"""Reference rewards in torch, computed the way the source model defines them (no rfedge graph)."""

from __future__ import annotations

import numpy as np


def reward_tensors(prm, ids: np.ndarray, step_tokens: np.ndarray, device: str = "cpu"):
    """ReasonFlux-PRM-1.5B semantics as torch tensors (differentiable): (step rewards [S], trajectory reward).

    The head on the final hidden state, sigmoid. One causal forward pass gives every prefix's last
    state: the state at token i equals the last state of the prefix ``ids[:i+1]``.
    """
    import torch

    x = torch.as_tensor(ids, dtype=torch.long, device=device).unsqueeze(0)
    hidden = prm.body(input_ids=x).last_hidden_state[0]
    traj = torch.sigmoid(prm.head(hidden[-1:]).float()).reshape(())
    step_head = prm.step_head if prm.step_head is not None else prm.head
    idx = torch.as_tensor(step_tokens, dtype=torch.long, device=device)
    return torch.sigmoid(step_head(hidden[idx]).float()).reshape(-1), traj


def scalar_rewards(prm, ids: np.ndarray, step_tokens: np.ndarray, device: str = "cpu") -> tuple[np.ndarray, float]:
    """:func:`reward_tensors` as numbers: (step rewards at ``step_tokens``, trajectory reward)."""
    import torch

    with torch.no_grad():
        steps, traj = reward_tensors(prm, ids, step_tokens, device)
    return steps.cpu().numpy().astype(np.float64), float(traj)

