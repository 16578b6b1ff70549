"""Rotations that remove activation outliers before INT8 (QuaRot, Ashkboos et al. 2024).

Trained LLMs carry a few residual-stream channels far larger than the rest; per-token int8 scales
then spend their range on those channels. Multiplying the residual stream by an orthogonal matrix Q
spreads every channel over all of them, and the model computes exactly the same function when Q is
folded into the weights:

1. RMSNorm weights are folded into the linears they feed (q/k/v, gate/up; the final norm into the
   reward heads) and set to 1, so the normalisation commutes with Q (it only divides by the RMS,
   which an orthogonal Q keeps);
2. the embedding becomes ``E Q``, the linears reading the stream ``W Q``, the ones writing it
   (o_proj, down_proj) ``Q^T W``, the heads ``W Q``;
3. ``down_proj``'s input (SiLU(gate) x up), which no residual rotation reaches, is rotated online
   by a block-diagonal Hadamard (blocks of a power of two dividing the intermediate size, e.g. 70 of
   128 for 8,960): ``a -> a H``, ``W_down -> W_down H``; the graph applies ``H`` (one small fp32
   MatMul per layer, left unquantized).

Q is a randomized Hadamard matrix (random signs, for hidden sizes 2^k, 12 x 2^k or 20 x 2^k; 1,536 =
12 x 128), else a random orthogonal one. The fp32 function is unchanged up to rounding (tested).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch

MAX_BLOCK = 128  # the online Hadamard's block: the largest power of two <= this dividing the size


def _sylvester(n: int) -> np.ndarray:
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def _paley(q: int) -> np.ndarray:
    """Paley's construction I: a Hadamard matrix of order q + 1 for a prime q = 3 (mod 4)."""
    residues = {(i * i) % q for i in range(1, q)}
    chi = lambda a: 0 if a % q == 0 else (1 if a % q in residues else -1)  # noqa: E731
    jacobsthal = np.array([[chi(j - i) for j in range(q)] for i in range(q)])
    s = np.zeros((q + 1, q + 1))
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1, -1, jacobsthal
    return s + np.eye(q + 1)


def hadamard(n: int) -> np.ndarray | None:
    """A Hadamard matrix of order n (entries +-1, H H^T = n I), or None when none is built here."""
    for base, make in ((1, lambda: np.ones((1, 1))), (12, lambda: _paley(11)), (20, lambda: _paley(19))):
        k = n // base
        if n % base == 0 and k & (k - 1) == 0:
            return np.kron(make(), _sylvester(k))
    return None


def random_orthogonal(n: int, seed: int = 0) -> torch.Tensor:
    """A randomized Hadamard matrix (orthonormal, random column signs), or a random orthogonal one."""
    rng = np.random.default_rng(seed)
    h = hadamard(n)
    if h is not None:
        q = h / math.sqrt(n) * rng.choice([-1.0, 1.0], size=n)
    else:
        q, r = np.linalg.qr(rng.standard_normal((n, n)))
        q *= np.sign(np.diag(r))
    return torch.from_numpy(q).float()


def block_size(n: int) -> int | None:
    """The online Hadamard's block for an input of size n (a power of two >= 16 dividing it)."""
    b = MAX_BLOCK
    while b >= 16:
        if n % b == 0:
            return b
        b //= 2
    return None


def block_rotate(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """x [..., n] times the block-diagonal matrix of ``h`` [b, b] blocks (what the graph computes)."""
    b = h.shape[0]
    return (x.reshape(*x.shape[:-1], x.shape[-1] // b, b) @ h).reshape(x.shape)


def _fold_norm(norm, linears) -> None:
    for m in linears:
        m.weight.mul_(norm.weight.to(m.weight.dtype))
    norm.weight.fill_(1.0)


def _head_inputs(head) -> list:
    """The linear(s) of a head that read the final normed state."""
    return [head[0]] if isinstance(head, torch.nn.Sequential) else [head]


@torch.no_grad()
def rotate(prm, seed: int = 0) -> dict:
    """Fold the norms, rotate the residual stream and down_proj's inputs of ``prm`` in place."""
    body = prm.body
    heads = [h for h in {id(x): x for x in (prm.head, prm.step_head) if x is not None}.values()]
    q = random_orthogonal(body.config.hidden_size, seed)
    for layer in body.layers:
        attn, mlp = layer.self_attn, layer.mlp
        _fold_norm(layer.input_layernorm, (attn.q_proj, attn.k_proj, attn.v_proj))
        _fold_norm(layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj))
        for m in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            m.weight.copy_(m.weight @ q)
        for m in (attn.o_proj, mlp.down_proj):
            m.weight.copy_(q.T @ m.weight)
            if m.bias is not None:
                m.bias.copy_(m.bias @ q)
    _fold_norm(body.norm, [m for head in heads for m in _head_inputs(head)])
    for head in heads:
        for m in _head_inputs(head):
            m.weight.copy_(m.weight @ q)
    body.embed_tokens.weight.copy_(body.embed_tokens.weight @ q)
    b = block_size(body.config.intermediate_size)
    if b is not None:
        h = torch.from_numpy(hadamard(b) / math.sqrt(b)).float()
        for layer in body.layers:
            mlp = layer.mlp
            mlp.down_proj.weight.copy_(block_rotate(mlp.down_proj.weight, h))
            mlp.register_buffer("down_rotation", h.clone(), persistent=False)
    return {"method": "randomized Hadamard rotation of the residual stream folded into the weights (QuaRot)",
            "residual": "hadamard" if hadamard(body.config.hidden_size) is not None else "random orthogonal",
            "down_proj_online_hadamard_block": b, "seed": seed}


def down_rotation(mlp) -> torch.Tensor | None:
    return getattr(mlp, "down_rotation", None)


@contextmanager
def online(body):
    """Apply the online down_proj rotation in transformers' own forward (simulation, calibration)."""
    def rotating(h):
        return lambda mod, args: (block_rotate(args[0], h), *args[1:])

    hooks = [layer.mlp.down_proj.register_forward_pre_hook(rotating(down_rotation(layer.mlp)))
             for layer in body.layers if down_rotation(layer.mlp) is not None]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
