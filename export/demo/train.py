"""The demo PRM pair on the synthetic ``arith`` task: training, on-disk layouts, evaluation.

Teacher: ReasonFlux-PRM-7B / Qwen2.5-Math-PRM layout (Qwen2 body + score MLP, ``<extra_0>``
separators in the Qwen2.5 chat format), cross-entropy on step labels. Student: ReasonFlux-PRM-1.5B
layout (Qwen2ForCausalLM + ``reward_head.pt``), BCE on the trace label at the last token. Real
Qwen2.5 tokenization; deterministic for a seed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rfedge.synth import generate
from rfedge.traces import parse_trace

from ..parity.metrics import auroc
from ..parity.chat import SEPARATOR_ID, render_prm_chat, step_texts
from ..qwen_vocab import QWEN25_MATH_PRM_SPECIALS, QWEN25_SPECIALS, build_tokenizer, write_tokenizer_files

DEMO_NOTICE = ("the bundled demo model only knows the synthetic arithmetic task (rfedge generate arith); "
               "for real traces export ReasonFlux-PRM-1.5B: rfedge export Gen-Verse/ReasonFlux-PRM-1.5B --int8")


@dataclass(frozen=True)
class DemoConfig:
    hidden: int = 64
    layers: int = 6
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 256
    train_traces: int = 20000
    pretrain_steps: int = 2400
    steps: int = 400
    batch: int = 32
    lr: float = 2e-3
    finetune_lr: float = 1e-4
    curriculum: float = 0.5
    seed: int = 0
    data_seed: int = 1


def training_traces(c: DemoConfig) -> list[dict]:
    """The task's traces plus a curriculum share of 1..2-op traces (denser signal for the checks)."""
    import random

    from rfedge.synth import arith_trace

    data = list(generate("arith", c.train_traces, c.data_seed))
    rng = random.Random(c.data_seed + 1000)
    short = int(c.train_traces * c.curriculum)
    data += [arith_trace(rng, c.train_traces + i, rng.random() < 0.5, min_ops=1) for i in range(short)]
    return data


def _qwen2_config(c: DemoConfig, max_len: int = 1024):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=151936, hidden_size=c.hidden, intermediate_size=c.intermediate,
                       num_hidden_layers=c.layers, num_attention_heads=c.heads,
                       num_key_value_heads=c.kv_heads, max_position_embeddings=max_len,
                       rope_theta=10000.0, tie_word_embeddings=True, eos_token_id=151643,
                       bos_token_id=151643, attn_implementation="sdpa")


# Per-token targets of the base model: (name, token it is read at). The tokens of an equation
# "{prev} {sign} {k} = {new}": "op" (" +" / " -"), "eq" (" ="), "after" (the token after the
# equation: "\n\n" in the trace text, <extra_0> in the chat format); "every": all tokens. Each target
# is a 10-way class (digits; yes/no ones use classes 0/1). Supervising each hop of the check
# (gather the operands' last digits, add them, compare with the written result, AND over the
# equations so far) is what lets a model this small learn it in minutes of CPU.
BASE_TARGETS = (
    ("prev units", "op"), ("prev tens", "op"),
    ("k units", "eq"), ("k tens", "eq"), ("prev units", "eq"), ("prev tens", "eq"), ("minus", "eq"),
    ("true units", "eq"), ("true tens", "eq"),
    ("written units", "after"), ("written tens", "after"), ("true units", "after"), ("true tens", "after"),
    ("written right", "after"),
    ("all right so far", "every"),
)
VERDICT_WEIGHT = 2.0  # the last hop (AND over the equations) is the slowest to learn


def _equation(step: str) -> tuple[int, int, str, int, int]:
    """(prev, k, sign, written result, true result) of a thinking step."""
    left, new = step.split(" = ")
    prev, sign, k = left.split(" ")
    a, b = int(prev), int(k)
    return a, b, sign, int(new), a + b if sign == "+" else a - b


