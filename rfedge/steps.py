"""Sections and steps of a completion, and the token that closes each step.

Inside a ``<think>...</think>`` pair is the ``thinking`` section, after it the ``response``; with no
pair the whole completion is ``response`` (text before ``<think>`` belongs to no step). Steps are
the pieces of a section between ``"\\n\\n"`` separators, stripped, blank ones dropped. A step's
boundary token is the token that holds its last character (tokenizer offsets).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
SEPARATOR = "\n\n"
SECTIONS = ("thinking", "response")


@dataclass(frozen=True)
class Step:
    section: str
    index: int
    start: int  # character offset of the step's first character in problem + completion
    end: int  # one past the step's last character


def _section_spans(completion: str) -> list[tuple[str, int, int]]:
    open_at = completion.find(THINK_OPEN)
    close_at = completion.find(THINK_CLOSE, open_at + len(THINK_OPEN)) if open_at >= 0 else -1
    if open_at < 0 or close_at < 0:
        return [("response", 0, len(completion))]
    return [("thinking", open_at + len(THINK_OPEN), close_at),
            ("response", close_at + len(THINK_CLOSE), len(completion))]


def split_steps(problem: str, completion: str, limit: int | None = None) -> list[Step]:
    """Steps of ``completion`` with character spans in ``problem + completion``.

    With ``limit`` (a character position in ``problem + completion``), only the steps whose text
    (up to the next separator or section end) lies before ``limit`` are listed: the text past it is
    never split, so the work and memory follow ``limit``, not the text."""
    base = len(problem)
    limit = base + len(completion) if limit is None else limit
    steps: list[Step] = []
    for section, lo, hi in _section_spans(completion):
        index, pos = 0, lo
        while True:
            sep = completion.find(SEPARATOR, pos, hi)
            end = hi if sep < 0 else sep
            if base + end > limit:
                return steps
            piece = completion[pos:end]
            stripped = piece.strip()
            if stripped:
                start = pos + piece.index(stripped)
                steps.append(Step(section, index, base + start, base + start + len(stripped)))
                index += 1
            if sep < 0:
                break
            pos = sep + len(SEPARATOR)
    return steps


def boundary_tokens(steps: list[Step], token_starts: np.ndarray) -> np.ndarray:
    """Index of the token holding each step's last character (the last token starting at or before it)."""
    if not steps:
        return np.zeros(0, dtype=np.int64)
    last_chars = np.array([s.end - 1 for s in steps], dtype=np.int64)
    return (np.searchsorted(token_starts, last_chars, side="right") - 1).astype(np.int64)
