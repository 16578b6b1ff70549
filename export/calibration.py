"""Built-in calibration traces for export validation (and quantization calibration).

A small, fixed mix of what PRMs score: arithmetic (what the demo model knows), word problems,
competition-style math with and without ``<think>``, chats, code, other languages and a long trace;
a second, differently worded set of the same kinds is held out for the gate. Users can pass their own
traces with ``rfedge export --calibration FILE``.
"""

from __future__ import annotations

from dataclasses import dataclass

from rfedge.errors import UsageError
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
    {"problem": "A car travels 60 km per hour for 2.5 hours. How far does it go?",
     "trajectory": ["Distance = speed * time.", "60 * 2.5 = 150.", "So it travels 150 km."],
     "response": "It travels 150 km."},
    {"problem": "Anna is 4 years older than Ben. In 6 years their ages will add up to 40. How old is Ben now?",
     "trajectory": ["Let Ben be b; Anna is b + 4.", "In 6 years: (b + 6) + (b + 10) = 40.", "2b + 16 = 40, so b = 12.",
                    "Check: 18 + 22 = 40."], "response": "Ben is 12."},
    {"problem": "Find the hypotenuse of a right triangle with legs 5 and 12.",
     "completion": "<think>\nBy Pythagoras, c^2 = 5^2 + 12^2.\n\n25 + 144 = 169.\n\nc = 13.\n</think>\n\n"
                   "The hypotenuse is 13."},
    {"problem": "A bag holds 3 red and 5 blue balls. Two are drawn without replacement. What is the probability "
                "both are red?",
     "trajectory": ["P(first red) = 3/8.", "P(second red | first red) = 2/7.", "3/8 * 2/7 = 6/56 = 3/28."],
     "response": "The probability is 3/28."},
    {"prompt": "What is the greatest common divisor of 84 and 126?",
     "completions": ["126 = 84 + 42.", "84 = 2 * 42, so the remainder is 0.", "The GCD is 42."],
     "labels": [True, True, True]},
    {"messages": [{"role": "user", "content": "A recipe needs 3 eggs for 12 cookies. How many eggs for 30 cookies?"},
                  {"role": "assistant", "reasoning_content": "30 / 12 = 2.5 batches.\n\n2.5 * 3 = 7.5 eggs.",
                   "content": "You need 7.5 eggs, so about 8."}]},
    {"problem": "Write a function that returns the largest element of a list without using max().",
     "trajectory": ["Walk the list once and keep the best value seen.",
                    "def largest(xs):\n    best = xs[0]\n    for x in xs[1:]:\n        if x > best:\n"
                    "            best = x\n    return best"],
     "response": "`largest` runs in linear time; it raises IndexError on an empty list."},
    {"problem": "Un triangle a des angles de 35 degrés et 65 degrés. Quel est le troisième angle ?",
     "trajectory": ["La somme des angles vaut 180 degrés.", "180 - 35 - 65 = 80."],
     "response": "Le troisième angle mesure 80 degrés."},
    {"problem": "小明有15个苹果，吃了4个，又买了9个。他现在有多少个苹果？",
     "trajectory": ["15 - 4 = 11。", "11 + 9 = 20。"], "response": "他现在有20个苹果。"},
    {"problem": "Show that n^2 + n is even for every integer n, and check n = 7.",
     "completion": "<think>\nn^2 + n = n(n + 1).\n\nOne of two consecutive integers is even, so the product is even."
                   "\n\n" + "\n\n".join(f"n = {i}: {i * i + i} is even." for i in range(1, 9))
                   + "\n\nn = 7: 49 + 7 = 56, even.\n</think>\n\nn(n + 1) is always even; for n = 7 it is 56."},
]


