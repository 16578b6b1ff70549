"""What ONNX Runtime may open, and what reaches it: external data, the pad id, failed runs.

Every external-data location of a graph must be a plain name of a file listed (with its sha256) in
rfedge.json; anything else is refused before ONNX Runtime sees the graph. Graphs are built with the
``onnx`` package (export tooling only); the runtime reads them without it.
"""

import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rfedge import Scorer
from rfedge.errors import ModelFilesError, RuntimeFailure
from rfedge.manifest import manifest_body, write_manifest
from rfedge.onnxfile import external_data_locations

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


@pytest.fixture
def model_copy(fp32_export, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(fp32_export, dst)
    return dst


@pytest.fixture
def ort_opened(monkeypatch):
    """The paths ONNX Runtime was asked to open."""
    import onnxruntime

    opened, real = [], onnxruntime.InferenceSession
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda path, *a, **k: opened.append(path) or real(path, *a, **k))
    return opened


def _external(name: str, location: str) -> TensorProto:
    """A float tensor whose 4 values live in ``location``, as an export with big weights writes them."""
    t = numpy_helper.from_array(np.arange(4, dtype=np.float32), name)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        t.external_data.add(key=key, value=value)
    return t


def _tiny_graph(location: str):
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("x", "y"))
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [_external("w", location)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _install_graph(directory, model_bytes: bytes) -> None:
    """Replace the graph and list every file again, as an export (or someone with its tools) would."""
    (directory / "model.onnx").write_bytes(model_bytes)
    data = json.loads((directory / "rfedge.json").read_text())
    data.pop("files")
    write_manifest(directory, manifest_body(directory, data))


def _error(directory) -> str:
    with pytest.raises(ModelFilesError) as e:
        Scorer.load(directory, device="cpu")
    return str(e.value)


@pytest.mark.parametrize("location", ["w.bin", "W.BIN", "model.onnx.data", "rfedge.json"])
def test_external_data_not_listed_in_the_manifest_is_refused(model_copy, ort_opened, location):
    _install_graph(model_copy, _tiny_graph(location).SerializeToString())
    graph = model_copy / "model.onnx"
    assert _error(model_copy) == (f"{graph}: reads external data from '{location}', which is not listed in "
                                  "rfedge.json with its sha256; re-export the model")
    assert ort_opened == []


@pytest.mark.parametrize("location", ["../outside.bin", "OUTSIDE", "sub/w.bin", "./w.bin", "..", "",
                                      "*/_ORT_MEM_ADDR_/*", "w.bin\0.txt"])
def test_external_data_outside_the_directory_is_refused(model_copy, tmp_path, ort_opened, location):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    location = str(outside) if location == "OUTSIDE" else location
    _install_graph(model_copy, _tiny_graph(location).SerializeToString())
    shown = ascii(location)[1:-1]
    assert _error(model_copy) == (f"{model_copy / 'model.onnx'}: reads external data from '{shown}', which is not "
                                  "a file of the model directory itself; a model directory never reaches outside "
                                  "itself, re-export the model")
    assert ort_opened == []


def test_external_data_through_a_symlink_is_refused(model_copy, tmp_path, ort_opened):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    (model_copy / "w.bin").symlink_to(outside)
    _install_graph(model_copy, _tiny_graph("w.bin").SerializeToString())  # lists w.bin, hashing its target
    assert "w.bin" in json.loads((model_copy / "rfedge.json").read_text())["files"]
    assert _error(model_copy) == (f"{model_copy / 'w.bin'}: is a symbolic link; a model directory holds its own "
                                  "files, re-export the model")
    assert ort_opened == []


def test_listed_external_data_of_a_real_export_scores_the_same(fp32_export, model_copy, ort_opened):
    """The export's own layout for big models (weights in model.onnx.data, listed and hashed) loads."""
    model = onnx.load(str(model_copy / "model.onnx"))
    onnx.save_model(model, str(model_copy / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=1024)
    _install_graph(model_copy, (model_copy / "model.onnx").read_bytes())
    assert external_data_locations(model_copy / "model.onnx")[0] == "model.onnx.data"
    assert (model_copy / "model.onnx").stat().st_size < 1_000_000 < (model_copy / "model.onnx.data").stat().st_size
    trace = {"problem": "Start with 3. Then add 4.", "completion": "3 + 4 = 7\n\nThe final number is 7."}
    got = Scorer.load(model_copy, device="cpu").score(trace).to_dict()
    assert got == Scorer.load(fp32_export, device="cpu").score(trace).to_dict()
    assert ort_opened[0] == str(model_copy / "model.onnx")


def test_changed_external_data_is_refused(model_copy):
    model = onnx.load(str(model_copy / "model.onnx"))
    onnx.save_model(model, str(model_copy / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=1024)
    _install_graph(model_copy, (model_copy / "model.onnx").read_bytes())
    data = model_copy / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    assert _error(model_copy) == (f"{data}: sha256 differs from the one recorded at export; the file was changed, "
                                  "re-export the model")


def _everywhere() -> tuple:
    """A model naming external data in every place a TensorProto can sit, and those names in file order."""
    sparse = helper.make_sparse_tensor(_external("sv", "c.bin"), numpy_helper.from_array(np.array([0], np.int64), "si"),
                                       [4])
    then = helper.make_graph([helper.make_node("Constant", [], ["t"], value=_external("k", "b.bin"))], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [4])])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=then)
    consts = helper.make_node("Constant", [], ["z"], sparse_value=sparse)
    graph = helper.make_graph([node, consts], "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [_external("w", "a.bin")])
    function = onnx.FunctionProto(name="f", domain="local", node=[
        helper.make_node("Constant", [], ["o"], value=_external("fk", "d.bin"))], output=["o"])
    model = helper.make_model(graph, functions=[function],
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    model.training_info.add().initialization.CopyFrom(helper.make_graph([], "init", [], [], [_external("e", "e.bin")]))
    return model, ["b.bin", "b.bin", "c.bin", "a.bin", "e.bin", "d.bin"]


def test_locations_are_found_wherever_a_tensor_can_sit(tmp_path):
    """Initializers, a subgraph's Constant (in both branches of If), a sparse constant, training graphs, functions."""
    model, expected = _everywhere()
    path = tmp_path / "g.onnx"
    path.write_bytes(model.SerializeToString())
    assert external_data_locations(path) == expected


def test_locations_match_the_onnx_package_on_random_names(tmp_path):
    from onnx.external_data_helper import ExternalDataInfo

    @settings(max_examples=30, deadline=None)
    @given(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=5))
    def check(names):
        path = tmp_path / "g.onnx"
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
        inits = [_external(f"w{i}", name) for i, name in enumerate(names)]
        path.write_bytes(helper.make_model(helper.make_graph([], "g", [x], [x], inits)).SerializeToString())
        loaded = onnx.load(str(path), load_external_data=False)
        assert external_data_locations(path) == [ExternalDataInfo(t).location for t in loaded.graph.initializer]

    check()


def test_non_utf8_location_is_refused_by_its_bytes(model_copy):
    model = _tiny_graph("PLACEHOLDER").SerializeToString().replace(b"PLACEHOLDER", b"w\xff.bin".ljust(11, b"_"))
    _install_graph(model_copy, model)
    assert _error(model_copy) == (f"{model_copy / 'model.onnx'}: reads external data from 'w\\udcff.bin_____', which "
                                  "is not listed in rfedge.json with its sha256; re-export the model")


@pytest.mark.parametrize("data,at", [(b"not a graph", 1), (b"\x3a\x05abc", 5), (b"\x3a\x80", 2),
                                     (b"\x08" + b"\xff" * 11, 11), (b"\x3b\x08\x01", 3), (b"\x00\x00", 1)])
def test_a_graph_that_is_not_a_protobuf_is_refused(model_copy, ort_opened, data, at):
    _install_graph(model_copy, data)
    assert _error(model_copy) == (f"{model_copy / 'model.onnx'}: not an ONNX graph (malformed protobuf at byte {at}); "
                                  "re-export the model")
    assert ort_opened == []


def test_any_bytes_give_locations_or_one_model_files_error(tmp_path):
    path = tmp_path / "g.onnx"
    whole = _everywhere()[0].SerializeToString()

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=64) | st.builds(lambda cut: whole[:cut], st.integers(0, len(whole)))
           | st.builds(lambda at, byte: whole[:at] + bytes([byte]) + whole[at + 1:], st.integers(0, len(whole) - 1),
                       st.integers(0, 255)))
    def check(data):
        path.write_bytes(data)
        try:
            assert all(isinstance(x, str) for x in external_data_locations(path))
        except ModelFilesError as e:
            assert str(e).startswith(f"{path}: not an ONNX graph (malformed protobuf at byte ") and "\n" not in str(e)

    check()


