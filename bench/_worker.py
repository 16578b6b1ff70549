"""One backend, one process (so peak RSS is its own): prints a JSON line of timings.

Modes: a batch of one sequence of length T (``--T``), a batched run of mixed lengths
(``--mixed N``: N sequences with lengths spread over 256..T, scored in length-sorted batches of
``--batch``), or the machine's GEMM ceiling (``--backend ceiling``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

STEP_EVERY = 64


def sequences(T: int, mixed: int, seed: int = 0, text_ids: np.ndarray | None = None) -> list[np.ndarray]:
    """Token sequences: uniformly random ids, or consecutive slices of ``text_ids`` (a tokenized text,
    repeated as needed). Speed does not depend on which; memory does: the int8 embedding's rows are
    read in place from the mapped data file, and random ids touch pages all over the table."""
    rng = np.random.default_rng(seed)
    lengths = [T] if not mixed else sorted(rng.integers(256, T + 1, size=mixed).tolist())
    if text_ids is None:
        return [rng.integers(100, 150000, size=n, dtype=np.int64) for n in lengths]
    text = np.resize(text_ids.astype(np.int64), sum(lengths))
    return np.split(text, np.cumsum(lengths)[:-1])


def batches(seqs: list[np.ndarray], batch: int):
    """Right-padded (ids, mask, step_index) batches of consecutive (length-sorted) sequences."""
    for i in range(0, len(seqs), batch):
        group = seqs[i:i + batch]
        T = max(len(s) for s in group)
        S = max(len(range(STEP_EVERY - 1, len(s), STEP_EVERY)) for s in group) or 1
        ids = np.full((len(group), T), 151643, np.int64)
        mask = np.zeros_like(ids)
        steps = np.full((len(group), S), -1, np.int64)
        for r, s in enumerate(group):
            ids[r, :len(s)], mask[r, :len(s)] = s, 1
            idx = np.arange(STEP_EVERY - 1, len(s), STEP_EVERY)
            steps[r, :len(idx)] = idx
        yield ids, mask, steps


def run_ort(model_dir: str, seqs, batch: int, reps: int, threads: int, chunk_tokens: int | None = None):
    from rfedge.manifest import load_manifest
    from rfedge.scorer import Scorer
    from rfedge.session import GraphSession

    t0 = time.perf_counter()
    manifest = load_manifest(model_dir)
    if manifest.cache is not None:  # the cached graph: the engine as Scorer runs it (its chunks), no prefix cache
        scorer = Scorer.from_manifest(manifest, "cpu", threads, batch_size=batch, cache_bytes=0,
                                      chunk_tokens=chunk_tokens)
        load = time.perf_counter() - t0
        return load, lambda: scorer.engine.rewards(seqs)
    session = GraphSession(manifest, device="cpu", threads=threads)
    load = time.perf_counter() - t0

    def once():
        for ids, mask, steps in batches(seqs, batch):
            session.run(ids, mask, steps)
    return load, once


def _bnb_int8(body) -> None:
    """Every transformer-layer Linear -> bitsandbytes Linear8bitLt (LLM.int8(), threshold 6.0)."""
    import bitsandbytes as bnb
    import torch.nn as nn

    for layer in body.layers:
        for name, mod in list(layer.named_modules()):
            if isinstance(mod, nn.Linear):
                q = bnb.nn.Linear8bitLt(mod.in_features, mod.out_features, bias=mod.bias is not None,
                                        has_fp16_weights=False, threshold=6.0)
                q.weight = bnb.nn.Int8Params(mod.weight.data, requires_grad=False, has_fp16_weights=False)
                if mod.bias is not None:
                    q.bias = mod.bias
                parent = layer.get_submodule(name.rsplit(".", 1)[0]) if "." in name else layer
                setattr(parent, name.rsplit(".", 1)[-1], q.to("cpu"))


def run_torch(ckpt: str, seqs, batch: int, reps: int, threads: int, kind: str):
    import torch

    from rfedge_export.checkpoint.source import load_body, load_reward_head

    if threads:
        torch.set_num_threads(threads)
    dtype = {"fp32": "fp32", "fp32-sdpa": "fp32", "bf16": "bf16", "bnb8": "fp32"}[kind]
    t0 = time.perf_counter()
    # eager as the ReasonFlux reference runs it; fp32-sdpa: transformers' default attention
    body = load_body(Path(ckpt), dtype=dtype, attn="sdpa" if kind == "fp32-sdpa" else "eager")
    if kind == "bnb8":
        _bnb_int8(body)
    head = load_reward_head(Path(ckpt), body.config.hidden_size).to(body.dtype)
    load = time.perf_counter() - t0

    def once():
        with torch.no_grad():
            for ids, mask, steps in batches(seqs, batch):
                ids, mask, steps = torch.as_tensor(ids), torch.as_tensor(mask), torch.as_tensor(steps)
                h = body(input_ids=ids, attention_mask=mask).last_hidden_state
                rows = torch.arange(len(ids)).unsqueeze(1)
                torch.sigmoid(head(h[rows, steps.clamp(min=0)]))
                torch.sigmoid(head(h[torch.arange(len(ids)), mask.sum(1) - 1]))
    return load, once


def best_time(model, feeds: dict, reps: int, threads: int) -> float:
    """The best of ``reps`` runs of an ONNX model in ONNX Runtime's CPU provider, after one warm-up."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    s = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    s.run(None, feeds)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        s.run(None, feeds)
        best = min(best, time.perf_counter() - t)
    return best


