"""Scoring inside the search loop, at the ReasonFlux-PRM-1.5B shape (random weights), CPU, batch 1.

Side by side in one run, with the prefix cache (the Scorer's default) and without it
(``cache_bytes=0``), on the shipped INT8 export:

- steps: a 16-step, ~2048-token trace scored after every step (what beam search does to a beam),
  total time against one full pass of the final trace;
- best-of-8: a 512-token shared prompt and 8 continuations of 1536 tokens in one ``score_many``;
- beam: a beam search simulation, 4 beams x 16 steps, each beam forking into 2 candidates per
  step (8 partial traces scored per step, the best 4 kept);
- long: one trace of T = 512 / 2048 / 8192 / 16384 / 32768 tokens (the Scorer's chunks), tokens/s and
  peak RSS, each T in its own process.

    python bench/incremental.py            # 28 layers (about an hour here, most of it the long traces)
    python bench/incremental.py --quick    # 4 layers, shorter traces
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from speed import build_checkpoint, cpu_name, run_measured, save  # noqa: E402

WORDS = ("the", "value", "is", "then", "we", "add", "subtract", "so", "check", "step", "number", "result", "x",
         "equals", "because", "therefore", "12", "7", "=", "+", "-", "(", ")", "answer", "first", "next")


def words(rng: random.Random, tokens: int) -> str:
    """Text of about ``tokens`` Qwen2.5 tokens (a word and its space are about one token)."""
    return " ".join(rng.choice(WORDS) for _ in range(tokens))


def trace_tokenizer(model: str):
    """The export's own tokenizer, without loading its graph."""
    from rfedge.tokenization import TraceTokenizer

    return TraceTokenizer(Path(model) / "tokenizer.json")


def text_of(tokenizer, rng: random.Random, tokens: int) -> str:
    """Words that are ``tokens`` tokens long by ``tokenizer`` (give or take a merge)."""
    from rfedge.traces import Trace

    count = lambda t: tokenizer.encode(Trace("", t)).total  # noqa: E731
    text = words(rng, tokens)
    while count(text) > tokens:
        text = text.rsplit(" ", 1)[0]
    while count(text) < tokens:
        text += " " + rng.choice(WORDS)
    return text


def export(work: Path, layers: int) -> Path:
    ckpt = build_checkpoint(work / f"qwen2-1.5b-shape-{layers}l", layers)
    out = work / f"export-{layers}l-int8-v2"
    if not (out / "rfedge.json").is_file():
        _, wall, peak = run_measured([sys.executable, "-m", "rfedge", "export", str(ckpt), "--out", str(out),
                                      "--int8", "--max-length", "32768"])
        print(f"export: {wall:.0f} s, peak RSS {peak:.2f} GB", file=sys.stderr)
    return out


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def steps_scenario(model: str, prompt_tokens: int, n_steps: int, step_tokens: int) -> dict:
    from rfedge import Scorer
    from rfedge.traces import Trace

    rng = random.Random(1)
    tokenizer = trace_tokenizer(model)
    problem = text_of(tokenizer, rng, prompt_tokens)
    steps = [text_of(tokenizer, rng, step_tokens) for _ in range(n_steps)]
    partial = [Trace(problem, "<think>\n" + "\n\n".join(steps[:k])) for k in range(1, n_steps + 1)]
    out = {}
    for name, cache in (("cached", None), ("no cache", 0)):
        scorer = Scorer.load(model, device="cpu", **({} if cache is None else {"cache_bytes": cache}))
        scorer.score(Trace("warm", "up"))
        out[name] = _timed(lambda s=scorer: [s.score(t) for t in partial])
        out[f"{name} stats"] = scorer.cache_stats()
    full = Scorer.load(model, device="cpu", cache_bytes=0)
    full.score(Trace("warm", "up"))
    out["one full pass"] = _timed(lambda: full.score(partial[-1]))
    out["tokens"] = full.score(partial[-1]).num_tokens
    return out