def _wrap(field: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, written by hand (the protobuf package refuses to nest this deep)."""
    size, n = b"", len(payload)
    while n >= 0x80:
        size, n = size + bytes([n & 0x7F | 0x80]), n >> 7
    return bytes([field << 3 | 2]) + size + bytes([n]) + payload


def test_deeply_nested_subgraphs_are_refused_not_a_recursion_error(tmp_path):
    graph = _wrap(5, _external("w", "w.bin").SerializeToString())  # at the bottom: an initializer
    for _ in range(40):  # graph > node > attribute (g) > graph: 120 messages deep, protobuf's limit is 100
        graph = _wrap(1, _wrap(5, _wrap(6, graph)))
    path = tmp_path / "deep.onnx"
    path.write_bytes(_wrap(7, graph))
    with pytest.raises(ModelFilesError) as e:
        external_data_locations(path)
    assert str(e.value).startswith(f"{path}: not an ONNX graph (malformed protobuf at byte ")
    path.write_bytes(_wrap(7, _wrap(1, _wrap(5, _wrap(6, _wrap(5, _external("w", "w.bin").SerializeToString()))))))
    assert external_data_locations(path) == ["w.bin"]  # the same, one level deep


# The pad id and the tokenizer

def _set_pad(directory, pad) -> None:
    path = directory / "rfedge.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "pad_token_id": pad}))


@pytest.mark.parametrize("pad", [10 ** 9, 151665])
def test_pad_token_outside_the_vocabulary_is_refused_at_load(model_copy, ort_opened, pad):
    _set_pad(model_copy, pad)
    assert _error(model_copy) == (f"{model_copy / 'rfedge.json'}: malformed manifest, field 'pad_token_id' must be a "
                                  f"token id of tokenizer.json, in 0..151664, got {pad}; re-export the model")
    assert ort_opened == []


def test_last_token_of_the_vocabulary_is_a_valid_pad(model_copy):
    _set_pad(model_copy, 151664)
    scorer = Scorer.load(model_copy, device="cpu", batch_size=2)
    assert len(scorer.score_many([{"problem": "a", "completion": "b"}, {"problem": "a b c d e f", "completion": "g"}])) == 2


def test_pad_token_through_the_cli_is_one_line(model_copy, tmp_path):
    from click.testing import CliRunner

    from rfedge.cli import main

    _set_pad(model_copy, 10 ** 9)
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps({"problem": "a", "completion": "b"}))
    r = CliRunner().invoke(main, ["score", str(trace), "--model", str(model_copy)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr.splitlines()[-1] == (f"rfedge: error: {model_copy / 'rfedge.json'}: malformed manifest, field "
                                         "'pad_token_id' must be a token id of tokenizer.json, in 0..151664, got "
                                         "1000000000; re-export the model")


# Failed runs

@pytest.fixture(scope="module")
def session(fp32_export):
    return Scorer.load(fp32_export, device="cpu").session


def _cached_args(fp32_export, ids):
    from rfedge.kvcache import KVBuffers
    from rfedge.manifest import load_manifest

    kv = KVBuffers(load_manifest(fp32_export).cache, ids.shape[0], 8)
    return ids, np.ones(ids.shape, np.int64), np.zeros(ids.shape[0], np.int64), kv


@pytest.mark.parametrize("device", ["cpu", "cuda"])  # cuda: the run path without IO binding, taken here on CPU
def test_a_failed_cached_run_is_a_runtime_failure_and_one_line(fp32_export, session, monkeypatch, capfd, device):
    monkeypatch.setattr(session, "device", device)
    with pytest.raises(RuntimeFailure) as e:
        session.run_cached(*_cached_args(fp32_export, np.full((1, 2), 10 ** 9, np.int64)))
    assert str(e.value).startswith(f"{session.graph_path}: ONNX Runtime failed while scoring (")
    assert "idx=1000000000" in str(e.value) and "\n" not in str(e.value)
    assert capfd.readouterr().err == ""  # ONNX Runtime's own log line is not printed beside it


def test_a_wrong_input_type_is_a_runtime_failure(fp32_export, session):
    with pytest.raises(RuntimeFailure) as e:
        session.run_cached(*_cached_args(fp32_export, np.zeros((1, 2), np.int32)))
    assert str(e.value) == (f"{session.graph_path}: ONNX Runtime failed while scoring (Error in execution: Unexpected "
                            "input data type. Actual: (tensor(int32)) , expected: (tensor(int64)))")


def test_a_failed_pooled_run_is_a_runtime_failure(session):
    """The pooled (format 1) path against a graph that has no step_index: ONNX Runtime refuses the feed."""
    ids = np.zeros((1, 2), np.int64)
    with pytest.raises(RuntimeFailure) as e:
        session.run(ids, np.ones_like(ids), np.zeros((1, 1), np.int64))
    assert str(e.value).startswith(f"{session.graph_path}: ONNX Runtime failed while scoring (")
    assert "\n" not in str(e.value)


def test_any_exception_of_a_run_is_translated(session, monkeypatch):
    class Broken:
        def io_binding(self):
            raise MemoryError("std::bad_alloc")

    monkeypatch.setattr(session, "_session", Broken())
    with pytest.raises(RuntimeFailure) as e:
        session.run_cached(np.zeros((1, 2), np.int64), np.ones((1, 2), np.int64), np.zeros(1, np.int64), None)
    assert str(e.value) == f"{session.graph_path}: ONNX Runtime failed while scoring (std::bad_alloc)"


def test_manifest_and_graph_disagreeing_on_cache_dims_is_refused(model_copy):
    path = model_copy / "rfedge.json"
    data = json.loads(path.read_text())
    data["cache"]["head_dim"] = 8
    path.write_text(json.dumps(data))
    assert _error(model_copy) == (f"{model_copy / 'model.onnx'}: graph input past_key_values.0.key has shape "
                                  "['batch', 2, 'capacity', 16], but the manifest's cache is [batch, 2, capacity, 8] "
                                  "(kv_heads, head_dim); re-export the model")

