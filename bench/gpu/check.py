"""The device check: one script for a CUDA machine, under 8 minutes, that says what rfedge's GPU paths
do there. Run it where rfedge's CUDA claims matter; paste its table into an issue.

    python bench/gpu/check.py --teacher DEMO/teacher --export-fp16 DIR --out OUT
    python bench/gpu/check.py --cpu-smoke --teacher DEMO/teacher     # the script itself, on CPU

1. The reference on small GPUs: the demo teacher (two-class layout, ``rfedge demo build``) in fp32
   and bf16 on CUDA, and with ``--reference-quant int8`` / ``nf4`` (bitsandbytes), against fp32 on
   the CPU: max / mean |delta| of step rewards and step AUROC against the traces' gold labels.
2. The 7B shape (random weights) in bf16, bitsandbytes int8 and nf4: GPU memory after loading, peak
   memory and tokens/s of a forward at T = 512 / 2048.
3. rfedge's pooled module (the graph's torch source, SDPA, bf16) against the HF eager path at the
   1.5B shape (``reference_bf16.pooled_vs_eager``).
4. ``rfedge score --device cuda`` on an fp16 export against ``--device cpu``, if this ONNX Runtime has
   the CUDA execution provider (onnxruntime-gpu); otherwise the row says it was not run.

A part whose package is missing (bitsandbytes, onnxruntime-gpu) is recorded as skipped with the
reason, never silently. Writes check.json to --out and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_bf16 import SHAPES, forward_speed, pooled_vs_eager  # noqa: E402  (beside this script)

QUANT_ROWS = (("fp32", "none"), ("bf16", "none"), ("bf16", "int8"), ("bf16", "nf4"))


def _skip_reason(quant: str, device: str) -> str | None:
    from rfedge.errors import RfedgeError
    from rfedge_export.checkpoint.quantized import check_quant

    try:
        check_quant(quant, device)
    except RfedgeError as e:
        return str(e)
    return None


def teacher_parity(teacher: str, device: str, n: int) -> list[dict]:
    from rfedge.synth import generate
    from rfedge.traces import parse_trace
    from rfedge_export.parity.metrics import auroc
    from rfedge_export.parity.references import load_reference

    records = list(generate("arith", n, 4242))
    traces = [parse_trace(r) for r in records]
    cpu = load_reference(teacher, "two-class", "fp32", "cpu")
    per_trace = [[s[2] for s in cpu.score_trace(t).steps] for t in traces]
    labelled = [(k, j) for k, (r, steps) in enumerate(zip(records, per_trace, strict=True))
                for j in range(min(len(r["labels"]), len(steps)))]  # gold labels by step order, as parity pairs them
    labels = np.array([bool(records[k]["labels"][j]) for k, j in labelled])

    def gold_auroc(rewards):
        return auroc(np.array([rewards[k][j] for k, j in labelled]), labels)
    base = [x for steps in per_trace for x in steps]
    rows = [{"reference": "fp32 on CPU", "steps": len(base), "step_auroc": gold_auroc(per_trace)}]
    for dtype, quant in QUANT_ROWS:
        name = f"{dtype} {quant if quant != 'none' else ''} on {device}".replace("  ", " ")
        reason = _skip_reason(quant, device)
        if reason:
            rows.append({"reference": name, "skipped": reason})
            continue
        ref = load_reference(teacher, "two-class", dtype, device, quant)
        got = [[s[2] for s in ref.score_trace(t).steps] for t in traces]
        d = [abs(a - b) for a, b in zip(base, [x for steps in got for x in steps], strict=True)]
        rows.append({"reference": name, "steps": len(d), "max_abs_delta": max(d), "mean_abs_delta": sum(d) / len(d),
                     "step_auroc": gold_auroc(got)})
    return rows


def _quantize_linears(model, quant: str):
    """Every nn.Linear of ``model`` (on CUDA, bf16) replaced by its bitsandbytes form, one at a time."""
    import bitsandbytes as bnb
    import torch

    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, torch.nn.Linear):
                continue
            w = child.weight.data
            if quant == "int8":
                q = bnb.nn.Linear8bitLt(child.in_features, child.out_features, child.bias is not None,
                                        has_fp16_weights=False, threshold=6.0)
                q.weight = bnb.nn.Int8Params(w.cpu(), requires_grad=False, has_fp16_weights=False)
            else:
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, child.bias is not None,
                                      compute_dtype=torch.bfloat16, quant_type="nf4")
                q.weight = bnb.nn.Params4bit(w.cpu(), requires_grad=False, quant_type="nf4")
            if child.bias is not None:
                q.bias = torch.nn.Parameter(child.bias.data.clone(), requires_grad=False)
            setattr(module, child_name, q.cuda())
            del child, w
            torch.cuda.empty_cache()
    return model


def shape_7b(quant: str, lengths=(512, 2048), reps: int = 3) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2Model

    reason = _skip_reason(quant, "cuda")
    if reason:
        return {"quant": quant, "skipped": reason}
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2Model(Qwen2Config(**SHAPES["7b"])).to(torch.bfloat16).eval()
    if quant != "none":
        model = _quantize_linears(model, quant)
    torch.cuda.empty_cache()
    out = {"quant": quant, "weights_gb": torch.cuda.memory_allocated() / 1e9, "runs": []}
    out["runs"] = [forward_speed(model, T, reps) for T in lengths]
    del model
    torch.cuda.empty_cache()
    return out


def onnx_cuda(export_dir: str | None) -> dict:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"skipped": f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu); "
                           "rfedge score --device cuda was not run"}
    if not export_dir:
        return {"skipped": "no --export-fp16 given"}
    from rfedge import Scorer
    from rfedge.synth import generate

    records = list(generate("arith", 200, 77))
    cpu, cuda = Scorer.load(export_dir, device="cpu"), Scorer.load(export_dir, device="cuda")
    t = time.perf_counter()
    a = cpu.score_many(records)
    t_cpu = time.perf_counter() - t
    t = time.perf_counter()
    b = cuda.score_many(records)
    t_cuda = time.perf_counter() - t
    d = [abs(x.reward - y.reward) for p, q in zip(a, b, strict=True) for x, y in zip(p.steps, q.steps, strict=True)
         if x.reward is not None and y.reward is not None]
    return {"traces": len(records), "max_abs_delta_steps": max(d, default=0.0), "cpu_s": t_cpu, "cuda_s": t_cuda,
            "providers": cuda.session.providers}


def table(results: dict) -> str:
    lines = ["| reference | max abs delta | mean abs delta | step AUROC (gold) |", "|---|---|---|---|"]
    for r in results.get("teacher", []):
        if "skipped" in r:
            lines.append(f"| {r['reference']} | skipped: {r['skipped']} | | |")
        else:
            lines.append(f"| {r['reference']} | {r.get('max_abs_delta', 0):.2e} | {r.get('mean_abs_delta', 0):.2e} | "
                         f"{r['step_auroc']:.4f} |")
    lines += ["", "| 7B shape | weights GB | T | tokens/s | peak GB |", "|---|---|---|---|---|"]
    for r in results.get("7b", []):
        if "skipped" in r:
            lines.append(f"| {r['quant']} | skipped: {r['skipped']} | | | |")
            continue
        for run in r["runs"]:
            lines.append(f"| {r['quant']} | {r['weights_gb']:.2f} | {run['T']} | {run['tokens_per_s']:.0f} | "
                         f"{run['peak_gb']:.2f} |")
    lines += ["", "| pooled vs HF eager | T | batch | eager tok/s | pooled tok/s | speedup | max abs delta |", "|---|---|---|---|---|---|---|"]
    for key in ("pooled_bf16_vs_hf_eager_1.5b", "pooled_fp32_vs_hf_eager_tiny"):
        for r in results.get(key, []):
            lines.append(f"| {key} | {r['T']} | {r['batch']} | {r['hf_eager']['tokens_per_s']:.0f} | "
                         f"{r['rfedge_pooled']['tokens_per_s']:.0f} | {r['speedup']:.2f} | {r['max_abs_delta_trajectory']:.2e} |")
    lines += ["", f"rfedge score --device cuda: {json.dumps(results.get('onnx_cuda'))}"]
    return "\n".join(lines)


def main():
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True, help="the demo teacher directory (rfedge demo build: WORK/teacher)")
    ap.add_argument("--export-fp16", default=None, help="an fp16 rfedge export, for rfedge score --device cuda")
    ap.add_argument("--out", default=".")
    ap.add_argument("--traces", type=int, default=200)
    ap.add_argument("--cpu-smoke", action="store_true", help="the teacher rows on CPU only (checks the script)")
    a = ap.parse_args()
    if a.cpu_smoke:
        tiny = dict(SHAPES["1.5b"], hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
        results = {"device": "cpu (smoke)", "teacher": teacher_parity(a.teacher, "cpu", 20),
                   "pooled_fp32_vs_hf_eager_tiny": [pooled_vs_eager(tiny, 128, 2, "cpu", torch.float32, reps=1)]}
    else:
        if not torch.cuda.is_available():
            print("bench/gpu/check.py: torch sees no CUDA device (use --cpu-smoke to check the script)", file=sys.stderr)
            sys.exit(2)
        results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                   "teacher": teacher_parity(a.teacher, "cuda", a.traces),
                   "7b": [shape_7b(q) for q in ("none", "int8", "nf4")],
                   "pooled_bf16_vs_hf_eager_1.5b": [pooled_vs_eager(SHAPES["1.5b"], T, 4, "cuda", torch.bfloat16)
                                                    for T in (512, 2048)],
                   "onnx_cuda": onnx_cuda(a.export_fp16)}
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "check.json").write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
