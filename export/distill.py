"""``rfedge distill``: teach the 1.5B-layout student a step head from a reference PRM's step rewards.

The teacher's step rewards (cached on disk, resumable) are the targets; gold ``labels`` may be mixed
in with a weight. The step head (a small MLP over the final hidden state at each step boundary) is
trained with BCE on soft targets. With the backbone frozen (the default) the trajectory head's
outputs cannot move, and the boundary states are computed once; ``--unfreeze-layers N`` trains the
top N layers too, with a term holding each trace's final hidden state at its last token (all that
the trajectory head reads) where it was: relative MSE, weighted by ``trajectory_weight``.

Output: the student directory in the 1.5B layout plus ``step_head.safetensors`` and
``distill.json``; ``rfedge export`` on it puts the step head into the graph.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rfedge.batching import pad_right
from rfedge.constants import TOKENIZER_FILE
from rfedge.errors import UsageError
from rfedge.tokenization import TraceTokenizer
from rfedge.sources import read_traces

from .checkpoint.heads import make_step_head
from .checkpoint.source import STEP_HEAD_FILE
from .parity.cache import RewardCache
from .progress import log as _log
from .progress import progress


@dataclass(frozen=True)
class DistillConfig:
    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 64
    unfreeze_layers: int = 0
    max_length: int = 4096
    label_weight: float = 0.0
    trajectory_weight: float = 1.0
    head: str = "mlp"
    device: str = "cpu"
    dtype: str = "fp32"
    seed: int = 0
    teacher_quant: str = "none"  # bitsandbytes int8 / nf4 teacher on CUDA (checkpoint.quantized)


@dataclass
class Example:
    ids: np.ndarray  # token ids, truncated to max length
    positions: list[int]  # boundary tokens of the steps with a target
    targets: list[float]


def teacher_targets(traces, reference, cache: RewardCache, progress=None) -> list[dict]:
    """Per trace: {(section, index): teacher step reward}."""
    return [{(s, i): x for s, i, x in cache.rewards(reference, t)["steps"]}
            for t in (progress(traces) if progress else traces)]


def examples(traces, targets, tokenizer: TraceTokenizer, label_weight: float) -> list[Example]:
    """Boundary tokens and soft targets per trace, encoded as the runtime encodes them."""
    out = []
    for trace, tgt in zip(traces, targets, strict=True):
        enc = tokenizer.encode(trace)
        pos, y = [], []
        for k, (s, tok) in enumerate(zip(enc.steps, enc.step_tokens, strict=True)):
            if tok >= len(enc.ids) or (s.section, s.index) not in tgt:
                continue
            target = tgt[(s.section, s.index)]
            if label_weight > 0 and trace.labels is not None and k < len(trace.labels):
                target = (target + label_weight * trace.labels[k]) / (1 + label_weight)
            pos.append(int(tok))
            y.append(float(target))
        if pos:
            out.append(Example(enc.ids, pos, y))
    return out


def checkpoint_layers(layers) -> None:
    """Recompute these layers' activations in the backward pass instead of keeping them (non-reentrant
    ``torch.utils.checkpoint``, which passes keyword arguments through).

    Not transformers' ``gradient_checkpointing_enable``: it also makes the embeddings' output require
    grad, so every frozen layer below keeps its activations for a backward that never needs them,
    and it does nothing in eval mode."""
    import functools

    from torch.utils.checkpoint import checkpoint

    for layer in layers:
        layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)


class _Student:
    """The body with its top layers trainable (fp32 master weights) and the new step head."""

    def __init__(self, prm, cfg: DistillConfig):
        import torch

        self.cfg, self.body = cfg, prm.body.to(cfg.device)
        layers = self.body.layers
        if not 0 <= cfg.unfreeze_layers <= len(layers):
            raise UsageError(f"--unfreeze-layers {cfg.unfreeze_layers} is outside 0..{len(layers)}")
        self.head = make_step_head(self.body.config.hidden_size, cfg.head).to(cfg.device)
        for p in self.body.parameters():
            p.requires_grad_(False)
        first = len(layers) - cfg.unfreeze_layers
        top = list(layers)[first:]
        self.trainable = list(self.head.parameters())
        for module in top + ([self.body.norm] if cfg.unfreeze_layers else []):
            module.float()  # a bf16 AdamW step rounds small updates away
            for p in module.parameters():
                p.requires_grad_(True)
                self.trainable.append(p)
        self.tuned_keys = [k for k in self.body.state_dict() if (k.startswith("norm.") and cfg.unfreeze_layers) or any(
            k.startswith(f"layers.{j}.") for j in range(first, len(layers)))]
        if cfg.unfreeze_layers and cfg.device == "cuda":
            checkpoint_layers(top)
        self.autocast = torch.autocast(cfg.device, dtype=torch.bfloat16, enabled=cfg.dtype == "bf16")
        self.opt = torch.optim.AdamW(self.trainable, lr=cfg.lr, weight_decay=0.0)

    def states(self, ids_list, grad: bool):
        """Final hidden states [n, T, H] of a right-padded batch, and its mask."""
        import torch

        ids, mask = (torch.from_numpy(a).to(self.cfg.device) for a in pad_right(ids_list))
        with torch.set_grad_enabled(grad), self.autocast:
            # use_cache=False: a KV cache would grow on recompute
            return self.body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state, mask

    def step(self, loss) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()

    def save_checkpoint(self, ckpt: Path, epoch: int) -> None:
        import torch
        from safetensors.torch import save_file

        ckpt.mkdir(parents=True, exist_ok=True)
        save_file(_cpu(self.head.state_dict()), str(ckpt / STEP_HEAD_FILE))
        if self.cfg.unfreeze_layers:
            state = self.body.state_dict()
            save_file(_cpu({k: state[k] for k in self.tuned_keys}), str(ckpt / "body.safetensors"))
        torch.save({"epoch": epoch, "optimizer": self.opt.state_dict()}, str(ckpt / "state.pt"))

    def resume(self, ckpt: Path) -> int:
        """Load a checkpoint written by :meth:`save_checkpoint`; the first epoch still to run."""
        import torch
        from safetensors.torch import load_file

        state = torch.load(str(ckpt / "state.pt"), map_location=self.cfg.device, weights_only=True)
        self.head.load_state_dict(load_file(str(ckpt / STEP_HEAD_FILE)))
        if self.cfg.unfreeze_layers:
            self.body.load_state_dict(load_file(str(ckpt / "body.safetensors")), strict=False)
        self.opt.load_state_dict(state["optimizer"])
        return int(state["epoch"]) + 1


def _cpu(state: dict) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def _frozen_epoch(student: _Student, feats, ys, rng) -> float:
    """One epoch of the step head on boundary states computed once (the frozen backbone)."""
    import torch

    bce, cfg, total = torch.nn.functional.binary_cross_entropy_with_logits, student.cfg, 0.0
    order = torch.as_tensor(rng.permutation(len(feats)))
    for i in range(0, len(order), cfg.batch_size):
        idx = order[i:i + cfg.batch_size]
        logits = student.head(feats[idx].to(cfg.device)).squeeze(-1)
        total += student.step(bce(logits, ys[idx].to(cfg.device))) * len(idx)
    return total / max(len(feats), 1)


def _unfrozen_epoch(student: _Student, data: list[Example], held, rng) -> float:
    """One epoch through the top layers: step BCE + relative MSE holding the last token's state."""
    import torch

    bce, cfg, total = torch.nn.functional.binary_cross_entropy_with_logits, student.cfg, 0.0
    order = rng.permutation(len(data))
    bs = max(1, cfg.batch_size // 16)
    for i in range(0, len(order), bs):
        chunk = [data[j] for j in order[i:i + bs]]
        h, mask = student.states([e.ids for e in chunk], grad=True)
        logits = torch.cat([student.head(h[b, e.positions].float()).squeeze(-1) for b, e in enumerate(chunk)])
        loss = bce(logits, torch.tensor([v for e in chunk for v in e.targets], device=cfg.device))
        now = h[torch.arange(len(chunk)), mask.sum(-1) - 1].float()
        keep = torch.stack([held[j] for j in order[i:i + bs]])
        loss = loss + cfg.trajectory_weight * ((now - keep) ** 2).mean() / (keep ** 2).mean()
        total += student.step(loss) * len(chunk)
    return total / max(len(data), 1)


def _features(student: _Student, data: list[Example]):
    """Frozen: (boundary states, targets). Unfrozen: the last token's final state per trace, to hold."""
    import torch

    if student.cfg.unfreeze_layers:
        with torch.no_grad():
            return [student.states([e.ids], grad=False)[0][0, -1].float()
                    for e in progress(data, "trajectory states", "trace")]
    fs, ys = [], []
    for i in progress(range(0, len(data), 16), "boundary states", "batch"):
        chunk = data[i:i + 16]
        h, _ = student.states([e.ids for e in chunk], grad=False)
        for b, e in enumerate(chunk):
            fs.append(h[b, e.positions].float())
            ys += e.targets
    return torch.cat(fs), torch.tensor(ys)


def _write_student(src, student: _Student, out: Path) -> None:
    """The student's files, the updated body (only trained tensors replace the source's: frozen ones
    stay bit-exact in fp32) and the new step head."""
    from safetensors.torch import save_file

    unfrozen = student.cfg.unfreeze_layers > 0
    for f in src.path.iterdir():
        weights = f.suffix == ".safetensors" and f.name != "reward_head.safetensors"
        if f.is_file() and f.name != STEP_HEAD_FILE and not (unfrozen and weights):
            shutil.copyfile(f, out / f.name)
    if unfrozen:
        from transformers import Qwen2ForCausalLM

        import torch

        lm = Qwen2ForCausalLM.from_pretrained(str(src.path), dtype=torch.float32)
        state = student.body.state_dict()
        lm.model.load_state_dict({k: state[k].detach().float().cpu() for k in student.tuned_keys}, strict=False)
        lm.save_pretrained(out, safe_serialization=True)
    save_file(_cpu(student.head.state_dict()), str(out / STEP_HEAD_FILE))


def distill(data: str, teacher: str, student: str, out: Path, cfg: DistillConfig = DistillConfig(),
            teacher_layout: str | None = None, resume: bool = False, log=_log) -> dict:
    import torch

    from .checkpoint.quantized import check_quant
    from .checkpoint.source import load_scalar_prm, resolve_source
    from .parity.references import load_reference

    check_quant(cfg.teacher_quant, cfg.device, "--teacher-quant")  # before anything is read
    out, t0 = Path(out), time.time()
    if out.exists() and not resume and any(out.iterdir()):
        raise UsageError(f"{out}: exists; pass --resume to continue it or choose another --out")
    torch.manual_seed(cfg.seed)
    traces = read_traces(data)
    src = resolve_source(student)
    prm = load_scalar_prm(src, cfg.dtype, attn="sdpa")  # no [T, T] score tensors in training memory
    if prm.step_head is not None:
        log(f"rfedge distill: {src.id} already has a step head; it is replaced")
    log(f"rfedge distill: teacher step rewards for {len(traces)} traces from {teacher}")
    reference = load_reference(teacher, teacher_layout, cfg.dtype, cfg.device, cfg.teacher_quant, "--teacher-quant")
    targets = teacher_targets(traces, reference, RewardCache(out / "teacher_cache.jsonl"),
                              lambda xs: progress(xs, "teacher"))
    del reference
    data_ex = examples(traces, targets, TraceTokenizer(src.path / TOKENIZER_FILE, cfg.max_length), cfg.label_weight)
    if not data_ex:
        raise UsageError(f"{data}: no step of any trace has a teacher reward to learn from")
    model = _Student(prm, cfg)
    ckpt = out / "checkpoint"
    start = model.resume(ckpt) if resume and (ckpt / "state.pt").is_file() else 0
    if start:
        log(f"rfedge distill: resuming after epoch {start}")
    feats = _features(model, data_ex)
    history, steps_before, t_train = [], _optimizer_steps(model.opt), time.time()
    if cfg.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rng = np.random.default_rng(cfg.seed)
    bar = progress(range(start, cfg.epochs), "distilling", "epoch")
    for epoch in bar:
        history.append(_unfrozen_epoch(model, data_ex, feats, rng) if cfg.unfreeze_layers
                       else _frozen_epoch(model, *feats, rng))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
        model.save_checkpoint(ckpt, epoch)
    t_train_end = time.time()
    _write_student(src, model, out)
    info = {"distilled_from": {"teacher": teacher, "layout": teacher_layout or resolve_source(teacher).layout},
            "student": src.id, "data": data, "traces": len(traces), "examples": len(data_ex),
            "steps": int(sum(len(e.positions) for e in data_ex)), "config": asdict(cfg), "loss_history": history,
            "seconds": round(time.time() - t0, 1), "train_seconds": round(t_train_end - t_train, 1),
            "optimizer_steps": _optimizer_steps(model.opt) - steps_before,
            "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cfg.device == "cuda" else None}
    (out / "distill.json").write_text(json.dumps(info, indent=2))
    return info


def _optimizer_steps(opt) -> int:
    """AdamW's step count (the same for every parameter it has state for)."""
    steps = [int(s["step"]) for s in opt.state_dict()["state"].values() if "step" in s]
    return max(steps, default=0)
