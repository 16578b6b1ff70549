"""``rfedge export``: load the source, export, quantize, validate, then move into place atomically.

Calibration traces come in two parts (:mod:`.calibration`): the export fits its quantization to one
and is gated on both, the held-out part included. Everything is written to a temporary sibling
directory, the manifest last and only once validation passed; only then is the directory moved to
the output path (:mod:`.install`), so an interrupted or failed export never leaves a directory
``rfedge score`` accepts. Stages that cannot succeed stop early, with the reason.
"""

from __future__ import annotations

import datetime as _dt
import gc
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rfedge import __version__
from rfedge.constants import BUILT_FOR, DEFAULT_FIT_MINUTES, GRAPH_FILE, MANIFEST_NAME, PAD_TOKEN_ID, TOKENIZER_FILE
from rfedge.errors import ModelFilesError, UsageError, ValidationError
from rfedge.interface import CacheShape, cached_io
from rfedge.manifest import manifest_body, parse_manifest, write_manifest
from rfedge.tokenization import TraceTokenizer

from .calibration import Calibration, load_calibration
from .checkpoint.source import load_scalar_prm, read_config, resolve_source
from .install import check_out, install
from .onnx.pooled import PooledPRM
from .onnx.to_onnx import export_onnx
from .progress import log as _log
from .progress import progress as _progress
from .quantize.formats import FP32
from .quantize.recipes import Recipe, recipes_to_fit
from .validate import graph_rewards, measure, misses, reference_rewards, validate

DEFAULT_MAX_LENGTH = 32768  # capped by the checkpoint's max_position_embeddings
MAX_REBUILDS = 2  # rounds that promote more linears when the written graph drifts from the simulation


@dataclass
class Fit:
    """What the fitted INT8 recipes decided: each linear's format, and why."""

    formats: dict[str, str]
    errors: dict[str, dict[str, float]]
    in_features: dict[str, int]
    summary: dict


def _encode(tokenizer, traces) -> list:
    return [(e.ids, e.step_tokens[e.step_tokens < len(e.ids)]) for e in map(tokenizer.encode, traces)]


OTHER_RECIPES = ("int8-smooth", "int8-block32")  # what a stopped INT8 fit suggests (those not fitted already)


def _prepare(prm, fit_enc, rec: Recipe, log) -> tuple:
    """Rotate and smooth ``prm`` in place (both deterministic: the same weights give the same model);
    (rotation, smoothing summary, formats, errors) of the sensitivity search."""
    from .quantize.rotation import online, rotate
    from .quantize.smoothing import ALPHAS, smooth_and_select

    rotation = rotate(prm) if rec.rotate else None
    if rotation:
        log(f"      rotated: {rotation['residual']} residual, online Hadamard blocks of "
            f"{rotation['down_proj_online_hadamard_block']} before down_proj")
    with online(prm.body):
        log("      searching SmoothQuant scales and weight formats per linear on the fit traces' activations")
        return (rotation, *smooth_and_select(prm.body, [ids for ids, _ in fit_enc], rec.fast_error, rec.max_error,
                                             ALPHAS if rec.smooth else (None,)))


