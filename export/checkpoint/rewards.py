"""Reference rewards in torch, computed the way the source model defines them (no rfedge graph)."""

from __future__ import annotations

import numpy as np


def scalar_rewards(prm, ids: np.ndarray, step_tokens: np.ndarray, device: str = "cpu") -> tuple[np.ndarray, float]:
    """ReasonFlux-PRM-1.5B semantics: head on the final hidden state, sigmoid.

    One causal forward pass gives every prefix's last state: the state at token i equals the last
    state of the prefix ``ids[:i+1]``. Returns (step rewards at ``step_tokens``, trajectory reward).
    """
    import torch

    with torch.no_grad():
        x = torch.as_tensor(ids, dtype=torch.long, device=device).unsqueeze(0)
        hidden = prm.body(input_ids=x).last_hidden_state[0]
        traj = torch.sigmoid(prm.head(hidden[-1:]).float()).squeeze().item()
        step_head = prm.step_head if prm.step_head is not None else prm.head
        idx = torch.as_tensor(step_tokens, dtype=torch.long, device=device)
        steps = (torch.sigmoid(step_head(hidden[idx]).float()).squeeze(-1).cpu().numpy()
                 if len(idx) else np.zeros(0))
    return steps.astype(np.float64), float(traj)

