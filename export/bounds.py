"""Bounds on measured numbers: one checker for export validation, parity gates and demo quality.

A :class:`Bound` names a metric (a dotted path into a report), a direction and a value; a metric
that is missing or NaN misses its bound (a gate never passes on what it could not measure).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

OPS = {">=": lambda v, b: v >= b, "<=": lambda v, b: v <= b}


@dataclass(frozen=True)
class Bound:
    metric: str  # a key, or a dotted path into nested dicts ("trace.spearman")
    op: str  # ">=" or "<="
    value: float
    label: str | None = None  # how a failure line names it (default: the metric)

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"unknown bound operator {self.op!r}")

    def measured(self, report: dict) -> Any:
        node: Any = report
        for part in self.metric.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    def holds(self, report: dict) -> bool:
        v = self.measured(report)
        return isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) and OPS[self.op](v, self.value)

    def failure(self, report: dict) -> str | None:
        """One line for a missed bound (``- metric: value, bound op x``), None when it holds."""
        if self.holds(report):
            return None
        v, name = self.measured(report), self.label or self.metric
        if not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
            return f"- {name}: not measured (bound {self.op} {self.value:g})"
        return f"- {name}: {v:.4g}, bound {self.op} {self.value:g}"

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


def failures(bounds: list[Bound], report: dict) -> list[str]:
    return [line for b in bounds if (line := b.failure(report)) is not None]