def _fit(prm, tokenizer, cal: Calibration, references: dict, rec: Recipe, tol, log, fit_minutes: float | None,
         fitted: tuple[str, ...] = ()) -> Fit:
    """Rotate, smooth and fit ``prm`` in place; stop here if the fit traces (when the fit ran out of
    time) or the held-out traces already miss the tolerance in simulation. ``fitted``: the recipes
    this export fits in turn (not suggested again)."""
    from .quantize.embedding import EMBEDDING, INT8_BLOCKS
    from .quantize.fitting import fit_formats, in_features_of, simulated_rewards
    from .quantize.rotation import online

    fit_enc, held_enc = _encode(tokenizer, cal.fit), _encode(tokenizer, cal.held_out)
    rotation, smoothing, formats, errors = _prepare(prm, fit_enc, rec, log)
    with online(prm.body):
        formats, summary = fit_formats(prm, references["fit"], fit_enc, [t.id for t in cal.fit],
                                       {**formats, EMBEDDING: INT8_BLOCKS}, errors, tol, log,
                                       seconds=None if fit_minutes is None else fit_minutes * 60)
        if summary["missed_at_tolerance"]:
            longer = f"--fit-minutes {2 * fit_minutes:g}, " if fit_minutes and summary["stopped"].startswith("time") else ""
            raise ValidationError(
                f"export stopped before writing a graph: the fit stopped ({summary['stopped']}, "
                f"{len(summary['rounds'])} rounds, linears {summary['rounds'][-1]['formats']}) while the fit traces "
                "still miss the gate in simulation:\n" + "\n".join(summary["missed_at_tolerance"])
                + f"\ntry {longer}--recipe {' or '.join(r for r in OTHER_RECIPES if r not in fitted)}, "
                "--precision fp16, or a looser tolerance")
        held = measure(references["held_out"], simulated_rewards(prm, held_enc, formats),
                       [t.id for t in cal.held_out])
    missed = misses(tol, held, "held_out (simulated): ")
    if missed:
        raise ValidationError(
            "export stopped before writing a graph: even fitted, the quantized model misses on the held-out "
            f"traces in simulation ({summary['rounds'][-1]['formats']} linears):\n" + "\n".join(missed)
            + "\ntry --recipe int8-block32 or --precision fp16, or --calibration with traces like yours")
    return Fit(formats, errors, in_features_of(prm, formats),
               {"rotation": rotation, "smoothing": smoothing, "fit": summary, "held_out_simulated": asdict(held)})


def _outcome(fit: Fit | ValidationError) -> tuple[int, str]:
    """(rank, words) of one recipe's fit: fewer fp32 linears ranks better, a stopped fit last."""
    if isinstance(fit, ValidationError):
        return 10**9, "stopped: " + str(fit).splitlines()[0].removeprefix(
            "export stopped before writing a graph: ").rstrip(":")
    kept = sum(1 for v in fit.formats.values() if v == FP32)
    return kept, f"kept {kept} linear{'s' * (kept != 1)} fp32"


def _fit_recipes(held: list, load, tokenizer, cal: Calibration, references: dict, recipes: list[Recipe], tol, log,
                 fit_minutes: float | None) -> tuple:
    """Fit the recipes in turn, each from the source's weights (``load()``; a fit changes them in
    place), until one keeps no linear fp32; returns (prm, recipe, fit) of the best (the later one on
    a tie), with what each one did in ``fit.summary["tried"]``. If none gets a fit, the first one's
    error is raised. ``held``: [the loaded model], handed over (one model in memory at a time)."""
    prm, results, names = held.pop(), [], tuple(r.name for r in recipes)
    for i, rec in enumerate(recipes):
        if i:
            log(f"      {recipes[i - 1].name}: {_outcome(results[-1])[1]}; fitting {rec.name} instead "
                "(from the source's weights)")
            del prm  # freed before the source's weights load again: two fp32 models would not fit the budget
            gc.collect()
            prm = load()
        try:
            results.append(_fit(prm, tokenizer, cal, references, rec, tol, log, fit_minutes, names))
        except ValidationError as e:
            results.append(e.with_traceback(None))  # its frames hold the model
        if _outcome(results[-1])[0] == 0:
            break
    best = min(range(len(results)), key=lambda j: (_outcome(results[j])[0], -j))
    if isinstance(results[best], ValidationError):
        lines = str(results[0]).splitlines()
        at = len(lines) - 1 if lines[-1].startswith("try ") else len(lines)  # the hint stays last
        lines[at:at] = [f"{r.name}, fitted next, {_outcome(e)[1]}" for r, e in zip(recipes[1:], results[1:], strict=True)]
        raise ValidationError("\n".join(lines)) from None
    if best != len(results) - 1:  # the weights hold a later recipe's changes: rotate and smooth them again
        log(f"      {recipes[-1].name}: {_outcome(results[-1])[1]}; back to {recipes[best].name} "
            "(its fitted formats, on the source's weights rotated and smoothed again)")
        del prm
        gc.collect()
        prm = load()
        _prepare(prm, _encode(tokenizer, cal.fit), recipes[best], log)
    fit = results[best]
    if len(recipes) > 1:
        fit.summary["tried"] = [{"recipe": r.name, "result": _outcome(f)[1]}
                                for r, f in zip(recipes[:len(results)], results, strict=True)]
    return prm, recipes[best], fit


