"""Sections, steps and boundary tokens: the rendering contract."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from rfedge.steps import boundary_tokens, split_steps
from rfedge.traces import parse_trace


def texts(problem, completion):
    full = problem + completion
    return [(s.section, s.index, full[s.start:s.end]) for s in split_steps(problem, completion)]


def test_think_and_response_sections():
    t = parse_trace({"problem": "P?", "trajectory": ["a = 1", "b = 2"], "response": "So 3.\n\nDone."})
    assert t.completion == "<think>\na = 1\n\nb = 2\n</think>\n\nSo 3.\n\nDone."
    assert texts(t.problem, t.completion) == [
        ("thinking", 0, "a = 1"), ("thinking", 1, "b = 2"), ("response", 0, "So 3."), ("response", 1, "Done.")]


def test_no_think_pair_is_all_response_and_blank_steps_dropped():
    assert texts("Q", "  one  \n\n\n\n \n\ntwo\n\n") == [("response", 0, "one"), ("response", 1, "two")]


def test_unclosed_think_is_response():
    assert texts("", "<think>\nx") == [("response", 0, "<think>\nx")]


def test_only_separators_gives_no_steps():
    assert texts("Q", "\n\n\n\n") == []


def test_text_before_think_belongs_to_no_step():
    assert texts("", "pre\n\n<think>a</think>b") == [("thinking", 0, "a"), ("response", 0, "b")]


def test_boundary_is_token_holding_last_char(qwen_tokenizer):
    problem = "Start with 5."
    completion = "<think>\n5 + 3 = 8.\n\n8 - 1 = 7\n</think>\n\nThe final number is 7."
    text = problem + completion
    enc = qwen_tokenizer.encode(text, add_special_tokens=False)
    steps = split_steps(problem, completion)
    starts = np.array([o[0] for o in enc.offsets])
    for step, tok in zip(steps, boundary_tokens(steps, starts), strict=True):
        lo, hi = enc.offsets[tok]
        assert lo <= step.end - 1 < hi, (step, enc.offsets[tok])


def test_boundary_with_multibyte_character_split_over_tokens(qwen_tokenizer):
    problem, completion = "Q", "ok 🎉\n\nnext"
    enc = qwen_tokenizer.encode(problem + completion, add_special_tokens=False)
    steps = split_steps(problem, completion)
    starts = np.array([o[0] for o in enc.offsets])
    first = boundary_tokens(steps, starts)[0]
    # the emoji spans several byte-level tokens; the boundary is the last of them
    assert qwen_tokenizer.decode(enc.ids[: first + 1]).endswith("🎉")


@given(st.lists(st.sampled_from(["a", " ", "\n", "\n\n", "<think>\n", "\n</think>\n\n", "xy z", "1"]), max_size=40),
       st.integers(min_value=0, max_value=200))
def test_steps_up_to_a_limit_are_the_steps_closed_before_it(parts, limit):
    """A step is listed iff what closes it (the next separator, or its section's end) starts at or
    before the limit; with no limit inside the text, every step is."""
    from rfedge.steps import _section_spans

    problem, completion = "Q: ", "".join(parts)
    base, whole = len(problem), split_steps(problem, completion)
    cut = split_steps(problem, completion, limit=limit)
    ends = {name: hi for name, _, hi in _section_spans(completion)}

    def closed_at(step):
        sep = completion.find("\n\n", step.end - base, ends[step.section])
        return base + (sep if sep >= 0 else ends[step.section])
    assert cut == [step for step in whole if closed_at(step) <= limit]
    assert split_steps(problem, completion, limit=len(problem + completion)) == whole
