"""Model files are verified before a session is built; source heads are never unpickled."""

import json
import pickle
import shutil

import pytest

from rfedge import Scorer
from rfedge.errors import ModelFilesError
from rfedge.manifest import load_manifest


@pytest.fixture
def model_copy(fp32_export, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(fp32_export, dst)
    return dst


def _error(path):
    with pytest.raises(ModelFilesError) as e:
        Scorer.load(path, device="cpu")
    return str(e.value)


def test_changed_graph_same_size_is_refused(model_copy):
    f = model_copy / "model.onnx"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    assert _error(model_copy) == (f"{f}: sha256 differs from the one recorded at export; the file was changed, "
                                  "re-export the model")


def test_grown_graph_is_refused(model_copy):
    f = model_copy / "model.onnx"
    with f.open("ab") as fh:
        fh.write(b"x")
    assert _error(model_copy).startswith(f"{f}: size ")


def test_missing_tokenizer_is_refused(model_copy):
    (model_copy / "tokenizer.json").unlink()
    assert _error(model_copy) == f"{model_copy / 'tokenizer.json'}: listed in rfedge.json but missing; re-export the model"


@pytest.mark.parametrize("name", ["other.onnx", "w.bin", "notes.txt"])
def test_any_unlisted_file_is_refused(model_copy, name):
    """A graph can read external data under any name: only listed (hashed) files may be there."""
    shutil.copyfile(model_copy / "model.onnx", model_copy / name)
    assert _error(model_copy) == (f"{model_copy / name}: not listed in rfedge.json; a model directory holds only its "
                                  "export's files: remove it or re-export the model")


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.update(format_version=99), "manifest format_version 99 is not supported by this rfedge (supports 1, 2); "
                                            "upgrade rfedge or re-export the model"),
    (lambda d: d.pop("max_length"), "malformed manifest, field 'max_length' is missing; re-export the model"),
    (lambda d: d.update(format="other"), "not an rfedge manifest (format must be 'rfedge-model')"),
])
def test_bad_manifest(model_copy, edit, message):
    path = model_copy / "rfedge.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    assert _error(model_copy) == f"{path}: {message}"


def test_manifest_not_json(model_copy):
    (model_copy / "rfedge.json").write_text("{")
    assert _error(model_copy).startswith(f"{model_copy / 'rfedge.json'}: malformed manifest (")


def test_graph_outputs_must_match_manifest(model_copy):
    from rfedge.interface import cached_io

    path = model_copy / "rfedge.json"
    data = json.loads(path.read_text())
    inputs, outputs = cached_io(3)  # a manifest consistent in itself (names of 3 layers), not with its 2-layer graph
    data.update(inputs=inputs, outputs=outputs, cache={**data["cache"], "layers": 3})
    path.write_text(json.dumps(data))
    assert "do not match the manifest" in _error(model_copy)


def test_manifest_outputs_must_name_its_interface(model_copy):
    path = model_copy / "rfedge.json"
    data = json.loads(path.read_text())
    data["outputs"] = ["step_rewards", "hidden_states"]
    path.write_text(json.dumps(data))
    assert _error(model_copy) == (f"{path}: malformed manifest, field 'outputs' must be the cached interface's outputs "
                                  "for cache.layers 2 (token_step_rewards, token_trajectory_rewards, "
                                  "present.{0..1}.{key,value}), each once; re-export the model")


def test_unloadable_graph_is_one_line(model_copy):
    from rfedge.manifest import manifest_body, write_manifest

    (model_copy / "model.onnx").write_bytes(b"")  # a valid (empty) protobuf, but no graph in it
    data = json.loads((model_copy / "rfedge.json").read_text())
    data.pop("files")
    write_manifest(model_copy, manifest_body(model_copy, data))
    msg = _error(model_copy)
    assert msg.startswith(f"{model_copy / 'model.onnx'}: ONNX Runtime ") and "\n" not in msg


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_payload_in_reward_head_is_refused(scalar_ckpt, tmp_path):
    from rfedge_export.checkpoint.source import load_reward_head

    src = tmp_path / "evil"
    shutil.copytree(scalar_ckpt, src)
    marker = tmp_path / "pwned"
    with (src / "reward_head.pt").open("wb") as f:
        pickle.dump({"weight": _Payload(str(marker))}, f)
    with pytest.raises(ModelFilesError) as e:
        load_reward_head(src, 64)
    assert str(e.value).startswith(f"{src / 'reward_head.pt'}: refused to load, it is not a plain tensor state dict (")
    assert not marker.exists()


def test_head_from_safetensors_and_shape_check(tmp_path, tokenizer_dir):
    from conftest import make_scalar_checkpoint

    from rfedge_export.checkpoint.source import load_reward_head

    ck = make_scalar_checkpoint(tmp_path / "st", tokenizer_dir, head_format="safetensors")
    assert tuple(load_reward_head(ck, 64).weight.shape) == (1, 64)
    with pytest.raises(ModelFilesError) as e:
        load_reward_head(ck, 32)
    assert str(e.value) == (f"{ck / 'reward_head.safetensors'}: expected weight [1, 32] and bias [1] "
                            "(Linear(hidden, 1)), got {'bias': (1,), 'weight': (1, 64)}")


def test_failed_validation_leaves_nothing_to_score(scalar_ckpt, tmp_path):
    from rfedge.errors import ValidationError
    from rfedge_export.export import export_model

    out = tmp_path / "strict"
    with pytest.raises(ValidationError) as e:
        export_model(str(scalar_ckpt), out, precision="int8", tolerance={"max_abs_step": 1e-9},
                     log=lambda m: None, progress=None)
    lines = str(e.value).splitlines()
    assert lines[0].startswith("export stopped before writing a graph: the fit stopped (nothing left to promote, ")
    assert lines[1].startswith("- step_rewards max |delta|: ") and ", bound <= 1e-09 (trace " in lines[1]
    # the default recipe's fallback was fitted too, and is not suggested again
    assert lines[-2].startswith("int8-smooth, fitted next, stopped: the fit stopped (nothing left to promote, ")
    assert lines[-2].endswith(") while the fit traces still miss the gate in simulation")
    assert lines[-1] == "try --recipe int8-block32, --precision fp16, or a looser tolerance"
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_manifest_lists_sha256(fp32_export):
    m = load_manifest(fp32_export)
    assert all(len(e["sha256"]) == 64 for e in m.files.values())
