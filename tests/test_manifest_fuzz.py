"""Any value in any manifest field: the model loads and scores, or ModelFilesError says why, in one line.

Each example writes one manifest (rfedge.json is not hashed, so anyone can edit it) into a copy of a
valid export, with one field replaced, removed, or one entry inside it replaced, then loads it and
scores two traces of different lengths (padding, the cache buffers and the pad id all in use).
"""

import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rfedge import Scorer
from rfedge.errors import ModelFilesError
from rfedge.manifest import MANIFEST_NAME

TRACES = [{"problem": "Start with 3. Then add 4.", "completion": "3 + 4 = 7\n\nThe final number is 7."},
          {"problem": "x", "completion": "y"}]
TEXT = st.text(max_size=12) | st.sampled_from(["model.onnx", "tokenizer.json", "rfedge.json", "../x", "/etc/passwd",
                                               "fp32", "int8", "rfedge-model", "", "\udc80"])
NUMBERS = (st.integers() | st.integers(-3, 3) | st.sampled_from([1 << 31, 151643, 151664, 151665, 10 ** 9, 10 ** 30])
           | st.floats(allow_nan=False) | st.booleans())
JSON = st.recursive(st.none() | NUMBERS | TEXT,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                    max_leaves=8)


@pytest.fixture(scope="module")
def model(fp32_export, tmp_path_factory):
    """One copy for every example (the files stay as exported; only rfedge.json is rewritten)."""
    dst = tmp_path_factory.mktemp("fuzz") / "m"
    shutil.copytree(fp32_export, dst)
    return dst, json.loads((dst / MANIFEST_NAME).read_text())


def _fields(manifest: dict) -> list[str]:
    """Every top-level field, and one level down in the object fields (``files.model.onnx``, ``cache.layers``)."""
    inner = [f"{k}.{sub}" for k, v in manifest.items() if isinstance(v, dict) for sub in v]
    return sorted(manifest) + sorted(inner)


def _edit(manifest: dict, field: str, value, remove: bool) -> dict:
    data = json.loads(json.dumps(manifest))
    top, _, sub = field.partition(".")
    target, key = (data[top], sub) if sub else (data, top)
    if remove:
        del target[key]
    else:
        target[key] = value
    return data


def _load_and_score(directory):
    try:
        scorer = Scorer.load(directory, device="cpu", batch_size=2)
    except ModelFilesError as e:
        assert "\n" not in str(e) and str(e).startswith(str(directory)), str(e)
        return "refused"
    results = scorer.score_many(TRACES)
    assert [len(r.steps) for r in results] == [2, 1]
    return "scored"


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), value=JSON, remove=st.booleans())
def test_any_value_in_any_field_loads_or_is_one_model_files_error(model, data, value, remove):
    directory, manifest = model
    field = data.draw(st.sampled_from(_fields(manifest)), label="field")
    path = directory / MANIFEST_NAME
    path.write_text(json.dumps(_edit(manifest, field, value, remove)), encoding="utf-8", errors="surrogatepass")
    try:
        _load_and_score(directory)
    finally:
        path.write_text(json.dumps(manifest), encoding="utf-8")


@pytest.mark.parametrize("field,value", [
    ("pad_token_id", 10 ** 9), ("pad_token_id", 151665), ("cache.layers", 1), ("cache.head_dim", 8),
    ("cache.kv_heads", 4), ("inputs", "doubled"), ("outputs", "doubled"),
    ("files.model.onnx", {"sha256": "0" * 64, "size": 1}), ("max_length", 10 ** 7), ("format_version", True),
])
def test_values_that_once_slipped_through_are_refused(model, field, value):
    """Values a reader of the manifest once took at face value; each is one ModelFilesError line at load."""
    directory, manifest = model
    if value == "doubled":
        value = manifest[field] + manifest[field][:1]
    path = directory / MANIFEST_NAME
    path.write_text(json.dumps(_edit(manifest, field, value, False)), encoding="utf-8")
    try:
        assert _load_and_score(directory) == "refused"
    finally:
        path.write_text(json.dumps(manifest), encoding="utf-8")


def test_the_unedited_copy_scores(model):
    assert _load_and_score(model[0]) == "scored"


def _score_growing_trace(directory) -> list:
    """The same trace one step longer each call: every call after the first reads cached keys and values."""
    scorer = Scorer.load(directory, device="cpu")
    steps = [f"Then add {n}, which gives {3 + n} in total so far." for n in range(1, 5)]
    return [scorer.score({"problem": "Start with 3.", "completion": "\n\n".join(steps[:k])}).to_dict()
            for k in range(1, len(steps) + 1)]


def test_the_order_of_inputs_and_outputs_does_not_matter(model):
    """Each K/V buffer is bound to its own layer's input and output by name, not by manifest position."""
    directory, manifest = model
    reference = _score_growing_trace(directory)
    path = directory / MANIFEST_NAME
    path.write_text(json.dumps({**manifest, "inputs": manifest["inputs"][::-1]}), encoding="utf-8")
    try:
        got = _score_growing_trace(directory)
    finally:
        path.write_text(json.dumps(manifest), encoding="utf-8")
    assert got == reference
