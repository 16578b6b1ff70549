"""The CLI: output shapes, exit codes and one-line errors (no tracebacks)."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from rfedge.cli import main

from conftest import write_json

GOOD = {"id": "g", "problem": "Start with 3. Then add 4. What is the final number?",
        "trajectory": ["3 + 4 = 7"], "response": "The final number is 7."}


def run(*args, input=None):
    return CliRunner().invoke(main, list(args), input=input)


def test_single_object_gives_one_json_object(fp32_export, tmp_path):
    r = run("score", str(write_json(tmp_path / "t.json", GOOD)), "--model", str(fp32_export))
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["id"] == "g" and set(out) == {"id", "score", "trajectory_reward", "steps", "num_tokens", "truncated"}
    assert [s["section"] for s in out["steps"]] == ["thinking", "response"]
    assert set(out["steps"][0]) == {"section", "index", "reward", "token_index"}
    assert f"rfedge: model {tmp_path}" not in r.stderr and "[--model], device cpu" in r.stderr


def test_jsonl_bad_records_keep_their_place_and_exit_1(fp32_export, tmp_path):
    f = tmp_path / "t.jsonl"
    lines = [json.dumps(GOOD), "{nope", json.dumps({"id": "x", "problem": 1, "completion": "c"}),
             json.dumps({"id": "empty", "problem": "", "completion": ""}), json.dumps({**GOOD, "id": "last"})]
    f.write_text("\n".join(lines) + "\n")
    r = run("score", str(f), "--model", str(fp32_export), "--batch-size", "2")
    assert r.exit_code == 1
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(out) == 5
    assert out[0]["id"] == "g" and "score" in out[0]
    assert out[1] == {"error": f"{f}:2: invalid JSON at column 2: Expecting property name enclosed in double quotes"}
    assert out[2] == {"id": "x", "error": f"{f}:3: field 'problem' must be a string, got int"}
    assert out[3] == {"id": "empty", "error": f"{f}:4: trace has no text to score (problem and completion are empty)"}
    assert out[4]["id"] == "last" and "score" in out[4]
    assert "rfedge: 3 record(s) could not be scored" in r.stderr


def test_stdin_and_output_file(fp32_export, tmp_path):
    dest = tmp_path / "out.jsonl"
    r = run("score", "-", "--model", str(fp32_export), "--output", str(dest), input=json.dumps([GOOD, GOOD]))
    assert r.exit_code == 0, r.output
    assert r.stdout == "" and len(dest.read_text().splitlines()) == 2


@pytest.mark.parametrize("args,message", [
    (["score", "{tmp}/missing.json"], "rfedge: error: {tmp}/missing.json: no such trace file; pass a .jsonl, "
                                      ".json or .parquet file, or - for stdin\n"),
    (["score", "{tmp}/bad.json"], "rfedge: error: {tmp}/bad.json: field 'problem' must be a string, got list\n"),
    (["score", "{tmp}/good.json", "--model", "{tmp}/nomodel"],
     "rfedge: error: {tmp}/nomodel: no such model directory; export one with 'rfedge export'\n"),
])
def test_usage_errors_are_one_line_exit_2(fp32_export, tmp_path, args, message):
    write_json(tmp_path / "bad.json", {"problem": ["x"], "completion": "c"})
    write_json(tmp_path / "good.json", GOOD)
    args = [a.format(tmp=tmp_path) for a in args]
    if "--model" not in args:
        args += ["--model", str(fp32_export)]
    r = run(*args)
    assert r.exit_code == 2
    assert r.stderr == message.format(tmp=tmp_path)
    assert "Traceback" not in r.output


def test_model_resolution_order(fp32_export, tmp_path, monkeypatch):
    from rfedge.home import resolve_model

    monkeypatch.setenv("RFEDGE_MODEL", str(fp32_export))
    assert resolve_model(None).reason == "$RFEDGE_MODEL"
    assert resolve_model("x").reason == "--model"
    monkeypatch.delenv("RFEDGE_MODEL")
    monkeypatch.setenv("RFEDGE_HOME", str(tmp_path))
    choice = resolve_model(None)
    assert choice.reason in ("bundled demo model",)
    import shutil

    shutil.copytree(fp32_export, tmp_path / "models" / "x-fp32")
    assert resolve_model(None).path == tmp_path / "models" / "x-fp32"


def test_export_error_is_one_line(tmp_path):
    (tmp_path / "src").mkdir()
    r = run("export", str(tmp_path / "src"), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2
    assert r.stderr.splitlines()[-1] == f"rfedge: error: {tmp_path / 'src'}: no config.json; not a transformers checkpoint"


def test_offline_hub_id_without_cache_is_one_clear_line(tmp_path):
    r = run("export", "Gen-Verse/ReasonFlux-PRM-1.5B", "--out", str(tmp_path / "o"))
    assert r.exit_code == 2
    last = r.stderr.splitlines()[-1]
    assert last.startswith("rfedge: error: Gen-Verse/ReasonFlux-PRM-1.5B: not in the Hugging Face cache (")
    assert last.endswith("HF_HUB_OFFLINE is set; download it on a connected machine "
                                      "(huggingface-cli download Gen-Verse/ReasonFlux-PRM-1.5B) or pass a local directory")
    assert "Traceback" not in r.output


def test_unknown_precision_is_a_choice_error():
    r = run("export", "x", "--precision", "int3")
    assert r.exit_code == 2 and "'int3' is not one of 'fp32', 'fp16', 'int8', 'int4'" in r.output


def _command_paths(group, prefix=()):
    import click

    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _command_paths(command, (*prefix, name))
        else:
            yield (*prefix, name)


def test_every_command_has_an_example():
    paths = list(_command_paths(main))
    assert {"score", "export", "demo build"} <= {" ".join(p) for p in paths}
    for path in paths:
        r = run(*path, "--help")
        assert r.exit_code == 0 and "Example:" in r.output, path


def test_runtime_never_imports_torch(fp32_export, tmp_path):
    """import rfedge and a whole `rfedge score` run load none of the heavy modules."""
    trace = write_json(tmp_path / "t.json", GOOD)
    code = (
        "import sys, atexit\n"
        "heavy = ('torch', 'transformers', 'optimum', 'bitsandbytes', 'rfedge_export', 'its_hub', 'reward_hub',"
        " 'trl', 'ray', 'fastapi', 'uvicorn', 'starlette', 'pyarrow', 'httpx')\n"
        "atexit.register(lambda: print('HEAVY:' + ','.join(m for m in heavy if m in sys.modules), file=sys.stderr))\n"
        "import rfedge, rfedge.cli\n"
        f"sys.argv = ['rfedge', 'score', {str(trace)!r}, '--model', {str(fp32_export)!r}]\n"
        "rfedge.cli.main()\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "HEAVY:\n" in p.stderr, p.stderr
    assert json.loads(p.stdout)["id"] == "g"


def test_closed_stdout_stops_quietly(fp32_export, tmp_path):
    """`rfedge score big.jsonl | head -1`: no BrokenPipeError traceback, the SIGPIPE exit status."""
    f = tmp_path / "many.jsonl"
    f.write_text("".join(json.dumps({**GOOD, "id": str(i)}) + "\n" for i in range(3000)))
    p = subprocess.Popen([sys.executable, "-m", "rfedge", "score", str(f), "--model", str(fp32_export)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert json.loads(p.stdout.readline())["id"] == "0"
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_readme_library_snippet_runs_verbatim(fp32_export, tmp_path):
    """The README's library block, as written, with HOME holding a model at the path it names."""
    import re
    import shutil
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    snippet = re.search(r"<!-- library-snippet -->\n```python\n(.*?)```", readme, re.S).group(1)
    home = tmp_path / "home"
    shutil.copytree(fp32_export, home / ".cache" / "rfedge" / "models" / "gen-verse--reasonflux-prm-1.5b-int8")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("RFEDGE_HOME", "RFEDGE_MODEL")}
    p = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300,
                       env={**env, "HOME": str(home)}, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.splitlines()) == 4 and "'hits'" in p.stdout.splitlines()[-1]
