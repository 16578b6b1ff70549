"""The model manifest ``rfedge.json``: what an export wrote, and the checks before loading it.

Every file an export writes is listed with its size and sha256; :func:`load_manifest` verifies them
(repeat loads of unchanged files use a size+mtime cache) and refuses changed, missing or extra
graph files with one line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelFilesError

MANIFEST_NAME = "rfedge.json"
FORMAT_NAME = "rfedge-model"
FORMAT_VERSION = 1
INPUTS = ("input_ids", "attention_mask", "step_index")
OUTPUTS = ("step_rewards", "trajectory_reward")
GRAPH_SUFFIXES = (".onnx", ".data", ".onnx_data")


@dataclass(frozen=True)
class Manifest:
    directory: Path
    source: dict
    precision: str
    quantization: dict
    max_length: int
    files: dict  # name -> {"sha256", "size"}
    inputs: tuple = INPUTS
    outputs: tuple = OUTPUTS
    graph: str = "model.onnx"
    tokenizer: str = "tokenizer.json"
    heads: dict = field(default_factory=dict)
    pad_token_id: int = 151643
    validation: dict = field(default_factory=dict)
    notice: str | None = None
    created: str | None = None

    @property
    def graph_path(self) -> Path:
        return self.directory / self.graph

    @property
    def tokenizer_path(self) -> Path:
        return self.directory / self.tokenizer

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


def write_manifest(directory: Path, data: dict[str, Any]) -> Path:
    """Write ``rfedge.json`` listing every other file in ``directory`` with its sha256."""
    directory = Path(directory)
    files = {p.name: file_entry(p) for p in sorted(directory.iterdir())
             if p.is_file() and p.name != MANIFEST_NAME}
    body = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **data, "files": files}
    path = directory / MANIFEST_NAME
    path.write_text(json.dumps(body, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


_verified: dict[tuple, str] = {}
_verified_lock = threading.Lock()


def _verify_file(directory: Path, name: str, entry: dict) -> None:
    path = directory / name
    if not path.is_file():
        raise ModelFilesError(f"{path}: listed in {MANIFEST_NAME} but missing; re-export the model")
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _verified_lock:
        cached = _verified.get(key)
    if cached == entry.get("sha256"):
        return
    if st.st_size != entry.get("size"):
        raise ModelFilesError(
            f"{path}: size {st.st_size} differs from {entry.get('size')} recorded at export; "
            "the file was changed, re-export the model")
    digest = sha256_file(path)
    if digest != entry.get("sha256"):
        raise ModelFilesError(
            f"{path}: sha256 differs from the one recorded at export; the file was changed, "
            "re-export the model")
    with _verified_lock:
        _verified[key] = digest


def _require(data: dict, key: str, kind: type, path: Path):
    if key not in data:
        raise ModelFilesError(f"{path}: malformed manifest, field '{key}' is missing; re-export the model")
    if not isinstance(data[key], kind):
        raise ModelFilesError(f"{path}: malformed manifest, field '{key}' must be {kind.__name__}")
    return data[key]


def load_manifest(directory: Path, verify: bool = True) -> Manifest:
    """Read and check ``directory/rfedge.json``; with ``verify`` check every file's sha256."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise ModelFilesError(f"{directory}: no such model directory; export one with 'rfedge export'")
    if not path.is_file():
        raise ModelFilesError(f"{directory}: no {MANIFEST_NAME} here; is this an rfedge export?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFilesError(f"{path}: malformed manifest ({e}); re-export the model") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ModelFilesError(f"{path}: not an rfedge manifest (format must be '{FORMAT_NAME}')")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFilesError(
            f"{path}: manifest format_version {version!r} is not supported by this rfedge "
            f"(supports {FORMAT_VERSION}); upgrade rfedge or re-export the model")
    files = _require(data, "files", dict, path)
    m = Manifest(
        directory=directory,
        source=_require(data, "source", dict, path),
        precision=_require(data, "precision", str, path),
        quantization=data.get("quantization") or {},
        max_length=_require(data, "max_length", int, path),
        files=files,
        inputs=tuple(data.get("inputs", INPUTS)),
        outputs=tuple(data.get("outputs", OUTPUTS)),
        graph=data.get("graph", "model.onnx"),
        tokenizer=data.get("tokenizer", "tokenizer.json"),
        heads=data.get("heads") or {},
        pad_token_id=int(data.get("pad_token_id", 151643)),
        validation=data.get("validation") or {},
        notice=data.get("notice"),
        created=data.get("created"),
    )
    for name in (m.graph, m.tokenizer):
        if name not in files:
            raise ModelFilesError(f"{path}: '{name}' is not listed under files; re-export the model")
    if verify:
        for name, entry in files.items():
            _verify_file(directory, name, entry)
        extra = [p.name for p in directory.iterdir()
                 if p.is_file() and p.name not in files and p.name.endswith(GRAPH_SUFFIXES)]
        if extra:
            raise ModelFilesError(
                f"{directory / sorted(extra)[0]}: graph file not listed in {MANIFEST_NAME}; "
                "remove it or re-export the model")
    return m
