"""The CLI's error line for names that are not UTF-8: one line, exit 2, never a UnicodeEncodeError."""

import io
import os
import subprocess
import sys

import pytest

from rfedge.errors import ModelFilesError

GOOD = b'{"problem": "p", "completion": "c"}\n'


def _rfedge(cwd, *args):
    return subprocess.run([sys.executable, "-m", "rfedge", *args], capture_output=True, timeout=300, cwd=cwd)


def _one_error_line(p) -> str:
    """The error line, last on stderr (after any progress lines), the only one; nothing on stdout."""
    assert p.returncode == 2 and b"Traceback" not in p.stderr, p.stderr
    lines = p.stderr.decode("utf-8").splitlines()
    assert [x for x in lines if x.startswith("rfedge: error: ")] == lines[-1:] and p.stdout == b""
    return lines[-1]


def test_missing_trace_file_with_a_non_utf8_name(fp32_export, tmp_path):
    name = os.fsdecode(b"missing-\xff.jsonl")
    line = _one_error_line(_rfedge(tmp_path, "score", name, "--model", str(fp32_export)))
    assert line.startswith("rfedge: error: missing-\\xff.jsonl: no such trace file")


def test_malformed_trace_file_with_a_non_utf8_name(fp32_export, tmp_path):
    (tmp_path / os.fsdecode(b"bad-\xff.json")).write_bytes(b"{broken\n")
    line = _one_error_line(_rfedge(tmp_path, "score", os.fsdecode(b"bad-\xff.json"), "--model", str(fp32_export)))
    assert line.startswith("rfedge: error: bad-\\xff.json: invalid JSON at line 1, column 2")


def test_model_directory_with_a_non_utf8_name(tmp_path):
    (tmp_path / "t.jsonl").write_bytes(GOOD)
    line = _one_error_line(_rfedge(tmp_path, "score", "t.jsonl", "--model", os.fsdecode(b"no-\xff-dir")))
    # the surrogate escape printed by stderr's backslashreplace (sources.py writes such bytes as \xff instead)
    assert line == "rfedge: error: no-\\xff-dir: no such model directory; export one with 'rfedge export'"


def test_export_source_with_a_non_utf8_name(tmp_path):
    src = tmp_path / os.fsdecode(b"src-\xff")
    src.mkdir()
    (src / "config.json").write_bytes(b"\xff")
    line = _one_error_line(_rfedge(tmp_path, "export", src.name, "--out", "out", "--precision", "fp32"))
    assert line == "rfedge: error: src-\\xff/config.json: not UTF-8 text (byte 1); save it as UTF-8"


def test_error_line_survives_a_strict_stderr(monkeypatch):
    from rfedge.cli.common import _fail

    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(raw, encoding="utf-8", errors="strict"))
    with pytest.raises(SystemExit) as e:
        _fail(ModelFilesError(os.fsdecode(b"no-\xff-dir: no such model directory")))
    sys.stderr.flush()
    assert e.value.code == 2
    assert raw.getvalue() == b"rfedge: error: no-\\xff-dir: no such model directory\n"
