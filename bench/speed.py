"""Side-by-side speed, memory and size of the scoring backends at the ReasonFlux-PRM-1.5B shape.

Builds a random-weight checkpoint with the real 1.5B dimensions (speed does not depend on the
weights' values), exports it with rfedge at each precision (timing export and its peak RAM),
measures the machine's GEMM ceiling at the model's shapes, then runs every backend in its own
process at each sequence length (batch 1) and on a batch of mixed lengths. Prints tables, writes
JSON and a PNG of tokens/s against length.

    python bench/speed.py            # full (about 50 min on 2 cores with exports cached, +10 min to export): T = 512, 2048, 8192
    python bench/speed.py --quick    # under 10 min: 4 layers, T = 512, 2048

Backends: torch-fp32 (transformers eager fp32, as the ReasonFlux README runs it), torch-bf16,
torch-bnb8 (bitsandbytes LLM.int8() linears; needs ``pip install bitsandbytes``), rfedge-fp32 and
rfedge-int8 (the shipped recipe), each scoring step boundaries every 64 tokens plus the trajectory;
the rfedge rows run as ``Scorer`` does by default (chunks of 256 tokens on the CPU, ``--chunk-tokens``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPE_1_5B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                  rope_theta=1000000.0, tie_word_embeddings=True)


def run_process(cmd: list[str]) -> tuple[int, str, str, float, float]:
    """Run ``cmd``; return (exit code, stdout, stderr, wall seconds, peak RSS in GB of that process alone)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        return os.waitstatus_to_exitcode(status), out.read(), err.read(), wall, usage.ru_maxrss / 1e6


def run_measured(cmd: list[str]) -> tuple[str, float, float]:
    """Run ``cmd``; return (stdout, wall seconds, peak RSS in GB of that process alone); exit on failure."""
    code, stdout, stderr, wall, peak = run_process(cmd)
    if code != 0:
        raise SystemExit(f"failed ({code}): {' '.join(cmd)}\n{stderr[-3000:]}")
    return stdout, wall, peak


def build_checkpoint(path: Path, layers: int, seed: int = 0) -> Path:
    """A fresh 1.5B-width Qwen2 checkpoint of ``layers`` layers (random weights from ``seed``) with a
    random reward head and the real Qwen2.5 tokenizer, built once."""
    if (path / "config.json").is_file():
        return path
    code = f"""
import torch, shutil
from pathlib import Path
from transformers import Qwen2Config, Qwen2ForCausalLM
from rfedge_export.qwen_vocab import write_tokenizer_files
torch.manual_seed({seed})
cfg = Qwen2Config(**{dict(SHAPE_1_5B, num_hidden_layers=layers)!r})
m = Qwen2ForCausalLM(cfg)
p = Path({str(path)!r}); m.save_pretrained(p, safe_serialization=True)
head = torch.nn.Linear(cfg.hidden_size, 1)
torch.save(head.state_dict(), p / "reward_head.pt")
write_tokenizer_files(p)
"""
    run_measured([sys.executable, "-c", code])
    return path


