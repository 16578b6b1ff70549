"""The demo pair's torch modules (a tiny Qwen2 base, the student, the teacher) and their on-disk layouts.

Teacher: ReasonFlux-PRM-7B / Qwen2.5-Math-PRM layout (Qwen2 body + score MLP, ``<extra_0>``
separators in the Qwen2.5 chat format). Student: ReasonFlux-PRM-1.5B layout (Qwen2ForCausalLM +
``reward_head.pt``). Both are written exactly as the real checkpoints are laid out, so the real
loaders read them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rfedge.constants import PAD_TOKEN_ID, TOKENIZER_FILE

from ..parity.chat import SEPARATOR_ID
from .data import BASE_TARGETS, VERDICT_WEIGHT


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



def _qwen2_config(c: DemoConfig, max_len: int = 1024):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=151936, hidden_size=c.hidden, intermediate_size=c.intermediate,
                       num_hidden_layers=c.layers, num_attention_heads=c.heads,
                       num_key_value_heads=c.kv_heads, max_position_embeddings=max_len,
                       rope_theta=10000.0, tie_word_embeddings=True, eos_token_id=PAD_TOKEN_ID,
                       bos_token_id=PAD_TOKEN_ID, attn_implementation="sdpa")



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
    for f in (TOKENIZER_FILE, "tokenizer_config.json"):
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
    for f in (TOKENIZER_FILE, "tokenizer_config.json"):
        shutil.copyfile(tokenizer_dir / f, out / f)
    return out