def _max_length(cfg: dict, requested: int | None, config_path: Path) -> int:
    limit = cfg.get("max_position_embeddings", DEFAULT_MAX_LENGTH)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ModelFilesError(f"{config_path}: max_position_embeddings must be a positive integer, got {limit!r}")
    max_length = requested or min(DEFAULT_MAX_LENGTH, limit)
    if not 1 <= max_length <= limit:
        raise UsageError(f"--max-length {max_length} is outside 1..{limit} (max_position_embeddings)")
    return max_length


def _to_onnx(module: PooledPRM, work: Path, log) -> Path:
    import torch

    param_bytes = sum(p.numel() * 4 for p in module.parameters())
    log(f"[3/6] exporting ONNX ({param_bytes / 1e6:.1f} MB of fp32 weights)")
    with torch.no_grad():
        return export_onnx(module, work / "fp32" / GRAPH_FILE, param_bytes)


def _apply(rec: Recipe, fp32: Path, formats, final: Path) -> dict:
    """The recipe's graph in ``final`` (replacing an earlier build's graph files, keeping the tokenizer)."""
    final.mkdir(exist_ok=True)
    for f in final.iterdir():
        if f.name != TOKENIZER_FILE:
            f.unlink()
    return rec.apply(fp32, final / GRAPH_FILE, formats=formats)


def _manifest_data(src, cfg: dict, cache: CacheShape, rec: Recipe, quant: dict, max_length: int,
                   has_step_head: bool, source_id: str | None, notice: str | None) -> dict:
    inputs, outputs = cached_io(cache.layers)
    pad = cfg.get("eos_token_id")
    data = {
        "source": {"id": source_id or src.id, "revision": src.revision, "layout": src.layout,
                   "hidden_size": cfg.get("hidden_size"), "num_hidden_layers": cfg.get("num_hidden_layers")},
        "precision": rec.precision, "quantization": {"recipe": rec.name, **quant},
        "interface": "cached", "inputs": inputs, "outputs": outputs, "cache": cache.to_dict(),
        "token_independent": rec.token_independent, "devices": list(BUILT_FOR[rec.precision]),
        "graph": GRAPH_FILE, "tokenizer": TOKENIZER_FILE, "max_length": max_length,
        "pad_token_id": pad if isinstance(pad, int) and not isinstance(pad, bool) else PAD_TOKEN_ID,
        "heads": {"trajectory": "reward_head", "step": "step_head" if has_step_head else "reward_head"},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "created_by": f"rfedge {__version__}",
    }
    if notice:
        data["notice"] = notice
    return data


def _scorer(final: Path, data: dict):
    from rfedge.scorer import Scorer

    manifest = parse_manifest(final, manifest_body(final, data), final / MANIFEST_NAME)
    return Scorer.from_manifest(manifest, device="cpu", cache_bytes=0)


def _correct_drift(rec: Recipe, fp32: Path, final: Path, data: dict, fit: Fit, cal: Calibration, references,
                   tol, log) -> dict:
    """Check the written graph on the fit traces (not a simulation); where it misses the fit's aim
    widened halfway to the tolerance, promote more linears and rebuild, at most MAX_REBUILDS times."""
    from .quantize.fitting import MARGIN, aim, promote_round
    from .quantize.formats import format_counts

    rounds = []
    for attempt in range(MAX_REBUILDS + 1):
        measured = measure(references["fit"], graph_rewards(_scorer(final, data), cal.fit), [t.id for t in cal.fit])
        missed = misses(aim(tol, (1 + MARGIN) / 2), measured)
        rounds.append({"max_abs_step": measured.max_abs_step, "max_abs_trajectory": measured.max_abs_trajectory,
                       "spearman_trajectory": measured.spearman_trajectory, "formats": format_counts(fit.formats)})
        if not missed or attempt == MAX_REBUILDS or not promote_round(fit.formats, fit.errors, fit.in_features):
            break
        log(f"      the graph drifts from the simulation on the fit traces ({'; '.join(m[2:] for m in missed)}); "
            f"promoting more linears: {format_counts(fit.formats)}")
        data["quantization"] = {"recipe": rec.name, **_apply(rec, fp32, fit.formats, final)}
    return {**fit.summary, "graph_on_fit_traces": rounds}


