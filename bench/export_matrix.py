"""`rfedge export --int8` with default settings on fresh 1.5B-width checkpoints (random weights),
as a new user would run it: does it succeed, or stop with the reason, and how long does that take?

For each (layers, seed): a fresh Qwen2 checkpoint at the ReasonFlux-PRM-1.5B width (hidden 1536,
intermediate 8960, 12 heads, 2 KV heads) with ``layers`` layers and random weights from ``seed``,
then ``rfedge export CKPT --int8 --out DIR`` in its own process: exit code, wall time, peak RSS, the
export's last line (the validation summary or the error's first line), weight formats and the
held-out numbers from the manifest. One export at a time (each uses every core).

    python bench/export_matrix.py                         # 4, 6, 8 layers x seeds 0, 1; 28 layers x seed 0
    python bench/export_matrix.py --cases 6:0,8:1         # chosen (layers:seed) cases
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from speed import build_checkpoint, run_process, save  # noqa: E402

from rfedge_export.quantize.formats import FORMATS, ORDER  # noqa: E402

CASES = "4:0,4:1,6:0,6:1,8:0,8:1,28:0"


def export_case(work: Path, layers: int, seed: int) -> dict:
    name = f"qwen2-1.5b-shape-{layers}l" + (f"-seed{seed}" if seed else "")
    ckpt = build_checkpoint(work / name, layers, seed)
    out = work / f"matrix-{layers}l-seed{seed}-int8"
    if out.exists():
        shutil.rmtree(out)  # this script's own earlier output, under bench/.work
    cmd = [sys.executable, "-m", "rfedge", "export", str(ckpt), "--int8", "--out", str(out)]
    code, _, stderr, wall, peak = run_process(cmd)
    lines = [ln for ln in stderr.replace("\r", "\n").splitlines()
             if ln.strip() and "%|" not in ln and "torchvision is not installed" not in ln]
    row = {"layers": layers, "seed": seed, "exit": code, "wall_s": round(wall, 1), "peak_rss_gb": round(peak, 2),
           "last_lines": lines[-8:]}
    manifest = out / "rfedge.json"
    if code == 0 and manifest.is_file():
        m = json.loads(manifest.read_text())
        q, v = m["quantization"], m["validation"]
        row.update({"formats": {**dict.fromkeys(FORMATS, 0), **q["matmuls"], "fp32": len(q["kept_fp32"])},
                    "held_out": {k: v["held_out"][k] for k in ("max_abs_step", "max_abs_trajectory",
                                                               "spearman_trajectory")},
                    "fit": {k: v["fit"][k] for k in ("max_abs_step", "max_abs_trajectory", "spearman_trajectory")},
                    "fit_rounds": len(q["fit"]["fit"]["rounds"]), "fit_stopped": q["fit"]["fit"].get("stopped"),
                    "files_gb": sum(f.stat().st_size for f in out.iterdir()) / 1e9})
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=CASES, help="layers:seed, comma-separated")
    ap.add_argument("--work", default=str(HERE / ".work"))
    ap.add_argument("--out", default=str(HERE / "results" / "export_matrix.json"))
    a = ap.parse_args()
    saved = json.loads(Path(a.out).read_text())["rows"] if Path(a.out).is_file() else []
    rows = []
    for case in a.cases.split(","):
        layers, seed = (int(x) for x in case.split(":"))
        row = export_case(Path(a.work), layers, seed)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        done = {(r["layers"], r["seed"]) for r in rows}  # this run's rows replace saved ones of the same case
        save(a.out, {"cpu": os.cpu_count(), "rows": [r for r in saved if (r["layers"], r["seed"]) not in done] + rows})
    print("| layers | seed | result | wall | peak RSS | linears 7b/8b/g32/fp32 | held-out step / trajectory / Spearman |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        f = r.get("formats") or {}
        counts = "/".join(str(f.get(k, "-")) for k in ORDER) if f else "-"
        h = r.get("held_out")
        held = f"{h['max_abs_step']:.3f} / {h['max_abs_trajectory']:.3f} / {h['spearman_trajectory']:.3f}" if h else "-"
        result = "passed" if r["exit"] == 0 else f"exit {r['exit']}: {r['last_lines'][-1][:120] if r['last_lines'] else ''}"
        print(f"| {r['layers']} | {r['seed']} | {result} | {r['wall_s'] / 60:.1f} min | {r['peak_rss_gb']:.1f} GB | {counts} | {held} |")


if __name__ == "__main__":
    main()
