"""The demo task's data: training traces, the base model's per-token targets, training examples,
and the export's calibration traces."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from rfedge.synth import generate
from rfedge.traces import parse_trace

from ..parity.chat import render_prm_chat, step_texts

if TYPE_CHECKING:
    from .models import DemoConfig

# The export calibrates (SmoothQuant scales, weight formats) and validates on the task's own traces,
# from a seed used neither for training nor for the held-out evaluation.
CALIBRATION_SEED, CALIBRATION_TRACES = 31337, 64


def training_traces(c: DemoConfig) -> list[dict]:
    """The task's traces plus a curriculum share of 1..2-op traces (denser signal for the checks)."""
    import random

    from rfedge.synth import arith_trace

    data = list(generate("arith", c.train_traces, c.data_seed))
    rng = random.Random(c.data_seed + 1000)
    short = int(c.train_traces * c.curriculum)
    data += [arith_trace(rng, c.train_traces + i, rng.random() < 0.5, min_ops=1) for i in range(short)]
    return data



# Per-token targets of the base model: (name, token it is read at). The tokens of an equation
# "{prev} {sign} {k} = {new}": "op" (" +" / " -"), "eq" (" ="), "after" (the token after the
# equation: "\n\n" in the trace text, <extra_0> in the chat format); "every": all tokens. Each target
# is a 10-way class (digits; yes/no ones use classes 0/1). Supervising each hop of the check
# (gather the operands' last digits, add them, compare with the written result, AND over the
# equations so far) is what lets a model this small learn it in minutes of CPU.
BASE_TARGETS = (
    ("prev units", "op"), ("prev tens", "op"),
    ("k units", "eq"), ("k tens", "eq"), ("prev units", "eq"), ("prev tens", "eq"), ("minus", "eq"),
    ("true units", "eq"), ("true tens", "eq"),
    ("written units", "after"), ("written tens", "after"), ("true units", "after"), ("true tens", "after"),
    ("written right", "after"),
    ("all right so far", "every"),
)
VERDICT_WEIGHT = 2.0  # the last hop (AND over the equations) is the slowest to learn


def _equation(step: str) -> tuple[int, int, str, int, int]:
    """(prev, k, sign, written result, true result) of a thinking step."""
    left, new = step.split(" = ")
    prev, sign, k = left.split(" ")
    a, b = int(prev), int(k)
    return a, b, sign, int(new), a + b if sign == "+" else a - b


def _base_targets(text: str, offsets, trajectory: list[str], search_from: int):
    """[tokens, len(BASE_TARGETS)] int64 targets, -100 where a target is not read."""
    import numpy as np

    starts = np.array([o[0] for o in offsets], dtype=np.int64)
    token = lambda char: int(np.searchsorted(starts, char, side="right") - 1)
    units, tens = (lambda x: x % 10), (lambda x: (x // 10) % 10)
    out = np.full((len(starts), len(BASE_TARGETS)), -100, dtype=np.int64)
    after_tokens, pos = [], search_from
    for step in trajectory:
        start = text.index(step, pos)
        pos = start + len(step)
        a, b, sign, w, true = _equation(step)
        op, eq, after = token(start + len(str(a)) + 1), token(start + step.index(" = ") + 1), token(pos)
        out[op, 0:2] = units(a), tens(a)
        out[eq, 2:9] = units(b), tens(b), units(a), tens(a), int(sign == "-"), units(true), tens(true)
        out[after, 9:14] = units(w), tens(w), units(true), tens(true), int(w == true)
        after_tokens.append((after, int(w == true)))
    ok, k = 1, 0
    for t in range(len(starts)):
        while k < len(after_tokens) and after_tokens[k][0] <= t:
            ok &= after_tokens[k][1]
            k += 1
        out[t, -1] = ok
    return out


def _base_example(tk, record: dict):
    """Token ids of the trace text (the student's input) and the base targets."""
    trace = parse_trace(record)
    enc = tk.encode(trace.text, add_special_tokens=False)
    return enc.ids, _base_targets(trace.text, enc.offsets, record["trajectory"], len(trace.problem))


def _base_example_chat(tk, record: dict):
    """The same targets in the teacher's chat format (the token after an equation is <extra_0>)."""
    trace = parse_trace(record)
    text = render_prm_chat(trace.problem, [t for _, _, t in step_texts(trace)])
    enc = tk.encode(text, add_special_tokens=False)
    return enc.ids, _base_targets(text, enc.offsets, record["trajectory"], text.index("<|im_start|>assistant"))


def _student_example(tk, record: dict):
    trace = parse_trace(record)
    return tk.encode(trace.text, add_special_tokens=False).ids, float(record["correct"])


def _teacher_example(tk, record: dict):
    trace = parse_trace(record)
    steps = [t for _, _, t in step_texts(trace)]
    ids = tk.encode(render_prm_chat(trace.problem, steps), add_special_tokens=False).ids
    labels = [float(x) for x in record["labels"]] + [float(record["correct"])]
    return ids, labels


def write_calibration(path: Path) -> Path:
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in generate("arith", CALIBRATION_TRACES, CALIBRATION_SEED)))
    return path