def best_of_n_scenario(model: str, prompt_tokens: int, n: int, continuation_tokens: int) -> dict:
    from rfedge import Scorer
    from rfedge.traces import Trace

    rng = random.Random(2)
    tokenizer = trace_tokenizer(model)
    problem = text_of(tokenizer, rng, prompt_tokens)
    candidates = [text_of(tokenizer, rng, continuation_tokens) for _ in range(n)]
    out = {}
    for name, cache in (("cached", None), ("no cache", 0)):
        scorer = Scorer.load(model, device="cpu", **({} if cache is None else {"cache_bytes": cache}))
        scorer.score(Trace("warm", "up"))
        out[name] = _timed(lambda s=scorer: s.best_of_n(problem, candidates))
        out[f"{name} stats"] = scorer.cache_stats()
    out["tokens"] = reuse_tokens([tokenizer.encode(Trace(problem, c)).ids for c in candidates])
    return out


def reuse_tokens(seqs: list) -> dict:
    """Tokens run with and without prefix reuse: each sequence shares with the others its longest
    common prefix in whole 16-token blocks (the cache's unit), the deepest of those runs once."""
    def common(a, b) -> int:
        n = min(len(a), len(b))
        diff = [i for i in range(n) if a[i] != b[i]]
        return (diff[0] if diff else n) // 16 * 16
    shared = [max(common(s, t) for j, t in enumerate(seqs) if j != i) for i, s in enumerate(seqs)]
    return {"per trace": [len(s) for s in seqs], "without reuse": sum(len(s) for s in seqs),
            "with reuse": max(shared) + sum(len(s) - k for s, k in zip(seqs, shared, strict=True))}


def beam_scenario(model: str, prompt_tokens: int, beams: int, n_steps: int, step_tokens: int) -> dict:
    from rfedge import Scorer
    from rfedge.traces import Trace

    out = {}
    for name, cache in (("cached", None), ("no cache", 0)):
        rng = random.Random(3)
        problem = words(rng, prompt_tokens)
        scorer = Scorer.load(model, device="cpu", **({} if cache is None else {"cache_bytes": cache}))
        beam = ["<think>\n"] * beams
        t = time.perf_counter()
        for _ in range(n_steps):
            candidates = [b + ("\n\n" if b != "<think>\n" else "") + words(rng, step_tokens)
                          for b in beam for _ in range(2)]
            results = scorer.score_many([Trace(problem, c) for c in candidates])
            order = sorted(range(len(candidates)), key=lambda i: -results[i].score)
            beam = [candidates[i] for i in order[:beams]]
        out[name] = time.perf_counter() - t
        out[f"{name} stats"] = scorer.cache_stats()
    return out


def long_worker(model: str, T: int) -> dict:
    from rfedge import Scorer
    from rfedge.traces import Trace

    scorer = Scorer.load(model, device="cpu", cache_bytes=0)
    rng = random.Random(4)
    text = words(rng, T)
    while (total := scorer.tokenizer.encode(Trace("", text)).total) < T:
        text += " " + words(rng, T - total)
    trace = Trace("", text)
    scorer.score(Trace("warm", "up"))
    seconds = _timed(lambda: scorer.score(trace))
    n = len(scorer.tokenizer.encode(trace).ids)  # cut at max length
    return {"T": n, "seconds": seconds, "tokens_per_s": n / seconds, "peak_rss_gb": _own_peak_gb()}


