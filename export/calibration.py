"""Built-in calibration traces for export validation (and quantization calibration).

A small, fixed mix of what PRMs score: arithmetic (what the demo model knows), competition-style
math with and without ``<think>``, a chat record, code, and non-ASCII text. Users can pass their own
traces with ``rfedge export --calibration FILE``.
"""

from __future__ import annotations

from rfedge.sources import read_traces
from rfedge.traces import Trace, parse_trace

_ARITH = [
    ("Start with 12. Then add 7, subtract 5, and add 30. What is the final number?",
     ["12 + 7 = 19", "19 - 5 = 14", "14 + 30 = 44"], "The final number is 44."),
    ("Start with 85. Then subtract 40, add 3, subtract 9, and add 61. What is the final number?",
     ["85 - 40 = 45", "45 + 3 = 48", "48 - 9 = 41", "41 + 61 = 100"], "The final number is 100."),
    ("Start with 7. Then add 99, add 14, and subtract 20. What is the final number?",
     ["7 + 99 = 106", "106 + 14 = 122", "122 - 20 = 100"], "The final number is 100."),
    ("Start with 50. Then add 25, subtract 13, add 8, subtract 2, and add 41. What is the final number?",
     ["50 + 25 = 75", "75 - 13 = 64", "64 + 8 = 70", "70 - 2 = 68", "68 + 41 = 109"],
     "The final number is 109."),
    ("Start with 33. Then subtract 11, add 56, and subtract 4. What is the final number?",
     ["33 - 11 = 22", "22 + 56 = 80", "80 - 4 = 74"], "The final number is 74."),
    ("Start with 61. Then add 18, subtract 30, and add 9. What is the final number?",
     ["61 + 18 = 79", "79 - 30 = 45", "45 + 9 = 54"], "The final number is 54."),
]

_RECORDS = [
    {"problem": "Find the sum of all positive divisors of 36.",
     "trajectory": ["36 = 2^2 * 3^2.", "The divisor sum is (1 + 2 + 4)(1 + 3 + 9).",
                    "That is 7 * 13 = 91."],
     "response": "The sum of the divisors of 36 is \\boxed{91}."},
    {"problem": "Solve for x: 3x + 7 = 22.",
     "completion": "<think>\nSubtract 7 from both sides: 3x = 15.\n\nDivide by 3: x = 5.\n</think>\n\n"
                   "Subtracting 7 and dividing by 3 gives x = 5.\n\nCheck: 3*5 + 7 = 22. \\boxed{5}"},
    {"prompt": "How many ways can 4 books be arranged on a shelf?",
     "completions": ["Each arrangement is a permutation of 4 books.", "There are 4! of them.",
                     "4! = 24, so there are 24 arrangements."], "labels": [True, True, True]},
    {"messages": [{"role": "user", "content": "What is 15% of 80?"},
                  {"role": "assistant", "reasoning_content": "15% is 0.15.\n\n0.15 * 80 = 12.",
                   "content": "15% of 80 is 12."}]},
    {"problem": "Write a Python function that returns the n-th Fibonacci number.",
     "trajectory": ["Use iteration to avoid exponential recursion.",
                    "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a"],
     "response": "```python\ndef fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
                 "    return a\n```"},
    {"problem": "Combien font 7 × 8 ? Réponds en français.",
     "trajectory": ["7 × 8 = 56, car 7 × 4 = 28 et 28 × 2 = 56."],
     "response": "7 × 8 = 56 ✓ — 答案是 56。"},
]


def builtin_traces() -> list[Trace]:
    traces = [parse_trace({"id": f"arith-{i}", "problem": p, "trajectory": t, "response": r})
              for i, (p, t, r) in enumerate(_ARITH)]
    traces += [parse_trace({"id": f"mixed-{i}", **r}) for i, r in enumerate(_RECORDS)]
    return traces


def load_calibration(path: str | None) -> list[Trace]:
    return builtin_traces() if path is None else read_traces(path)
