"""The shipped INT8 recipe on models with activation outliers, next to plain per-tensor quantization.

Outlier models: the tiny 1.5B-layout checkpoint (4 layers, h=128) with a few RMSNorm channels and
one up_proj row per layer scaled by alpha, as trained LLMs have them (rfedge_export.outliers).
"""

import pytest

from rfedge import Scorer
from rfedge.errors import ValidationError

from conftest import make_scalar_checkpoint


@pytest.fixture(scope="module")
def outlier_ckpt(tmp_path_factory, tokenizer_dir):
    import conftest

    made = {}

    def make(alpha, channels=(3, 17, 42)):
        key = (alpha, channels)
        if key not in made:
            from rfedge_export.outliers import inject_outliers

            old, conftest.HIDDEN = conftest.HIDDEN, 128
            try:
                path = make_scalar_checkpoint(tmp_path_factory.mktemp("outliers") / "ck", tokenizer_dir, seed=1,
                                              layers=4, head_scale=1.0)
            finally:
                conftest.HIDDEN = old
            if alpha:
                inject_outliers(path, alpha, channels)
            made[key] = path
        return made[key]
    return make


def _export(ckpt, out, recipe=None):
    from rfedge_export.pipeline import export_model

    return export_model(str(ckpt), out, precision="int8", recipe=recipe, log=lambda m: None, progress=None)


def test_plain_per_tensor_dynamic_quantization_fails_on_outliers(outlier_ckpt, tmp_path):
    with pytest.raises(ValidationError, match=r"export validation failed for int8 .*\n- step_rewards: max \|delta\|"):
        _export(outlier_ckpt(30), tmp_path / "plain", recipe="int8-dynamic")
    assert not (tmp_path / "plain").exists()


@pytest.mark.parametrize("alpha,channels", [(0, (3, 17, 42)), (10, (3, 17, 42)), (30, (3, 17, 42)),
                                            (30, (0, 64, 127))])
def test_shipped_recipe_keeps_the_bound_with_outliers(outlier_ckpt, tmp_path, alpha, channels):
    manifest = _export(outlier_ckpt(alpha, channels), tmp_path / "m")
    q, v = manifest["quantization"], manifest["validation"]
    assert q["recipe"] == "int8-smooth" and v["passed"]
    assert v["max_abs_step"] <= 0.05 and v["max_abs_trajectory"] <= 0.05
    assert q["smoothing"]["method"].startswith("smoothquant") and isinstance(q["kept_fp32"], list)
    assert q["matmuls"] + len(q["kept_fp32"]) == 4 * 7  # every layer linear is int8 or listed as fp32


def test_equalization_is_exact_in_fp32(outlier_ckpt, qwen_tokenizer):
    import numpy as np

    from rfedge_export.reference import scalar_rewards
    from rfedge_export.smoothing import smooth_and_select
    from rfedge_export.source import load_scalar_prm, resolve_source

    prm = load_scalar_prm(resolve_source(str(outlier_ckpt(30))))
    ids = np.array(qwen_tokenizer.encode("Start with 3. Then add 4.\n\n3 + 4 = 7\n\nThe final number is 7.").ids)
    steps = np.array([5, 12, len(ids) - 1])
    before = scalar_rewards(prm, ids, steps)
    summary, _ = smooth_and_select(prm.body, [ids], qmax=63, max_error=1.0)
    after = scalar_rewards(prm, ids, steps)
    assert sum(v for k, v in summary["alpha_chosen"].items() if k != "None") > 0  # something was folded
    assert np.abs(before[0] - after[0]).max() <= 1e-4 and abs(before[1] - after[1]) <= 1e-4


def test_per_token_int8_scores_a_trace_the_same_alone_or_in_a_batch(int8_export):
    from rfedge.synth import generate

    traces = list(generate("arith", 9, seed=4))
    batched = Scorer.load(int8_export, device="cpu", batch_size=9).score_many(traces)
    alone = Scorer.load(int8_export, device="cpu", batch_size=1).score_many(traces)
    for a, b in zip(batched, alone):
        assert abs(a.trajectory_reward - b.trajectory_reward) <= 1e-5
        assert all(abs(x.reward - y.reward) <= 1e-5 for x, y in zip(a.steps, b.steps))
