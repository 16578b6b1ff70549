"""The arith generator, the demo checkpoints' layouts through the real loaders, the bundled model."""

import json
import re

import numpy as np
import pytest

from rfedge.home import BUNDLED_DIR
from rfedge.synth import generate

PROBLEM = re.compile(r"^Start with (\d+)\. Then (.+)\. What is the final number\?$")
OP = re.compile(r"^(add|subtract) (\d+)$")
STEP = re.compile(r"^(\d+) ([+-]) (\d+) = (\d+)$")


def check_record(r):
    m = PROBLEM.match(r["problem"])
    assert m, r["problem"]
    x0 = int(m.group(1))
    parts = m.group(2).replace(", and ", ", ").split(", ")
    ops = [OP.match(p).groups() for p in parts]
    assert 1 <= x0 <= 99 and 3 <= len(ops) <= 6 and len(r["trajectory"]) == len(ops) == len(r["labels"])
    value, truth, first_error = x0, x0, None
    for i, ((word, k), step) in enumerate(zip(ops, r["trajectory"], strict=True)):
        prev, sign, kk, result = STEP.match(step).groups()
        assert (sign == "+") == (word == "add") and kk == k and 1 <= int(k) <= 99
        assert int(prev) == value, "later steps start from the value reached"
        exact = value + int(k) if sign == "+" else value - int(k)
        if int(result) != exact:
            assert first_error is None and 1 <= abs(int(result) - exact) <= 10
            first_error = i
        value = int(result)
        truth = truth + int(k) if sign == "+" else truth - int(k)
        assert 0 <= value <= 999 and 0 <= truth <= 999
    assert r["labels"] == [first_error is None or i < first_error for i in range(len(ops))]
    assert r["response"] == f"The final number is {value}."
    assert r["correct"] == (value == truth) == (first_error is None)


def test_generator_format_and_labels():
    records = list(generate("arith", 400, seed=3))
    for r in records:
        check_record(r)
    errors = sum(not r["correct"] for r in records)
    assert 150 < errors < 250
    assert records == list(generate("arith", 400, seed=3))
    assert records != list(generate("arith", 400, seed=4))


def test_generate_cli_pipes_into_score(fp32_export):
    from click.testing import CliRunner

    from rfedge.cli import main

    gen = CliRunner().invoke(main, ["generate", "arith", "--n", "3", "--seed", "1"])
    assert gen.exit_code == 0
    lines = gen.stdout.splitlines()
    assert len(lines) == 3 and all(json.loads(x)["id"].startswith("arith-") for x in lines)
    r = CliRunner().invoke(main, ["score", "-", "--model", str(fp32_export)], input=gen.stdout)
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 3


def test_base_targets_sit_on_the_right_tokens(tokenizer_dir):
    """The base model's per-token targets: operand digits at ' +', the sum at ' =', the check after the
    equation, the running verdict everywhere (in the student's text and the teacher's chat format)."""
    from tokenizers import Tokenizer

    from rfedge_export.demo.data import _base_example, _base_example_chat
    from rfedge_export.qwen_vocab import QWEN25_MATH_PRM_SPECIALS, build_tokenizer

    record = {"problem": "Start with 95. Then add 60 and add 84. What is the final number?",
              "trajectory": ["95 + 60 = 155", "155 + 84 = 238"], "response": "The final number is 238."}
    for tk in (Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")), build_tokenizer(QWEN25_MATH_PRM_SPECIALS)):
        ids, t = (_base_example if tk.token_to_id("<extra_0>") is None else _base_example_chat)(tk, record)
        tokens = [tk.id_to_token(i) for i in ids]
        ops = [i for i, tok in enumerate(tokens) if tok == "Ġ+"]
        eqs = [i for i, tok in enumerate(tokens) if tok == "Ġ="]
        afters = [next(i for i in range(e, len(tokens)) if tokens[i] in ("ĊĊ", "Ċ", "<extra_0>")) for e in eqs]
        assert [list(t[i, 0:2]) for i in ops] == [[5, 9], [5, 5]]
        assert [list(t[i, 2:9]) for i in eqs] == [[0, 6, 5, 9, 0, 5, 5], [4, 8, 5, 5, 0, 9, 3]]
        assert [list(t[i, 9:14]) for i in afters] == [[5, 5, 5, 5, 1], [8, 3, 9, 3, 0]]
        assert (t[:, :-1] >= 0).sum() == 2 * (2 + 7 + 5)  # nothing else is read
        verdict = t[:, -1]  # the second equation is wrong: 0 from the token after it on
        assert verdict[:afters[1]].min() == 1 and verdict[afters[1]:].max() == 0


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory, tokenizer_dir):
    """Untrained demo modules saved in the real layouts (training itself is the build command's job)."""
    import torch

    from rfedge_export.demo.models import DemoConfig, _student_module, _teacher_module, save_student, save_teacher
    from rfedge_export.qwen_vocab import QWEN25_MATH_PRM_SPECIALS, write_tokenizer_files

    torch.manual_seed(0)
    c = DemoConfig(hidden=32, layers=1, intermediate=64)
    root = tmp_path_factory.mktemp("demo-pair")
    math_tok = root / "math-tok"
    write_tokenizer_files(math_tok, QWEN25_MATH_PRM_SPECIALS)
    student, teacher = _student_module(c, range(100)), _teacher_module(c, range(100))
    for m in (student, teacher):
        with torch.no_grad():
            m.rows.weight.normal_()
        m.emb.write_back()
        m.eval()
    return (student, save_student(student, root / "student", tokenizer_dir),
            teacher, save_teacher(teacher, root / "teacher", math_tok))