def _finite(value):
    """``value`` with every non-finite float as None: a manifest is strict JSON (an infinite
    tolerance, as an ungated export uses, is written as null)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _check_devices(rec: Recipe, graph: Path) -> None:
    """A graph built for CUDA uses only what the CUDA execution provider runs (onnx.cuda)."""
    from .onnx.cuda import cuda_gaps, load_graph

    if "cuda" in BUILT_FOR[rec.precision]:
        gaps = cuda_gaps(load_graph(graph))
        if gaps:
            raise ValidationError(f"the {rec.name} graph has nodes the CUDA execution provider cannot run: "
                                  f"{'; '.join(gaps)}")


def export_model(source: str, out: Path, precision: str = "int8", recipe: str | None = None,
                 max_length: int | None = None, calibration: str | None = None,
                 tolerance: dict | None = None, revision: str | None = None,
                 notice: str | None = None, source_id: str | None = None, log=_log, progress=_progress,
                 calibration_only: bool = False, fit_minutes: float | None = DEFAULT_FIT_MINUTES) -> dict:
    """Export ``source`` to ``out``; returns the manifest written. Raises ValidationError on a miss.
    ``fit_minutes``: how long an INT8 fit may promote linears before the export stops with the reason
    (None: no limit; the budget is checked between rounds, so a round under way finishes)."""
    recipes = recipes_to_fit(precision, recipe)
    rec = recipes[0]
    tol = replace(rec.tolerance, **{k: v for k, v in (tolerance or {}).items() if v is not None})
    out = Path(out)
    check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cal = load_calibration(calibration, builtin=not calibration_only)
    log(f"[1/6] loading {source}")
    src = resolve_source(source, revision)
    cfg = read_config(src.path)
    max_length = _max_length(cfg, max_length, src.path / "config.json")
    if not (src.path / TOKENIZER_FILE).is_file():
        raise ModelFilesError(f"{src.path}: no {TOKENIZER_FILE}; the runtime needs the fast tokenizer file")
    prm = load_scalar_prm(src)
    tokenizer = TraceTokenizer(src.path / TOKENIZER_FILE, max_length)
    log(f"[2/6] reference rewards of the torch fp32 source on {len(cal.fit)} fit and {len(cal.held_out)} held-out "
        "calibration traces")
    references = {"fit": reference_rewards(prm, tokenizer, cal.fit, progress),
                  "held_out": reference_rewards(prm, tokenizer, cal.held_out, progress)}
    fit = None
    if rec.fitted:
        held = [prm]
        del prm  # _fit_recipes owns the model now: it frees it before loading the source's weights again
        prm, rec, fit = _fit_recipes(held, lambda: load_scalar_prm(src), tokenizer, cal, references,
                                     [r for r in recipes if r.fitted], tol, log, fit_minutes)
    module = PooledPRM(prm.body, prm.head, prm.step_head).eval()
    cache, has_step_head = CacheShape(len(module.layers), module.n_kv, module.head_dim), prm.step_head is not None
    del prm
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        fp32 = _to_onnx(module, work, log)
        del module  # the torch weights are not needed past this point: free them before quantizing
        gc.collect()
        log(f"[4/6] applying {rec.name}: {rec.description}")
        final = work / "model"
        quant = _apply(rec, fp32, fit.formats if fit else None, final)
        _check_devices(rec, final / GRAPH_FILE)
        shutil.copyfile(src.path / TOKENIZER_FILE, final / TOKENIZER_FILE)
        data = _manifest_data(src, cfg, cache, rec, quant, max_length, has_step_head, source_id, notice)
        if fit:
            data["quantization"]["fit"] = _correct_drift(rec, fp32, final, data, fit, cal, references, tol, log)
        shutil.rmtree(fp32.parent)
        log("[5/6] validating the written graph on the fit and the held-out traces")
        report = validate(references, _scorer(final, data), {"fit": cal.fit, "held_out": cal.held_out}, tol)
        log(f"      {report.summary()}")
        report.raise_on_failure()
        data["validation"] = report.to_dict()
        data["calibration"] = cal.describe()
        log(f"[6/6] writing {out}")
        body = manifest_body(final, _finite(data))
        write_manifest(final, body)  # last: a directory without it, or without a passing validation, is refused
        left = install(final, out)
        if left:
            log(f"      note: {left}")
        return body
    finally:
        shutil.rmtree(work, ignore_errors=True)
