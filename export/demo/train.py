"""Training the demo pair: a tiny Qwen2 base on per-hop targets, then teacher and student heads.

Real Qwen2.5 tokenization; deterministic for a seed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

from rfedge.batching import pad_right
from rfedge.constants import PAD_TOKEN_ID

from ..progress import log as _log
from ..qwen_vocab import QWEN25_MATH_PRM_SPECIALS, QWEN25_SPECIALS, build_tokenizer, write_tokenizer_files
from .data import _base_example, _base_example_chat, _student_example, _teacher_example, training_traces
from .models import (DemoConfig, _base_module, _CompactEmbedding, _student_module, _teacher_module, save_student,
                     save_teacher)


def _train(model_fn, batches, c: DemoConfig, name: str, log=_log, head_lr: float | None = None):
    """AdamW with warmup and cosine decay. With ``head_lr`` the head trains at that rate and the
    pretrained body at ``c.lr`` (a random head at a high rate would wreck the body's features)."""
    import torch

    params = [p for p in model_fn.parameters() if p.requires_grad]
    if head_lr is None:
        groups = [{"params": params, "lr": c.lr}]
    else:
        head = {id(p) for p in model_fn.head_parameters()}
        groups = [{"params": [p for p in params if id(p) not in head], "lr": c.lr},
                  {"params": [p for p in params if id(p) in head], "lr": head_lr}]
    opt = torch.optim.AdamW(groups, weight_decay=0.0, betas=(0.9, 0.98))
    warm = max(1, c.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / c.steps))))
    from tqdm import tqdm

    bar = tqdm(range(c.steps), desc=f"training {name}", file=sys.stderr, mininterval=10)
    ema = None
    for _ in bar:
        loss = model_fn.loss(*next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.set_postfix(loss=f"{ema:.4f}", refresh=False)
    return ema


def _batches(examples, c: DemoConfig, pad: int, seed: int):
    import random

    import torch

    rng = random.Random(seed)
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        for i in range(0, len(order) - c.batch + 1, c.batch):
            chunk = [examples[j] for j in order[i:i + c.batch]]
            ids, mask = pad_right([x for x, _ in chunk], pad)
            yield torch.from_numpy(ids), torch.from_numpy(mask), [y for _, y in chunk]


def train_demo(out: Path, c: DemoConfig | None = None, which=("teacher", "student"), log=_log) -> dict:
    """Train the demo pair into ``out/teacher`` and ``out/student``; returns timings and losses."""
    import torch

    c = c or DemoConfig()

    torch.manual_seed(c.seed)
    out = Path(out)
    tok_dirs = {"student": out / "_tokenizer-qwen2.5", "teacher": out / "_tokenizer-qwen2.5-math-prm"}
    tks = {"student": build_tokenizer(QWEN25_SPECIALS), "teacher": build_tokenizer(QWEN25_MATH_PRM_SPECIALS)}
    for k in tok_dirs:
        write_tokenizer_files(tok_dirs[k], tokenizer=tks[k])
    data = training_traces(c)
    report = {"config": asdict(c)}
    examples = {"student": [_student_example(tks["student"], r) for r in data],
                "teacher": [_teacher_example(tks["teacher"], r) for r in data]}
    used = sorted({i for ex in examples.values() for ids, _ in ex for i in ids} | {PAD_TOKEN_ID})
    t0 = time.time()
    torch.manual_seed(c.seed)
    base = _base_module(c, used)
    base.train()
    base_examples = [_base_example(tks["student"], r) for r in data] + [
        _base_example_chat(tks["teacher"], r) for r in data]
    loss = _train(base, _batches(base_examples, dataclasses.replace(c, steps=c.pretrain_steps), PAD_TOKEN_ID, c.seed),
                  dataclasses.replace(c, steps=c.pretrain_steps), "base", log)
    base.emb.write_back()
    body_state = base.lm.model.state_dict()
    report["base"] = {"final_loss": loss, "seconds": round(time.time() - t0, 1)}
    log(f"base: loss {loss:.4f} in {report['base']['seconds']} s")
    for name in which:
        t0 = time.time()
        torch.manual_seed(c.seed)
        module = (_student_module if name == "student" else _teacher_module)(c, used)
        body = module.lm.model if name == "student" else module.model
        body.load_state_dict(body_state)
        module.emb = _CompactEmbedding(body.embed_tokens, used)
        module.rows = module.emb.rows
        module.train()
        ft = dataclasses.replace(c, lr=c.finetune_lr)
        loss = _train(module, _batches(examples[name], ft, PAD_TOKEN_ID, c.seed), ft, name, log, head_lr=c.lr)
        module.eval()
        module.emb.write_back()
        (save_student if name == "student" else save_teacher)(module, out / name, tok_dirs[name])
        report[name] = {"final_loss": loss, "seconds": round(time.time() - t0, 1)}
        log(f"{name}: loss {loss:.4f} in {report[name]['seconds']} s -> {out / name}")
    (out / "train_report.json").write_text(json.dumps(report, indent=2))
    return report
