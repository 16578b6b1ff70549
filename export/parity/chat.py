"""Qwen2.5 chat rendering for the two-class reference (Qwen2.5-Math-PRM / ReasonFlux-PRM-7B input)."""

from __future__ import annotations

from rfedge.steps import split_steps
from rfedge.traces import Trace

MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
SEPARATOR = "<extra_0>"
SEPARATOR_ID = 151651


def step_texts(trace: Trace) -> list[tuple[str, int, str]]:
    """(section, index, text) of each step, segmented as the rfedge contract says."""
    text = trace.text
    return [(s.section, s.index, text[s.start:s.end]) for s in split_steps(trace.problem, trace.completion)]


def render_prm_chat(problem: str, steps: list[str], system: str = MATH_SYSTEM) -> str:
    """What Qwen2.5's chat template gives for [system, user, assistant] with steps joined by <extra_0>."""
    content = "".join(s + SEPARATOR for s in steps)
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{problem}<|im_end|>\n"
            f"<|im_start|>assistant\n{content}<|im_end|><|endoftext|>")
