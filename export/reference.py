"""Reference rewards in torch, computed the way the source model defines them (no rfedge graph)."""

from __future__ import annotations

import numpy as np


def scalar_rewards(prm, ids: np.ndarray, step_tokens: np.ndarray) -> tuple[np.ndarray, float]:
    """ReasonFlux-PRM-1.5B semantics: head on the final hidden state, sigmoid.

    One causal forward pass gives every prefix's last state: the state at token i equals the last
    state of the prefix ``ids[:i+1]``. Returns (step rewards at ``step_tokens``, trajectory reward).
    """
    import torch

    with torch.no_grad():
        x = torch.as_tensor(ids, dtype=torch.long).unsqueeze(0)
        hidden = prm.body(input_ids=x).last_hidden_state[0].float()
        traj = torch.sigmoid(prm.head(hidden[-1:])).squeeze().item()
        step_head = prm.step_head if prm.step_head is not None else prm.head
        idx = torch.as_tensor(step_tokens, dtype=torch.long)
        steps = torch.sigmoid(step_head(hidden[idx])).squeeze(-1).numpy() if len(idx) else np.zeros(0)
    return steps.astype(np.float64), float(traj)


def two_class_step_rewards(prm, tokenizer, trace) -> list[tuple[str, int, float]]:
    """Qwen2.5-Math-PRM semantics: softmax(score(h))[1] at each <extra_0>, pooled by separator position.

    ``tokenizer`` is a ``tokenizers.Tokenizer`` with <extra_0> at id 151651. Returns
    (section, index, reward) per step of the rfedge segmentation.
    """
    import torch

    from .chat import SEPARATOR_ID, render_prm_chat, step_texts

    steps = step_texts(trace)
    ids = tokenizer.encode(render_prm_chat(trace.problem, [t for _, _, t in steps]), add_special_tokens=False).ids
    positions = [i for i, t in enumerate(ids) if t == SEPARATOR_ID]
    if len(positions) != len(steps):
        raise ValueError(f"trace {trace.id}: {len(positions)} separators for {len(steps)} steps "
                         "(a step contains <extra_0>?)")
    with torch.no_grad():
        hidden = prm.body(input_ids=torch.tensor([ids])).last_hidden_state[0]
        if not positions:
            return []
        probs = torch.softmax(prm.score(hidden[positions]).float(), dim=-1)[:, 1].tolist()
    return [(sec, idx, p) for (sec, idx, _), p in zip(steps, probs)]
