"""GPU check (device machine, torch only): the parity reference in bf16 on CUDA vs fp32 on CPU, the
1.5B / 7B shapes' reference forward speed and memory, and the 1.5B shape's batched step pooling
(rfedge's exported module, SDPA, bf16) against the HF eager reference path. onnxruntime-gpu cannot
be carried there, so this exercises the torch paths only.

    python bench/gpu/reference_bf16.py --demo demo-work --out $OUT
    python bench/gpu/reference_bf16.py --cpu-smoke          # tiny shapes on CPU: checks the script runs

Prints a table and writes reference_bf16.json. Needs a CUDA device; exits 2 without one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def forward_speed(model, T: int, reps: int) -> dict:
    """Tokens/s of ``model`` (on CUDA) over one random sequence of T tokens, and its peak memory."""
    import torch

    ids = torch.randint(100, 150000, (1, T), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        model(input_ids=ids)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            model(input_ids=ids)
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / reps
    return {"T": T, "tokens_per_s": T / dt, "peak_gb": torch.cuda.max_memory_allocated() / 1e9}


def speed(shape: dict, T: int, reps: int = 5) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2Model

    torch.manual_seed(0)
    cfg = Qwen2Config(**shape)
    with torch.device("cuda"):
        model = Qwen2Model(cfg).to(torch.bfloat16).eval()
    out = forward_speed(model, T, reps)
    del model
    torch.cuda.empty_cache()
    return out


def pooled_vs_eager(shape: dict, T: int, batch: int, device: str, dtype, reps: int = 3) -> dict:
    """Tokens/s of the module rfedge's export traces (both heads at every token, an empty cache of
    capacity T) against transformers' eager forward + head gather at every 64th token, same
    weights, same batch; and the two trajectory rewards' max |delta|."""
    import torch
    from transformers import Qwen2Config, Qwen2Model

    from rfedge_export.onnx.pooled import PooledPRM

    torch.manual_seed(0)
    cfg = Qwen2Config(**shape, attn_implementation="eager")
    with torch.device(device):
        body = Qwen2Model(cfg).to(dtype).eval()
        head = torch.nn.Linear(cfg.hidden_size, 1).to(dtype)
    pooled = PooledPRM(body, head).eval()
    ids = torch.randint(100, 150000, (batch, T), device=device)
    mask = torch.ones_like(ids)
    past = [t.to(device, dtype) for t in pooled.empty_cache(batch, T)]  # one pass: empty cache of capacity T
    past_length = torch.zeros(batch, dtype=torch.long, device=device)
    steps = torch.arange(63, T, 64, device=device).repeat(batch, 1)

    def eager():
        h = body(input_ids=ids, attention_mask=mask).last_hidden_state
        rows = torch.arange(batch, device=device).unsqueeze(1)
        return torch.sigmoid(head(h[rows, steps])), torch.sigmoid(head(h[:, -1]))

    out = {"T": T, "batch": batch}
    for name, fn in (("hf_eager", eager), ("rfedge_pooled", lambda: pooled(ids, mask, past_length, *past))):
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            if device == "cuda":
                torch.cuda.synchronize()
        dt = (time.perf_counter() - t) / reps
        out[name] = {"tokens_per_s": batch * T / dt,
                     "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None}
    with torch.no_grad():
        (_, want), got = eager(), pooled(ids, mask, past_length, *past)[1][:, -1]
    out["max_abs_delta_trajectory"] = float((want.squeeze(-1).float() - got.float()).abs().max())
    out["speedup"] = out["rfedge_pooled"]["tokens_per_s"] / out["hf_eager"]["tokens_per_s"]
    return out


SHAPES = {
    "1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, rope_theta=1e6),
    "7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, rope_theta=1e4),
}


def main():
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", default=None, help="demo work dir (teacher/) for the bf16-vs-fp32 parity check")
    ap.add_argument("--out", default=".")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU, to check the script itself")
    a = ap.parse_args()
    if a.cpu_smoke:
        tiny = dict(SHAPES["1.5b"], hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
        print(json.dumps(pooled_vs_eager(tiny, 128, 2, "cpu", torch.float32, reps=1), indent=2))
        return
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        sys.exit(2)
    results = {"device": torch.cuda.get_device_name(0), "speed": {}}
    for name, shape in SHAPES.items():
        results["speed"][name] = [speed(shape, T) for T in (512, 2048, 8192)]
    results["pooled_bf16_vs_hf_eager_1.5b"] = [pooled_vs_eager(SHAPES["1.5b"], T, 4, "cuda", torch.bfloat16)
                                               for T in (512, 2048, 8192)]
    if a.demo:
        from rfedge.synth import generate
        from rfedge.traces import parse_trace
        from rfedge_export.parity.references import load_reference

        traces = [parse_trace(r) for r in generate("arith", 200, 4242)]
        ref32 = load_reference(str(Path(a.demo) / "teacher"), "two-class", "fp32", "cpu")
        ref16 = load_reference(str(Path(a.demo) / "teacher"), "two-class", "bf16", "cuda")
        d = [abs(x[2] - y[2]) for t in traces for x, y in zip(ref32.score_trace(t).steps, ref16.score_trace(t).steps, strict=True)]
        results["bf16_cuda_vs_fp32_cpu"] = {"steps": len(d), "max_abs": max(d), "mean_abs": sum(d) / len(d)}
    print(json.dumps(results, indent=2))
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "reference_bf16.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
