"""Distillation on tiny models: the loss falls, the step head lands in the graph and the manifest."""

import json

import pytest

from rfedge import Scorer


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    import torch

    from rfedge_export.demo.models import DemoConfig, _teacher_module, save_teacher
    from rfedge_export.qwen_vocab import QWEN25_MATH_PRM_SPECIALS, write_tokenizer_files

    root = tmp_path_factory.mktemp("distill-teacher")
    write_tokenizer_files(root / "tok", QWEN25_MATH_PRM_SPECIALS)
    torch.manual_seed(3)
    t = _teacher_module(DemoConfig(hidden=32, layers=1, intermediate=64), range(10))
    with torch.no_grad():
        t.score[2].weight.mul_(30)
    return save_teacher(t.eval(), root / "teacher", root / "tok")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from rfedge.synth import generate

    path = tmp_path_factory.mktemp("distill-data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in generate("arith", 24, seed=21)))
    return path


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, teacher_dir, scalar_ckpt, data):
    from rfedge_export.distill import DistillConfig, distill

    out = tmp_path_factory.mktemp("distilled") / "student"
    info = distill(str(data), str(teacher_dir), str(scalar_ckpt), out, DistillConfig(epochs=40, lr=3e-3),
                   log=lambda m: None)
    return out, info


def test_loss_falls_and_files_are_written(distilled):
    out, info = distilled
    assert info["loss_history"][-1] < 0.9 * info["loss_history"][0]
    assert (out / "step_head.safetensors").is_file() and (out / "reward_head.pt").is_file()
    meta = json.loads((out / "distill.json").read_text())
    assert meta["distilled_from"]["layout"] == "two-class" and meta["steps"] > 24


def test_export_puts_step_head_in_graph(distilled, tmp_path, data):
    from rfedge_export.export import export_model
    from rfedge_export.checkpoint.rewards import scalar_rewards
    from rfedge_export.checkpoint.source import load_scalar_prm, resolve_source

    out, _ = distilled
    export_model(str(out), tmp_path / "m", precision="fp32", log=lambda m: None, progress=None)
    scorer = Scorer.load(tmp_path / "m", device="cpu")
    assert scorer.manifest.heads == {"trajectory": "reward_head", "step": "step_head"}
    prm = load_scalar_prm(resolve_source(str(out)))
    assert prm.step_head is not None
    record = json.loads(data.read_text().splitlines()[0])
    result = scorer.score(record)
    enc = scorer.tokenizer.encode(__import__("rfedge").parse_trace(record))
    ref_steps, ref_traj = scalar_rewards(prm, enc.ids, enc.step_tokens)
    assert [s.reward for s in result.steps] == pytest.approx(ref_steps.tolist(), abs=1e-4)
    assert result.trajectory_reward == pytest.approx(ref_traj, abs=1e-4)


def test_frozen_backbone_keeps_trajectory_reward(distilled, scalar_ckpt, fp32_export, tmp_path, data):
    from rfedge_export.export import export_model

    out, _ = distilled
    export_model(str(out), tmp_path / "m", precision="fp32", log=lambda m: None, progress=None)
    records = [json.loads(x) for x in data.read_text().splitlines()[:5]]
    before = Scorer.load(fp32_export, device="cpu").score_many(records)
    after = Scorer.load(tmp_path / "m", device="cpu").score_many(records)
    assert [a.trajectory_reward for a in after] == pytest.approx([b.trajectory_reward for b in before], abs=1e-5)


