"""The export tooling's commands: export, recipes, parity, distill, demo (the export extras)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..constants import DEFAULT_ALPHA, DEFAULT_FIT_MINUTES, PRECISIONS, TORCH_DEVICES
from .common import export_extra, reports_errors


@click.command()
@click.argument("source", default="Gen-Verse/ReasonFlux-PRM-1.5B")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output directory (default: $RFEDGE_HOME/models/<source>-<precision>).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--int8", "int8", is_flag=True, help="Shorthand for --precision int8.")
@click.option("--recipe", default=None,
              help="Quantization recipe for the precision (see 'rfedge recipes'); a named recipe has no fallback.")
@click.option("--max-length", type=click.IntRange(min=1), default=None,
              help="Longest input in tokens (default: min(8192, max_position_embeddings)).")
@click.option("--calibration", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Traces like yours (JSONL/JSON/Parquet): every other one is held out for the gate; the "
                   "built-in traces join both parts.")
@click.option("--calibration-only", is_flag=True,
              help="Fit and judge on --calibration's traces alone (a model that only knows one narrow task); "
                   "recorded in the manifest.")
@click.option("--max-step-delta", type=float, default=None, help="Override the step-reward tolerance.")
@click.option("--max-trajectory-delta", type=float, default=None, help="Override the trajectory tolerance.")
@click.option("--min-spearman", type=float, default=None, help="Override the trajectory Spearman bound.")
@click.option("--fit-minutes", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_FIT_MINUTES,
              show_default=True, help="How long an INT8 fit may promote linears before the export stops with the reason.")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit).")
@click.option("--notice", default=None, hidden=True, help="A line shown whenever the model is used.")
@reports_errors
def export(source, out, precision, int8, recipe, max_length, calibration, calibration_only, max_step_delta,
           max_trajectory_delta, min_spearman, fit_minutes, revision, notice):
    """Export SOURCE (a local directory or hub id, ReasonFlux-PRM-1.5B layout) to a validated ONNX model.

    \b
    Example:
      rfedge export Gen-Verse/ReasonFlux-PRM-1.5B --int8
      rfedge export ./my-prm --precision fp16 --out ./my-prm-fp16
    """
    from ..home import default_export_dir

    pipeline = export_extra("export")
    precision = "int8" if int8 else precision
    target = Path(out) if out else default_export_dir(source, precision)
    manifest = pipeline.export_model(
        source, target, precision=precision, recipe=recipe, max_length=max_length,
        calibration=calibration, calibration_only=calibration_only, revision=revision, notice=notice,
        tolerance={"max_abs_step": max_step_delta, "max_abs_trajectory": max_trajectory_delta,
                   "min_spearman": min_spearman}, fit_minutes=fit_minutes)
    click.echo(json.dumps({"out": str(target), "precision": manifest["precision"],
                           "validation": manifest["validation"]}, indent=2))


@click.command()
@reports_errors
def recipes():
    """List the precision recipes of 'rfedge export' (needs the export extras).

    \b
    Example:
      rfedge recipes
    """
    quantize = export_extra("quantize.recipes")
    for r in quantize.RECIPES:
        default = " (default)" if quantize.DEFAULT_RECIPE[r.precision] == r.name else ""
        fallback = (f"; by default, when it keeps fp32 linears or stops, {r.fallback} is fitted too and the better "
                    "one kept" if r.fallback else "")
        click.echo(f"{r.name:14} {r.precision:5} {r.description}{default}{fallback}")


@click.command()
@click.argument("data", type=str)
@click.option("--reference", "reference", required=True,
              help="Reference checkpoint (local dir or hub id), e.g. Gen-Verse/ReasonFlux-PRM-7B.")
@click.option("--candidate", required=True, type=click.Path(exists=True, file_okay=False),
              help="An rfedge export directory.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Report directory.")
@click.option("--reference-head", "layout", type=click.Choice(["two-class", "lm-tokens", "scalar"]), default=None,
              help="Reference layout (default: detected from config.json and weight shapes).")
@click.option("--positive-token", type=int, default=None, help="lm-tokens: vocabulary id of the 'correct' verdict.")
@click.option("--negative-token", type=int, default=None, help="lm-tokens: vocabulary id of the 'wrong' verdict.")
@click.option("--reference-dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@click.option("--reference-quant", type=click.Choice(["none", "int8", "nf4"]), default="none", show_default=True,
              help="Load the reference with bitsandbytes 8-bit or 4-bit NF4 (CUDA only): a 7B in 8 GB.")
@click.option("--device", type=click.Choice(TORCH_DEVICES), default="cpu", show_default=True)
@click.option("--alpha", type=float, default=DEFAULT_ALPHA, show_default=True)
@click.option("--cache", type=click.Path(dir_okay=False), default=None,
              help="Reference reward cache (default: OUT/reference_cache.jsonl).")
@click.option("--min-spearman", type=float, default=None, help="Gate: trace-score Spearman at least this.")
@click.option("--min-bon-agreement", type=float, default=None, help="Gate: Best-of-N winner agreement.")
@click.option("--min-topk-overlap", type=float, default=None, help="Gate: top-10% overlap.")
@click.option("--min-step-spearman", type=float, default=None, help="Gate: step-reward Spearman.")
@click.option("--min-step-auroc", type=float, default=None, help="Gate: step AUROC vs reference verdicts.")
@click.option("--max-abs-delta", type=float, default=None, help="Gate (scalar reference): max |delta| step reward.")
@reports_errors
def parity(data, reference, candidate, out, layout, positive_token, negative_token, reference_dtype, reference_quant,
           device, alpha, cache, min_spearman, min_bon_agreement, min_topk_overlap, min_step_spearman, min_step_auroc,
           max_abs_delta):
    """Compare an edge model's decisions with a full-precision reference PRM on the traces in DATA.

    Writes report.json, report.md, scores.jsonl and PNG plots to OUT; exit 1 when a bound is missed.

    \b
    Example:
      rfedge parity heldout.jsonl --reference Gen-Verse/ReasonFlux-PRM-7B \\
          --candidate ~/.cache/rfedge/models/gen-verse--reasonflux-prm-1.5b-int8 --out parity-report \\
          --min-spearman 0.8 --min-bon-agreement 0.6
    """
    parity_mod = export_extra("parity.run")
    from tqdm import tqdm

    report = parity_mod.run_parity(
        data, reference, candidate, Path(out), layout=layout, dtype=reference_dtype, quant=reference_quant,
        device=device, alpha=alpha,
        cache=Path(cache) if cache else None, positive_token=positive_token, negative_token=negative_token,
        bounds={"min_spearman": min_spearman, "min_bon_agreement": min_bon_agreement,
                "min_topk_overlap": min_topk_overlap, "min_step_spearman": min_step_spearman,
                "min_step_auroc": min_step_auroc, "max_abs_delta": max_abs_delta},
        progress=lambda items: tqdm(items, desc="reference", unit="trace", file=sys.stderr))
    click.echo((Path(out) / "report.md").read_text())
    click.echo(f"rfedge parity: report in {out} ({', '.join(report['plots'])})", err=True)


@click.command()
@click.argument("data", type=str)
@click.option("--teacher", required=True, help="Reference PRM (local dir or hub id), e.g. Gen-Verse/ReasonFlux-PRM-7B.")
@click.option("--teacher-head", type=click.Choice(["two-class", "lm-tokens", "scalar"]), default=None,
              help="Teacher layout (default: detected).")
@click.option("--student", required=True, help="ReasonFlux-PRM-1.5B-layout checkpoint (local dir or hub id).")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Steps per batch (frozen backbone) or traces x 16 (unfrozen).")
@click.option("--unfreeze-layers", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--max-length", type=click.IntRange(min=1), default=4096, show_default=True)
@click.option("--label-weight", type=float, default=0.0, show_default=True,
              help="Mix gold 'labels' into the targets with this weight (0: teacher only).")
@click.option("--head", type=click.Choice(["mlp", "linear"]), default="mlp", show_default=True)
@click.option("--device", type=click.Choice(TORCH_DEVICES), default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@click.option("--teacher-quant", type=click.Choice(["none", "int8", "nf4"]), default="none", show_default=True,
              help="Load the teacher with bitsandbytes 8-bit or 4-bit NF4 (CUDA only).")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.")
@reports_errors
def distill(data, teacher, teacher_head, student, out, epochs, lr, batch_size, unfreeze_layers, max_length,
            label_weight, head, device, dtype, teacher_quant, resume):
    """Distill a reference PRM's step rewards on DATA into a step head for the 1.5B-layout student.

    \b
    Example:
      rfedge distill traces.jsonl --teacher Gen-Verse/ReasonFlux-PRM-7B \\
          --student Gen-Verse/ReasonFlux-PRM-1.5B --out prm-1.5b-distilled --device cuda --dtype bf16
      rfedge export prm-1.5b-distilled --int8
    """
    distill_mod = export_extra("distill")
    cfg = distill_mod.DistillConfig(epochs=epochs, lr=lr, batch_size=batch_size, unfreeze_layers=unfreeze_layers,
                                    max_length=max_length, label_weight=label_weight, head=head, device=device,
                                    dtype=dtype, teacher_quant=teacher_quant)
    info = distill_mod.distill(data, teacher, student, Path(out), cfg, teacher_layout=teacher_head, resume=resume)
    click.echo(json.dumps({k: info[k] for k in ("student", "traces", "steps", "seconds")} |
                          {"final_loss": info["loss_history"][-1] if info["loss_history"] else None}, indent=2))


@click.group()
def demo():
    """Train, export and evaluate the demo PRM pair on the synthetic arith task (export extras)."""


@demo.command("build")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Work directory.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Training steps per model.")
@click.option("--bundle", is_flag=True, help="Copy the INT8 student into the package as the default model.")
@click.option("--reuse", is_flag=True, help="Keep the work directory's trained models (export and evaluate again).")
@reports_errors
def demo_build(out, steps, bundle, reuse):
    """Train teacher and student from scratch, export the student (fp32, int8), evaluate.

    \b
    Example:
      rfedge demo build --out demo-work --bundle
    """
    export_extra("demo.build").build_demo(Path(out), steps, bundle, reuse, echo=click.echo)


@demo.command("evaluate")
@click.argument("workdir", type=click.Path(exists=True, file_okay=False))
@click.option("--n", "n", type=click.IntRange(min=10), default=400, show_default=True)
@click.option("--seed", type=int, default=None, help="Held-out seed (default: a fixed one never trained on).")
@reports_errors
def demo_evaluate(workdir, n, seed):
    """Print the demo pair's quality on held-out traces; exit 1 when a bound is missed.

    \b
    Example:
      rfedge demo evaluate demo-work --n 400
    """
    build = export_extra("demo.build")
    build.gate(build.evaluate(Path(workdir), n, seed, echo=click.echo))
