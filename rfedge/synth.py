"""The ``arith`` synthetic task: a documented trace format anyone can generate.

problem: ``Start with {x0}. Then {op_1}, {op_2}, ..., and {op_n}. What is the final number?`` with x0
in 1..99, n in 3..6, each op ``add {k}`` or ``subtract {k}`` (k in 1..99), every running value in
0..999. Thinking steps: ``{prev} + {k} = {value}`` / ``{prev} - {k} = {value}``; response: ``The final
number is {value}.`` Half the traces carry exactly one error at a uniformly chosen op (result off by a
nonzero d in -10..10, staying in 0..999; later steps compute correctly from the wrong value). Labels
per thinking step: 1 before the first error, 0 from it on; ``correct``: the final number is right.
"""

from __future__ import annotations

import random
from typing import Iterator

TASKS = ("arith",)


def _ops(rng: random.Random, min_ops: int = 3, max_ops: int = 6) -> tuple[int, list[tuple[str, int]]]:
    while True:
        x0 = rng.randint(1, 99)
        ops = [(rng.choice("+-"), rng.randint(1, 99)) for _ in range(rng.randint(min_ops, max_ops))]
        value, ok = x0, True
        for sign, k in ops:
            value = value + k if sign == "+" else value - k
            ok = ok and 0 <= value <= 999
        if ok:
            return x0, ops


def _problem(x0: int, ops: list[tuple[str, int]]) -> str:
    words = [("add " if s == "+" else "subtract ") + str(k) for s, k in ops]
    then = f"{', '.join(words[:-1])}, and {words[-1]}" if len(words) > 1 else words[0]
    return f"Start with {x0}. Then {then}. What is the final number?"


def arith_trace(rng: random.Random, index: int, with_error: bool, min_ops: int = 3, max_ops: int = 6,
                problem: tuple | None = None) -> dict:
    """One trace (of ``problem`` = (x0, ops) if given); op counts other than 3..6 are only for
    training curricula."""
    x0, ops = problem or _ops(rng, min_ops, max_ops)
    error_at, delta = -1, 0
    if with_error:
        error_at = rng.randrange(len(ops))
    while True:
        if with_error:
            delta = rng.choice([d for d in range(-10, 11) if d != 0])
        steps, labels, value = [], [], x0
        ok = True
        for i, (sign, k) in enumerate(ops):
            new = value + k if sign == "+" else value - k
            if i == error_at:
                new += delta
            ok = ok and 0 <= new <= 999
            steps.append(f"{value} {sign} {k} = {new}")
            labels.append(i < error_at or error_at < 0)
            value = new
        if ok:
            break
    truth = x0
    for sign, k in ops:
        truth = truth + k if sign == "+" else truth - k
    return {"id": f"arith-{index}", "problem": _problem(x0, ops), "trajectory": steps,
            "response": f"The final number is {value}.", "labels": labels, "correct": value == truth}


def generate(task: str = "arith", n: int = 100, seed: int = 0, candidates: int = 1) -> Iterator[dict]:
    """``n`` traces of ``task``; half carry one error (deterministic for a seed).

    With ``candidates`` > 1, every ``candidates`` consecutive traces answer the same problem (a
    Best-of-N group, marked by a ``group`` field), each erroneous with probability 1/2.
    """
    if task not in TASKS:
        from .errors import UsageError

        raise UsageError(f"unknown task '{task}': known tasks are {', '.join(TASKS)}")
    rng = random.Random(seed)
    problem = None
    for i in range(n):
        if candidates > 1 and i % candidates == 0:
            problem = _ops(rng)
        record = arith_trace(rng, i, with_error=rng.random() < 0.5, problem=problem)
        if candidates > 1:
            record["group"] = f"arith-group-{i // candidates}"
        yield record