def _base_targets(text: str, offsets, trajectory: list[str], search_from: int):
    """[tokens, len(BASE_TARGETS)] int64 targets, -100 where a target is not read."""
    import numpy as np

    starts = np.array([o[0] for o in offsets], dtype=np.int64)
    token = lambda char: int(np.searchsorted(starts, char, side="right") - 1)
    units, tens = (lambda x: x % 10), (lambda x: (x // 10) % 10)
    out = np.full((len(starts), len(BASE_TARGETS)), -100, dtype=np.int64)
    after_tokens, pos = [], search_from
    for step in trajectory:
        start = text.index(step, pos)
        pos = start + len(step)
        a, b, sign, w, true = _equation(step)
        op, eq, after = token(start + len(str(a)) + 1), token(start + step.index(" = ") + 1), token(pos)
        out[op, 0:2] = units(a), tens(a)
        out[eq, 2:9] = units(b), tens(b), units(a), tens(a), int(sign == "-"), units(true), tens(true)
        out[after, 9:14] = units(w), tens(w), units(true), tens(true), int(w == true)
        after_tokens.append((after, int(w == true)))
    ok, k = 1, 0
    for t in range(len(starts)):
        while k < len(after_tokens) and after_tokens[k][0] <= t:
            ok &= after_tokens[k][1]
            k += 1
        out[t, -1] = ok
    return out


def _base_example(tk, record: dict):
    """Token ids of the trace text (the student's input) and the base targets."""
    trace = parse_trace(record)
    enc = tk.encode(trace.text, add_special_tokens=False)
    return enc.ids, _base_targets(trace.text, enc.offsets, record["trajectory"], len(trace.problem))


def _base_example_chat(tk, record: dict):
    """The same targets in the teacher's chat format (the token after an equation is <extra_0>)."""
    trace = parse_trace(record)
    text = render_prm_chat(trace.problem, [t for _, _, t in step_texts(trace)])
    enc = tk.encode(text, add_special_tokens=False)
    return enc.ids, _base_targets(text, enc.offsets, record["trajectory"], text.index("<|im_start|>assistant"))


def _student_example(tk, record: dict):
    trace = parse_trace(record)
    return tk.encode(trace.text, add_special_tokens=False).ids, float(record["correct"])


def _teacher_example(tk, record: dict):
    trace = parse_trace(record)
    steps = [t for _, _, t in step_texts(trace)]
    ids = tk.encode(render_prm_chat(trace.problem, steps), add_special_tokens=False).ids
    labels = [float(x) for x in record["labels"]] + [float(record["correct"])]
    return ids, labels


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


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
    for step in bar:
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
            T = max(len(ids) for ids, _ in chunk)
            ids = torch.full((len(chunk), T), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), T), dtype=torch.long)
            for b, (x, _) in enumerate(chunk):
                ids[b, :len(x)] = torch.tensor(x)
                mask[b, :len(x)] = 1
            yield ids, mask, [y for _, y in chunk]


class _CompactEmbedding:
    """Train only the embedding rows of token ids the data uses (a few hundred of 151,936).

    The full table keeps its initial values elsewhere; :meth:`write_back` stores the trained rows.
    A dense gradient and Adam state over the whole table would cost most of each step on a CPU.
    """

    def __init__(self, table, used_ids):
        import torch

        self.table = table
        self.used = torch.tensor(sorted(set(used_ids)), dtype=torch.long)
        self.remap = torch.zeros(table.weight.shape[0], dtype=torch.long)
        self.remap[self.used] = torch.arange(len(self.used))
        self.rows = torch.nn.Embedding(len(self.used), table.weight.shape[1])
        with torch.no_grad():
            self.rows.weight.copy_(table.weight[self.used])
        table.weight.requires_grad_(False)

    def __call__(self, ids):
        return self.rows(self.remap[ids])

    def write_back(self):
        import torch

        with torch.no_grad():
            self.table.weight[self.used] = self.rows.weight


