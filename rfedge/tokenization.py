"""Tokenization of model input text with character offsets (``tokenizers``, no special tokens added)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelFilesError, TraceFormatError
from .steps import Step, boundary_tokens, split_steps
from .traces import Trace


@dataclass(frozen=True)
class Encoded:
    """A trace ready for the graph: all token ids, and each step's boundary token index."""

    ids: np.ndarray  # int64 [n], untruncated
    steps: tuple[Step, ...]
    step_tokens: np.ndarray  # int64 [len(steps)]


class TraceTokenizer:
    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        try:
            self._tk = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on a bad file
            raise ModelFilesError(f"{path}: not a valid tokenizer.json ({e})") from None

    def encode(self, trace: Trace) -> Encoded:
        text = trace.text
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise TraceFormatError(
                f"text has an unpaired surrogate ({text[e.start].encode('unicode_escape').decode()}) at character "
                f"{e.start}; send valid UTF-8 or complete \\uD8xx\\uDCxx pairs") from None
        enc = self._tk.encode(text, add_special_tokens=False)
        starts = np.fromiter((o[0] for o in enc.offsets), dtype=np.int64, count=len(enc.offsets))
        steps = split_steps(trace.problem, trace.completion)
        return Encoded(np.asarray(enc.ids, dtype=np.int64), tuple(steps), boundary_tokens(steps, starts))

    def encode_text(self, text: str) -> list[int]:
        return self._tk.encode(text, add_special_tokens=False).ids
