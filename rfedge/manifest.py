"""The model manifest ``rfedge.json``: what an export wrote, and the checks before loading it.

A model directory holds exactly the files its manifest lists, each with its size and sha256, by
plain names (never a path: a directory never reaches outside itself), none of them a link, and no
subdirectory. :func:`load_manifest` checks every field's type and range, then every file (repeat
loads of an unchanged file use a cache keyed by size, mtime, ctime and inode, so a same-size edit
with the mtime set back is still caught), and refuses anything else with one line naming the file.
An export writes the manifest last, with its validation results; one without a passing validation
is refused.

What ONNX Runtime is allowed to read: the session opens the graph by its path, and the graph may
name external-data files that ONNX Runtime resolves against the directory. Two guarantees hold
before it opens anything (:func:`rfedge.onnxfile.check_external_data`, run by every
:class:`~rfedge.session.GraphSession`): every external-data location in the graph is a plain name
(no ``..``, no absolute path, no subdirectory) of a file listed under ``files``, and every listed
file was checked here, size and sha256, and is not a symbolic link. A file of the directory that is
not listed is refused on its own, so nothing unhashed sits beside the graph. The vocabulary-bound
fields (``pad_token_id``) are checked against the tokenizer once it is loaded (:func:`check_pad_token`).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .constants import BUILT_FOR, FORMAT_NAME, GRAPH_FILE, MANIFEST_NAME, PAD_TOKEN_ID, PRECISIONS, TOKENIZER_FILE
from .errors import ModelFilesError
from .interface import POOLED_INPUTS, POOLED_OUTPUTS, CacheShape, cached_io

FORMAT_VERSION = 2  # 2: the cached interface; 1: the pooled interface of rfedge 0.1 (still scored)
SUPPORTED_VERSIONS = (1, 2)
MAX_LENGTH_LIMIT = 1 << 20


@dataclass(frozen=True)
class Manifest:
    directory: Path
    source: dict
    precision: str
    quantization: dict
    max_length: int
    files: dict  # name -> {"sha256", "size"}
    inputs: tuple = POOLED_INPUTS
    outputs: tuple = POOLED_OUTPUTS
    graph: str = GRAPH_FILE
    tokenizer: str = TOKENIZER_FILE
    heads: dict = field(default_factory=dict)
    pad_token_id: int = PAD_TOKEN_ID
    validation: dict = field(default_factory=dict)
    notice: str | None = None
    created: str | None = None
    format_version: int = FORMAT_VERSION
    cache: CacheShape | None = None  # the cached interface's K/V buffers (format 2)
    token_independent: bool = True  # each token's numbers independent of batch and chunking
    devices: tuple = ("cpu",)  # what the graph is built for ("cpu", "cuda"); see constants.BUILT_FOR

    @property
    def graph_path(self) -> Path:
        return self.directory / self.graph

    @property
    def tokenizer_path(self) -> Path:
        return self.directory / self.tokenizer

    @property
    def cached(self) -> bool:
        return self.cache is not None

    def describe(self) -> str:
        return f"{self.source.get('id', '?')} ({self.precision}) at {self.directory}"


def is_plain_name(name: str) -> bool:
    """A file name of the model directory itself: no path separators, not '.' or '..', no NUL.

    A manifest names files only this way, so a model directory never reaches outside itself.
    """
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(path: Path) -> dict:
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def manifest_body(directory: Path, data: dict[str, Any]) -> dict:
    """The manifest for ``directory``: ``data`` plus every other file in it with its sha256."""
    files = {p.name: file_entry(p) for p in sorted(Path(directory).iterdir())
             if p.is_file() and p.name != MANIFEST_NAME}
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **data, "files": files}


def write_manifest(directory: Path, body: dict) -> Path:
    """Write ``rfedge.json`` (an export writes it last, once validation passed)."""
    path = Path(directory) / MANIFEST_NAME
    path.write_text(json.dumps(body, indent=2, sort_keys=False, allow_nan=False) + "\n", encoding="utf-8")
    return path


_verified: dict[tuple, str] = {}
_verified_lock = threading.Lock()


def _verify_file(directory: Path, name: str, entry: dict) -> None:
    path = directory / name
    if path.is_symlink():
        raise ModelFilesError(f"{path}: is a symbolic link; a model directory holds its own files, re-export the model")
    if not path.is_file():
        raise ModelFilesError(f"{path}: listed in {MANIFEST_NAME} but missing; re-export the model")
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
    with _verified_lock:
        cached = _verified.get(key)
    if cached == entry["sha256"]:
        return
    if st.st_size != entry["size"]:
        raise ModelFilesError(
            f"{path}: size {st.st_size} differs from {entry['size']} recorded at export; "
            "the file was changed, re-export the model")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise ModelFilesError(
            f"{path}: sha256 differs from the one recorded at export; the file was changed, "
            "re-export the model")
    with _verified_lock:
        _verified[key] = digest


class _Fields:
    """Typed access to the manifest's fields: a wrong type or range is one line naming the field."""

    MISSING = object()

    def __init__(self, data: dict, path: Path):
        self.data, self.path = data, path

    def bad(self, key: str, what: str) -> ModelFilesError:
        return ModelFilesError(f"{self.path}: malformed manifest, field '{key}' must be {what}; re-export the model")

    def get(self, key: str, check: Callable[[Any], bool], what: str, default: Any = MISSING) -> Any:
        if key not in self.data:
            if default is self.MISSING:
                raise ModelFilesError(f"{self.path}: malformed manifest, field '{key}' is missing; re-export the model")
            return default
        value = self.data[key]
        if not check(value):
            raise self.bad(key, what)
        return value


