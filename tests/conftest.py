"""Session fixtures: real Qwen2.5 tokenization and tiny checkpoints in the real on-disk layouts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

HIDDEN = 64


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    """Keep every test away from the user's ~/.cache/rfedge and the hub."""
    home = tmp_path_factory.mktemp("rfedge-home")
    old = {k: os.environ.get(k) for k in ("RFEDGE_HOME", "RFEDGE_MODEL", "HF_HUB_OFFLINE", "HF_HOME")}
    os.environ["RFEDGE_HOME"] = str(home)
    os.environ.pop("RFEDGE_MODEL", None)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HOME"] = str(tmp_path_factory.mktemp("hf-home"))
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def qwen_tokenizer():
    from rfedge_export.qwen_vocab import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, qwen_tokenizer):
    from rfedge_export.qwen_vocab import write_tokenizer_files

    d = tmp_path_factory.mktemp("qwen-tokenizer")
    write_tokenizer_files(d, tokenizer=qwen_tokenizer)
    return d


def make_scalar_checkpoint(path: Path, tokenizer_dir: Path, **kw) -> Path:
    """A tiny ReasonFlux-PRM-1.5B-layout checkpoint: Qwen2ForCausalLM dir + reward_head.pt."""
    from rfedge_export.testing.outliers import tiny_checkpoint

    return tiny_checkpoint(path, tokenizer_dir, **{"hidden": HIDDEN, **kw})


@pytest.fixture(scope="session")
def scalar_ckpt(tmp_path_factory, tokenizer_dir):
    return make_scalar_checkpoint(tmp_path_factory.mktemp("tiny-prm-1.5b") / "ckpt", tokenizer_dir)


@pytest.fixture(scope="session")
def fp32_export(tmp_path_factory, scalar_ckpt):
    from rfedge_export.export import export_model

    out = tmp_path_factory.mktemp("exports") / "tiny-fp32"
    export_model(str(scalar_ckpt), out, precision="fp32", log=lambda m: None, progress=None)
    return out


@pytest.fixture(scope="session")
def int8_export(tmp_path_factory, scalar_ckpt):
    from rfedge_export.export import export_model

    out = tmp_path_factory.mktemp("exports") / "tiny-int8"
    export_model(str(scalar_ckpt), out, precision="int8", log=lambda m: None, progress=None)
    return out


@pytest.fixture(scope="session")
def fp16_export(tmp_path_factory, scalar_ckpt):
    from rfedge_export.export import export_model

    out = tmp_path_factory.mktemp("exports") / "tiny-fp16"
    export_model(str(scalar_ckpt), out, precision="fp16", log=lambda m: None, progress=None)
    return out


@pytest.fixture(scope="session")
def scalar_prm(scalar_ckpt):
    from rfedge_export.checkpoint.source import load_scalar_prm, resolve_source

    return load_scalar_prm(resolve_source(str(scalar_ckpt)))


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path
