"""Load on ``rfedge serve`` over loopback: 200 concurrent requests of mixed lengths, with batching
across requests and with it off, side by side in one run.

Each request is one ``POST /v1/score`` of 1..4 arith traces, some of them padded with long
thinking (mixed lengths). Every response is checked against offline scoring (``Scorer.score_many``
on the same traces, within 1e-5); the run fails if any request is lost or differs. Reports
traces/s, tokens/s, p50/p95 latency and the server's peak RSS (``VmHWM``).

    python bench/serve_load.py                      # the bundled demo model, 200 requests
    python bench/serve_load.py --model DIR --requests 200 --concurrency 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def requests_payloads(n: int, seed: int = 0) -> list[list[dict]]:
    from rfedge.synth import generate

    rng = random.Random(seed)
    pool = list(generate("arith", 4 * n, seed=seed))
    out = []
    for i in range(n):
        batch = []
        for r in pool[4 * i:4 * i + rng.randint(1, 4)]:
            if rng.random() < 0.3:  # a long one
                r = {**r, "trajectory": r["trajectory"] + ["let me check that again carefully " * rng.randint(5, 40)]}
            batch.append({**r, "id": f"{i}-{r['id']}"})
        out.append(batch)
    return out


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss_gb(pid: int) -> float:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(status["VmHWM"].split()[0]) / 1e6


async def _load(base: str, payloads, concurrency: int):
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=600) as client:
        async def one(payload):
            async with sem:
                t = time.perf_counter()
                r = await client.post(base + "/v1/score", json=payload)
                return r.status_code, r.json(), time.perf_counter() - t
        t0 = time.perf_counter()
        replies = await asyncio.gather(*(one(p) for p in payloads))
        return replies, time.perf_counter() - t0


def run(model: str, payloads, concurrency: int, batching: bool, expected: dict) -> dict:
    import httpx

    port = _port()
    args = [sys.executable, "-m", "rfedge", "serve", "--model", model, "--port", str(port), "--max-queue",
            str(len(payloads) + 1)]
    if not batching:
        args += ["--max-batch-tokens", "0"]
    proc = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        replies, wall = asyncio.run(_load(base, payloads, concurrency))
        peak = _peak_rss_gb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    lost = sum(code != 200 for code, _, _ in replies)
    worst = 0.0
    for (code, body, _), payload in zip(replies, payloads, strict=True):
        if code == 200:
            for got, sent in zip(body, payload, strict=True):
                want = expected[sent["id"]]
                worst = max(worst, abs(got["score"] - want["score"]),
                            *(abs(a["reward"] - b["reward"]) for a, b in zip(got["steps"], want["steps"], strict=True)))
    latencies = sorted(t for _, _, t in replies)
    traces = sum(len(p) for p in payloads)
    tokens = sum(expected[r["id"]]["num_tokens"] for p in payloads for r in p)
    return {"batching": batching, "requests": len(payloads), "traces": traces, "tokens": tokens, "lost_or_failed": lost,
            "max_abs_diff_vs_offline": worst, "wall_s": wall, "traces_per_s": traces / wall, "tokens_per_s": tokens / wall,
            "p50_s": latencies[len(latencies) // 2], "p95_s": latencies[int(len(latencies) * 0.95) - 1],
            "server_peak_rss_gb": peak}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory (default: the bundled demo model)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--out", default=str(HERE / "results" / "serve_load.json"))
    a = ap.parse_args()
    from rfedge import Scorer
    from rfedge.home import resolve_model

    model = str(resolve_model(a.model).path)
    payloads = requests_payloads(a.requests)
    offline = Scorer.load(model, device="cpu").score_many([r for p in payloads for r in p])
    expected = {r.id: r.to_dict() for r in offline}
    rows = [run(model, payloads, a.concurrency, batching, expected) for batching in (True, False)]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"model": model, "rows": rows}, indent=2))
    print("| batching | requests (traces) | lost | max diff vs offline | traces/s | tokens/s | p50 s | p95 s | "
          "server peak RSS GB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {'on' if r['batching'] else 'off'} | {r['requests']} ({r['traces']}) | {r['lost_or_failed']} | "
              f"{r['max_abs_diff_vs_offline']:.1e} | {r['traces_per_s']:.1f} | {r['tokens_per_s']:.0f} | "
              f"{r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['server_peak_rss_gb']:.2f} |")
    ok = all(r["lost_or_failed"] == 0 and r["max_abs_diff_vs_offline"] <= 1e-5 for r in rows)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
