"""``rfedge export``: load the source, export, quantize, validate, then move into place atomically.

Everything is written to a temporary sibling directory; only a validated export is renamed to the
output path, so an interrupted or failed export never leaves a directory ``rfedge score`` accepts.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from rfedge import __version__
from rfedge.errors import ModelFilesError, UsageError
from rfedge.manifest import INPUTS, OUTPUTS, write_manifest

from .calibration import load_calibration
from .install import check_out, install
from .onnx.pooled import PooledPRM
from .onnx.to_onnx import export_onnx
from .quantize.recipes import get_recipe
from .checkpoint.source import load_scalar_prm, read_config, resolve_source
from .validate import reference_rewards, validate

DEFAULT_MAX_LENGTH = 8192


def _memory() -> str:
    """' (RSS x GB, peak y GB)' from /proc on Linux, else ''; export is the memory-hungry command."""
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        gb = lambda k: int(status[k].split()[0]) / 1e6
        return f" (RSS {gb('VmRSS'):.1f} GB, peak {gb('VmHWM'):.1f} GB)"
    except (OSError, KeyError, ValueError):
        return ""


def _log(msg: str) -> None:
    if msg.startswith("["):
        msg += _memory()
    print(msg, file=sys.stderr, flush=True)


def _progress(items):
    from tqdm import tqdm

    return tqdm(items, desc="reference", unit="trace", file=sys.stderr, leave=False)


def _prepare_out(out: Path) -> None:
    check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)


def _smooth_and_fit(prm, tokenizer, traces, references, max_length: int, rec, tol, log) -> tuple[dict, dict]:
    """Fold SmoothQuant scales into ``prm``, choose each linear's format, fit them to ``tol`` end to end."""
    from .quantize.fitting import fit_formats
    from .quantize.recipes import EMBEDDING_BLOCK
    from .quantize.smoothing import format_counts, smooth_and_select

    encoded = [(e.ids[:max_length], e.step_tokens[e.step_tokens < max_length]) for e in map(tokenizer.encode, traces)]
    log("      searching SmoothQuant scales and weight formats per layer on the calibration activations")
    smoothing, formats, errors = smooth_and_select(prm.body, [ids for ids, _ in encoded], rec.fast_error,
                                                   rec.max_error)
    log(f"      folded into the weights; linears by format {smoothing['formats']}")
    formats, smoothing["fit"] = fit_formats(prm, references, encoded, formats, errors, tol, EMBEDDING_BLOCK, log)
    smoothing["formats"] = format_counts(formats)
    log(f"      linears by format after the fit {smoothing['formats']}")
    return smoothing, formats


def export_model(source: str, out: Path, precision: str = "int8", recipe: str | None = None,
                 max_length: int | None = None, calibration: str | None = None,
                 tolerance: dict | None = None, revision: str | None = None,
                 notice: str | None = None, source_id: str | None = None, log=_log, progress=_progress) -> dict:
    """Export ``source`` to ``out``; returns the manifest written. Raises ValidationError on a miss."""
    import torch

    rec = get_recipe(precision, recipe)
    tol = replace(rec.tolerance, **{k: v for k, v in (tolerance or {}).items() if v is not None})
    out = Path(out)
    _prepare_out(out)
    traces = load_calibration(calibration)
    log(f"[1/6] loading {source}")
    src = resolve_source(source, revision)
    cfg = read_config(src.path)
    limit = cfg.get("max_position_embeddings", DEFAULT_MAX_LENGTH)
    max_length = max_length or min(DEFAULT_MAX_LENGTH, limit)
    if not 1 <= max_length <= limit:
        raise UsageError(f"--max-length {max_length} is outside 1..{limit} (max_position_embeddings)")
    if not (src.path / "tokenizer.json").is_file():
        raise ModelFilesError(f"{src.path}: no tokenizer.json; the runtime needs the fast tokenizer file")
    prm = load_scalar_prm(src)
    from rfedge.tokenization import TraceTokenizer

    tokenizer = TraceTokenizer(src.path / "tokenizer.json")
    log(f"[2/6] reference rewards of the torch fp32 source on {len(traces)} calibration traces")
    references = reference_rewards(prm, tokenizer, traces, max_length, progress)
    smoothing, formats = None, None
    if rec.smooth:
        smoothing, formats = _smooth_and_fit(prm, tokenizer, traces, references, max_length, rec, tol, log)
    module = PooledPRM(prm.body, prm.head, prm.step_head).eval()
    param_bytes = sum(p.numel() * 4 for p in module.parameters())
    has_step_head = prm.step_head is not None
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        log(f"[3/6] exporting ONNX ({param_bytes / 1e6:.1f} MB of fp32 weights)")
        fp32_dir = work / "fp32"
        with torch.no_grad():
            fp32 = export_onnx(module, fp32_dir / "model.onnx", param_bytes)
        del module, prm  # the torch weights are not needed past this point: free them before quantizing
        import gc

        gc.collect()
        final = work / "model"
        final.mkdir()
        log(f"[4/6] applying {rec.name}: {rec.description}")
        quant = rec.apply(fp32, final / "model.onnx", formats=formats)
        shutil.rmtree(fp32_dir)
        shutil.copyfile(src.path / "tokenizer.json", final / "tokenizer.json")
        manifest = {
            "source": {"id": source_id or src.id, "revision": src.revision, "layout": src.layout,
                       "hidden_size": cfg.get("hidden_size"), "num_hidden_layers": cfg.get("num_hidden_layers")},
            "precision": precision,
            "quantization": {"recipe": rec.name, **quant, **({"smoothing": smoothing} if smoothing else {})},
            "inputs": list(INPUTS), "outputs": list(OUTPUTS),
            "graph": "model.onnx", "tokenizer": "tokenizer.json",
            "max_length": max_length,
            "pad_token_id": cfg.get("eos_token_id") if isinstance(cfg.get("eos_token_id"), int) else 151643,
            "heads": {"trajectory": "reward_head", "step": "step_head" if has_step_head else "reward_head"},
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "created_by": f"rfedge {__version__}",
        }
        if notice:
            manifest["notice"] = notice
        write_manifest(final, manifest)
        log("[5/6] validating the written graph against the reference rewards")
        from rfedge.scorer import Scorer

        scorer = Scorer.load(final, device="cpu")
        report = validate(references, scorer, traces, precision, tol)
        log(f"      {report.summary()}")
        report.raise_on_failure()
        manifest["validation"] = report.to_dict()
        log(f"[6/6] writing {out}")
        del scorer
        write_manifest(final, manifest)
        left = install(final, out)
        if left:
            log(f"      note: {left}")
        return manifest
    finally:
        shutil.rmtree(work, ignore_errors=True)

