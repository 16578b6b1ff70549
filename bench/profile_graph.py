"""Where an export's scoring time goes: ONNX Runtime's own profile of one sequence of T tokens.

Scores one random sequence (the engine as ``Scorer`` runs it, one pass) with profiling on, then
sums the node times by kind: the integer GEMMs per kernel, the per-token quantize subgraph, the
online Hadamard before ``down_proj`` (the rotation's only run-time cost), attention, and the rest.
Shares of the summed node time; one warm-up run first.

    python bench/profile_graph.py bench/.work/export-28l-int8 --T 2048
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _worker import sequences  # noqa: E402
from speed import save  # noqa: E402

QUANTIZE = {"ReduceMax", "ReduceMin", "QuantizeLinear", "Neg", "Expand"}  # the per-token quantize subgraph's ops


def rotation_nodes(graph_path: Path) -> set[str]:
    """The online Hadamard MatMuls: fp32 MatMuls by a square constant of the rotation's block size."""
    import onnx

    model = onnx.load(str(graph_path), load_external_data=False)
    square = {i.name for i in model.graph.initializer if len(i.dims) == 2 and i.dims[0] == i.dims[1] <= 256}
    return {n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in square}


def kind(op: str, name: str, rotations: set[str]) -> str:
    if name in rotations:
        return "online Hadamard (fp32 MatMul, 128 x 128 blocks)"
    if op == "MatMulIntegerToFloat":
        return "int8 GEMM (MatMulIntegerToFloat)"
    if op == "MatMulNBits":
        return "int8 per-block GEMM (MatMulNBits)"
    if op in QUANTIZE or (op in ("Max", "Mul") and name.startswith("rfq")):
        return "per-token quantize (ReduceMax/ReduceMin, QuantizeLinear)"
    if op == "Concat" and name.startswith("rfq"):
        return "8-bit split: [xq, xq]"
    if op == "GroupQueryAttention":
        return "attention (GroupQueryAttention)"
    if op == "MatMul":
        return "fp32 MatMul (heads)"
    return "other (norms, rotary, SiLU, residual adds, ...)"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="an rfedge export directory")
    ap.add_argument("--T", type=int, default=2048)
    ap.add_argument("--out", default=str(HERE / "results" / "profile_graph.json"))
    a = ap.parse_args()
    import onnxruntime as ort

    from rfedge.manifest import load_manifest
    from rfedge.scorer import Scorer

    plain = ort.SessionOptions
    tmp = tempfile.mkdtemp(prefix="rfedge-profile-")  # ONNX Runtime's own trace: tens of MB, not kept

    class Profiled(plain):  # GraphSession builds its own options: switch profiling on in them
        def __init__(self):
            super().__init__()
            self.enable_profiling = True
            self.profile_file_prefix = str(Path(tmp) / "ort")

    ort.SessionOptions = Profiled
    try:
        scorer = Scorer.from_manifest(load_manifest(a.model), "cpu", 0, cache_bytes=0, chunk_tokens=a.T)
    finally:
        ort.SessionOptions = plain
    seqs = sequences(a.T, 0)
    scorer.engine.rewards(seqs)  # warm-up
    scorer.engine.rewards(seqs)  # the run summed below
    trace = Path(scorer.session._session.end_profiling())
    events = json.loads(trace.read_text())
    shutil.rmtree(tmp, ignore_errors=True)
    last = [e for e in events if e.get("name") == "model_run"][-1]
    rotations = rotation_nodes(Path(a.model) / "model.onnx")
    totals: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and \
                last["ts"] <= e["ts"] <= last["ts"] + last["dur"]:
            name = e["name"].removesuffix("_kernel_time")
            totals[kind(e["args"]["op_name"], name, rotations)] += e["dur"] / 1e6
    node_s = sum(totals.values())
    rows = [{"kind": k, "seconds": v, "share": v / node_s} for k, v in sorted(totals.items(), key=lambda kv: -kv[1])]
    save(a.out, {"model": a.model, "T": a.T, "run_seconds": last["dur"] / 1e6, "node_seconds": node_s, "rows": rows})
    print(f"| kind (T={a.T}, one run {last['dur'] / 1e6:.2f} s) | seconds | share of node time |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['seconds']:.2f} | {100 * r['share']:.1f}% |")


if __name__ == "__main__":
    main()