def _base_module(c: DemoConfig, used_ids):
    """The demo's 'base model': a tiny Qwen2 trained on the per-token :data:`BASE_TARGETS`, a stand-in
    for the arithmetic a real pretrained Qwen2.5 brings (real PRMs are fine-tuned from one)."""
    import torch
    import torch.nn as nn
    from transformers import Qwen2ForCausalLM

    class Base(nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = Qwen2ForCausalLM(_qwen2_config(c))
            self.emb = _CompactEmbedding(self.lm.model.embed_tokens, used_ids)
            self.rows = self.emb.rows
            self.aux = nn.Linear(c.hidden, 10 * len(BASE_TARGETS))

        def loss(self, ids, mask, ys):
            h = self.lm.model(inputs_embeds=self.emb(ids), attention_mask=mask).last_hidden_state
            z = self.aux(h).reshape(*ids.shape, len(BASE_TARGETS), 10)
            target = torch.full((*ids.shape, len(BASE_TARGETS)), -100, dtype=torch.long)
            for i, y in enumerate(ys):
                target[i, :len(y)] = torch.from_numpy(y)
            per_target = nn.functional.cross_entropy(z.reshape(-1, 10), target.reshape(-1), ignore_index=-100,
                                                     reduction="none").reshape(target.shape)
            valid = (target >= 0).float()
            means = (per_target * valid).sum((0, 1)) / valid.sum((0, 1)).clamp(min=1)
            weights = torch.ones(len(BASE_TARGETS))
            weights[-1] = VERDICT_WEIGHT
            return (means * weights).sum()

    return Base()


def _student_module(c: DemoConfig, used_ids):
    import torch
    import torch.nn as nn
    from transformers import Qwen2ForCausalLM

    class Student(nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = Qwen2ForCausalLM(_qwen2_config(c))
            self.head = nn.Linear(c.hidden, 1)
            self.emb = _CompactEmbedding(self.lm.model.embed_tokens, used_ids)
            self.rows = self.emb.rows

        def head_parameters(self):
            return self.head.parameters()

        def loss(self, ids, mask, ys):
            h = self.lm.model(inputs_embeds=self.emb(ids), attention_mask=mask).last_hidden_state
            last = mask.sum(-1) - 1
            logits = self.head(h[torch.arange(len(ids)), last]).squeeze(-1)
            return nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor(ys))

    return Student()


def _teacher_module(c: DemoConfig, used_ids):
    import torch
    import torch.nn as nn
    from transformers import Qwen2Model

    class Teacher(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Qwen2Model(_qwen2_config(c))
            self.score = nn.Sequential(nn.Linear(c.hidden, c.hidden), nn.ReLU(), nn.Linear(c.hidden, 2))
            self.emb = _CompactEmbedding(self.model.embed_tokens, used_ids)
            self.rows = self.emb.rows

        def head_parameters(self):
            return self.score.parameters()

        def loss(self, ids, mask, ys):
            h = self.model(inputs_embeds=self.emb(ids), attention_mask=mask).last_hidden_state
            sel = (ids == SEPARATOR_ID) & (mask > 0)
            logits = self.score(h[sel])
            target = torch.tensor([y for row in ys for y in row]).long()
            return nn.functional.cross_entropy(logits, target)

    return Teacher()


def save_student(student, out: Path, tokenizer_dir: Path) -> Path:
    import shutil

    import torch

    out.mkdir(parents=True, exist_ok=True)
    student.lm.save_pretrained(out, safe_serialization=True)
    torch.save({k: v.detach().clone() for k, v in student.head.state_dict().items()}, out / "reward_head.pt")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_dir / f, out / f)
    return out


def save_teacher(teacher, out: Path, tokenizer_dir: Path) -> Path:
    import shutil

    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    cfg = teacher.model.config.to_dict()
    cfg["architectures"] = ["Qwen2ForProcessRewardModel"]
    cfg.pop("attn_implementation", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    state = {f"model.{k}": v.detach().contiguous() for k, v in teacher.model.state_dict().items()}
    state.update({f"score.{k}": v.detach().contiguous() for k, v in teacher.score.state_dict().items()})
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_dir / f, out / f)
    return out


def train_demo(out: Path, c: DemoConfig = DemoConfig(), which=("teacher", "student"), log=_log) -> dict:
    """Train the demo pair into ``out/teacher`` and ``out/student``; returns timings and losses."""
    import torch

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
    used = sorted({i for ex in examples.values() for ids, _ in ex for i in ids} | {151643})
    t0 = time.time()
    torch.manual_seed(c.seed)
    base = _base_module(c, used)
    base.train()
    base_examples = [_base_example(tks["student"], r) for r in data] + [
        _base_example_chat(tks["teacher"], r) for r in data]
    loss = _train(base, _batches(base_examples, dataclasses.replace(c, steps=c.pretrain_steps), 151643, c.seed),
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
        loss = _train(module, _batches(examples[name], ft, 151643, c.seed), ft, name, log, head_lr=c.lr)
        module.eval()
        module.emb.write_back()
        (save_student if name == "student" else save_teacher)(module, out / name, tok_dirs[name])
        report[name] = {"final_loss": loss, "seconds": round(time.time() - t0, 1)}
        log(f"{name}: loss {loss:.4f} in {report[name]['seconds']} s -> {out / name}")
    (out / "train_report.json").write_text(json.dumps(report, indent=2))
    return report


# Held-out evaluation: a fresh seed never used for training.
HELDOUT_SEED = 424242
# The export calibrates (SmoothQuant scales, weight formats) and validates on the task's own traces,
# from a seed used neither for training nor for the held-out evaluation.
CALIBRATION_SEED, CALIBRATION_TRACES = 31337, 64


def write_calibration(path: Path) -> Path:
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in generate("arith", CALIBRATION_TRACES, CALIBRATION_SEED)))
    return path
