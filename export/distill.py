"""``rfedge distill``: teach the 1.5B-layout student a step head from a reference PRM's step rewards.

The teacher's step rewards (cached on disk, resumable) are the targets; gold ``labels`` may be mixed
in with a weight. The step head (a small MLP over the final hidden state at each step boundary) is
trained with BCE on soft targets. With the backbone frozen (the default) the trajectory head's
outputs cannot move, and the boundary states are computed once; ``--unfreeze-layers N`` trains the
top N layers too, with a term holding each trace's final hidden state at its last token (all that
the trajectory head reads) where it was: relative MSE, weighted by ``trajectory_weight``. (Holding
only the trajectory reward itself let the ranking of trajectories drift on the demo pair: held-out
trajectory AUROC 0.973 against 0.9997 with the state held.)

Output: the student directory in the 1.5B layout plus ``step_head.safetensors`` and
``distill.json``; ``rfedge export`` on it puts the step head into the graph.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rfedge.errors import UsageError
from rfedge.steps import boundary_tokens, split_steps
from rfedge.traces import read_traces

from .checkpoint.heads import make_step_head
from .parity.run import RewardCache, _cache_key

STEP_HEAD_FILE = "step_head.safetensors"


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


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def teacher_targets(traces, reference, cache: RewardCache, progress=None):
    """Per trace: {(section, index): teacher step reward}."""
    out = []
    for t in (progress(traces) if progress else traces):
        key = _cache_key(reference, t)
        row = cache.get(key)
        if row is None:
            r = reference.score_trace(t)
            row = cache.put(key, [list(s) for s in r.steps], r.trajectory)
        out.append({(s, i): x for s, i, x in row["steps"]})
    return out


def _examples(traces, targets, tk, cfg: DistillConfig, label_weight: float):
    """(ids, boundary tokens, soft targets, target weights) per trace, truncated to max length."""
    out = []
    for trace, tgt in zip(traces, targets):
        enc = tk.encode(trace.text, add_special_tokens=False)
        steps = split_steps(trace.problem, trace.completion)
        starts = np.array([o[0] for o in enc.offsets], dtype=np.int64)
        toks = boundary_tokens(steps, starts)
        n = min(len(enc.ids), cfg.max_length)
        pos, y, w = [], [], []
        for k, (s, tok) in enumerate(zip(steps, toks)):
            if tok >= n or (s.section, s.index) not in tgt:
                continue
            target, weight = tgt[(s.section, s.index)], 1.0
            if label_weight > 0 and trace.labels is not None and k < len(trace.labels):
                target = (target + label_weight * trace.labels[k]) / (1 + label_weight)
            pos.append(int(tok))
            y.append(float(target))
            w.append(weight)
        if pos:
            out.append((enc.ids[:n], pos, y, w))
    return out


def checkpoint_layers(layers) -> None:
    """Recompute these layers' activations in the backward pass instead of keeping them (non-reentrant
    ``torch.utils.checkpoint``, which passes keyword arguments through).

    Not transformers' ``gradient_checkpointing_enable``: it also makes the embeddings' output require
    grad, so every frozen layer below keeps its activations for a backward that never needs them,
    and it does nothing in eval mode (measured on an H200, 1.5B shape, 4 x 2,689 tokens, top 2
    layers trained: 34.5 GB peak that way)."""
    import functools

    from torch.utils.checkpoint import checkpoint

    for layer in layers:
        layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)


def distill(data: str, teacher: str, student: str, out: Path, cfg: DistillConfig = DistillConfig(),
            teacher_layout: str | None = None, resume: bool = False, log=_log) -> dict:
    import torch
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer
    from tqdm import tqdm

    from .parity.references import load_reference
    from .checkpoint.source import load_scalar_prm, resolve_source

    out = Path(out)
    ckpt_dir = out / "checkpoint"
    if out.exists() and not resume and any(out.iterdir()):
        raise UsageError(f"{out}: exists; pass --resume to continue it or choose another --out")
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    traces = read_traces(data)
    src = resolve_source(student)
    prm = load_scalar_prm(src, cfg.dtype, attn="sdpa")  # no [T, T] score tensors in training memory
    if prm.step_head is not None:
        log(f"rfedge distill: {src.id} already has a step head; it is replaced")
    tk = Tokenizer.from_file(str(src.path / "tokenizer.json"))
    log(f"rfedge distill: teacher step rewards for {len(traces)} traces from {teacher}")
    reference = load_reference(teacher, teacher_layout, cfg.dtype, cfg.device)
    cache = RewardCache(out / "teacher_cache.jsonl")
    targets = teacher_targets(traces, reference, cache,
                              lambda xs: tqdm(xs, desc="teacher", unit="trace", file=sys.stderr))
    del reference
    examples = _examples(traces, targets, tk, cfg, cfg.label_weight)
    if not examples:
        raise UsageError(f"{data}: no step of any trace has a teacher reward to learn from")
    body = prm.body.to(cfg.device)
    hidden = body.config.hidden_size
    step_head = make_step_head(hidden, cfg.head).to(cfg.device)
    layers = body.layers
    if not 0 <= cfg.unfreeze_layers <= len(layers):
        raise UsageError(f"--unfreeze-layers {cfg.unfreeze_layers} is outside 0..{len(layers)}")
    for p in body.parameters():
        p.requires_grad_(False)
    # Trained modules keep fp32 master weights (a bf16 AdamW step rounds small updates away); with
    # --dtype bf16 the frozen layers stay bf16 and the forward runs under bf16 autocast.
    first_tuned = len(layers) - cfg.unfreeze_layers
    top_layers = list(layers)[first_tuned:]
    tuned = top_layers + ([body.norm] if cfg.unfreeze_layers else [])
    trainable = list(step_head.parameters())
    for module in tuned:
        module.float()
        for p in module.parameters():
            p.requires_grad_(True)
            trainable.append(p)
    tuned_keys = [k for k in body.state_dict() if (k.startswith("norm.") and cfg.unfreeze_layers) or any(
        k.startswith(f"layers.{j}.") for j in range(first_tuned, len(layers)))]
    if cfg.unfreeze_layers and cfg.device == "cuda":
        checkpoint_layers(top_layers)
    autocast = torch.autocast(cfg.device, dtype=torch.bfloat16, enabled=cfg.dtype == "bf16")
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)
    start_epoch = 0
    if resume and (ckpt_dir / "state.pt").is_file():
        state = torch.load(str(ckpt_dir / "state.pt"), map_location=cfg.device, weights_only=True)
        step_head.load_state_dict(load_file(str(ckpt_dir / STEP_HEAD_FILE)))
        if cfg.unfreeze_layers:
            body.load_state_dict(load_file(str(ckpt_dir / "body.safetensors")), strict=False)
        opt.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"]) + 1
        log(f"rfedge distill: resuming after epoch {start_epoch}")

    def states(ids_list, grad: bool):
        """Final hidden states [n, T, H] of a right-padded batch."""
        T = max(len(x) for x in ids_list)
        ids = torch.full((len(ids_list), T), 151643, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, x in enumerate(ids_list):
            ids[b, :len(x)] = torch.tensor(x)
            mask[b, :len(x)] = 1
        with torch.set_grad_enabled(grad), autocast:
            return body(input_ids=ids.to(cfg.device), attention_mask=mask.to(cfg.device),
                        use_cache=False).last_hidden_state, mask  # a KV cache would grow on recompute

    # Frozen backbone: boundary states once. Unfrozen: the last token's final state, to hold in place.
    feats = ys = ws = None
    traj_state = []
    if cfg.unfreeze_layers == 0:
        fs, yy, ww = [], [], []
        for i in tqdm(range(0, len(examples), 16), desc="boundary states", file=sys.stderr):
            chunk = examples[i:i + 16]
            h, _ = states([e[0] for e in chunk], grad=False)
            for b, (_, pos, y, w) in enumerate(chunk):
                fs.append(h[b, pos].float())
                yy += y
                ww += w
        feats, ys, ws = torch.cat(fs), torch.tensor(yy), torch.tensor(ww)
    else:
        with torch.no_grad():
            for e in tqdm(examples, desc="trajectory states", file=sys.stderr):
                h, _ = states([e[0]], grad=False)
                traj_state.append(h[0, -1].float())

    history, optimizer_steps, t_train = [], 0, time.time()
    if cfg.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    rng = np.random.default_rng(cfg.seed)
    bar = tqdm(range(start_epoch, cfg.epochs), desc="distilling", file=sys.stderr)
    for epoch in bar:
        total, count = 0.0, 0
        if feats is not None:
            order = torch.as_tensor(rng.permutation(len(feats)))
            for i in range(0, len(order), cfg.batch_size):
                idx = order[i:i + cfg.batch_size]
                logits = step_head(feats[idx].to(cfg.device)).squeeze(-1)
                loss = (bce(logits, ys[idx].to(cfg.device), reduction="none") * ws[idx].to(cfg.device)).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                optimizer_steps += 1
                total += loss.item() * len(idx)
                count += len(idx)
        else:
            order = rng.permutation(len(examples))
            bs = max(1, cfg.batch_size // 16)
            for i in range(0, len(order), bs):
                chunk = [examples[j] for j in order[i:i + bs]]
                h, mask = states([e[0] for e in chunk], grad=True)
                logits = torch.cat([step_head(h[b, e[1]].float()).squeeze(-1) for b, e in enumerate(chunk)])
                y = torch.tensor([v for e in chunk for v in e[2]], device=cfg.device)
                loss = bce(logits, y)
                last = mask.sum(-1) - 1
                now = h[torch.arange(len(chunk)), last].float()
                keep = torch.stack([traj_state[j] for j in order[i:i + bs]])
                loss = loss + cfg.trajectory_weight * ((now - keep) ** 2).mean() / (keep ** 2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                optimizer_steps += 1
                total += loss.item() * len(chunk)
                count += len(chunk)
        history.append(total / max(count, 1))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in step_head.state_dict().items()},
                  str(ckpt_dir / STEP_HEAD_FILE))
        if cfg.unfreeze_layers:
            state = body.state_dict()
            save_file({k: state[k].detach().cpu().contiguous() for k in tuned_keys}, str(ckpt_dir / "body.safetensors"))
        torch.save({"epoch": epoch, "optimizer": opt.state_dict()}, str(ckpt_dir / "state.pt"))

    t_train_end = time.time()
    # The output: the student's files, the (possibly) updated body, and the new step head.
    for f in src.path.iterdir():
        if f.is_file() and f.name != STEP_HEAD_FILE and not (cfg.unfreeze_layers and f.suffix == ".safetensors"
                                                             and f.name != "reward_head.safetensors"):
            shutil.copyfile(f, out / f.name)
    if cfg.unfreeze_layers:
        from transformers import Qwen2ForCausalLM

        # Only the trained tensors replace the source's: the frozen ones stay bit-exact in fp32.
        lm = Qwen2ForCausalLM.from_pretrained(str(src.path), dtype=torch.float32)
        state = body.state_dict()
        lm.model.load_state_dict({k: state[k].detach().float().cpu() for k in tuned_keys}, strict=False)
        lm.save_pretrained(out, safe_serialization=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in step_head.state_dict().items()}, str(out / STEP_HEAD_FILE))
    info = {"distilled_from": {"teacher": teacher, "layout": reference_layout(teacher, teacher_layout)},
            "student": src.id, "data": data, "traces": len(traces), "examples": len(examples),
            "steps": int(sum(len(e[1]) for e in examples)), "config": asdict(cfg), "loss_history": history,
            "seconds": round(time.time() - t0, 1), "train_seconds": round(t_train_end - t_train, 1),
            "optimizer_steps": optimizer_steps,
            "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cfg.device == "cuda" else None}
    (out / "distill.json").write_text(json.dumps(info, indent=2))
    return info


def reference_layout(teacher: str, layout: str | None) -> str:
    from .checkpoint.source import resolve_source

    return layout or resolve_source(teacher).layout
