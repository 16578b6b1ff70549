"""Loading source checkpoints: a local directory or a hub id, the layout detected from its files.

Never ``trust_remote_code``; never unpickle (safetensors, or ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rfedge.errors import ModelFilesError, UsageError
from rfedge.registry import find_model

WEIGHT_PATTERNS = ["*.json", "*.safetensors", "reward_head.pt", "reward_head.safetensors",
                   "step_head.safetensors", "*.txt", "*.model", "*.tiktoken"]
HEAD_FILES = ("reward_head.safetensors", "reward_head.pt")
STEP_HEAD_FILE = "step_head.safetensors"


@dataclass(frozen=True)
class Source:
    """A resolved checkpoint directory and where it came from."""

    path: Path
    id: str
    revision: str | None
    layout: str


def resolve_source(source: str, revision: str | None = None) -> Source:
    """A local directory as is; a registry name or hub id through huggingface_hub's cache."""
    local = Path(source).expanduser()
    if local.is_dir():
        return Source(local, str(local), revision, detect_layout(local))
    known = find_model(source)
    repo_id = known.hub_id if known and known.hub_id else source
    if known and not known.hub_id:
        raise UsageError(f"model '{source}' has no hub checkpoint; pass a local directory")
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
        raise UsageError(f"'{source}' is neither a directory nor a hub id like Gen-Verse/ReasonFlux-PRM-1.5B")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise UsageError("downloading from the hub needs huggingface_hub: pip install 'rfedge[export]'") from None
    try:
        path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=WEIGHT_PATTERNS))
    except LocalEntryNotFoundError:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
        raise ModelFilesError(
            f"{repo_id}: not in the Hugging Face cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')}) "
            f"and {why}; download it on a connected machine (huggingface-cli download {repo_id}) "
            "or pass a local directory") from None
    except Exception as e:  # hub errors: repository not found, gated, network
        raise ModelFilesError(f"{repo_id}: cannot download from the hub ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return Source(path, repo_id, path.name if len(path.name) == 40 else revision, detect_layout(path))


def read_config(path: Path) -> dict:
    """``config.json`` as a dict; anything else (not UTF-8, not JSON, too deep, not an object) is one line."""
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ModelFilesError(f"{path}: no config.json; not a transformers checkpoint")
    try:
        text = cfg.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelFilesError(f"{cfg}: not UTF-8 text (byte {e.start + 1}); save it as UTF-8") from None
    except OSError as e:
        raise ModelFilesError(f"{cfg}: cannot be read ({e.strerror or e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelFilesError(f"{cfg}: malformed JSON ({e})") from None
    except RecursionError:
        raise ModelFilesError(f"{cfg}: malformed JSON (nested too deeply to read)") from None
    except ValueError:  # an integer of more digits than Python converts
        raise ModelFilesError(f"{cfg}: malformed JSON (a number too long to read, over 4300 digits)") from None
    if not isinstance(data, dict):
        raise ModelFilesError(f"{cfg}: expected a JSON object of model settings, got {type(data).__name__}")
    return data


@contextmanager
def _safetensors(path: Path):
    """``safe_open`` on ``path``, a file that is not safetensors as one line."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as st:
            yield st
    except SafetensorError as e:
        raise _not_safetensors(path, e) from None


def _not_safetensors(path: Path, e: Exception) -> ModelFilesError:
    return ModelFilesError(f"{path}: not a readable safetensors file ({_first_line(e)}); re-download or "
                           "re-save the checkpoint")


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


def _safetensors_shapes(path: Path) -> dict[str, tuple]:
    shapes = {}
    for f in sorted(path.glob("*.safetensors")):
        if f.name in HEAD_FILES or f.name == STEP_HEAD_FILE:
            continue
        with _safetensors(f) as st:
            for k in st.keys():
                shapes[k] = tuple(st.get_slice(k).get_shape())
    return shapes


def detect_layout(path: Path) -> str:
    """``scalar-head`` (reward_head file), ``two-class`` (score.0/score.2 weights) or ``lm-tokens``."""
    cfg = read_config(path)
    if cfg.get("model_type") != "qwen2":
        raise ModelFilesError(f"{path}: model_type {cfg.get('model_type')!r} is not supported; "
                              "rfedge exports Qwen2 checkpoints")
    if any((path / f).is_file() for f in HEAD_FILES):
        return "scalar-head"
    shapes = _safetensors_shapes(path)
    h = cfg.get("hidden_size")
    if shapes.get("score.0.weight") == (h, h) and shapes.get("score.2.weight") == (2, h):
        return "two-class"
    if any(k.startswith("lm_head.") for k in shapes) or cfg.get("tie_word_embeddings"):
        return "lm-tokens"
    raise ModelFilesError(f"{path}: no reward_head.pt/.safetensors, no score.0/score.2 weights and no "
                          "lm_head; cannot tell which PRM layout this is")


def load_tensor_file(path: Path) -> dict:
    """A state dict from safetensors, or from a .pt file without unpickling code."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as e:
            raise _not_safetensors(path, e) from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError and friends: refuse, never retry unsafely
        raise ModelFilesError(
            f"{path}: refused to load, it is not a plain tensor state dict ({type(e).__name__}); "
            "rfedge never unpickles code. Convert it to safetensors in a trusted environment") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        kinds = sorted({type(v).__name__ for v in state.values()}) if isinstance(state, dict) else []
        got = f"a dict of {', '.join(kinds)}" if kinds else type(state).__name__
        raise ModelFilesError(f"{path}: expected a state dict of tensors, got {got}")
    return state


def load_reward_head(path: Path, hidden: int):
    """The 1.5B's trajectory head: ``nn.Linear(hidden, 1)`` from reward_head.safetensors or .pt."""
    import torch

    for name in HEAD_FILES:
        f = path / name
        if f.is_file():
            break
    else:
        raise ModelFilesError(f"{path}: no reward_head.safetensors or reward_head.pt")
    state = load_tensor_file(f)
    state = {k.removeprefix("reward_head."): v for k, v in state.items()}
    w, b = state.get("weight"), state.get("bias")
    if w is None or tuple(w.shape) != (1, hidden) or (b is not None and tuple(b.shape) != (1,)):
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        raise ModelFilesError(f"{f}: expected weight [1, {hidden}] and bias [1] (Linear(hidden, 1)), got {shapes}")
    head = torch.nn.Linear(hidden, 1, bias=b is not None)
    with torch.no_grad():
        head.weight.copy_(w.float())
        if b is not None:
            head.bias.copy_(b.float())
    return head.eval()


def load_body(path: Path, dtype: str = "fp32", attn: str = "eager", quant: str = "none"):
    """The Qwen2 body (no lm_head) through transformers, without remote code; ``quant`` int8/nf4:
    quantized by bitsandbytes onto GPU 0 (:mod:`.quantized`, checked by the caller)."""
    from .quantized import from_pretrained_options

    import torch
    from safetensors import SafetensorError
    from transformers import Qwen2Model

    cfg = read_config(path)
    if cfg.get("use_sliding_window"):
        raise ModelFilesError(f"{path}: use_sliding_window=true is not supported")
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    try:
        body = Qwen2Model.from_pretrained(str(path), dtype=torch_dtype, attn_implementation=attn,
                                          trust_remote_code=False, **from_pretrained_options(quant, dtype))
    except (OSError, ValueError, SafetensorError) as e:
        raise ModelFilesError(f"{path}: cannot load the Qwen2 weights ({_first_line(e)})") from None
    except _config_type_errors() as e:
        raise ModelFilesError(f"{path / 'config.json'}: {' '.join(str(e).split())}") from None
    return body.eval()


def _config_type_errors() -> tuple:
    """What transformers raises for a config.json field of the wrong type (5.x checks them through
    huggingface_hub's strict dataclasses; with an older huggingface_hub, nothing to catch)."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:
        return ()
    return (StrictDataclassError,)


@dataclass
class ScalarPRM:
    """A ReasonFlux-PRM-1.5B-layout checkpoint in torch: body, trajectory head, optional step head."""

    body: object
    head: object
    step_head: object | None
    source: Source


def load_step_head(path: Path, hidden: int):
    f = path / STEP_HEAD_FILE
    if not f.is_file():
        return None
    from .heads import step_head_from_state

    return step_head_from_state(load_tensor_file(f), hidden, f)


def load_scalar_prm(source: Source, dtype: str = "fp32", attn: str = "eager", quant: str = "none") -> ScalarPRM:
    if source.layout != "scalar-head":
        raise UsageError(f"{source.id}: layout '{source.layout}' cannot be exported as an edge model; "
                         "rfedge export takes the ReasonFlux-PRM-1.5B layout (Qwen2 + reward_head)")
    body = load_body(source.path, dtype, attn, quant)
    hidden = body.config.hidden_size
    return ScalarPRM(body, load_reward_head(source.path, hidden), load_step_head(source.path, hidden), source)


@dataclass
class TwoClassPRM:
    """A Qwen2.5-Math-PRM / ReasonFlux-PRM-7B-layout checkpoint: body + score MLP (h,h)-ReLU-(h,2)."""

    body: object
    score: object
    source: Source


def load_two_class_prm(source: Source, dtype: str = "fp32", quant: str = "none") -> TwoClassPRM:
    """Load the body through transformers and the score MLP from the safetensors shards, no remote code."""
    import torch
    import torch.nn as nn

    if source.layout != "two-class":
        raise UsageError(f"{source.id}: layout '{source.layout}' is not the two-class PRM layout")
    body = load_body(source.path, dtype, quant=quant)
    h = body.config.hidden_size
    state = {}
    for f in sorted(source.path.glob("*.safetensors")):
        with _safetensors(f) as st:
            for k in st.keys():
                if k.startswith("score."):
                    state[k.removeprefix("score.")] = st.get_tensor(k)
    score = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 2))
    try:
        score.load_state_dict(state)
    except RuntimeError as e:
        raise ModelFilesError(f"{source.path}: score.0/score.2 weights do not form Linear({h},{h})-ReLU-"
                              f"Linear({h},2) ({str(e).splitlines()[0]})") from None
    compute = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    return TwoClassPRM(body, score.to(compute).eval(), source)
