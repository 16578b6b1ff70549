"""A reference PRM on a small GPU: its body loaded in bitsandbytes 8-bit (LLM.int8()) or 4-bit NF4,
through transformers' ``BitsAndBytesConfig``, on CUDA (``--reference-quant``, ``--teacher-quant``).

The checks come first and name what is missing, before any weight is read: a quantized reference
needs CUDA (bitsandbytes' GPU kernels; its CPU path is not what this option is for) and the
bitsandbytes package. The score head stays in the compute dtype; only the body's linears are
quantized.
"""

from __future__ import annotations

from rfedge.errors import MissingExtraError, UsageError

QUANTS = ("none", "int8", "nf4")
LABELS = {"int8": "8-bit (LLM.int8())", "nf4": "4-bit NF4"}


def check_quant(quant: str, device: str, option: str = "--reference-quant") -> None:
    """Refuse a quantized reference that cannot load here, with what to do instead."""
    if quant not in QUANTS:
        raise UsageError(f"{option} {quant}: choose one of {', '.join(QUANTS)}")
    if quant == "none":
        return
    if device != "cuda":
        raise UsageError(f"{option} {quant}: bitsandbytes {LABELS[quant]} loads the reference on CUDA; add "
                         f"--device cuda on a machine with an NVIDIA GPU, or drop {option}")
    import torch

    if not torch.cuda.is_available():
        raise UsageError(f"{option} {quant}: torch sees no CUDA device; run on a machine with an NVIDIA GPU, "
                         f"or drop {option}")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise MissingExtraError(f"{option} {quant} needs bitsandbytes: pip install 'bitsandbytes>=0.45'") from None


def from_pretrained_options(quant: str, dtype: str) -> dict:
    """Keyword arguments for ``from_pretrained`` that load the weights quantized onto GPU 0."""
    if quant == "none":
        return {}
    import torch
    from transformers import BitsAndBytesConfig

    compute = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    if quant == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
                                    bnb_4bit_use_double_quant=False)
    return {"quantization_config": config, "device_map": {"": 0}}
