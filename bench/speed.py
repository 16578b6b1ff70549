"""Side-by-side speed, memory and size of the scoring backends at the ReasonFlux-PRM-1.5B shape.

Builds a random-weight checkpoint with the real 1.5B dimensions (speed does not depend on the
weights' values), exports it with rfedge at each precision (timing export and its peak RAM), then
runs every backend in its own process at each sequence length. Prints a table; writes JSON.

    python bench/speed.py                       # full: T = 512, 2048; fp32 + int8 + torch fp32
    python bench/speed.py --quick --layers 4    # a few minutes: fewer layers, T = 512
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


def run_measured(cmd: list[str]) -> tuple[str, float, float]:
    """Run ``cmd``; return (stdout, wall seconds, peak RSS in GB of that process alone)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{stderr[-3000:]}")
    return stdout, wall, usage.ru_maxrss / 1e6


def build_checkpoint(path: Path, layers: int) -> Path:
    if (path / "config.json").is_file():
        return path
    code = f"""
import torch, shutil
from pathlib import Path
from transformers import Qwen2Config, Qwen2ForCausalLM
from rfedge_export.qwen_vocab import write_tokenizer_files
torch.manual_seed(0)
cfg = Qwen2Config(**{dict(SHAPE_1_5B, num_hidden_layers=layers)!r})
m = Qwen2ForCausalLM(cfg)
p = Path({str(path)!r}); m.save_pretrained(p, safe_serialization=True)
head = torch.nn.Linear(cfg.hidden_size, 1)
torch.save(head.state_dict(), p / "reward_head.pt")
write_tokenizer_files(p)
"""
    run_measured([sys.executable, "-c", code])
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--lengths", default="512,2048")
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--torch", default="torch-fp32", help="comma list of torch backends (torch-fp32, torch-bf16)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="T=512 only, 2 reps")
    ap.add_argument("--work", default=str(HERE / ".work"))
    ap.add_argument("--out", default=str(HERE / "results" / "speed.json"))
    a = ap.parse_args()
    if a.quick:
        a.lengths, a.reps = "512", 2
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = build_checkpoint(work / f"qwen2-1.5b-shape-{a.layers}l", a.layers)
    results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
               "shape": dict(SHAPE_1_5B, num_hidden_layers=a.layers), "exports": {}, "runs": []}
    models = {}
    for prec in a.precisions.split(","):
        out = work / f"export-{a.layers}l-{prec}"
        _, wall, peak = run_measured([sys.executable, "-m", "rfedge.cli", "export", str(ckpt), "--out", str(out),
                                      "--precision", prec, "--max-length", "8192"])
        size = sum(p.stat().st_size for p in out.iterdir()) / 1e9
        manifest = json.loads((out / "rfedge.json").read_text())
        results["exports"][prec] = {"seconds": wall, "peak_rss_gb": peak, "size_gb": size,
                                    "recipe": manifest["quantization"]["recipe"],
                                    "validation": manifest["validation"]}
        models[f"rfedge-{prec}"] = str(out)
        print(f"export {prec}: {wall:.0f} s, peak RSS {peak:.2f} GB, {size:.2f} GB on disk", file=sys.stderr)
        save(a.out, results)
    backends = [(b, str(ckpt)) for b in a.torch.split(",") if b] + list(models.items())
    for T in (int(x) for x in a.lengths.split(",")):
        for name, path in backends:
            out, wall, peak = run_measured([sys.executable, str(HERE / "_worker.py"), "--backend", name,
                                            "--path", path, "--T", str(T), "--reps", str(a.reps)])
            row = {"backend": name, "T": T, "batch": 1, **json.loads(out.strip().splitlines()[-1]), "peak_rss_gb": peak}
            results["runs"].append(row)
            print(f"{name:14} T={T:5}  {row['tokens_per_s']:8.1f} tok/s  p50 {row['latency_p50_s']:.2f} s  "
                  f"RSS {peak:.2f} GB  load {row['load_s']:.1f} s", file=sys.stderr)
            save(a.out, results)
    base = {r["T"]: r["tokens_per_s"] for r in results["runs"] if r["backend"] == "torch-fp32"}
    print("| backend | T | tok/s | x torch fp32 | p50 s | p95 s | peak RSS GB | load s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        ratio = r["tokens_per_s"] / base[r["T"]] if r["T"] in base else float("nan")
        print(f"| {r['backend']} | {r['T']} | {r['tokens_per_s']:.1f} | {ratio:.2f} | {r['latency_p50_s']:.2f} | "
              f"{r['latency_p95_s']:.2f} | {r['peak_rss_gb']:.2f} | {r['load_s']:.1f} |")
    print("\n| export | seconds | peak RSS GB | size GB | max abs step delta |")
    print("|---|---|---|---|---|")
    for p, e in results["exports"].items():
        print(f"| {p} ({e['recipe']}) | {e['seconds']:.0f} | {e['peak_rss_gb']:.2f} | {e['size_gb']:.2f} | "
              f"{e['validation']['max_abs_step']:.3g} |")
    save(a.out, results)


def save(path: str, results: dict) -> None:
    """Written after every measurement, so an interrupted run keeps what it measured."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
