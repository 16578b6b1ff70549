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


def make_scalar_checkpoint(path: Path, tokenizer_dir: Path, seed: int = 0, layers: int = 2,
                           head_format: str = "pt", kv_heads: int = 2, head_scale: float = 4.0) -> Path:
    """A tiny ReasonFlux-PRM-1.5B-layout checkpoint: Qwen2ForCausalLM dir + reward_head.pt."""
    import shutil

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=151936, hidden_size=HIDDEN, intermediate_size=128,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=kv_heads,
                      max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=True,
                      eos_token_id=151643, bos_token_id=151643)
    model = Qwen2ForCausalLM(cfg)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    head = torch.nn.Linear(HIDDEN, 1)
    with torch.no_grad():
        head.weight.normal_(0, head_scale / HIDDEN ** 0.5)
    if head_format == "pt":
        torch.save(head.state_dict(), path / "reward_head.pt")
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(path / "reward_head.safetensors"))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_dir / f, path / f)
    return path


@pytest.fixture(scope="session")
def scalar_ckpt(tmp_path_factory, tokenizer_dir):
    return make_scalar_checkpoint(tmp_path_factory.mktemp("tiny-prm-1.5b") / "ckpt", tokenizer_dir)


@pytest.fixture(scope="session")
def fp32_export(tmp_path_factory, scalar_ckpt):
    from rfedge_export.pipeline import export_model

    out = tmp_path_factory.mktemp("exports") / "tiny-fp32"
    export_model(str(scalar_ckpt), out, precision="fp32", log=lambda m: None, progress=None)
    return out


@pytest.fixture(scope="session")
def int8_export(tmp_path_factory, scalar_ckpt):
    from rfedge_export.pipeline import export_model

    out = tmp_path_factory.mktemp("exports") / "tiny-int8"
    export_model(str(scalar_ckpt), out, precision="int8", log=lambda m: None, progress=None)
    return out


@pytest.fixture(scope="session")
def scalar_prm(scalar_ckpt):
    from rfedge_export.source import load_scalar_prm, resolve_source

    return load_scalar_prm(resolve_source(str(scalar_ckpt)))


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path