# Held out: the export never fits on these; the gate judges them (with the fit traces). Word problems,
# algebra, geometry, probability, code, a chat, non-English text and a long trace, shaped unlike the
# fit set above.
_HELD_OUT = [
    {"problem": "A baker makes 48 muffins and sells them in boxes of 6. Each box costs $5. How much money does "
                "she make if she sells every box?",
     "trajectory": ["48 muffins in boxes of 6 gives 48 / 6 = 8 boxes.", "Each box costs $5, so 8 * 5 = 40.",
                    "So she makes $40."], "response": "She makes **$40**."},
    {"problem": "Tom has 3 times as many marbles as Sara. Together they have 64. How many does Tom have?",
     "trajectory": ["Let Sara have s marbles; Tom has 3s.", "s + 3s = 64, so 4s = 64 and s = 16.",
                    "Tom has 3 * 16 = 48.", "Check: 48 + 16 = 64."], "response": "Tom has 48 marbles."},
    {"problem": "A train leaves at 2:15 pm and arrives at 5:50 pm. How long is the trip in minutes?",
     "trajectory": ["From 2:15 to 5:15 is 3 hours = 180 minutes.", "From 5:15 to 5:50 is 35 minutes.",
                    "180 + 35 = 205 minutes."], "response": "The trip takes 205 minutes."},
    {"problem": "Solve x^2 - 5x + 6 = 0.",
     "completion": "<think>\nFactor: x^2 - 5x + 6 = (x - 2)(x - 3).\n\nSo x = 2 or x = 3.\n\nCheck x = 2: 4 - 10 + 6 = 0."
                   "\n</think>\n\nThe solutions are $x = 2$ and $x = 3$."},
    {"problem": "What is the area of a circle with radius 3?",
     "trajectory": ["The area is pi r^2.", "r^2 = 9.", "So the area is 9 pi, about 28.27."],
     "response": "$9\\pi \\approx 28.27$"},
    {"problem": "Two fair dice are rolled. What is the probability that the sum is 7?",
     "trajectory": ["There are 6 * 6 = 36 equally likely outcomes.",
                    "Sum 7: (1,6), (2,5), (3,4), (4,3), (5,2), (6,1), that is 6 outcomes.", "6 / 36 = 1/6."],
     "response": "The probability is 1/6."},
    {"problem": "If 5 pencils cost 2 dollars and 35 cents, how much do 8 pencils cost?",
     "trajectory": ["One pencil costs 235 / 5 = 47 cents.", "8 pencils cost 8 * 47 = 376 cents.",
                    "376 cents is $3.76."], "response": "$3.76"},
    {"problem": "A rectangle has perimeter 30 and length 9. What is its width?",
     "trajectory": ["Perimeter = 2 * (length + width).", "30 = 2 * (9 + w), so 15 = 9 + w.", "w = 6."],
     "response": "The width is 6."},
    {"prompt": "Is 221 a prime number?",
     "completions": ["Check small primes up to sqrt(221), about 14.9.", "221 / 13 = 17 exactly.",
                     "So 221 = 13 * 17 is not prime."], "labels": [True, True, True]},
    {"messages": [{"role": "system", "content": "You are a careful tutor."},
                  {"role": "user", "content": "Convert 0.375 to a fraction."},
                  {"role": "assistant", "reasoning_content": "0.375 = 375/1000.\n\nDivide by 125: 3/8.",
                   "content": "0.375 = 3/8."}]},
    {"problem": "Write a function that checks whether a string is a palindrome.",
     "trajectory": ["Compare the string with its reverse.",
                    "def is_palindrome(s):\n    t = ''.join(c.lower() for c in s if c.isalnum())\n    return t == t[::-1]"],
     "response": "Use `is_palindrome`, which ignores case and punctuation."},
    {"problem": "Ein Auto fährt 150 km in 2 Stunden. Wie schnell fährt es im Durchschnitt?",
     "trajectory": ["Geschwindigkeit = Strecke / Zeit.", "150 km / 2 h = 75 km/h."],
     "response": "Im Durchschnitt fährt es 75 km/h."},
    {"problem": "一个长方形的长是8厘米，宽是5厘米，面积是多少？",
     "trajectory": ["面积 = 长 × 宽。", "8 × 5 = 40。"], "response": "面积是40平方厘米。"},
    {"problem": "Sum the integers from 1 to 100.",
     "trajectory": ["Pair 1 with 100, 2 with 99, and so on: each pair sums to 101.", "There are 50 pairs.",
                    "50 * 101 = 5050.", "Gauss's formula n(n+1)/2 gives 100 * 101 / 2 = 5050 as well."],
     "response": "\\boxed{5050}"},
    {"problem": "A shop discounts a $80 jacket by 25%, then adds 10% tax. What is the final price?",
     "trajectory": ["25% of 80 is 20, so the discounted price is 60.", "10% tax on 60 is 6.",
                    "60 + 6 = 66."], "response": "The final price is $66."},
    {"problem": "Explain why the sum of two odd numbers is even, then verify it for 17 and 29.",
     "completion": "<think>\nAn odd number is 2a + 1 and another is 2b + 1.\n\nTheir sum is 2a + 2b + 2 = 2(a + b + 1), "
                   "which is even.\n\n" + "\n\n".join(f"Example {i}: {2 * i + 1} + {2 * i + 3} = {4 * i + 4}, even."
                                                         for i in range(1, 13))
                   + "\n\n17 + 29 = 46, which is even.\n</think>\n\nThe sum of two odd numbers is always even; "
                     "17 + 29 = 46."},
]


