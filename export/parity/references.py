"""Reference PRMs for parity, one entry per layout: a registry, not if/elif chains.

``two-class``: Qwen2.5-Math-PRM / ReasonFlux-PRM-7B (score MLP, P(class 1) at each <extra_0>);
``lm-tokens``: a causal LM whose verdict is read from two vocabulary logits at each separator
(vLLM's ``returned_token_ids``); ``scalar``: the ReasonFlux-PRM-1.5B layout itself in torch (the
quantization-fidelity mode). Steps are pooled by separator position, never by filtering non-zero
probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from rfedge.constants import TOKENIZER_FILE
from rfedge.errors import UsageError

from .chat import SEPARATOR_ID, render_prm_chat, step_texts

DTYPES = ("fp32", "bf16")


@dataclass
class ReferenceRewards:
    steps: list  # [(section, index, reward)]
    trajectory: float | None = None


@dataclass
class Reference:
    layout: str
    source_id: str
    score_trace: Callable
    options: dict = field(default_factory=dict)

    def key(self) -> str:
        return f"{self.layout}|{self.source_id}|{sorted(self.options.items())}"


def _device(model, device: str, quant: str = "none"):
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: torch sees no CUDA device")
    return model if quant != "none" else model.to(device)  # bitsandbytes placed a quantized body already


def _separator_positions(ids, steps, trace):
    positions = [i for i, t in enumerate(ids) if t == SEPARATOR_ID]
    if len(positions) != len(steps):
        raise UsageError(f"trace {trace.id}: {len(positions)} <extra_0> separators for {len(steps)} steps; "
                         "a step's text contains <extra_0>")
    return positions


def _separator_scorer(src, body, verdict, device: str):
    """Score a trace in the chat format: ``verdict`` maps the final states at the <extra_0>
    separators to P(correct) per step."""
    import torch
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(src.path / TOKENIZER_FILE))

    def score(trace) -> ReferenceRewards:
        steps = step_texts(trace)
        ids = tk.encode(render_prm_chat(trace.problem, [t for _, _, t in steps]), add_special_tokens=False).ids
        pos = _separator_positions(ids, steps, trace)
        if not pos:
            return ReferenceRewards([])
        with torch.no_grad():
            h = body(input_ids=torch.tensor([ids], device=device)).last_hidden_state[0, pos]
            p = verdict(h).cpu().tolist()
        return ReferenceRewards([(s, i, r) for (s, i, _), r in zip(steps, p, strict=True)])
    return score


def _two_class(src, dtype: str, device: str, quant: str = "none", **_):
    import torch

    from ..checkpoint.source import load_two_class_prm

    prm = load_two_class_prm(src, dtype, quant)
    _device(prm.body, device, quant), _device(prm.score, device)
    return _separator_scorer(src, prm.body, lambda h: torch.softmax(prm.score(h).float(), dim=-1)[:, 1], device)


def _lm_tokens(src, dtype: str, device: str, positive_token: int | None = None,
               negative_token: int | None = None, quant: str = "none", **_):
    import torch
    from transformers import Qwen2ForCausalLM

    from ..checkpoint.quantized import from_pretrained_options

    if positive_token is None or negative_token is None:
        raise UsageError("the lm-tokens reference needs --positive-token and --negative-token (vocabulary ids)")
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    model = _device(Qwen2ForCausalLM.from_pretrained(str(src.path), dtype=torch_dtype, trust_remote_code=False,
                                                     **from_pretrained_options(quant, dtype)).eval(), device, quant)

    def verdict(h):
        return torch.softmax(model.lm_head(h)[:, [positive_token, negative_token]].float(), dim=-1)[:, 0]
    return _separator_scorer(src, model.model, verdict, device)


def _scalar(src, dtype: str, device: str, quant: str = "none", **_):
    from rfedge.tokenization import TraceTokenizer

    from ..checkpoint.rewards import scalar_rewards
    from ..checkpoint.source import load_scalar_prm

    prm = load_scalar_prm(src, dtype, quant=quant)
    _device(prm.body, device, quant), _device(prm.head, device)
    if prm.step_head is not None:
        _device(prm.step_head, device)
    tokenizer = TraceTokenizer(src.path / TOKENIZER_FILE)  # the reference reads the whole trace

    def score(trace) -> ReferenceRewards:
        enc = tokenizer.encode(trace)
        r, t = scalar_rewards(prm, enc.ids, enc.step_tokens, device=device)
        return ReferenceRewards([(s.section, s.index, float(x)) for s, x in zip(enc.steps, r, strict=True)], t)
    return score


LOADERS = {"two-class": _two_class, "lm-tokens": _lm_tokens, "scalar": _scalar}
LAYOUTS = tuple(LOADERS)


def load_reference(source: str, layout: str | None = None, dtype: str = "fp32", device: str = "cpu",
                   quant: str = "none", quant_option: str = "--reference-quant", **options) -> Reference:
    """The reference PRM at ``source``; ``quant`` int8/nf4 loads its body with bitsandbytes on CUDA
    (refused first, with what to do, where that cannot work)."""
    from ..checkpoint.quantized import check_quant
    from ..checkpoint.source import Source, resolve_source

    check_quant(quant, device, quant_option)

    src = resolve_source(source)
    layout = layout or src.layout
    if layout == "scalar-head":
        layout = "scalar"
    if layout not in LOADERS:
        raise UsageError(f"unknown reference layout '{layout}': choose one of {', '.join(LAYOUTS)}")
    src = Source(src.path, src.id, src.revision, "scalar-head" if layout == "scalar" else layout)
    fn = LOADERS[layout](src, dtype=dtype, device=device, quant=quant, **options)
    quantized = {"quant": quant} if quant != "none" else {}  # keeps earlier caches' keys
    return Reference(layout, src.id, fn, {"dtype": dtype, **quantized,
                                          **{k: v for k, v in options.items() if v is not None}})
