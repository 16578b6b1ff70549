"""Weight formats of the INT8 recipe: each one object with both of its halves.

A format has its integer range, the format a linear moves up to when it is too coarse, the codes
the graph stores (numpy, at export) and the torch simulation of exactly those codes (the
sensitivity search and the end-to-end fit), side by side so they cannot drift apart; a test pins
that the graph computes what the simulation does. Weights are symmetric per output channel:
``scale = max |w| / qmax``, ``q = round(w / scale)`` clipped to ``[-qmax, qmax]``.

- ``int8-7bit``: |q| <= 63, int8 weights for ONNX Runtime's fast uint8 x int8 kernel. Without VNNI
  that kernel adds pairs of products in int16 (vpmaddubsw) and saturates with full-range weights;
  2 x 255 x 63 < 32767, so 7-bit weights cannot.
- ``int8-8bit``: |q| <= 127, stored as uint8 with zero point 128 for the uint8 x uint8 kernel (no
  int16 saturation, about 25% slower without VNNI).
- ``fp32``: the linear is left unquantized (the last resort).
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
    unsigned: bool  # stored as uint8 with zero point 128 (else int8 with zero point 0)

    def codes(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The graph's weights for ``w`` [K, N] (ONNX MatMul layout): (codes [K, N], fp32 scales [N])."""
        w = np.asarray(w, dtype=np.float32)
        scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / self.qmax
        q = np.clip(np.rint(w / scale), -self.qmax, self.qmax).astype(np.int8)
        if self.unsigned:
            q = (q.astype(np.int16) + 128).astype(np.uint8)
        return q, scale.astype(np.float32)

    def simulate_codes(self, w):
        """The same codes in torch for ``w`` [N, K] (a torch Linear's layout): (int8 codes, scales [N, 1])."""
        import torch

        scale = torch.clamp(w.abs().amax(1, keepdim=True), min=1e-12) / self.qmax
        return torch.clamp(torch.round(w / scale), -self.qmax, self.qmax).to(torch.int8), scale

    def simulate(self, w):
        """The dequantized weights the graph multiplies by, in torch, [N, K]."""
        codes, scale = self.simulate_codes(w)
        return codes.float() * scale


FORMATS: dict[str, WeightFormat] = {f.name: f for f in (
    WeightFormat("int8-7bit", 63, "int8-8bit", unsigned=False),
    WeightFormat("int8-8bit", 127, FP32, unsigned=True),
)}
ORDER = (*FORMATS, FP32)  # cheapest first


def format_counts(formats: dict[str, str]) -> dict[str, int]:
    """How many linears have each weight format (the manifest's summary)."""
    return {f: sum(1 for v in formats.values() if v == f) for f in ORDER}


def fake_quant_activations(x):
    """The graph's activation quantization in torch: symmetric int8, one scale per token (row)."""
    import torch

    scale = torch.clamp(x.abs().amax(-1, keepdim=True) / 127, min=1e-12)
    return torch.clamp(torch.round(x / scale), -127, 127) * scale