def _own_peak_gb() -> float:
    """This process's own peak RSS (VmHWM starts anew at exec; ru_maxrss would carry the parent's
    peak over from the fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e6
    return float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--lengths", default="512,2048,8192,16384,32768")
    ap.add_argument("--quick", action="store_true", help="4 layers, traces a quarter as long, T up to 8192")
    ap.add_argument("--work", default=str(HERE / ".work"))
    ap.add_argument("--out", default=str(HERE / "results" / "incremental.json"))
    ap.add_argument("--long-worker", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--only", default=None,
                    help="rerun only these scenarios (comma-separated: steps,best_of_8,beam,long) into the saved results")
    a = ap.parse_args()
    if a.long_worker:
        print(json.dumps(long_worker(a.long_worker[0], int(a.long_worker[1]))))
        return
    scale = 4 if a.quick else 1
    if a.quick:
        a.layers, a.lengths = 4, "512,2048,8192"
    model = str(export(Path(a.work), a.layers))
    scenarios = {
        "steps": lambda: steps_scenario(model, 128 // scale, 16, 120 // scale),
        "best_of_8": lambda: best_of_n_scenario(model, 512 // scale, 8, 1536 // scale),
        "beam": lambda: beam_scenario(model, 256 // scale, 4, 16, 16),
        "long": lambda: long_traces(model, a.lengths),
    }
    only = a.only.split(",") if a.only else list(scenarios)
    if unknown := set(only) - set(scenarios):
        ap.error(f"--only: unknown scenarios {sorted(unknown)}; choose from {list(scenarios)}")
    results = json.loads(Path(a.out).read_text()) if a.only and Path(a.out).is_file() else {}
    if results.get("layers", a.layers) != a.layers:
        ap.error(f"--only: {a.out} holds a {results['layers']}-layer run; give --out for a {a.layers}-layer one")
    results.update({"layers": a.layers, "model": model})
    for name in only:
        results[name] = scenarios[name]()
        # --only merges into earlier results: each scenario says when and on what it ran
        results.setdefault("ran", {})[name] = {"date": time.strftime("%Y-%m-%d"), "model": model,
                                               "cpu": cpu_name()}
        print(f"{name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
        save(a.out, results)
    report(results)


def long_traces(model: str, lengths: str) -> list[dict]:
    rows = []
    for T in [int(x) for x in lengths.split(",")]:
        out, _, _ = run_measured([sys.executable, __file__, "--long-worker", model, str(T)])
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"long T={rows[-1]['T']}: {rows[-1]['tokens_per_s']:.1f} tok/s, peak RSS {rows[-1]['peak_rss_gb']:.2f} GB",
              file=sys.stderr, flush=True)
    return rows


def report(r: dict) -> None:
    print(f"| scenario ({r['layers']} layers) | with prefix cache | without | ratio | target |")
    print("|---|---|---|---|---|")
    if s := r.get("steps"):
        print(f"| 16-step trace ({s['tokens']} tokens) scored after every step, x one full pass "
              f"({s['one full pass']:.1f} s) | {s['cached'] / s['one full pass']:.2f}x ({s['cached']:.1f} s) | "
              f"{s['no cache'] / s['one full pass']:.2f}x ({s['no cache']:.1f} s) | | <= 1.3x |")
    if b := r.get("best_of_8"):
        tokens = b.get("tokens", {})
        share = f", tokens run {tokens['with reuse'] / tokens['without reuse']:.2f}x" if tokens else ""
        print(f"| Best-of-8, shared prompt{share} | {b['cached']:.1f} s | {b['no cache']:.1f} s | "
              f"{b['cached'] / b['no cache']:.2f} | <= 0.8 |")
    if m := r.get("beam"):
        print(f"| beam search, 4 beams x 16 steps, 8 candidates a step | {m['cached']:.1f} s | "
              f"{m['no cache']:.1f} s | {m['cached'] / m['no cache']:.2f} | |")
    if long := r.get("long"):
        base = long[0]["tokens_per_s"]
        print(f"\n| T | tokens/s | x T={long[0]['T']} | peak RSS GB |")
        print("|---|---|---|---|")
        for x in long:
            print(f"| {x['T']} | {x['tokens_per_s']:.1f} | {x['tokens_per_s'] / base:.2f} | {x['peak_rss_gb']:.2f} |")


if __name__ == "__main__":
    main()