def ceiling(T: int, threads: int) -> dict:
    """Sustained GEMM rates at the 1.5B's layer shapes (M = T tokens), in ONNX Runtime, and GQA."""
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper as nh

    hidden, inter, kv = 1536, 8960, 256
    shapes = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden), (hidden, inter), (hidden, inter),
              (inter, hidden)]
    rng = np.random.default_rng(0)
    out = {"T": T, "gemm": {}}
    for kind in ("fp32", "int8"):
        total, ops = 0.0, 0
        for K, N in shapes:
            x = rng.standard_normal((T, K)).astype(np.float32)
            if kind == "fp32":
                nodes = [h.make_node("MatMul", ["x", "w"], ["y"])]
                inits = [nh.from_array(rng.standard_normal((K, N)).astype(np.float32), "w")]
                feeds = {"x": x}
                xin = h.make_tensor_value_info("x", TP.FLOAT, [T, K])
                yout = h.make_tensor_value_info("y", TP.FLOAT, None)
            else:  # the integer GEMM the int8 recipe runs: uint8 (zero point 128) x int8
                nodes = [h.make_node("MatMulInteger", ["x", "w", "zp"], ["y"])]
                inits = [nh.from_array(rng.integers(-63, 64, (K, N)).astype(np.int8), "w"),
                         nh.from_array(np.array(128, np.uint8), "zp")]
                feeds = {"x": rng.integers(0, 256, (T, K)).astype(np.uint8)}
                xin = h.make_tensor_value_info("x", TP.UINT8, [T, K])
                yout = h.make_tensor_value_info("y", TP.INT32, None)
            g = h.make_graph(nodes, "g", [xin], [yout], inits)
            m = h.make_model(g, opset_imports=[h.make_opsetid("", 20)])
            total += best_time(m, feeds, 3, threads)
            ops += 2 * T * K * N
        out["gemm"][kind] = {"seconds_per_layer": total, "gop_per_s": ops / total / 1e9}
    # causal GQA timed two ways, the ceiling takes the faster: as the graph calls it (past/present buffers of
    # capacity T, no past yet, per-row lengths) and without past buffers (all this ceiling timed before
    # 2026-12-06): ONNX Runtime runs them on different paths (at T=2048 1.5x slower without, at 512 faster)
    q = rng.standard_normal((1, T, 12 * 128)).astype(np.float32)
    k = rng.standard_normal((1, T, 2 * 128)).astype(np.float32)
    vi = h.make_tensor_value_info
    for past, key in ((True, "attention_with_past_seconds_per_layer"),
                      (False, "attention_without_past_seconds_per_layer")):
        inputs = [vi("q", TP.FLOAT, [1, T, 1536]), vi("k", TP.FLOAT, [1, T, 256]), vi("v", TP.FLOAT, [1, T, 256])]
        feeds = {"q": q, "k": k, "v": k, "sl": np.array([T - 1], np.int32), "tl": np.array(T, np.int32)}
        names, outs = ["q", "k", "v", "", "", "sl", "tl"], ["o"]
        if past:
            inputs += [vi("pk", TP.FLOAT, [1, 2, T, 128]), vi("pv", TP.FLOAT, [1, 2, T, 128]), vi("ql", TP.INT32, [1])]
            feeds.update(pk=np.zeros((1, 2, T, 128), np.float32), pv=np.zeros((1, 2, T, 128), np.float32),
                         ql=np.array([T], np.int32))
            names, outs = ["q", "k", "v", "pk", "pv", "sl", "tl"] + [""] * 9 + ["ql"], ["o", "ok", "ov"]
        node = h.make_node("GroupQueryAttention", names, outs, domain="com.microsoft", num_heads=12, kv_num_heads=2)
        g = h.make_graph([node], "g", inputs + [vi("sl", TP.INT32, [1]), vi("tl", TP.INT32, [])],
                         [vi(name, TP.FLOAT, None) for name in outs])
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 20), h.make_opsetid("com.microsoft", 1)])
        out[key] = best_time(m, feeds, 3, threads)
    out["attention_seconds_per_layer"] = min(out["attention_with_past_seconds_per_layer"],
                                             out["attention_without_past_seconds_per_layer"])
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--backend", required=True)
    p.add_argument("--path", default="")
    p.add_argument("--T", type=int, required=True)
    p.add_argument("--mixed", type=int, default=0, help="N sequences of mixed lengths 256..T instead of one of T")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--chunk-tokens", type=int, default=0, help="rfedge: tokens per graph call (0: the Scorer's default)")
    p.add_argument("--text-ids", default="", help="a .npy of token ids to slice the sequences from (default: random ids)")
    a = p.parse_args()
    if a.backend == "ceiling":
        print(json.dumps(ceiling(a.T, a.threads)))
        return
    seqs = sequences(a.T, a.mixed, text_ids=np.load(a.text_ids) if a.text_ids else None)
    try:
        if a.backend.startswith("torch-"):
            load, once = run_torch(a.path, seqs, a.batch, a.reps, a.threads, a.backend.split("-", 1)[1])
        else:
            load, once = run_ort(a.path, seqs, a.batch, a.reps, a.threads, a.chunk_tokens or None)
        once()  # warm-up
    except Exception as e:  # a backend that cannot run here is a result, not a crash
        print(json.dumps({"unavailable": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}))
        return
    times = []
    for _ in range(a.reps):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    tokens = sum(len(s) for s in seqs)
    print(json.dumps({"load_s": load, "tokens": tokens, "latency_p50_s": float(np.percentile(times, 50)),
                      "latency_p95_s": float(np.percentile(times, 95)),
                      "tokens_per_s": tokens / float(np.median(times))}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
