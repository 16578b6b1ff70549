"""The adapters drive the real libraries from PyPI: its_hub's BeamSearch and BestOfN, reward_hub's
PRM interface and TRL's GRPOTrainer, with the bundled demo model (the arith task) as the PRM."""

import asyncio
import random
import sys

import pytest

from rfedge import Scorer
from rfedge.home import BUNDLED_DIR
from rfedge.synth import generate
from rfedge.traces import Trace

pytestmark = pytest.mark.skipif(sys.version_info < (3, 11), reason="its_hub and reward_hub need Python 3.11")

CORRECT = 0.5  # the scripted model gets each step right with this probability


@pytest.fixture(scope="module")
def demo():
    return Scorer.load(BUNDLED_DIR, device="cpu")


def _ops(problem: str):
    """(start, [(sign, k)]) of an arith problem: 'Start with 5. Then add 3 and subtract 2. ...'"""
    import re

    start = int(re.match(r"Start with (\d+)\.", problem).group(1))
    return start, [("+" if w == "add" else "-", int(k)) for w, k in re.findall(r"(add|subtract) (\d+)", problem)]


def _propose(problem: str, steps_so_far: str, rng: random.Random) -> str:
    """The next step of an arith solution, right with probability CORRECT, else off by 1..10."""
    start, ops = _ops(problem)
    done = [s for s in steps_so_far.replace("<think>\n", "").split("\n\n") if "=" in s]
    value = int(done[-1].rsplit("= ", 1)[1]) if done else start
    if len(done) == len(ops):
        return f"</think>\n\nThe final number is {value}."
    sign, k = ops[len(done)]
    new = value + k if sign == "+" else value - k
    if rng.random() >= CORRECT:
        new += rng.choice([d for d in range(-10, 11) if d])
    return ("<think>\n" if not done else "") + f"{value} {sign} {k} = {new}"


def _correct(problem: str, response: str) -> bool:
    start, ops = _ops(problem)
    for sign, k in ops:
        start = start + k if sign == "+" else start - k
    return response.rstrip().endswith(f"The final number is {start}.")


def _user(text):
    from its_hub.api import ChatMessage

    return ChatMessage(role="user", content=text)


def _lm(rng):
    from its_hub.api import AbstractLanguageModel

    class ScriptedLM(AbstractLanguageModel):
        """Proposes arith steps; OpenAI stop semantics (the step separator is not returned)."""

        def _one(self, messages):
            problem = messages[0].content
            so_far = messages[-1].content if messages[-1].role == "assistant" else ""
            return {"role": "assistant", "content": _propose(problem, so_far, rng)}

        async def agenerate(self, messages, stop=None, **kwargs):
            if isinstance(messages[0], list):
                return [self._one(m) for m in messages]
            return self._one(messages)

        async def agenerate_single(self, messages, stop=None, **kwargs):
            text = ""
            while "The final number" not in text:  # a whole solution, step by step
                step = _propose(messages[0].content, text, rng)
                text = step if not text else text + "\n\n" + step
            return {"role": "assistant", "content": text}

    return ScriptedLM()


def test_its_hub_beam_search_prefers_correct_answers(demo):
    from its_hub.core.algorithms.beam_search import BeamSearch
    from its_hub.core.lms.step_generation import StepGeneration

    from rfedge.integrations.its_hub import ProcessRewardModel

    prm = ProcessRewardModel(scorer=demo)
    rng = random.Random(0)
    problems = [r["problem"] for r in generate("arith", 40, seed=77)]
    picked, unguided = [], []
    for problem in problems:
        lm = _lm(rng)
        search = BeamSearch(StepGeneration(max_steps=12, step_token="\n\n", stop_token="The final number"), prm,
                            beam_width=2)
        result = search.infer(lm, problem, budget=8, return_response_only=False)
        picked.append(_correct(problem, result.the_one["content"]))
        samples = [asyncio.run(lm.agenerate_single([_user(problem)]))["content"] for _ in range(8)]
        unguided.append(sum(_correct(problem, s) for s in samples) / len(samples))
    rate, baseline = sum(picked) / len(picked), sum(unguided) / len(unguided)
    print(f"beam search with rfedge: {rate:.2f} correct; a solution chosen uniformly at random: {baseline:.2f}")
    assert rate > baseline + 0.1


def test_its_hub_best_of_n_prefers_correct_answers(demo):
    from its_hub.core.algorithms.bon import BestOfN

    from rfedge.integrations.its_hub import OutcomeRewardModel

    orm = OutcomeRewardModel(scorer=demo)
    rng = random.Random(1)
    problems = [r["problem"] for r in generate("arith", 40, seed=78)]
    picked, uniform = [], []
    for problem in problems:
        result = BestOfN(orm).infer(_lm(rng), problem, budget=6, return_response_only=False)
        picked.append(_correct(problem, result.the_one["content"]))
        uniform.append(sum(_correct(problem, r["content"]) for r in result.responses) / len(result.responses))
    rate, baseline = sum(picked) / len(picked), sum(uniform) / len(uniform)
    print(f"best-of-6 with rfedge: {rate:.2f} correct; one of the 6 chosen uniformly at random: {baseline:.2f}")
    assert rate > baseline + 0.15