BOUNDS = {"teacher_step_auroc": (">=", 0.95), "student_int8_trajectory_auroc": (">=", 0.95),
          "int8_vs_fp32_max_abs_trajectory": ("<=", 0.03), "int8_vs_fp32_spearman": (">=", 0.99)}


def evaluate_demo(teacher_dir: Path, fp32_dir: Path, int8_dir: Path, n: int = 400,
                  seed: int = HELDOUT_SEED) -> dict:
    """The quality numbers of the demo pair on ``n`` held-out traces; ``passed`` per bound."""
    import numpy as np
    from scipy.stats import spearmanr
    from rfedge.scorer import Scorer

    from ..parity.references import load_reference

    records = list(generate("arith", n, seed))
    traces = [parse_trace(r) for r in records]
    teacher = load_reference(str(teacher_dir), "two-class")
    t_scores, t_labels = [], []
    for r, t in zip(records, traces):
        steps = [p for sec, _, p in teacher.score_trace(t).steps if sec == "thinking"]
        t_scores += steps
        t_labels += [bool(x) for x in r["labels"]]
    fp32 = Scorer.load(fp32_dir, device="cpu").score_many(traces)
    int8 = Scorer.load(int8_dir, device="cpu").score_many(traces)
    correct = [bool(r["correct"]) for r in records]
    a = np.array([x.trajectory_reward for x in fp32])
    b = np.array([x.trajectory_reward for x in int8])
    metrics = {
        "heldout_traces": n, "heldout_seed": seed,
        "teacher_step_auroc": auroc(t_scores, t_labels),
        "student_fp32_trajectory_auroc": auroc(a, correct),
        "student_int8_trajectory_auroc": auroc(b, correct),
        "int8_vs_fp32_max_abs_trajectory": float(np.abs(a - b).max()),
        "int8_vs_fp32_spearman": float(spearmanr(a, b).statistic),
    }
    metrics["passed"] = {k: (metrics[k] >= v if op == ">=" else metrics[k] <= v) for k, (op, v) in BOUNDS.items()}
    return metrics


def quality_table(m: dict) -> str:
    rows = ["| metric | value | bound | ok |", "|---|---|---|---|"]
    for k, v in m.items():
        if isinstance(v, float):
            bound = BOUNDS.get(k)
            ok = "" if bound is None else ("yes" if m["passed"][k] else "NO")
            rows.append(f"| {k} | {v:.4f} | {'' if bound is None else ' '.join(map(str, bound))} | {ok} |")
    return "\n".join(rows)
