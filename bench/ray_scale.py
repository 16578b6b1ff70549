"""`rfedge score` on one machine vs on Ray Data actors, side by side in one run.

Scores the same JSONL (synthetic arithmetic traces, or --data) three ways, each in its own process:
the plain CLI (all cores), Ray with 1 actor x N threads, and Ray with N actors x 1 thread (N = the
machine's cores), and checks that all three outputs are byte for byte the same. Wall time includes
Ray's start (a local cluster here) and each actor's model load; "score s" is what the summary line
reports (from reading to the last row written).

    python bench/ray_scale.py                          # bundled demo model, 4000 traces
    python bench/ray_scale.py --model DIR --n 20000    # an export of yours
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from speed import save  # noqa: E402


def run(cmd: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return time.perf_counter() - t, p.stderr


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory (default: the bundled demo)")
    ap.add_argument("--data", default=None, help="a JSONL of traces (default: rfedge generate arith --n N)")
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--out", default=str(HERE / "results" / "ray_scale.json"))
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    model = ["--model", a.model] if a.model else []
    with tempfile.TemporaryDirectory() as d:
        data = a.data or str(Path(d) / "traces.jsonl")
        if not a.data:
            run([sys.executable, "-m", "rfedge", "generate", "arith", "--n", str(a.n), "--seed", "11", "-o", data])
        plans = [("plain CLI", []), (f"Ray 1 actor x {cores} threads", ["--ray", "--threads-per-actor", str(cores)]),
                 (f"Ray {cores} actors x 1 thread", ["--ray", "--actors", str(cores)])]
        rows, outputs = [], []
        for name, extra in plans:
            out = Path(d) / f"out{len(rows)}.jsonl"
            wall, err = run([sys.executable, "-m", "rfedge", "score", data, *model, *extra, "-o", str(out)])
            text = out.read_text()
            outputs.append(text)
            results = [json.loads(x) for x in text.splitlines()]
            tokens = sum(r.get("num_tokens", 0) for r in results)
            m = re.search(r"tokens, ([0-9.]+) s", err)
            score_s = float(m.group(1)) if m else wall
            rows.append({"run": name, "traces": len(results), "tokens": tokens, "wall_s": wall, "score_s": score_s,
                         "tokens_per_s_wall": tokens / wall, "tokens_per_s_score": tokens / score_s})
            print(f"{name:28} {wall:7.1f} s wall, {tokens / wall:8.0f} tok/s", file=sys.stderr, flush=True)
    same = all(o == outputs[0] for o in outputs)
    results = {"machine": {"cpus": cores}, "model": a.model or "bundled demo", "runs": rows,
               "outputs_identical": same}
    save(a.out, results)
    base = rows[0]["tokens_per_s_wall"]
    print("| run | traces | tokens | wall s | score s | tok/s (wall) | x plain |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['traces']} | {r['tokens']} | {r['wall_s']:.1f} | {r['score_s']:.1f} | "
              f"{r['tokens_per_s_wall']:.0f} | {r['tokens_per_s_wall'] / base:.2f} |")
    print(f"\noutputs byte for byte identical: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
