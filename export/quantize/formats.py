"""Weight formats of the INT8 recipes: each one object with both of its halves.

A format has its integer range, the format a linear moves up to when it is too coarse, the codes
the graph stores (numpy, at export) and the torch simulation of exactly what the graph computes
with them (the sensitivity search and the end-to-end fit), side by side so they cannot drift
apart; tests pin that the graph computes what the simulation does. The ladder, cheapest first:

- ``int8-7bit``: weights symmetric per output channel, |q| <= 63, activations int8 per token
  (``QuantizeLinear`` per row, then ``MatMulIntegerToFloat`` uint8 x int8). Without VNNI, ONNX
  Runtime's uint8 x int8 kernel adds pairs of products in int16 (vpmaddubsw) and saturates with
  full-range weights; 2 x 255 x 63 < 32767, so 7-bit weights cannot: the graph is right on any CPU.
- ``int8-8bit``: |q| <= 127 stored as uint8 with zero point 128 (uint8 x uint8 kernel, no int16
  saturation; slower without VNNI).
- ``int8-g32``: 8-bit weights and int8 activations each with one scale per block of 32 along the
  input (per token and block): ``MatMulNBits`` (bits 8, block 32, accuracy level 4). Finer, still
  integer, about 2.5x slower than the per-token kernels here.
- ``fp32``: left unquantized, the last resort (counted and reported).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FP32 = "fp32"


@dataclass(frozen=True)
class WeightFormat:
    name: str
    qmax: int
    promotes_to: str  # the next format up when this one is too coarse for a linear
    unsigned: bool = False  # per-channel codes stored as uint8 with zero point 128
    block: int | None = None  # None: per output channel weights and per-token activations

    def codes(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The graph's weights for ``w`` [K, N] (ONNX MatMul layout).

        Per channel: (codes [K, N] int8, or uint8 + 128, scales [N]). Per block: MatMulNBits' layout,
        (uint8 codes + 128 [N, K/block, block], scales [N * K/block]).
        """
        w = np.asarray(w, dtype=np.float32)
        if self.block is None:
            scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / self.qmax
            q = np.clip(np.rint(w / scale), -self.qmax, self.qmax).astype(np.int8)
            return ((q.astype(np.int16) + 128).astype(np.uint8) if self.unsigned else q), scale.astype(np.float32)
        blocks = w.T.reshape(w.shape[1], w.shape[0] // self.block, self.block)
        scale = np.maximum(np.abs(blocks).max(axis=2), 1e-12) / self.qmax
        q = np.clip(np.rint(blocks / scale[..., None]), -self.qmax, self.qmax)
        return (q + 128).astype(np.uint8), scale.astype(np.float32).reshape(-1)

    def fits(self, in_features: int) -> bool:
        return self.block is None or in_features % self.block == 0

    def simulate_weight(self, w):
        """The dequantized weights the graph multiplies by, in torch, [N, K] (a Linear's layout)."""
        import torch

        if self.block is None:
            scale = torch.clamp(w.abs().amax(1, keepdim=True), min=1e-12) / self.qmax
            return torch.clamp(torch.round(w / scale), -self.qmax, self.qmax) * scale
        return _blockwise(w, self.block, self.qmax)

    def simulate_input(self, x):
        """The activations the graph multiplies: int8 per token, or per token and block."""
        return fake_quant_activations(x) if self.block is None else _blockwise(x, self.block, 127)

    def simulate(self, x, weight_q):
        """``x @ W^T`` as the graph computes it, with ``weight_q`` from :meth:`simulate_weight`."""
        return self.simulate_input(x) @ weight_q.T


def _blockwise(x, block: int, qmax: int):
    import torch

    y = x.reshape(*x.shape[:-1], x.shape[-1] // block, block)
    scale = torch.clamp(y.abs().amax(-1, keepdim=True), min=1e-12) / qmax
    return (torch.clamp(torch.round(y / scale), -qmax, qmax) * scale).reshape(x.shape)


FORMATS: dict[str, WeightFormat] = {f.name: f for f in (
    WeightFormat("int8-7bit", 63, "int8-8bit"),
    WeightFormat("int8-8bit", 127, "int8-g32", unsigned=True),
    WeightFormat("int8-g32", 127, FP32, block=32),
)}
ORDER = (*FORMATS, FP32)  # cheapest first


def promote(name: str, in_features: int) -> str:
    """The next format up for a linear of ``in_features`` inputs (skipping ones it cannot use)."""
    nxt = FORMATS[name].promotes_to
    while nxt != FP32 and not FORMATS[nxt].fits(in_features):
        nxt = FORMATS[nxt].promotes_to
    return nxt


def format_counts(formats: dict[str, str]) -> dict[str, int]:
    """How many linears have each weight format (the manifest's summary)."""
    return {f: sum(1 for v in formats.values() if v == f) for f in ORDER}


def fake_quant_activations(x):
    """The graph's per-token activation quantization in torch: symmetric int8, one scale per row."""
    import torch

    scale = torch.clamp(x.abs().amax(-1, keepdim=True) / 127, min=1e-12)
    return torch.clamp(torch.round(x / scale), -127, 127) * scale
