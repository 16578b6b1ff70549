"""Peak memory of `rfedge score` on a large JSONL stream: bounded, whatever the file size.

Writes a JSONL file of --size-mb made of a repeating mix of records (ordinary arithmetic traces
carrying a large metadata field, malformed lines, records of the wrong type, and traces far beyond
the model's max length), scores it with `rfedge score FILE --output OUT` in a child process, and
reports the child's peak RSS, the wall time and whether every input line got exactly one output
line in order. Run it at two sizes to see that the peak does not grow with the input:

    python bench/stream_memory.py --size-mb 64 --size-mb 1024
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rfedge.synth import generate

RESULTS = Path(__file__).parent / "results"


def write_input(path: Path, size_mb: int, seed: int = 0) -> dict:
    """Return counts of each kind of line written."""
    target = size_mb * 1024 * 1024
    meta = "x" * 100_000  # metadata a dataset carries along; read, parsed and ignored
    huge = " ".join(f"{i} + 1 = {i + 1}" for i in range(30_000))  # ~300 KB, far beyond max length
    counts = {"good": 0, "malformed": 0, "wrong_type": 0, "huge": 0, "ids": []}
    written = 0
    traces = generate("arith", 1000, seed=seed)
    with path.open("w", encoding="utf-8") as f:
        i = 0
        while written < target:
            kind = ("malformed" if i % 50 == 7 else "wrong_type" if i % 50 == 19
                    else "huge" if i % 200 == 33 else "good")
            if kind == "good":
                t = next(traces, None)
                if t is None:
                    traces = generate("arith", 1000, seed=seed + i)
                    t = next(traces)
                line = json.dumps({**t, "id": f"r{i}", "meta": meta})
            elif kind == "malformed":
                line = '{"id": "r%d", "problem": "unterminated' % i
            elif kind == "wrong_type":
                line = json.dumps({"id": f"r{i}", "problem": 42, "completion": ["a"], "meta": meta})
            else:
                line = json.dumps({"id": f"r{i}", "problem": "Count.", "trajectory": huge, "response": "done"})
            f.write(line + "\n")
            written += len(line) + 1
            counts[kind] += 1
            counts["ids"].append(None if kind == "malformed" else f"r{i}")  # a broken line has no readable id
            i += 1
    counts["lines"] = i
    return counts


def run(size_mb: int, workdir: Path, model: str | None, batch_tokens: int | None) -> dict:
    src, out = workdir / f"in-{size_mb}.jsonl", workdir / f"out-{size_mb}.jsonl"
    counts = write_input(src, size_mb)
    cmd = [sys.executable, "-m", "rfedge", "score", str(src), "--output", str(out)]
    if model:
        cmd += ["--model", model]
    if batch_tokens:
        cmd += ["--batch-tokens", str(batch_tokens)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    ids, errors = [], 0
    with out.open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            ids.append(rec.get("id"))
            errors += "error" in rec
    expected = counts.pop("ids")
    row = {"size_mb": size_mb, "batch_tokens": batch_tokens, "input_bytes": src.stat().st_size, **counts, "output_lines": len(ids),
           "error_lines": errors, "in_order": ids == expected, "exit_code": rc,
           "traceback": "Traceback" in stderr, "peak_rss_mb": usage.ru_maxrss / 1024, "seconds": wall}
    src.unlink()
    out.unlink()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, action="append", help="input size (repeatable; default 64 and 1024)")
    ap.add_argument("--model", default=None, help="model directory (default: rfedge's default resolution)")
    ap.add_argument("--batch-tokens", type=int, default=None, help="passed to rfedge score")
    ap.add_argument("--workdir", default=None, help="where the input is written (needs size-mb of free disk)")
    args = ap.parse_args()
    sizes = args.size_mb or [64, 1024]
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as d:
        for size in sizes:
            rows.append(run(size, Path(d), args.model, args.batch_tokens))
            r = rows[-1]
            print(f"{r['size_mb']:>6} MB  lines {r['lines']:>7}  out {r['output_lines']:>7}  errors "
                  f"{r['error_lines']:>6}  in order {r['in_order']}  exit {r['exit_code']}  traceback "
                  f"{r['traceback']}  peak RSS {r['peak_rss_mb']:.0f} MB  {r['seconds']:.0f} s", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "stream_memory.json").write_text(json.dumps(rows, indent=1) + "\n")
    ok = all(r["output_lines"] == r["lines"] and r["in_order"] and not r["traceback"] for r in rows)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