def test_unfreeze_and_resume(teacher_dir, scalar_ckpt, data, tmp_path):
    from rfedge.errors import UsageError
    from rfedge_export.distill import DistillConfig, distill

    out = tmp_path / "u"
    cfg = DistillConfig(epochs=1, unfreeze_layers=1, batch_size=32)
    first = distill(str(data), str(teacher_dir), str(scalar_ckpt), out, cfg, log=lambda m: None)
    assert len(first["loss_history"]) == 1 and (out / "model.safetensors").is_file()
    with pytest.raises(UsageError):
        distill(str(data), str(teacher_dir), str(scalar_ckpt), out, cfg, log=lambda m: None)
    more = distill(str(data), str(teacher_dir), str(scalar_ckpt), out, DistillConfig(epochs=2, unfreeze_layers=1,
                   batch_size=32), resume=True, log=lambda m: None)
    assert len(more["loss_history"]) == 1  # only epoch 2 ran


def _last_states(path, records):
    import torch
    from tokenizers import Tokenizer

    from rfedge import parse_trace
    from rfedge_export.checkpoint.source import load_scalar_prm, resolve_source

    prm = load_scalar_prm(resolve_source(str(path)))
    tk = Tokenizer.from_file(str(path / "tokenizer.json"))
    with torch.no_grad():
        return torch.stack([prm.body(input_ids=torch.tensor([tk.encode(parse_trace(r).text,
                                                                       add_special_tokens=False).ids])
                                     ).last_hidden_state[0, -1] for r in records])


def test_unfreezing_holds_the_trajectory_state_and_leaves_frozen_layers_exact(teacher_dir, scalar_ckpt, data,
                                                                             tmp_path):
    from safetensors.torch import load_file

    from rfedge_export.distill import DistillConfig, distill

    drift = {}
    for weight in (0.0, 1.0):
        out = tmp_path / f"w{weight}"
        distill(str(data), str(teacher_dir), str(scalar_ckpt), out,
                DistillConfig(epochs=6, lr=3e-3, unfreeze_layers=1, batch_size=32, trajectory_weight=weight),
                log=lambda m: None)
        records = [json.loads(x) for x in data.read_text().splitlines()]
        before, after = _last_states(scalar_ckpt, records), _last_states(out, records)
        drift[weight] = float(((after - before) ** 2).mean() / (before ** 2).mean())
        src, new = load_file(str(scalar_ckpt / "model.safetensors")), load_file(str(out / "model.safetensors"))
        top = max(int(k.split(".")[2]) for k in src if k.startswith("model.layers."))
        for k, v in src.items():
            if k.startswith((f"model.layers.{top}.", "model.norm.")):
                continue
            assert (new[k] == v).all(), k
        assert not (new[f"model.layers.{top}.mlp.down_proj.weight"] == src[f"model.layers.{top}.mlp.down_proj.weight"]).all()
    assert drift[1.0] < 0.5 * drift[0.0], drift


def _saved_bytes(body, ids):
    import torch

    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                  lambda t: t):
        h = body(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).last_hidden_state
    return sum(saved), h


def _top_layer_trained(layers):
    import torch
    from transformers import Qwen2Config, Qwen2Model

    torch.manual_seed(0)
    body = Qwen2Model(Qwen2Config(vocab_size=500, hidden_size=64, intermediate_size=256, num_hidden_layers=layers,
                                  num_attention_heads=4, num_key_value_heads=2)).eval()
    for p in body.parameters():
        p.requires_grad_(False)
    for p in body.layers[-1].parameters():
        p.requires_grad_(True)
    return body


def test_training_the_top_layer_keeps_no_activations_of_frozen_layers():
    import torch

    from rfedge_export.distill import checkpoint_layers

    ids = torch.randint(0, 500, (2, 64))
    one, _ = _saved_bytes(_top_layer_trained(1), ids)
    body = _top_layer_trained(4)
    kept, _ = _saved_bytes(body, ids)
    assert kept == pytest.approx(one, rel=0.01)  # the three frozen layers below keep nothing
    checkpoint_layers([body.layers[-1]])
    checkpointed, h = _saved_bytes(body, ids)
    assert checkpointed < 0.1 * kept  # checkpointed: only the layer's input
    h.sum().backward()
    assert all(p.grad is not None for p in body.layers[-1].parameters())