def _is_int(lo: int, hi: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_entry(v: Any) -> bool:
    return (isinstance(v, dict) and isinstance(v.get("sha256"), str) and len(v["sha256"]) == 64
            and all(c in "0123456789abcdef" for c in v["sha256"]) and _is_int(0, 1 << 62)(v.get("size")))


def _is_cache(v: Any) -> bool:
    return isinstance(v, dict) and all(_is_int(1, 1 << 16)(v.get(k)) for k in ("layers", "kv_heads", "head_dim"))


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF-8, absurd numbers or nesting
        raise ModelFilesError(f"{path}: malformed manifest ({str(e).splitlines()[0][:200]}); re-export the model") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ModelFilesError(f"{path}: not an rfedge manifest (format must be '{FORMAT_NAME}')")
    version = data.get("format_version")
    if version not in SUPPORTED_VERSIONS or isinstance(version, bool):
        raise ModelFilesError(
            f"{path}: manifest format_version {version!r} is not supported by this rfedge "
            f"(supports {', '.join(map(str, SUPPORTED_VERSIONS))}); upgrade rfedge or re-export the model")
    return data


def parse_manifest(directory: Path, data: dict, path: Path) -> Manifest:
    """Check every field of a decoded manifest and build the :class:`Manifest`."""
    f = _Fields(data, path)
    files = f.get("files", lambda v: isinstance(v, dict), "an object of file entries")
    for name, entry in files.items():
        if not is_plain_name(name):
            raise ModelFilesError(f"{path}: lists '{ascii(name)[1:-1]}', which is not a file of the model directory "
                                  "itself; a model directory never reaches outside itself, re-export the model")
        if not _is_entry(entry):
            raise f.bad(f"files.{ascii(name)[1:-1]}", "an object with a 64-hex-digit 'sha256' and an integer 'size'")
    version = data["format_version"]
    cache = f.get("cache", _is_cache, "an object with integer layers, kv_heads and head_dim", None)
    if version >= 2 and cache is None:
        raise f.bad("cache", "present in format 2")
    m = Manifest(
        directory=directory,
        source=f.get("source", lambda v: isinstance(v, dict), "an object"),
        precision=f.get("precision", lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
        quantization=f.get("quantization", lambda v: isinstance(v, dict), "an object", {}),
        max_length=f.get("max_length", _is_int(1, MAX_LENGTH_LIMIT), f"an integer in 1..{MAX_LENGTH_LIMIT}"),
        files=files,
        inputs=tuple(f.get("inputs", _is_names, "a list of names", list(POOLED_INPUTS))),
        outputs=tuple(f.get("outputs", _is_names, "a list of names", list(POOLED_OUTPUTS))),
        graph=f.get("graph", lambda v: isinstance(v, str) and v in files, "a file listed under files", GRAPH_FILE),
        tokenizer=f.get("tokenizer", lambda v: isinstance(v, str) and v in files, "a file listed under files",
                        TOKENIZER_FILE),
        heads=f.get("heads", lambda v: isinstance(v, dict), "an object", {}),
        pad_token_id=f.get("pad_token_id", _is_int(0, (1 << 31) - 1), "an integer token id", PAD_TOKEN_ID),
        validation=f.get("validation", lambda v: isinstance(v, dict), "an object", {}),
        notice=f.get("notice", lambda v: v is None or isinstance(v, str), "a string", None),
        created=f.get("created", lambda v: v is None or isinstance(v, str), "a string", None),
        format_version=version,
        cache=CacheShape(cache["layers"], cache["kv_heads"], cache["head_dim"]) if cache else None,
        token_independent=f.get("token_independent", lambda v: isinstance(v, bool), "true or false", True),
        devices=tuple(f.get("devices", _is_devices, 'a non-empty list of "cpu" and "cuda"',
                            list(BUILT_FOR.get(data.get("precision"), ("cpu",))))),
    )
    for name in (m.graph, m.tokenizer):
        if name not in files:
            raise ModelFilesError(f"{path}: '{name}' is not listed under files; re-export the model")
    _check_interface(f, m)
    return m


def _is_devices(v) -> bool:
    return isinstance(v, list) and bool(v) and all(d in ("cpu", "cuda") for d in v) and len(set(v)) == len(v)


def _check_interface(f: _Fields, m: Manifest) -> None:
    """Inputs and outputs name the interface the format and cache describe, each once (in any order)."""
    if m.cache:
        n = m.cache.layers - 1
        expected = dict(zip(("inputs", "outputs"), cached_io(m.cache.layers), strict=True))
        what = {"inputs": f"input_ids, attention_mask, past_length, past_key_values.{{0..{n}}}.{{key,value}}",
                "outputs": f"token_step_rewards, token_trajectory_rewards, present.{{0..{n}}}.{{key,value}}"}
        interface = f"the cached interface's {{}} for cache.layers {m.cache.layers}"
    else:
        expected = {"inputs": POOLED_INPUTS, "outputs": POOLED_OUTPUTS}
        what = {k: ", ".join(v) for k, v in expected.items()}
        interface = "the pooled interface's {}"
    for key, names in (("inputs", m.inputs), ("outputs", m.outputs)):
        if sorted(names) != sorted(expected[key]):
            raise f.bad(key, f"{interface.format(key)} ({what[key]}), each once")


def check_pad_token(m: Manifest, vocab_size: int) -> None:
    """The pad id must be a token of the manifest's tokenizer (the graph's embedding gathers it)."""
    if not 0 <= m.pad_token_id < vocab_size:
        raise ModelFilesError(
            f"{m.directory / MANIFEST_NAME}: malformed manifest, field 'pad_token_id' must be a token id of "
            f"{m.tokenizer}, in 0..{vocab_size - 1}, got {m.pad_token_id}; re-export the model")


def verify_files(m: Manifest) -> None:
    """Every listed file matches its sha256; nothing else is in the directory."""
    for name, entry in m.files.items():
        _verify_file(m.directory, name, entry)
    extra = sorted(p.name for p in m.directory.iterdir() if p.name != MANIFEST_NAME and p.name not in m.files)
    if extra:
        raise ModelFilesError(f"{m.directory / extra[0]}: not listed in {MANIFEST_NAME}; a model directory holds "
                              "only its export's files: remove it or re-export the model")


def load_manifest(directory: str | os.PathLike, verify: bool = True) -> Manifest:
    """Read and check ``directory/rfedge.json`` (``~`` expanded); with ``verify``, check every file."""
    directory = Path(directory).expanduser()
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise ModelFilesError(f"{directory}: no such model directory; export one with 'rfedge export'")
    if not path.is_file():
        raise ModelFilesError(f"{directory}: no {MANIFEST_NAME} here; is this an rfedge export?")
    m = parse_manifest(directory, _read(path), path)
    if m.format_version >= 2 and m.validation.get("passed") is not True:
        raise ModelFilesError(f"{path}: the export that wrote this directory did not pass its validation; "
                              "re-export the model")
    if verify:
        verify_files(m)
    return m

