"""Weight formats of the INT8 recipes: each one object with both of its halves.

A format has its integer range, the format a linear moves up to when it is too coarse, the codes
the graph stores (numpy, at export) and the torch simulation of exactly what the graph computes
with them (the sensitivity search and the end-to-end fit), side by side so they cannot drift
apart; tests pin that the graph computes what the simulation does. The ladder, cheapest first:

- ``int8-7bit``: weights symmetric per output channel, |q| <= 63, activations int8 per token
  (``QuantizeLinear`` per row, then ``MatMulIntegerToFloat`` uint8 x int8). Without VNNI, ONNX
  Runtime's uint8 x int8 kernel adds pairs of products in int16 (vpmaddubsw) and saturates with
  full-range weights; 2 x 255 x 63 < 32767, so 7-bit weights cannot: the graph is right on any CPU.
- ``int8-8bit``: |q| <= 126, stored once as int8; the graph splits the codes into two 7-bit halves
  (``hi = clip(q, -63, 63)``, ``lo = q - hi``, folded at session start) and runs the same fast
  uint8 x int8 kernel on ``[x, x] @ [hi; lo]``, which is exactly ``x @ q``: twice the 7-bit GEMM's
  work, never saturating. A uint8 x uint8 kernel (the earlier layout) ran 5.7x slower than 7-bit
  on a VNNI CPU (``bench/int8_kernels.py``: ONNX Runtime has no VNNI kernel for it).
- ``int8-g32``: 8-bit weights and int8 activations each with one scale per block of 32 along the
  input (per token and block): ``MatMulNBits`` (bits 8, block 32, accuracy level 4). Finer, still
  integer, but slow: 2.5x slower than the per-token kernels on a CPU without VNNI, 7x on one with
  VNNI, where it is slower than fp32 MatMul (``bench/int8_kernels.py``).
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
    split: bool = False  # 8-bit codes run as two 7-bit halves (the graph's rewrite, quantize.int8)
    block: int | None = None  # None: per output channel weights and per-token activations

    def codes(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The graph's weights for ``w`` [K, N] (ONNX MatMul layout).

        Per channel: (codes [K, N] int8, scales [N]). Per block: MatMulNBits' layout,
        (uint8 codes + 128 [N, K/block, block], scales [N * K/block]).
        """
        w = np.asarray(w, dtype=np.float32)
        if self.block is None:
            scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / self.qmax
            q = np.clip(np.rint(w / scale), -self.qmax, self.qmax).astype(np.int8)
            return q, scale.astype(np.float32)
        blocks = w.T.reshape(w.shape[1], w.shape[0] // self.block, self.block)
        scale = np.maximum(np.abs(blocks).max(axis=2), 1e-12) / self.qmax
        q = np.clip(np.rint(blocks / scale[..., None]), -self.qmax, self.qmax)
        return (q + 128).astype(np.uint8), scale.astype(np.float32).reshape(-1)

    def fits(self, in_features: int) -> bool:
        return self.block is None or in_features % self.block == 0

    def simulate_weight(self, w):
        """The dequantized weights the graph multiplies by, in torch, [N, K] (a Linear's layout)."""
        return self.quantize_weight(w).dequantized()

    def quantize_weight(self, w) -> "SimulatedWeight":
        """``w`` [N, K] (torch) as the graph stores it: int8 codes and fp32 scales, a quarter of fp32's
        memory; :meth:`SimulatedWeight.dequantized` gives exactly :meth:`simulate_weight`'s values."""
        block = self.block or w.shape[-1]  # per output channel: each row one block
        return SimulatedWeight(*_block_codes(w, block, self.qmax), tuple(w.shape))

    def simulate_input(self, x):
        """The activations the graph multiplies: int8 per token, or per token and block."""
        return fake_quant_activations(x) if self.block is None else _blockwise(x, self.block, 127)

    def simulate(self, x, weight_q):
        """``x @ W^T`` as the graph computes it, with ``weight_q`` from :meth:`simulate_weight` (or a
        :class:`SimulatedWeight`, dequantized here for this product only)."""
        if isinstance(weight_q, SimulatedWeight):
            weight_q = weight_q.dequantized()
        return self.simulate_input(x) @ weight_q.T


@dataclass(frozen=True)
class SimulatedWeight:
    """A linear's weights as a format stores them (int8 codes, fp32 scales per row or per block)."""

    codes: object  # torch int8, [N, K/block, block] (per channel: one block of K)
    scale: object  # torch fp32, [N, K/block, 1]
    shape: tuple

    def dequantized(self):
        """codes x scales in fp32, [N, K] (one kernel: int8 promotes to fp32 in the product)."""
        return (self.codes * self.scale).reshape(self.shape)


def _block_codes(x, block: int, qmax: int):
    import torch

    y = x.reshape(*x.shape[:-1], x.shape[-1] // block, block)
    scale = torch.clamp(y.abs().amax(-1, keepdim=True), min=1e-12) / qmax
    return torch.clamp(torch.round(y / scale), -qmax, qmax).to(torch.int8), scale


def _blockwise(x, block: int, qmax: int):
    codes, scale = _block_codes(x, block, qmax)
    return (codes * scale).reshape(x.shape)


FORMATS: dict[str, WeightFormat] = {f.name: f for f in (
    WeightFormat("int8-7bit", 63, "int8-8bit"),
    WeightFormat("int8-8bit", 126, "int8-g32", split=True),
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
