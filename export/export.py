"""``rfedge export``: load the source, export, quantize, validate, then move into place atomically.

Everything is written to a temporary sibling directory, the manifest last and only once validation
passed; only then is the directory moved to the output path (:mod:`.install`), so an interrupted
or failed export never leaves a directory ``rfedge score`` accepts.
"""

from __future__ import annotations

import datetime as _dt
import gc
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from rfedge import __version__
from rfedge.constants import GRAPH_FILE, MANIFEST_NAME, PAD_TOKEN_ID, TOKENIZER_FILE
from rfedge.errors import ModelFilesError, UsageError
from rfedge.interface import CacheShape, cached_io
from rfedge.manifest import manifest_body, parse_manifest, write_manifest
from rfedge.tokenization import TraceTokenizer

from .calibration import load_calibration
from .checkpoint.source import load_scalar_prm, read_config, resolve_source
from .install import check_out, install
from .onnx.pooled import PooledPRM
from .onnx.to_onnx import export_onnx
from .progress import log as _log
from .progress import progress as _progress
from .quantize.recipes import Recipe, get_recipe
from .validate import reference_rewards, validate

DEFAULT_MAX_LENGTH = 32768  # capped by the checkpoint's max_position_embeddings


def _smooth_and_fit(prm, tokenizer, traces, references, rec, tol, log) -> tuple[dict, dict]:
    """Fold SmoothQuant scales into ``prm``, choose each linear's format, fit them to ``tol`` end to end."""
    from .quantize.fitting import fit_formats
    from .quantize.embedding import EMBEDDING_BLOCK
    from .quantize.formats import format_counts
    from .quantize.smoothing import smooth_and_select

    encoded = [(e.ids, e.step_tokens[e.step_tokens < len(e.ids)]) for e in map(tokenizer.encode, traces)]
    log("      searching SmoothQuant scales and weight formats per layer on the calibration activations")
    smoothing, formats, errors = smooth_and_select(prm.body, [ids for ids, _ in encoded], rec.fast_error,
                                                   rec.max_error)
    log(f"      folded into the weights; linears by format {smoothing['formats']}")
    formats, smoothing["fit"] = fit_formats(prm, references, encoded, formats, errors, tol, EMBEDDING_BLOCK, log)
    smoothing["formats"] = format_counts(formats)
    log(f"      linears by format after the fit {smoothing['formats']}")
    return smoothing, formats


def _max_length(cfg: dict, requested: int | None) -> int:
    limit = cfg.get("max_position_embeddings", DEFAULT_MAX_LENGTH)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ModelFilesError(f"config.json: max_position_embeddings must be a positive integer, got {limit!r}")
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


def _apply_recipe(rec: Recipe, fp32: Path, formats, work: Path, log) -> tuple[Path, dict]:
    """The recipe's graph in ``work/model``: (that directory, what the recipe did)."""
    final = work / "model"
    final.mkdir()
    log(f"[4/6] applying {rec.name}: {rec.description}")
    quant = rec.apply(fp32, final / GRAPH_FILE, formats=formats)
    shutil.rmtree(fp32.parent)
    return final, quant


def _manifest_data(src, cfg: dict, cache: CacheShape, rec: Recipe, quant: dict, smoothing, max_length: int,
                   has_step_head: bool, source_id: str | None, notice: str | None) -> dict:
    inputs, outputs = cached_io(cache.layers)
    pad = cfg.get("eos_token_id")
    data = {
        "source": {"id": source_id or src.id, "revision": src.revision, "layout": src.layout,
                   "hidden_size": cfg.get("hidden_size"), "num_hidden_layers": cfg.get("num_hidden_layers")},
        "precision": rec.precision,
        "quantization": {"recipe": rec.name, **quant, **({"smoothing": smoothing} if smoothing else {})},
        "interface": "cached", "inputs": inputs, "outputs": outputs,
        "cache": cache.to_dict(),
        "token_independent": rec.token_independent,
        "graph": GRAPH_FILE, "tokenizer": TOKENIZER_FILE, "max_length": max_length,
        "pad_token_id": pad if isinstance(pad, int) and not isinstance(pad, bool) else PAD_TOKEN_ID,
        "heads": {"trajectory": "reward_head", "step": "step_head" if has_step_head else "reward_head"},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "created_by": f"rfedge {__version__}",
    }
    if notice:
        data["notice"] = notice
    return data


def export_model(source: str, out: Path, precision: str = "int8", recipe: str | None = None,
                 max_length: int | None = None, calibration: str | None = None,
                 tolerance: dict | None = None, revision: str | None = None,
                 notice: str | None = None, source_id: str | None = None, log=_log, progress=_progress) -> dict:
    """Export ``source`` to ``out``; returns the manifest written. Raises ValidationError on a miss."""
    from rfedge.scorer import Scorer

    rec = get_recipe(precision, recipe)
    tol = replace(rec.tolerance, **{k: v for k, v in (tolerance or {}).items() if v is not None})
    out = Path(out)
    check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    traces = load_calibration(calibration)
    log(f"[1/6] loading {source}")
    src = resolve_source(source, revision)
    cfg = read_config(src.path)
    max_length = _max_length(cfg, max_length)
    if not (src.path / TOKENIZER_FILE).is_file():
        raise ModelFilesError(f"{src.path}: no {TOKENIZER_FILE}; the runtime needs the fast tokenizer file")
    prm = load_scalar_prm(src)
    tokenizer = TraceTokenizer(src.path / TOKENIZER_FILE, max_length)
    log(f"[2/6] reference rewards of the torch fp32 source on {len(traces)} calibration traces")
    references = reference_rewards(prm, tokenizer, traces, progress)
    smoothing, formats = None, None
    if rec.smooth:
        smoothing, formats = _smooth_and_fit(prm, tokenizer, traces, references, rec, tol, log)
    module = PooledPRM(prm.body, prm.head, prm.step_head).eval()
    cache, has_step_head = CacheShape(len(module.layers), module.n_kv, module.head_dim), prm.step_head is not None
    del prm
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        fp32 = _to_onnx(module, work, log)
        del module  # the torch weights are not needed past this point: free them before quantizing
        gc.collect()
        final, quant = _apply_recipe(rec, fp32, formats, work, log)
        data = _manifest_data(src, cfg, cache, rec, quant, smoothing, max_length, has_step_head, source_id, notice)
        shutil.copyfile(src.path / TOKENIZER_FILE, final / TOKENIZER_FILE)
        log("[5/6] validating the written graph against the reference rewards")
        manifest = parse_manifest(final, manifest_body(final, data), final / MANIFEST_NAME)
        report = validate(references, Scorer.from_manifest(manifest, device="cpu", cache_bytes=0), traces, tol)
        log(f"      {report.summary()}")
        report.raise_on_failure()
        data["validation"] = report.to_dict()
        log(f"[6/6] writing {out}")
        body = manifest_body(final, data)
        write_manifest(final, body)  # last: a directory without it, or without a passing validation, is refused
        left = install(final, out)
        if left:
            log(f"      note: {left}")
        return body
    finally:
        shutil.rmtree(work, ignore_errors=True)
