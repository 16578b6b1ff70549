"""Nothing the user did not ask for is deleted or replaced: `export --out`, `-o` targets, signals."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from rfedge.errors import UsageError
from rfedge.manifest import MANIFEST_NAME

from conftest import write_json

GOOD = {"id": "g", "problem": "Start with 3. Then add 4. What is the final number?",
        "trajectory": ["3 + 4 = 7"], "response": "The final number is 7."}


def _export(ckpt, out):
    from rfedge_export.export import export_model

    return export_model(str(ckpt), out, precision="fp32", log=lambda m: None, progress=None)


def _rfedge(*args, **kw):
    return subprocess.run([sys.executable, "-m", "rfedge", *args], capture_output=True, text=True, timeout=300, **kw)


def test_export_refuses_out_with_a_file_it_did_not_write(fp32_export, scalar_ckpt, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(fp32_export, out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UsageError) as e:
        _export(scalar_ckpt, out)
    assert str(e.value) == (f"{out}: holds files its previous export did not write (notes.txt); rfedge only "
                            "replaces an export's own files: move them away or choose another --out")
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == sorted(["notes.txt", *os.listdir(fp32_export)])


def test_export_replaces_a_previous_export_and_only_its_files(fp32_export, scalar_ckpt, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(fp32_export, out)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["files"]["../victim.txt"] = {"sha256": "0" * 64, "size": 7}  # a hostile listing
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    _export(scalar_ckpt, out)
    assert victim.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "victim.txt"]
    assert "../victim.txt" not in json.loads((out / MANIFEST_NAME).read_text())["files"]


def test_install_keeps_a_file_that_appeared_during_the_export(fp32_export, tmp_path, monkeypatch):
    from rfedge_export import install

    out, built = tmp_path / "out", tmp_path / "built"
    shutil.copytree(fp32_export, out)
    shutil.copytree(fp32_export, built)
    (out / "late.txt").write_text("written while the export ran")
    monkeypatch.setattr(install, "check_out", lambda out: None)  # as if it appeared after the last check
    note = install.install(built, out)
    old = [p for p in tmp_path.iterdir() if p.name.startswith(".out.old-")]
    assert len(old) == 1 and [p.name for p in old[0].iterdir()] == ["late.txt"]
    assert note == (f"files that appeared in {out} during the export were kept in {old[0]} "
                    "(rfedge deletes only a previous export's own files)")
    assert (out / MANIFEST_NAME).is_file() and not built.exists()


@pytest.mark.parametrize("setup,message", [
    (lambda d: (d / "x").write_text("a file"), "exists and is not a directory; choose another --out"),
    (lambda d: (d / "x").mkdir() or (d / "x" / "f").write_text(""), "exists and is not an rfedge export; "
                                                                      "choose another --out"),
    (lambda d: (d / "x").mkdir() or (d / "x" / MANIFEST_NAME).write_text("{"),
     "its rfedge.json cannot be read, so rfedge cannot tell which files are its own; choose another --out or "
     "remove the directory yourself"),
])
def test_export_out_refusals(tmp_path, setup, message):
    from rfedge_export.install import check_out

    setup(tmp_path)
    with pytest.raises(UsageError) as e:
        check_out(tmp_path / "x")
    assert str(e.value) == f"{tmp_path / 'x'}: {message}"


def test_output_to_a_fifo_streams_and_keeps_the_fifo(fp32_export, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    r = _rfedge("score", str(write_json(tmp_path / "t.json", GOOD)), "--model", str(fp32_export), "-o", str(fifo))
    reader.join(timeout=60)
    assert r.returncode == 0, r.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert json.loads(got[0])["id"] == "g"


def test_output_through_a_symlink_replaces_the_target_and_keeps_link_and_mode(fp32_export, tmp_path):
    target, link = tmp_path / "real.jsonl", tmp_path / "link.jsonl"
    target.write_text("old\n")
    os.chmod(target, 0o640)
    link.symlink_to(target)
    r = _rfedge("score", str(write_json(tmp_path / "t.json", GOOD)), "--model", str(fp32_export), "-o", str(link))
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads(target.read_text())["id"] == "g"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.jsonl", "real.jsonl", "t.json"]


def test_new_output_file_gets_the_umask_mode(fp32_export, tmp_path):
    out = tmp_path / "new.jsonl"
    r = _rfedge("score", str(write_json(tmp_path / "t.json", GOOD)), "--model", str(fp32_export), "-o", str(out),
                preexec_fn=lambda: os.umask(0o027))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o640


def _limit_file_size():
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))


def test_failed_write_leaves_the_target_as_it_was(fp32_export, tmp_path):
    src = tmp_path / "many.jsonl"
    src.write_text("".join(json.dumps({**GOOD, "id": str(i)}) + "\n" for i in range(40)))
    out = tmp_path / "out.jsonl"
    out.write_text("previous results\n")
    r = _rfedge("score", str(src), "--model", str(fp32_export), "-o", str(out), preexec_fn=_limit_file_size)
    assert r.returncode == 1
    assert r.stderr.splitlines()[-1] == f"rfedge: error: --output {out}: write failed (File too large)"
    assert "Traceback" not in r.stderr
    assert out.read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many.jsonl", "out.jsonl"]


def test_full_stdout_is_one_line(fp32_export, tmp_path):
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "rfedge", "score", str(write_json(tmp_path / "t.json", GOOD)),
                            "--model", str(fp32_export)], stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert r.returncode == 1
    assert r.stderr.splitlines()[-1] == "rfedge: error: standard output: write failed (No space left on device)"
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_termination_removes_the_temporary_file(fp32_export, tmp_path, sig):
    src = tmp_path / "many.jsonl"
    src.write_text("".join(json.dumps({**GOOD, "id": str(i)}) + "\n" for i in range(20000)))
    out = tmp_path / "out.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "rfedge", "score", str(src), "--model", str(fp32_export), "-o",
                          str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not any(f.name.startswith(".out.jsonl.") for f in tmp_path.iterdir()) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + sig, err
    assert "Traceback" not in err
    assert sorted(f.name for f in tmp_path.iterdir()) == ["many.jsonl"]
