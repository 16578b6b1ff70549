"""Peak memory of `rfedge score` on a large JSONL stream: bounded, whatever the file size.

Writes a JSONL file of --size-mb made of a repeating mix of records (ordinary arithmetic traces
carrying a large metadata field, malformed lines, records of the wrong type, and traces far beyond
the model's max length), scores it with `rfedge score FILE --output OUT` in a child process, and
reports the child's peak RSS, the wall time and whether every input line got exactly one output
line in order. Run it at two sizes to see that the peak does not grow with the input:

    python bench/stream_memory.py --size-mb 64 --size-mb 1024

``--record-mb N`` (repeatable) measures one record of N MB (a trajectory of N MB of steps) between
40 ordinary traces, against the same 40 traces without it: the peak should stay near that
baseline (records up to --max-record-bytes, 64 MiB by default, are tokenized only as far as the
model's max length; longer ones are error lines, skipped without being held):

    python bench/stream_memory.py --record-mb 10 --record-mb 200
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
    rc, peak_mb, wall, stderr = _score(src, out, model, ["--batch-tokens", str(batch_tokens)] if batch_tokens else [])
    ids, errors = [], 0
    with out.open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            ids.append(rec.get("id"))
            errors += "error" in rec
    expected = counts.pop("ids")
    row = {"size_mb": size_mb, "batch_tokens": batch_tokens, "input_bytes": src.stat().st_size, **counts, "output_lines": len(ids),
           "error_lines": errors, "in_order": ids == expected, "exit_code": rc,
           "traceback": "Traceback" in stderr, "peak_rss_mb": peak_mb, "seconds": wall}
    src.unlink()
    out.unlink()
    return row


def _score(src: Path, out: Path, model: str | None, extra: list[str] = ()) -> tuple[int, float, float, str]:
    """``rfedge score src -o out`` in a child process: (exit code, peak RSS MB, seconds, stderr)."""
    cmd = [sys.executable, "-m", "rfedge", "score", str(src), "--output", str(out),
           *(["--model", model] if model else []), *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024, time.perf_counter() - t0, stderr


def run_record(record_mb: int, workdir: Path, model: str | None) -> dict:
    """One record of ``record_mb`` MB among 40 ordinary traces, against the 40 alone."""
    traces = [json.dumps({**t, "id": f"r{i}"}) for i, t in enumerate(generate("arith", 40, seed=5))]
    step = json.dumps("12 + 7 = 19\n\n")[1:-1]  # JSON-escaped; the record is written in pieces, never held
    repeats = record_mb * 1024 * 1024 // len(step)
    row = {"record_mb": record_mb}
    for name, with_record in (("baseline", False), ("with record", True)):
        src, out = workdir / "rec.jsonl", workdir / "rec-out.jsonl"
        with src.open("w") as f:
            f.write("\n".join(traces[:20]) + "\n")
            if with_record:
                f.write('{"id": "big", "problem": "Count.", "response": "done", "trajectory": "')
                for _ in range(repeats // 1000):
                    f.write(step * 1000)
                f.write('"}\n')
            f.write("\n".join(traces[20:]) + "\n")
        row["record_bytes"] = src.stat().st_size
        lines = 41 if with_record else 40
        rc, peak, wall, stderr = _score(src, out, model)
        got = [json.loads(x) for x in out.read_text().splitlines()]
        row[name] = {"exit_code": rc, "peak_rss_mb": peak, "seconds": wall, "output_lines": len(got),
                     "lines": lines, "traceback": "Traceback" in stderr,
                     "big": got[20] if with_record and len(got) > 20 else None}
        if row[name]["big"]:
            row[name]["big"] = {k: v for k, v in row[name]["big"].items() if k in ("id", "error", "num_tokens", "truncated")}
        src.unlink()
        out.unlink()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, action="append", help="input size (repeatable; default 64 and 1024)")
    ap.add_argument("--model", default=None, help="model directory (default: rfedge's default resolution)")
    ap.add_argument("--batch-tokens", type=int, default=None, help="passed to rfedge score")
    ap.add_argument("--record-mb", type=int, action="append", help="one record of this size (repeatable)")
    ap.add_argument("--workdir", default=None, help="where the input is written (needs size-mb of free disk)")
    args = ap.parse_args()
    if args.record_mb:
        return records(args)
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


def records(args) -> None:
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as d:
        for mb in args.record_mb:
            r = run_record(mb, Path(d), args.model)
            rows.append(r)
            b, w = r["baseline"], r["with record"]
            print(f"{mb:>4} MB record: peak RSS {w['peak_rss_mb']:.0f} MB (40 traces alone: {b['peak_rss_mb']:.0f} MB), "
                  f"{w['output_lines']}/{w['lines']} lines out, exit {w['exit_code']}, traceback {w['traceback']}, "
                  f"{w['seconds']:.1f} s; the record: {w['big']}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "stream_memory_records.json").write_text(json.dumps(rows, indent=1) + "\n")
    ok = all(r["with record"]["output_lines"] == r["with record"]["lines"] and not r["with record"]["traceback"]
             for r in rows)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
