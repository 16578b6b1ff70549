"""Scoring on Ray Data (the distributed extra), on a local Ray started by the test: rows, columns,
values and error rows equal to the single-machine scorer's."""

import json
import os

import pytest
from click.testing import CliRunner

from conftest import write_json  # noqa: F401  (the shared helpers)

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

pytestmark = pytest.mark.slow  # a Ray start is ~5 s and 1.4 GB; CI runs the slow step

GOOD = {"problem": "Start with 3. Then add 4. What is the final number?", "trajectory": ["3 + 4 = 7"],
        "response": "The final number is 7."}


@pytest.fixture(scope="module")
def local_ray():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 << 20, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def _jsonl(path, records_and_lines):
    with open(path, "wb") as f:
        for item in records_and_lines:
            f.write(item if isinstance(item, bytes) else (json.dumps(item) + "\n").encode())
    return path


def _mixed(tmp_path):
    return _jsonl(tmp_path / "mixed.jsonl", [
        {**GOOD, "id": "a"}, b"{not json\n", {**GOOD, "id": "b", "response": "The final number is 8."}, b"\n",
        b"\xff\xfe bad bytes\n", {"id": "c", "problem": ""}, {"id": 7, "trajectory": ["1 + 1 = 2"]},
        {**GOOD, "id": "d", "trajectory": ["3 + 4 = 7", "7 + 0 = 7"]}])


def _cli(*args):
    from rfedge.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_jsonl_on_ray_is_byte_for_byte_the_single_machine_output(local_ray, fp32_export, tmp_path):
    data = _mixed(tmp_path)
    one = _cli("score", str(data), "--model", str(fp32_export), "-o", str(tmp_path / "one.jsonl"))
    many = _cli("score", str(data), "--model", str(fp32_export), "--ray", "--actors", "2",
                "-o", str(tmp_path / "ray.jsonl"))
    assert one.exit_code == many.exit_code == 1  # bad records: exit 1 at the end, nothing lost
    local, on_ray = (tmp_path / "one.jsonl").read_text(), (tmp_path / "ray.jsonl").read_text()
    assert on_ray == local
    lines = [json.loads(x) for x in on_ray.splitlines()]
    assert len(lines) == 7 and [x.get("id") for x in lines] == ["a", None, "b", None, "c", 7, "d"]
    assert [i for i, x in enumerate(lines) if "error" in x] == [1, 3, 4, 5]
    assert lines[1]["error"].endswith("mixed.jsonl:2: invalid JSON at column 2: Expecting property name enclosed in "
                                      "double quotes")
    assert lines[3]["error"].endswith("mixed.jsonl:5: not UTF-8 text (byte 1 of the line); save the file as UTF-8")
    assert "rfedge score --ray: 7 rows, 4 could not be scored, " in many.output


def test_parquet_on_ray_keeps_every_row_and_column(local_ray, fp32_export, tmp_path):
    from rfedge import Scorer
    from rfedge.distributed import read_input, score_dataset

    rows = [{**GOOD, "id": str(i), "extra": i * 1.5, "trajectory": ["3 + 4 = 7"] * (1 + i % 3)} for i in range(20)]
    rows[5]["problem"] = None  # a null in a string column: that row's error, the others scored
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    out = score_dataset(read_input(str(tmp_path / "in.parquet")), fp32_export, actors=2).take_all()
    assert len(out) == 20 and [r["id"] for r in out] == [str(i) for i in range(20)]
    assert set(out[0]) == {"problem", "trajectory", "response", "id", "extra", "score", "trajectory_reward", "steps",
                           "num_tokens", "truncated", "error", "result"}
    assert out[5]["score"] is None  # named by file and row, as rfedge score names a Parquet row
    assert out[5]["error"].endswith("in.parquet:row 6: field 'problem' must be a string, got NoneType")
    assert [r["error"] is None for r in out] == [i != 5 for i in range(20)]
    expected = Scorer.load(fp32_export, device="cpu").score_records(rows)
    for got, (_, want) in zip(out, expected, strict=True):
        if got["error"] is None:
            assert got["score"] == want.score and got["trajectory_reward"] == want.trajectory_reward
            assert got["steps"] == [s.__dict__ for s in want.steps] and got["num_tokens"] == want.num_tokens
            assert got["extra"] == rows[int(got["id"])]["extra"]


def test_input_columns_named_as_rfedges_are_refused(local_ray, fp32_export, tmp_path):
    from rfedge.distributed import read_input, score_dataset
    from rfedge.errors import UsageError

    pq.write_table(pa.Table.from_pylist([{**GOOD, "score": 1.0, "error": "x"}]), tmp_path / "in.parquet")
    with pytest.raises(UsageError) as e:
        score_dataset(read_input(str(tmp_path / "in.parquet")), fp32_export)
    assert str(e.value) == ("the input has columns named error, score, which rfedge adds to every row; rename them "
                            "first (e.g. ds.rename_columns)")


def test_parquet_output_when_the_first_batches_are_all_errors(local_ray, fp32_export, tmp_path):
    data = _jsonl(tmp_path / "bad-first.jsonl", [b"{broken\n"] * 300 + [{**GOOD, "id": str(i)} for i in range(3)])
    r = _cli("score", str(data), "--model", str(fp32_export), "--ray", "-o", str(tmp_path / "out.parquet"))
    assert r.exit_code == 1 and "rfedge score --ray: 303 rows, 300 could not be scored" in r.output
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.num_rows == 303 and table.column("score").null_count == 300
    assert table.schema.field("score").type == pa.float64() and table.schema.field("error").type == pa.string()


def test_parquet_output_and_folder_input(local_ray, fp32_export, tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    for k in range(3):
        _jsonl(folder / f"part-{k}.jsonl", [{**GOOD, "id": f"{k}-{i}"} for i in range(4)])
    r = _cli("score", str(folder), "--model", str(fp32_export), "--ray", "-o", str(tmp_path / "out.parquet"))
    assert r.exit_code == 0, r.output
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.num_rows == 12 and "result" not in table.column_names
    assert sorted(json.loads(x.decode())["id"] for x in table.column("record").to_pylist()) == \
        sorted(f"{k}-{i}" for k in range(3) for i in range(4))


def test_select_on_ray_equals_select_here(local_ray, fp32_export, tmp_path):
    data = _jsonl(tmp_path / "cands.jsonl", [{**GOOD, "id": str(i), "group": i % 3,
                                              "trajectory": ["3 + 4 = 7"] * (1 + i % 4)} for i in range(12)]
                  + [b"{broken\n"])
    here = _cli("select", str(data), "--top-k", "2", "--group-by", "group", "--model", str(fp32_export),
                "-o", str(tmp_path / "here.jsonl"))
    there = _cli("select", str(data), "--top-k", "2", "--group-by", "group", "--model", str(fp32_export), "--ray",
                 "-o", str(tmp_path / "ray.jsonl"))
    assert here.exit_code == there.exit_code == 1
    assert (tmp_path / "ray.jsonl").read_text() == (tmp_path / "here.jsonl").read_text()
    assert (tmp_path / "ray.errors.jsonl").read_text() == (tmp_path / "here.errors.jsonl").read_text()
    assert len((tmp_path / "ray.jsonl").read_text().splitlines()) == 6


def test_ray_options_need_ray(fp32_export, tmp_path):
    r = _cli("score", str(_mixed(tmp_path)), "--model", str(fp32_export), "--actors", "2")
    assert r.exit_code == 2 and "--address, --actors and --threads-per-actor need --ray" in r.output