def ceiling_tokens_per_s(c: dict, layers: int, kind: str) -> float:
    """Tokens/s if every layer ran its seven GEMMs at the measured rate plus causal GQA attention."""
    return c["T"] / (layers * (c["gemm"][kind]["seconds_per_layer"] + c["attention_seconds_per_layer"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--lengths", default="512,2048,8192")
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--torch", default="torch-fp32,torch-fp32-sdpa,torch-bf16,torch-bnb8",
                    help="comma list of torch backends (torch-fp32: HF eager attention as the reference runs it, "
                         "torch-fp32-sdpa: transformers' default attention, torch-bf16, torch-bnb8)")
    ap.add_argument("--torch-max-T", type=int, default=2048,
                    help="skip torch backends above this length (eager attention at 8192 needs ~10 GB per layer)")
    ap.add_argument("--slow-max-T", type=int, default=512,
                    help="torch-bf16 and torch-bnb8 only up to this length and not in the mixed run: on CPUs without "
                         "native bf16 or int8 matmul kernels they run at a few tokens/s")
    ap.add_argument("--mixed", type=int, default=8, help="sequences in the mixed-length batched run (0: skip)")
    ap.add_argument("--mixed-max-T", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="4 layers, T = 512 and 2048, 2 reps, 4 mixed")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=DIR",
                    help="another rfedge export to run side by side (e.g. an earlier release's), repeatable")
    ap.add_argument("--chunk-tokens", default="default", metavar="N,...",
                    help="the rfedge rows' tokens per graph call: 'default' (the Scorer's, 256 on the CPU) and/or "
                         "numbers, a row each (e.g. default,2048: chunked against one pass at T=2048)")
    ap.add_argument("--ids", choices=("random", "text"), default="random",
                    help="the sequences' token ids: uniformly random (the default) or this repository's README.md "
                         "tokenized and repeated; tok/s does not depend on them, peak RSS does (the int8 "
                         "embedding's pages are read in place, random ids touch the whole table)")
    ap.add_argument("--work", default=str(HERE / ".work"))
    ap.add_argument("--out", default=str(HERE / "results" / "speed.json"))
    a = ap.parse_args()
    if a.quick:
        a.layers, a.lengths, a.reps, a.mixed = 4, "512,2048", 2, 4
    lengths = [int(x) for x in a.lengths.split(",")]
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = build_checkpoint(work / f"qwen2-1.5b-shape-{a.layers}l", a.layers)
    results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                           "cpu": cpu_name()},
               "shape": dict(SHAPE_1_5B, num_hidden_layers=a.layers), "exports": {}, "ceiling": {}, "runs": []}
    models = {}
    for prec in a.precisions.split(","):
        out = work / f"export-{a.layers}l-{prec}"
        if not (out / "rfedge.json").is_file() or a.quick:
            # int8 as shipped: the default gate, which its end-to-end fit aims at, decides the formats.
            # fp32 at a deep random model can miss its 1e-4 bound by float noise, so its bounds are
            # loosened; the measured deltas are reported with the results.
            loose = [] if prec == "int8" else ["--max-step-delta", "0.2", "--max-trajectory-delta", "0.2",
                                               "--min-spearman", "0.5"]
            _, wall, peak = run_measured([sys.executable, "-m", "rfedge", "export", str(ckpt), "--out", str(out),
                                          "--precision", prec, "--max-length", "8192", *loose])
        else:  # reuse an export made by an earlier run; its numbers are in that run's JSON
            wall = peak = float("nan")
        size = sum(p.stat().st_size for p in out.iterdir() if p.is_file()) / 1e9
        manifest = json.loads((out / "rfedge.json").read_text())
        results["exports"][prec] = {"seconds": wall, "peak_rss_gb": peak, "size_gb": size,
                                    "recipe": manifest["quantization"]["recipe"],
                                    "formats": manifest["quantization"].get("smoothing", {}).get("formats"),
                                    "validation": manifest["validation"]}
        models[f"rfedge-{prec}"] = str(out)
        print(f"export {prec}: {wall:.0f} s, peak RSS {peak:.2f} GB, {size:.2f} GB on disk", file=sys.stderr)
        save(a.out, results)
    for extra in a.extra:
        name, _, path = extra.partition("=")
        models[f"rfedge-{name}"] = path
        results["exports"][name] = {"path": path, "size_gb": sum(p.stat().st_size for p in Path(path).iterdir()
                                                                 if p.is_file()) / 1e9}
    for T in lengths:
        out, _, _ = run_measured([sys.executable, str(HERE / "_worker.py"), "--backend", "ceiling", "--T", str(T)])
        c = results["ceiling"][T] = json.loads(out.strip().splitlines()[-1])
        print(f"ceiling T={T}: int8 GEMM {c['gemm']['int8']['gop_per_s']:.0f} GOP/s, fp32 GEMM "
              f"{c['gemm']['fp32']['gop_per_s']:.0f} GOP/s, GQA {c['attention_seconds_per_layer']:.3f} s/layer -> "
              f"{ceiling_tokens_per_s(c, a.layers, 'int8'):.1f} tok/s int8", file=sys.stderr)
        save(a.out, results)
    torch_backends = [b for b in a.torch.split(",") if b]
    slow = {"torch-bf16", "torch-bnb8"}
    plan = [(T, 0, b, str(ckpt)) for T in lengths for b in torch_backends
            if T <= (a.slow_max_T if b in slow else a.torch_max_T)]
    text_ids = text_ids_args(work, models) if a.ids == "text" else []
    results["ids"] = a.ids
    chunks = [0 if c == "default" else int(c) for c in a.chunk_tokens.split(",")]
    models = {name + (f"-chunk{c}" if c else ""): (path, c) for name, path in models.items() for c in chunks}
    plan += [(T, 0, name, path) for T in lengths for name, path in models.items()]
    if a.mixed:
        plan += [(a.mixed_max_T, a.mixed, b, p)
                 for b, p in [(b, str(ckpt)) for b in torch_backends if b not in slow] + list(models.items())]
    plan.sort(key=lambda x: (x[1], x[0]))
    for T, mixed, name, path in plan:
        path, chunk = path if isinstance(path, tuple) else (path, 0)
        cmd = [sys.executable, str(HERE / "_worker.py"), "--backend", name, "--path", path, "--T", str(T),
               "--reps", str(a.reps), "--chunk-tokens", str(chunk), *text_ids]
        if mixed:
            cmd += ["--mixed", str(mixed), "--batch", "4"]
            cmd[cmd.index("--reps") + 1] = "1"  # thousands of tokens per run already
        out, wall, peak = run_measured(cmd)
        row = {"backend": name, "T": T, "batch": 4 if mixed else 1, "mixed": mixed,
               **json.loads(out.strip().splitlines()[-1]), "peak_rss_gb": peak}
        results["runs"].append(row)
        if "unavailable" in row:
            print(f"{name:14} T={T:5}  unavailable: {row['unavailable']}", file=sys.stderr)
        else:
            print(f"{name:14} T={T:5}{' mixed' if mixed else ''}  {row['tokens_per_s']:8.1f} tok/s  p50 "
                  f"{row['latency_p50_s']:.2f} s  RSS {peak:.2f} GB  load {row['load_s']:.1f} s", file=sys.stderr)
        save(a.out, results)
    report(results, a.layers)
    plot(results, Path(a.out).with_suffix(".png"))
    save(a.out, results)


