"""One backend, one process (so peak RSS is its own): prints a JSON line of timings."""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def inputs(T: int, batch: int, step_every: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(100, 150000, size=(batch, T), dtype=np.int64)
    mask = np.ones_like(ids)
    steps = np.arange(step_every - 1, T, step_every, dtype=np.int64)[None].repeat(batch, 0)
    return ids, mask, steps


def run_ort(model_dir: str, T: int, batch: int, reps: int, threads: int):
    from rfedge.manifest import load_manifest
    from rfedge.session import GraphSession

    t0 = time.perf_counter()
    session = GraphSession(load_manifest(model_dir), device="cpu", threads=threads)
    load = time.perf_counter() - t0
    ids, mask, steps = inputs(T, batch, 64)
    session.run(ids, mask, steps)  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        session.run(ids, mask, steps)
        times.append(time.perf_counter() - t)
    return load, times


def run_torch(ckpt: str, T: int, batch: int, reps: int, threads: int, dtype: str):
    import torch

    from rfedge_export.source import load_reward_head, load_body

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    body = load_body(__import__("pathlib").Path(ckpt), dtype=dtype, attn="eager")
    head = load_reward_head(__import__("pathlib").Path(ckpt), body.config.hidden_size).to(body.dtype)
    load = time.perf_counter() - t0
    ids, mask, steps = (torch.as_tensor(x) for x in inputs(T, batch, 64))

    def once():
        with torch.no_grad():
            h = body(input_ids=ids, attention_mask=mask).last_hidden_state
            torch.sigmoid(head(h[:, steps[0]])), torch.sigmoid(head(h[:, -1]))

    once()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    return load, times


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--backend", required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--T", type=int, required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.backend.startswith("torch-"):
        load, times = run_torch(a.path, a.T, a.batch, a.reps, a.threads, a.backend.split("-")[1])
    else:
        load, times = run_ort(a.path, a.T, a.batch, a.reps, a.threads)
    tokens = a.T * a.batch
    print(json.dumps({"load_s": load, "latency_p50_s": float(np.percentile(times, 50)),
                      "latency_p95_s": float(np.percentile(times, 95)),
                      "tokens_per_s": tokens / float(np.median(times))}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