def builtin_traces() -> list[Trace]:
    """The fit set: what the export calibrates (scales, formats) and fits on."""
    traces = [parse_trace({"id": f"arith-{i}", "problem": p, "trajectory": t, "response": r})
              for i, (p, t, r) in enumerate(_ARITH)]
    traces += [parse_trace({"id": f"mixed-{i}", **r}) for i, r in enumerate(_RECORDS)]
    return traces


def held_out_traces() -> list[Trace]:
    """Traces the export never fits on, for its gate."""
    return [parse_trace({"id": f"held-out-{i}", **r}) for i, r in enumerate(_HELD_OUT)]


@dataclass(frozen=True)
class Calibration:
    """What an export fits on and what its gate judges (the held-out part and the built-in held-out set)."""

    fit: list[Trace]
    held_out: list[Trace]
    source: str
    builtin: bool = True  # the built-in traces are part of both sets

    def describe(self) -> dict:
        d = {"source": self.source, "fit_traces": len(self.fit), "held_out_traces": len(self.held_out)}
        return d if self.builtin else {**d, "builtin_traces": False}


def load_calibration(path: str | None, held_out_share: float = 0.5, builtin: bool = True) -> Calibration:
    """The built-in sets, or ``path``'s traces split deterministically (every other trace held out,
    ``held_out_share`` of them), each part joined by its built-in set: the gate judges the built-in
    held-out kinds of text too, so the fit must have seen such kinds (its own built-in traces).
    ``builtin=False`` (``--calibration-only``): ``path``'s traces only, for a model that knows one
    narrow task (the demo) and whose rewards on other text mean nothing."""
    if path is None:
        if not builtin:
            raise UsageError("--calibration-only needs --calibration FILE")
        return Calibration(builtin_traces(), held_out_traces(), "built-in")
    traces = read_traces(path)
    step = max(2, round(1 / held_out_share)) if held_out_share > 0 else len(traces) + 1
    held = [t for i, t in enumerate(traces) if i % step == step - 1]
    fit = [t for i, t in enumerate(traces) if i % step != step - 1] or traces
    if not builtin:
        if not held:
            raise UsageError(f"{path}: --calibration-only needs at least 2 traces (every other one is held out)")
        return Calibration(fit, held, path, builtin=False)
    return Calibration(fit + builtin_traces(), held + held_out_traces(), path)
