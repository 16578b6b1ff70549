"""One layer's attention at the ReasonFlux-PRM-1.5B shape: ONNX Runtime's CPU GroupQueryAttention,
whole sequence at once vs in chunks over a K/V cache, with its fp32 flash path and without it.

One GQA node (12 query heads, 2 K/V heads, head size 128, batch 1), as the exported graph calls it:
present outputs requested (without them ONNX Runtime 1.32 takes the non-flash path), a cache
buffer of full capacity, ``query_seqlens`` set. "whole" runs T new tokens on an empty past; "chunked"
runs T / chunk calls of ``chunk`` new tokens each after the ones before (what the scorer does for
long traces). The flash path is turned off with ``ORT_GQA_DISABLE_FLASH_ATTENTION=1``, read when
the session is created, so each variant runs in its own process (which also gives its peak RSS).

    python bench/attention.py                       # T = 512 ... 32768, chunk 2048
    python bench/attention.py --lengths 512,2048 --reps 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEADS, KV_HEADS, HEAD_DIM = 12, 2, 128


def _model():
    from onnx import TensorProto as TP
    from onnx import helper as h

    f32 = TP.FLOAT
    node = h.make_node("GroupQueryAttention", ["q", "k", "v", "pk", "pv", "seqlens_k", "total", "", "", "", "", "",
                                               "", "", "", "", "query_seqlens"], ["o", "present_k", "present_v"],
                       domain="com.microsoft", num_heads=HEADS, kv_num_heads=KV_HEADS)
    inputs = [h.make_tensor_value_info("q", f32, [1, "S", HEADS * HEAD_DIM]),
              h.make_tensor_value_info("k", f32, [1, "S", KV_HEADS * HEAD_DIM]),
              h.make_tensor_value_info("v", f32, [1, "S", KV_HEADS * HEAD_DIM]),
              h.make_tensor_value_info("pk", f32, [1, KV_HEADS, "C", HEAD_DIM]),
              h.make_tensor_value_info("pv", f32, [1, KV_HEADS, "C", HEAD_DIM]),
              h.make_tensor_value_info("seqlens_k", TP.INT32, [1]),
              h.make_tensor_value_info("total", TP.INT32, []),
              h.make_tensor_value_info("query_seqlens", TP.INT32, [1])]
    outputs = [h.make_tensor_value_info(n, f32, None) for n in ("o", "present_k", "present_v")]
    graph = h.make_graph([node], "gqa", inputs, outputs)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 20), h.make_opsetid("com.microsoft", 1)])


def worker(T: int, chunk: int, reps: int) -> dict:
    """Time T tokens of attention in calls of ``chunk`` new tokens (chunk >= T: one call)."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(_model().SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, T, HEADS * HEAD_DIM), dtype=np.float32)
    kv = rng.standard_normal((1, T, KV_HEADS * HEAD_DIM), dtype=np.float32)
    cache = [np.zeros((1, KV_HEADS, T, HEAD_DIM), np.float32) for _ in range(2)]

    def once():
        binding = session.io_binding()
        for lo in range(0, T, chunk):
            n = min(chunk, T - lo)
            feeds = {"q": q[:, lo:lo + n], "k": kv[:, lo:lo + n], "v": kv[:, lo:lo + n],
                     "seqlens_k": np.array([lo + n - 1], np.int32), "total": np.array(T, np.int32),
                     "query_seqlens": np.array([n], np.int32)}
            binding = session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            for past, present, buf in zip(("pk", "pv"), ("present_k", "present_v"), cache, strict=True):
                value = ort.OrtValue.ortvalue_from_numpy(buf)
                binding.bind_ortvalue_input(past, value)
                binding.bind_ortvalue_output(present, value)
            binding.bind_output("o")
            session.run_with_iobinding(binding)

    once()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    return {"T": T, "chunk": min(chunk, T), "seconds": min(times)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="512,2048,8192,16384,32768")
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--no-flash-max-T", type=int, default=8192,
                    help="without flash the kernel holds a heads x chunk x T fp32 buffer: skip longer T")
    ap.add_argument("--out", default=str(HERE / "results" / "attention.json"))
    ap.add_argument("--worker", nargs=3, type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(*a.worker)))
        return
    sys.path.insert(0, str(HERE))
    from speed import run_measured, save

    rows = []
    for T in [int(x) for x in a.lengths.split(",")]:
        for flash in (True, False):
            for chunk in ((T,) if a.chunk >= T else (T, a.chunk)):
                if not flash and T > a.no_flash_max_T and chunk == T:
                    continue
                env = "" if flash else "ORT_GQA_DISABLE_FLASH_ATTENTION=1"
                cmd = [sys.executable, __file__, "--worker", str(T), str(chunk), str(a.reps)]
                os.environ.pop("ORT_GQA_DISABLE_FLASH_ATTENTION", None)
                if not flash:
                    os.environ["ORT_GQA_DISABLE_FLASH_ATTENTION"] = "1"
                out, _, peak = run_measured(cmd)
                os.environ.pop("ORT_GQA_DISABLE_FLASH_ATTENTION", None)
                row = {**json.loads(out.strip().splitlines()[-1]), "flash": flash, "peak_rss_gb": peak,
                       "env": env}
                rows.append(row)
                label = "whole" if row["chunk"] >= T else f"chunks of {row['chunk']}"
                print(f"T={T:6} {label:16} flash={'on ' if flash else 'off'} {row['seconds']:8.3f} s  "
                      f"peak RSS {peak:.2f} GB", file=sys.stderr, flush=True)
                save(a.out, {"heads": HEADS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM, "rows": rows})
    print("| T | whole, flash | chunks, flash | whole, no flash | chunks, no flash | tokens/s (whole, flash) |")
    print("|---|---|---|---|---|---|")
    for T in sorted({r["T"] for r in rows}):
        cell = {}
        for r in rows:
            if r["T"] == T:
                cell[(r["chunk"] >= T, r["flash"])] = f"{r['seconds']:.3f} s, {r['peak_rss_gb']:.2f} GB"
        tps = next((T / r["seconds"] for r in rows if r["T"] == T and r["flash"] and r["chunk"] >= T), None)
        print(f"| {T} | {cell.get((True, True), '-')} | {cell.get((False, True), '-')} | {cell.get((True, False), '-')} "
              f"| {cell.get((False, False), '-')} | {tps:.0f} |")


if __name__ == "__main__":
    main()
