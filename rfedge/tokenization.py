"""Tokenization of model input text with character offsets (``tokenizers``, no special tokens added).

Text is encoded in windows of at most :data:`WINDOW_CHARS` characters, cut only where Qwen2.5's
pre-tokenizer itself splits (after a newline before a non-space, before a space between two
letters, between two digits), so the ids are those of encoding the whole text at once. Encoding
stops after the window in which the model's max length is passed: the text past it is neither
tokenized nor split into steps, so a trace's work and memory are bounded by max length plus one
window, whatever its size. For such a trace ``total`` counts the tokens up to there (a lower bound
of the whole text's), and the steps that do not end inside the encoded text are not listed. Without
a safe cut in a window it is cut at its end, which can shift the count (never the ids kept) by a
token or so.
"""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelFilesError, TraceFormatError
from .steps import Step, boundary_tokens, split_steps
from .traces import Trace

WINDOW_CHARS = 1 << 16


@dataclass(frozen=True)
class Encoded:
    """A trace ready for the graph: token ids up to max length, and each step's boundary token."""

    ids: np.ndarray  # int64 [min(total, max_length)]
    steps: tuple[Step, ...]
    step_tokens: np.ndarray  # int64 [len(steps)], indices into the whole (untruncated) token sequence
    total: int  # tokens of the whole text

    @property
    def truncated(self) -> bool:
        return self.total > len(self.ids)


def _cat(c: str) -> str:
    return unicodedata.category(c)[0]


def _safe_cut(text: str, lo: int, hi: int) -> int:
    """The last position in (lo, hi] where Qwen2.5's pre-tokenizer always splits, else ``hi``."""
    for i in range(hi, lo, -1):
        prev, cur = text[i - 1], text[i]
        if prev == "\n" and not cur.isspace():
            return i
        if cur == " " and i + 1 < len(text) and _cat(prev) == "L" and _cat(text[i + 1]) == "L":
            return i
        if _cat(prev) == "N" and _cat(cur) == "N":
            return i
    return hi


def windows(text: str, size: int = WINDOW_CHARS) -> Iterator[tuple[int, int]]:
    """Character spans covering ``text`` in order, each at most ``size`` long, cut at safe positions."""
    lo = 0
    while len(text) - lo > size:
        cut = _safe_cut(text, lo, lo + size)
        yield lo, cut
        lo = cut
    yield lo, len(text)


class TraceTokenizer:
    def __init__(self, path: Path, max_length: int | None = None, window_chars: int = WINDOW_CHARS):
        from tokenizers import Tokenizer

        try:
            self._tk = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on a bad file
            raise ModelFilesError(f"{path}: not a valid tokenizer.json ({e})") from None
        self.max_length = max_length
        self.window_chars = window_chars

    @property
    def vocab_size(self) -> int:
        return self._tk.get_vocab_size()

    def encode(self, trace: Trace) -> Encoded:
        text = trace.text
        _check_utf8(text)
        keep = self.max_length if self.max_length is not None else sys.maxsize  # None: the whole text
        ids, starts, total, end = [], [], 0, len(text)
        for lo, hi in windows(text, self.window_chars):
            enc = self._tk.encode(text[lo:hi], add_special_tokens=False)
            starts.append(np.fromiter((o[0] + lo for o in enc.offsets), dtype=np.int64, count=len(enc.offsets)))
            if total < keep:
                ids.append(np.asarray(enc.ids[:keep - total], dtype=np.int64))
            total += len(enc.ids)
            if total > keep and hi < len(text):
                end = hi  # past max length: the rest is neither tokenized nor split
                break
        steps = split_steps(trace.problem, trace.completion, limit=end)
        step_tokens = boundary_tokens(steps, np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64))
        ids_all = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        return Encoded(ids_all, tuple(steps), step_tokens, total)


def _check_utf8(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise TraceFormatError(
            f"text has an unpaired surrogate ({text[e.start].encode('unicode_escape').decode()}) at character "
            f"{e.start}; send valid UTF-8 or complete \\uD8xx\\uDCxx pairs") from None