def text_ids_args(work: Path, models: dict) -> list[str]:
    """The README in Qwen2.5 tokens for the workers (every export here carries the same tokenizer)."""
    import numpy as np
    from tokenizers import Tokenizer

    path = work / "text-ids.npy"
    tokenizer = Tokenizer.from_file(str(Path(next(iter(models.values()))) / "tokenizer.json"))
    np.save(path, np.array(tokenizer.encode((HERE.parent / "README.md").read_text()).ids, np.int64))
    return ["--text-ids", str(path)]


def cpu_name() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.processor())
    return name + (" (VNNI)" if "avx512_vnni" in info or "avx_vnni" in info else " (no VNNI)")


def report(results: dict, layers: int) -> None:
    runs = [r for r in results["runs"] if "unavailable" not in r]
    base = {(r["T"], r["mixed"]): r["tokens_per_s"] for r in runs if r["backend"] == "torch-fp32"}
    bf16 = {(r["T"], r["mixed"]): r["tokens_per_s"] for r in runs if r["backend"] == "torch-bf16"}
    sdpa = {(r["T"], r["mixed"]): r["tokens_per_s"] for r in runs if r["backend"] == "torch-fp32-sdpa"}
    print("| backend | T | batch | tok/s | x torch fp32 (eager) | x torch fp32 (SDPA) | x torch bf16 | % int8 ceiling "
          "| p50 s | p95 s | peak RSS GB | load s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(runs, key=lambda r: (r["mixed"], r["T"])):
        key = (r["T"], r["mixed"])
        c = results["ceiling"].get(r["T"])
        frac = f"{100 * r['tokens_per_s'] / ceiling_tokens_per_s(c, layers, 'int8'):.0f}%" if c and not r["mixed"] else "-"
        ratio = lambda d, r=r, key=key: f"{r['tokens_per_s'] / d[key]:.2f}" if key in d else "-"  # noqa: E731
        label = f"mixed {r['mixed']} x 256..{r['T']}" if r["mixed"] else str(r["T"])
        print(f"| {r['backend']} | {label} | {r['batch']} | {r['tokens_per_s']:.1f} | {ratio(base)} | {ratio(sdpa)} | {ratio(bf16)} | {frac} | "
              f"{r['latency_p50_s']:.2f} | {r['latency_p95_s']:.2f} | {r['peak_rss_gb']:.2f} | {r['load_s']:.1f} |")
    for r in results["runs"]:
        if "unavailable" in r:
            print(f"| {r['backend']} | {r['T']} | - | unavailable: {r['unavailable']} | | | | | | | | |")
    print("\n| T | int8 GEMM GOP/s | fp32 GEMM GOP/s | GQA s/layer | int8 ceiling tok/s | fp32 ceiling tok/s |")
    print("|---|---|---|---|---|---|")
    for T, c in sorted(results["ceiling"].items(), key=lambda kv: int(kv[0])):
        print(f"| {T} | {c['gemm']['int8']['gop_per_s']:.0f} | {c['gemm']['fp32']['gop_per_s']:.0f} | "
              f"{c['attention_seconds_per_layer']:.3f} | {ceiling_tokens_per_s(c, layers, 'int8'):.1f} | "
              f"{ceiling_tokens_per_s(c, layers, 'fp32'):.1f} |")
    print("\n| export | seconds | peak RSS GB | size GB | linears by format | max abs step delta (random weights) |")
    print("|---|---|---|---|---|---|")
    for p, e in results["exports"].items():
        if "recipe" not in e:  # an --extra export: made elsewhere
            print(f"| {p} ({e['path']}) | - | - | {e['size_gb']:.2f} | - | - |")
            continue
        print(f"| {p} ({e['recipe']}) | {e['seconds']:.0f} | {e['peak_rss_gb']:.2f} | {e['size_gb']:.2f} | "
              f"{e.get('formats', '-')} | {e['validation']['max_abs_step']:.3g} |")


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    runs = [r for r in results["runs"] if "unavailable" not in r and not r["mixed"]]
    for name in dict.fromkeys(r["backend"] for r in runs):
        pts = sorted((r["T"], r["tokens_per_s"]) for r in runs if r["backend"] == name)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    layers = results["shape"]["num_hidden_layers"]
    cs = sorted((int(T), ceiling_tokens_per_s(c, layers, "int8")) for T, c in results["ceiling"].items())
    if cs:
        ax.plot([c[0] for c in cs], [c[1] for c in cs], "k--", label="int8 GEMM + GQA ceiling")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length (tokens), batch 1")
    ax.set_ylabel("tokens/s")
    ax.set_title(f"ReasonFlux-PRM-1.5B shape ({layers} layers), {results['machine']['cpus']} CPU cores")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}", file=sys.stderr)


def save(path: str, results: dict) -> None:
    """Written after every measurement, so an interrupted run keeps what it measured."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
