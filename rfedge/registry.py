"""Known model families: data, not if/elif chains. ``rfedge models`` prints this table."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError


@dataclass(frozen=True)
class ModelDescription:
    name: str
    hub_id: str | None
    layout: str  # "scalar-head" (1.5B layout) or "two-class" (Qwen2.5-Math-PRM layout)
    role: str  # "edge" (exported and scored by the runtime) or "reference" (parity teacher)
    description: str


MODELS: tuple[ModelDescription, ...] = (
    ModelDescription("reasonflux-prm-1.5b", "Gen-Verse/ReasonFlux-PRM-1.5B", "scalar-head", "edge",
                     "Qwen2.5-1.5B + reward_head.pt Linear(h,1), sigmoid; the edge model to export"),
    ModelDescription("reasonflux-prm-7b", "Gen-Verse/ReasonFlux-PRM-7B", "two-class", "reference",
                     "Qwen2 + score MLP, P(class 1) at each <extra_0>; the parity reference"),
    ModelDescription("demo-arith", None, "scalar-head", "edge",
                     "bundled tiny demo PRM trained on synthetic arithmetic traces (rfedge generate)"),
)


def get_model(name: str) -> ModelDescription:
    for m in MODELS:
        if m.name == name.lower():
            return m
    known = ", ".join(m.name for m in MODELS)
    raise UsageError(f"unknown model '{name}': known models are {known} (see rfedge models)")


def find_model(name: str) -> ModelDescription | None:
    return next((m for m in MODELS if m.name == name.lower()), None)
