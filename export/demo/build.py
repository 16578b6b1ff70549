"""``rfedge demo build`` and ``rfedge demo evaluate``: the demo pair from scratch to the bundled model.

Train teacher and student (or reuse a work directory's), distill the student's step head from the
teacher (``rfedge distill --unfreeze-layers 2 --lr 1e-4 --epochs 10`` on 2,000 task traces), export
the distilled student in fp32 and INT8 on the task's own calibration traces alone (the demo knows
nothing else, so the built-in traces of other kinds are left out: ``--calibration-only``), evaluate on held-out
traces, optionally bundle the INT8 export as the package's default model, and fail (exit 1) when a
quality bound is missed.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from rfedge.errors import ValidationError
from rfedge.home import BUNDLED_DIR

from ..export import export_model
from ..progress import log as _log
from .data import write_calibration
from .evaluate import evaluate_demo, quality_table
from .models import DemoConfig
from .train import train_demo

DEMO_NOTICE = ("the bundled demo model only knows the synthetic arithmetic task (rfedge generate arith); "
               "for real traces export ReasonFlux-PRM-1.5B: rfedge export Gen-Verse/ReasonFlux-PRM-1.5B --int8")
SOURCE_ID = "rfedge-demo-arith-student"
MAX_LENGTH = 1024
DISTILL_TRACES, DISTILL_SEED = 2000, 7  # rfedge generate arith --n 2000 --seed 7


def distill_student(out: Path, log=_log) -> Path:
    """The student with a step head distilled from the teacher (kept when ``--reuse`` finds it)."""
    from rfedge.synth import generate

    from ..distill import DistillConfig, distill

    target = out / "student-distilled"
    if (target / "distill.json").is_file():
        return target
    data = out / "distill-train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in generate("arith", DISTILL_TRACES, DISTILL_SEED)))
    shutil.rmtree(target, ignore_errors=True)  # an interrupted run's partial output, in our work directory
    distill(str(data), str(out / "teacher"), str(out / "student"), target,
            DistillConfig(epochs=10, lr=1e-4, unfreeze_layers=2, max_length=MAX_LENGTH), log=log)
    return target


def evaluate(out: Path, n: int = 400, seed: int | None = None, echo=print) -> dict:
    """Evaluate the work directory's exports; writes ``quality.json``; raises when a bound is missed."""
    out = Path(out)
    metrics = evaluate_demo(out / "teacher", out / "student-fp32", out / "student-int8", n=n,
                            **({} if seed is None else {"seed": seed}))
    (out / "quality.json").write_text(json.dumps(metrics, indent=2))
    echo(quality_table(metrics))
    return metrics


def build_demo(out: Path, steps: int | None = None, bundle: bool = False, reuse: bool = False, log=_log,
               echo=print) -> dict:
    """Train (unless ``reuse`` and the work directory has both models), export, evaluate, bundle."""
    out = Path(out)
    if not (reuse and (out / "teacher").is_dir() and (out / "student").is_dir()):
        config = DemoConfig() if steps is None else dataclasses.replace(DemoConfig(), steps=steps)
        train_demo(out, config, log=log)
    student = distill_student(out, log)
    calibration = write_calibration(out / "calibration.jsonl")
    for precision in ("fp32", "int8"):
        export_model(str(student), out / f"student-{precision}", precision=precision, max_length=MAX_LENGTH,
                     calibration=str(calibration), calibration_only=True, notice=DEMO_NOTICE, source_id=SOURCE_ID,
                     log=log)
    metrics = evaluate(out, echo=echo)
    gate(metrics)  # a model that misses a bound is never bundled
    if bundle:
        if BUNDLED_DIR.exists():
            shutil.rmtree(BUNDLED_DIR)
        shutil.copytree(out / "student-int8", BUNDLED_DIR)
        log(f"rfedge: bundled {out / 'student-int8'} as {BUNDLED_DIR}")
    return metrics


def gate(metrics: dict) -> None:
    if metrics["missed"]:
        raise ValidationError("demo quality bounds missed:\n" + "\n".join(metrics["missed"]) + "\n(see the table above)")