def test_its_hub_scores_are_the_scorers(demo):
    from rfedge.integrations.its_hub import ProcessRewardModel

    record = next(generate("arith", 1, seed=3))
    steps = record["trajectory"]
    responses = ["\n\n".join(steps[:k]) for k in range(1, len(steps) + 1)]
    for aggregation in ("last", "min", "mean", "trajectory", "score"):
        prm = ProcessRewardModel(scorer=demo, aggregation=aggregation)
        got = asyncio.run(prm.ascore(record["problem"], responses))
        for response, value in zip(responses, got, strict=True):
            r = demo.score(Trace(record["problem"], response))
            rewards = [s.reward for s in r.steps]
            expected = {"last": rewards[-1], "min": min(rewards), "mean": sum(rewards) / len(rewards),
                        "trajectory": r.trajectory_reward, "score": r.score / 2}[aggregation]
            assert value == pytest.approx(expected, abs=1e-7) and 0.0 <= value <= 1.0
    assert prm.score(record["problem"], responses[0]) == got[0]  # one response in, one float out


def test_unknown_aggregation_is_one_line(demo):
    from rfedge.errors import UsageError
    from rfedge.integrations.its_hub import ProcessRewardModel

    with pytest.raises(UsageError) as e:
        ProcessRewardModel(scorer=demo, aggregation="prod")
    assert str(e.value) == "unknown aggregation 'prod': choose one of last, min, mean, trajectory, score"


def test_reward_hub_per_step_scores_equal_the_scorers(demo):
    from reward_hub.base import AggregationMethod

    from rfedge.integrations.reward_hub import ProcessRewardModel

    records = list(generate("arith", 4, seed=9))
    conversations = [[{"role": "system", "content": "Be careful."}, {"role": "user", "content": r["problem"]},
                      {"role": "assistant", "content": "\n\n".join(r["trajectory"] + [r["response"]])}]
                     for r in records]
    prm = ProcessRewardModel(scorer=demo)
    full = prm.score(conversations, return_full_prm_result=True)
    for conv, res in zip(conversations, full, strict=True):
        expected = demo.score(Trace(conv[1]["content"], conv[2]["content"]))
        assert res.step_scores == [s.reward for s in expected.steps]
        assert res.score == res.last == expected.steps[-1].reward
    assert prm.score(conversations) == [r.last for r in full]
    assert prm.score(conversations[0], aggregation_method="min") == [min(full[0].step_scores)]
    assert prm.score(conversations, aggregation_method=AggregationMethod.PRODUCT) == [r.product for r in full]
    model = prm.score(conversations, aggregation_method="model", return_full_prm_result=True)
    assert [r.step_scores for r in model] == [[demo.score(Trace(c[1]["content"], c[2]["content"])).trajectory_reward]
                                              for c in conversations]
    bar = [{"role": "user", "content": records[0]["problem"]},
           {"role": "assistant", "content": " | ".join(records[0]["trajectory"])}]
    assert prm.score(bar, step_sep=" | ", return_full_prm_result=True)[0].step_scores == prm.score(
        conversations[0][1:2] + [{"role": "assistant", "content": "\n\n".join(records[0]["trajectory"])}],
        return_full_prm_result=True)[0].step_scores


def test_trl_reward_function_returns_the_scorers_scores(demo):
    from rfedge.integrations.trl import reward_function

    fn = reward_function(scorer=demo)
    records = list(generate("arith", 3, seed=4))
    prompts = [r["problem"] for r in records]
    completions = ["\n\n".join(r["trajectory"]) for r in records]
    expected = [demo.score(Trace(p, c)).score / 2 for p, c in zip(prompts, completions, strict=True)]
    assert fn(prompts=prompts, completions=completions, answer=["x"] * 3) == pytest.approx(expected, abs=1e-7)
    conversational = fn(prompts=[[{"role": "user", "content": p}] for p in prompts],
                        completions=[[{"role": "assistant", "content": c}] for c in completions])
    assert conversational == pytest.approx(expected, abs=1e-7)
    assert fn.__name__ == "rfedge_prm" and fn(prompts=[""], completions=[""]) == [None]


def test_trl_grpo_trainer_accepts_and_trains_one_step(demo, tmp_path, qwen_tokenizer):
    """GRPOTrainer takes the callable, calls it on its generations, logs it under its name."""
    import math

    import torch
    from datasets import Dataset
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from rfedge.integrations.trl import reward_function

    tok = PreTrainedTokenizerFast(tokenizer_object=qwen_tokenizer, eos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>")
    torch.manual_seed(0)
    policy = Qwen2ForCausalLM(Qwen2Config(vocab_size=151936, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                                          eos_token_id=151643, pad_token_id=151643))
    fn = reward_function(scorer=demo)
    seen = []
    score_records = demo.score_records
    demo.score_records = lambda traces, *a, **k: score_records(seen.extend(traces) or traces, *a, **k)
    try:
        prompts = [r["problem"] + "\n\n" for r in generate("arith", 2, seed=5)]
        args = GRPOConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=4,
                          num_generations=2, max_completion_length=12, bf16=False, use_cpu=True, report_to="none",
                          logging_steps=1, save_strategy="no", use_vllm=False, seed=0, disable_tqdm=True)
        trainer = GRPOTrainer(model=policy, reward_funcs=[fn], args=args, processing_class=tok,
                              train_dataset=Dataset.from_dict({"prompt": prompts}))
        trainer.train()
    finally:
        del demo.score_records
    assert trainer.reward_func_names == ["rfedge_prm"]
    logged = next(h for h in trainer.state.log_history if "rewards/rfedge_prm/mean" in h)["rewards/rfedge_prm/mean"]
    assert len(seen) == 4 and {t.problem for t in seen} <= set(prompts)
    expected = [demo.score(t).score / 2 for t in seen]
    assert math.isclose(logged, sum(expected) / len(expected), abs_tol=1e-5)
