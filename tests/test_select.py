"""``rfedge select``: the top K per group, checked against a sort; JSONL and Parquet agree; nothing
is dropped silently."""

import json
import subprocess
import sys

import pytest

from rfedge import Scorer
from rfedge.synth import generate

N_PROBLEMS, CANDIDATES, TOP_K = 2500, 4, 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """10,000 candidate trajectories (2,500 problems x 4), as JSONL and as Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("select")
    rows = list(generate("arith", N_PROBLEMS * CANDIDATES, seed=17, candidates=CANDIDATES))
    (root / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), str(root / "c.parquet"))
    return root, rows


def _run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "rfedge", "select", *args], capture_output=True, text=True,
                          timeout=600, **kw)


def _check_top_k(got: dict, rows, results, key, tol=1e-5):
    """``got`` (record number -> rank) is each group's top K by an independent sort of every record's
    score (ties: the earlier record); scores this close (other batches, another summation order) may
    trade places."""
    groups = {}
    for i, row in enumerate(rows):
        groups.setdefault(key(row), []).append(i)
    for members in groups.values():
        ranked = sorted(members, key=lambda i: (-results[i].score, i))
        chosen = sorted((i for i in members if i in got), key=lambda i: got[i])
        assert [got[i] for i in chosen] == list(range(1, len(chosen) + 1)) and len(chosen) == min(TOP_K, len(members))
        for mine, theirs in zip(chosen, ranked[:TOP_K], strict=True):
            assert mine == theirs or abs(results[mine].score - results[theirs].score) <= tol


def test_jsonl_and_parquet_select_the_sorted_top_k(fp32_export, data, tmp_path):
    import pyarrow.parquet as pq

    root, rows = data
    model = str(fp32_export)
    for src, out in (("c.jsonl", "best.jsonl"), ("c.parquet", "best.parquet")):
        r = _run(str(root / src), "--top-k", str(TOP_K), "--group-by", "group", "--model", model,
                 "-o", str(tmp_path / out))
        assert r.returncode == 0, r.stderr
        assert r.stderr.splitlines()[-1] == (f"rfedge select: 10000 records, 2500 groups, 5000 kept (top 2 per group), "
                                             f"0 could not be scored, {_tokens(model, rows)} tokens")
    from_jsonl = [json.loads(x) for x in (tmp_path / "best.jsonl").read_text().splitlines()]
    from_parquet = pq.read_table(str(tmp_path / "best.parquet")).to_pylist()
    assert from_jsonl == from_parquet  # the same records, fields and numbers, in input order
    results = Scorer.load(model, device="cpu", cache_bytes=0).score_many(rows)
    index = {row["id"]: i for i, row in enumerate(rows)}
    got = {index[r["id"]]: r["rfedge"]["rank"] for r in from_jsonl}
    _check_top_k(got, rows, results, lambda row: row["group"])
    assert [index[r["id"]] for r in from_jsonl] == sorted(got)  # input order
    for r in from_jsonl:
        assert {k: v for k, v in r.items() if k != "rfedge"} == rows[index[r["id"]]]  # the original record
        assert r["rfedge"]["score"] == pytest.approx(results[index[r["id"]]].score, abs=1e-6)
    assert pq.read_schema(str(tmp_path / "best.parquet")).names == [*rows[0].keys(), "rfedge"]


def _tokens(model, rows):
    return sum(r.num_tokens for r in Scorer.load(model, device="cpu").score_many(rows))


def test_bad_records_go_to_the_errors_file_and_count(fp32_export, tmp_path):
    rows = list(generate("arith", 12, seed=3, candidates=3))
    lines = [json.dumps(r) for r in rows]
    lines[2] = "{broken"
    lines[5] = json.dumps({**rows[5], "problem": 7})
    lines[7] = json.dumps({k: v for k, v in rows[7].items() if k != "group"})
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    r = _run(str(tmp_path / "in.jsonl"), "--top-k", "1", "--group-by", "group", "--model", str(fp32_export),
             "-o", str(tmp_path / "out.jsonl"))
    assert r.returncode == 1
    errors = [json.loads(x) for x in (tmp_path / "out.errors.jsonl").read_text().splitlines()]
    f = tmp_path / "in.jsonl"
    assert errors == [
        {"where": f"{f}:3", "error": "invalid JSON at column 2: Expecting property name enclosed in double quotes"},
        {"where": f"{f}:6", "id": "arith-5", "error": "field 'problem' must be a string, got int"},
        {"where": f"{f}:8", "id": "arith-7", "error": "field 'group' is missing; --group-by needs it in every record"}]
    assert r.stderr.splitlines()[-1].startswith("rfedge select: 12 records, 4 groups, 4 kept (top 1 per group), "
                                                "3 could not be scored, ")
    assert r.stderr.splitlines()[-1].endswith(f" (see {tmp_path / 'out.errors.jsonl'})")
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 4


def test_min_score_default_grouping_and_stdin(fp32_export, tmp_path):
    rows = list(generate("arith", 16, seed=8, candidates=4))
    results = Scorer.load(fp32_export, device="cpu").score_many(rows)
    threshold = sorted(r.score for r in results)[8]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    r = _run("-", "--top-k", "4", "--min-score", str(threshold), "--model", str(fp32_export), input=text)
    assert r.returncode == 0, r.stderr
    kept = [json.loads(x)["id"] for x in r.stdout.splitlines()]
    assert kept == [row["id"] for row, res in zip(rows, results, strict=True) if res.score >= threshold]


def test_stdin_errors_name_stdin(fp32_export):
    text = json.dumps({"problem": "p", "completion": "3 + 4 = 7"}) + "\n{broken\n"
    r = _run("-", "--top-k", "1", "--model", str(fp32_export), input=text)
    assert r.returncode == 1
    error = json.loads([x for x in r.stderr.splitlines() if x.startswith("{")][0])
    assert error["where"] == "<stdin>:2" and error["error"].startswith("invalid JSON at column 2")
