"""A broken source checkpoint is one ModelFilesError line through `rfedge export` (exit 2), never a traceback."""

import json
import random
import shutil

import pytest
from click.testing import CliRunner

from rfedge.cli import main
from rfedge.errors import ModelFilesError


def _config(ck):
    return json.loads((ck / "config.json").read_text())


def _non_utf8(ck):
    data = (ck / "config.json").read_bytes().replace(b'"qwen2"', b'"qw\xe9n2"')
    (ck / "config.json").write_bytes(data)
    return f"{ck / 'config.json'}: not UTF-8 text (byte {data.index(0xE9) + 1}); save it as UTF-8"


def _nested(ck):
    (ck / "config.json").write_text('{"model_type": ' + "[" * 100_000 + "]" * 100_000 + "}")
    return f"{ck / 'config.json'}: malformed JSON (nested too deeply to read)"


def _long_number(ck):
    (ck / "config.json").write_text(json.dumps(_config(ck))[:-1] + ', "x": ' + "7" * 5000 + "}")
    return f"{ck / 'config.json'}: malformed JSON (a number too long to read, over 4300 digits)"


def _not_an_object(ck):
    (ck / "config.json").write_text("[1, 2]")
    return f"{ck / 'config.json'}: expected a JSON object of model settings, got list"


def _string_max_positions(ck):
    (ck / "config.json").write_text(json.dumps({**_config(ck), "max_position_embeddings": "512"}))
    return f"{ck / 'config.json'}: max_position_embeddings must be a positive integer, got '512'"


def _string_hidden_size(ck):
    (ck / "config.json").write_text(json.dumps({**_config(ck), "hidden_size": "64"}))
    return (f"{ck / 'config.json'}: Validation error for field 'hidden_size': TypeError: Field 'hidden_size' "
            "expected int, got str (value: '64')")


def _garbage_head(ck):
    (ck / "reward_head.pt").unlink()
    (ck / "reward_head.safetensors").write_bytes(random.Random(0).randbytes(4096))
    return (f"{ck / 'reward_head.safetensors'}: not a readable safetensors file (Error while deserializing header: "
            "header too large); re-download or re-save the checkpoint")


def _short_head(ck):
    (ck / "reward_head.pt").unlink()
    (ck / "reward_head.safetensors").write_bytes(b"\x01")
    return (f"{ck / 'reward_head.safetensors'}: not a readable safetensors file (Error while deserializing header: "
            "header too small); re-download or re-save the checkpoint")


def _numbers_head(ck):
    import torch

    torch.save({"weight": 3, "bias": torch.zeros(1)}, ck / "reward_head.pt")
    return f"{ck / 'reward_head.pt'}: expected a state dict of tensors, got a dict of Tensor, int"


def _garbage_weights(ck):
    (ck / "model.safetensors").write_bytes(random.Random(0).randbytes(4096))
    return f"{ck}: cannot load the Qwen2 weights (Error while deserializing header: header too large)"


BREAKAGES = [_non_utf8, _nested, _long_number, _not_an_object, _string_max_positions, _string_hidden_size,
             _garbage_head, _short_head, _numbers_head, _garbage_weights]


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda f: f.__name__.strip("_"))
def test_broken_source_is_one_line_and_exit_2(scalar_ckpt, tmp_path, breakage):
    src = tmp_path / "src"
    shutil.copytree(scalar_ckpt, src)
    message = breakage(src)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["export", str(src), "--out", str(out), "--precision", "fp32"])
    assert r.exit_code == 2, r.output
    assert isinstance(r.exception, SystemExit) and "Traceback" not in r.output
    assert r.stderr.splitlines()[-1] == f"rfedge: error: {message}"
    assert not out.exists()


def test_read_config_refuses_what_json_cannot_hold(tmp_path):
    from rfedge_export.checkpoint.source import read_config

    (tmp_path / "config.json").write_bytes(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    with pytest.raises(ModelFilesError) as e:
        read_config(tmp_path)
    assert str(e.value) == f"{tmp_path / 'config.json'}: malformed JSON (nested too deeply to read)"
    (tmp_path / "config.json").write_text('{"a": 1}')
    assert read_config(tmp_path) == {"a": 1}


def test_garbage_step_head_is_one_line(scalar_ckpt, tmp_path):
    from rfedge_export.checkpoint.source import load_step_head

    src = tmp_path / "src"
    shutil.copytree(scalar_ckpt, src)
    (src / "step_head.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelFilesError) as e:
        load_step_head(src, 64)
    assert str(e.value) == (f"{src / 'step_head.safetensors'}: not a readable safetensors file (Error while "
                            "deserializing header: header too large); re-download or re-save the checkpoint")
