"""Any input file: N records in, N lines out, in order; a bad record is one line in its place; never a
traceback; stdin reads JSONL exactly as a file does; output is always valid JSON."""

import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rfedge.sources import DEFAULT_MAX_RECORD_BYTES, open_traces

GOOD = {"problem": "Start with 3. Then add 4.", "completion": "3 + 4 = 7\n\nThe final number is 7."}
GOOD_LINE = json.dumps(GOOD).encode()


def _records(tmp_path, data: bytes, max_bytes=DEFAULT_MAX_RECORD_BYTES):
    f = tmp_path / "in.jsonl"
    f.write_bytes(data)
    return f, list(open_traces(str(f), max_record_bytes=max_bytes).records)


def _nested(depth: int) -> bytes:
    return b'{"problem": ' + b"[" * depth + b"]" * depth + b', "completion": "c"}'


@pytest.mark.parametrize("bad,message", [
    (_nested(100_000), "invalid JSON: nested too deeply to read"),
    (b'{"problem": "p", "completion": "c", "id": ' + b"7" * 5000 + b"}",
     "invalid JSON: a number too long to read (over 4300 digits)"),
    (b'{"problem": "p", "completion": "c", "id": NaN}', "invalid JSON: NaN is not JSON"),
    (b'{"problem": "caf\xe9", "completion": "c"}', "not UTF-8 text (byte 17 of the line); save the file as UTF-8"),
    (b"\xc2\xa0\xc2\xa0", "invalid JSON at column 1: Expecting value"),  # NBSP is not JSON whitespace
    (b'{"problem": "p", "completion": "c", "id": "\\udc80"}',
     "field 'id' must be a string (valid Unicode) or an integer"),
])
def test_one_bad_line_is_one_bad_record(tmp_path, bad, message):
    f, records = _records(tmp_path, GOOD_LINE + b"\n" + bad + b"\n" + GOOD_LINE + b"\n")
    assert [r.error is None for r in records] == [True, False, True]
    assert str(records[1].error) == f"{f}:2: {message}"


def test_lines_end_at_newline_only(tmp_path):
    """\\r, U+2028 and U+0085 inside a record do not split it (JSON strings may hold them raw)."""
    inner = json.dumps({**GOOD, "problem": "a\rb\u2028c\u0085d"}, ensure_ascii=False).encode()
    f, records = _records(tmp_path, inner + b"\n" + GOOD_LINE + b"\r\n" + b"  \t\r\n" + GOOD_LINE)
    assert [r.where for r in records] == [f"{f}:1", f"{f}:2", f"{f}:4"]
    assert all(r.error is None for r in records) and records[0].trace.problem == "a\rb\u2028c\u0085d"


def test_oversized_record_is_skipped_in_bounded_memory(tmp_path):
    big = b'{"problem": "' + b"x" * 5_000_000 + b'", "completion": "c"}'
    f, records = _records(tmp_path, GOOD_LINE + b"\n" + big + b"\n" + GOOD_LINE + b"\n", max_bytes=1 << 20)
    assert [r.error is None for r in records] == [True, False, True]
    assert str(records[1].error) == f"{f}:2: record larger than 1 MB, skipped (--max-record-mb raises the limit)"


BYTES_LINES = st.lists(st.one_of(st.binary(max_size=40), st.sampled_from(
    [GOOD_LINE, b"{", b"[]", b"\xff\xfe", b"\xe2\x80\xa8", b"\r", b"\xc2\x85", b"null", b'{"id": NaN}']),
    st.builds(lambda d: _nested(d), st.integers(0, 3000))), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=BYTES_LINES)
def test_any_bytes_give_one_record_per_non_blank_line(tmp_path, lines):
    cleaned = [line.replace(b"\n", b" ") for line in lines]
    f, records = _records(tmp_path, b"\n".join(cleaned) + b"\n")
    expected = [i + 1 for i, line in enumerate(cleaned) if line.strip(b" \t\r")]
    assert [int(r.where.rsplit(":", 1)[1]) for r in records] == expected
    for r in records:
        assert (r.trace is None) != (r.error is None)
        if r.error is not None:
            assert "\n" not in str(r.error)


def test_stdin_jsonl_is_read_as_a_file_is(fp32_export, tmp_path):
    """Same bytes through a file and through stdin: the same lines out (the stdin names aside)."""
    lines = [GOOD_LINE, b"\xff broken", b'{"problem": 1, "completion": "c", "id": "x"}', GOOD_LINE,
             _nested(50_000)]
    data = b"\n".join(lines) + b"\n"
    (tmp_path / "in.jsonl").write_bytes(data)
    run = lambda *a, **k: subprocess.run([sys.executable, "-m", "rfedge", "score", *a, "--model", str(fp32_export)],  # noqa: E731
                                         capture_output=True, timeout=300, **k)
    from_file = run(str(tmp_path / "in.jsonl"))
    from_stdin = run("-", input=data)
    assert from_file.returncode == from_stdin.returncode == 1
    assert from_file.stdout.replace(str(tmp_path / "in.jsonl").encode(), b"<stdin>") == from_stdin.stdout
    out = [json.loads(x) for x in from_stdin.stdout.decode("utf-8").splitlines()]
    assert len(out) == 5 and [("error" in o) for o in out] == [False, True, True, False, True]
    assert out[2] == {"id": "x", "error": "<stdin>:3: field 'problem' must be a string, got int"}
    assert b"Traceback" not in from_stdin.stderr


def test_undecodable_file_name_and_ids_still_give_valid_json(fp32_export, tmp_path):
    import os

    name = os.fsdecode(b"bad-\xff.jsonl")
    (tmp_path / name).write_bytes(GOOD_LINE + b"\n{broken\n")
    p = subprocess.run([sys.executable, "-m", "rfedge", "score", name, "--model", str(fp32_export)],
                       capture_output=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 1 and b"Traceback" not in p.stderr
    out = [json.loads(x) for x in p.stdout.decode("utf-8").splitlines()]
    assert out[1] == {"error": "bad-\\xff.jsonl:2: invalid JSON at column 2: Expecting property name enclosed in "
                               "double quotes"}