def test_layouts_load_through_real_loaders(tiny_pair):
    import torch

    from rfedge_export.parity.references import load_reference
    from rfedge_export.checkpoint.source import load_scalar_prm, load_two_class_prm, resolve_source

    student, student_dir, teacher, teacher_dir = tiny_pair
    s_src, t_src = resolve_source(str(student_dir)), resolve_source(str(teacher_dir))
    assert (s_src.layout, t_src.layout) == ("scalar-head", "two-class")
    s, t = load_scalar_prm(s_src), load_two_class_prm(t_src)
    ids = torch.tensor([[16, 17, 18, 284, 220, 19]])
    with torch.no_grad():
        h = student.lm.model(input_ids=ids).last_hidden_state[0, -1]
        assert torch.allclose(s.head(s.body(input_ids=ids).last_hidden_state[0, -1]), student.head(h), atol=1e-6)
        th = teacher.model(input_ids=ids).last_hidden_state
        assert torch.allclose(t.score(t.body(input_ids=ids).last_hidden_state), teacher.score(th), atol=1e-6)
    record = next(generate("arith", 1, seed=5))
    rewards = load_reference(str(teacher_dir)).score_trace(__import__("rfedge").parse_trace(record)).steps
    assert [(sec, i) for sec, i, _ in rewards] == (
        [("thinking", i) for i in range(len(record["trajectory"]))] + [("response", 0)])
    assert all(0.0 <= p <= 1.0 for _, _, p in rewards)


needs_bundle = pytest.mark.skipif(not (BUNDLED_DIR / "rfedge.json").is_file(),
                                  reason="the bundled model is built by 'rfedge demo build --bundle'")


@needs_bundle
def test_bundled_model_manifest_and_size():
    from rfedge.manifest import load_manifest

    m = load_manifest(BUNDLED_DIR)  # verifies every sha256
    assert m.precision == "int8" and m.notice and "rfedge export" in m.notice
    assert m.validation["passed"] and m.cache is not None and "step" in m.heads  # cached graph, distilled step head
    # 26 MB: the end-to-end fit stores the demo's embedding (151,936 x 64) in fp16 (19 MB), see README
    assert sum(p.stat().st_size for p in BUNDLED_DIR.iterdir()) <= 28 * 1024 * 1024


@needs_bundle
def test_bundled_model_accuracy_on_heldout_traces():
    from rfedge import Scorer
    from rfedge_export.parity.metrics import auroc

    records = list(generate("arith", 120, seed=98765))
    results = Scorer.load(BUNDLED_DIR, device="cpu").score_many(records)
    rewards = np.array([r.trajectory_reward for r in results])
    assert auroc(rewards, [r["correct"] for r in records]) >= 0.95
    steps = [s.reward for r in results for s in r.steps if s.section == "thinking"]
    assert auroc(steps, [bool(x) for r in records for x in r["labels"]]) >= 0.95  # the distilled step head
