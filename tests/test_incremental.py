"""Scoring inside the search loop: cached, chunked, streamed and forked scoring equal one pass.

Every way of getting to a trace's rewards (one pass; chunks over the K/V cache; a prefix cache hit;
the streaming state, including appends that change how the old text's end tokenizes; forks) must
give the one-pass rewards: within 1e-5 for fp32 graphs, 1e-4 for INT8 (per-token quantization).
"""

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rfedge import Scorer
from rfedge.synth import generate
from rfedge.traces import Trace, parse_trace

TOL = {"fp32": 1e-5, "int8": 1e-4}
BIG = 1 << 30


@pytest.fixture(scope="module", params=["fp32", "int8"])
def model(request):
    return request.getfixturevalue(f"{request.param}_export"), TOL[request.param]


def _close(a, b, tol):
    assert a.id == b.id and a.num_tokens == b.num_tokens and a.truncated == b.truncated
    assert abs(a.trajectory_reward - b.trajectory_reward) <= tol
    assert [(s.section, s.index, s.token_index) for s in a.steps] == [(s.section, s.index, s.token_index) for s in b.steps]
    for s, t in zip(a.steps, b.steps, strict=True):
        assert (s.reward is None) == (t.reward is None)
        if s.reward is not None:
            assert abs(s.reward - t.reward) <= tol, (s, t)


def _traces(seed=0, n=12):
    rng = random.Random(seed)
    out = [parse_trace(r) for r in generate("arith", n, seed=seed)]
    words = ["alpha", "19", "5", " ", "\n\n", "x = 3", "é", "🎉", "<think>", "</think>", "step"]
    for i in range(4):
        text = "".join(rng.choice(words) for _ in range(rng.randint(5, 60)))
        out.append(Trace(f"Q{i}: {rng.choice(words)}", text, id=f"rand-{i}"))
    return out


def test_chunked_equals_one_pass(model):
    path, tol = model
    traces = _traces(1)
    one = Scorer.load(path, device="cpu", cache_bytes=0, chunk_tokens=BIG).score_many(traces)
    for chunk in (1, 5, 16, 37):
        chunked = Scorer.load(path, device="cpu", cache_bytes=0, chunk_tokens=chunk).score_many(traces)
        for a, b in zip(one, chunked, strict=True):
            _close(a, b, tol)


def test_cache_hits_equal_misses_and_one_pass(model):
    path, tol = model
    traces = _traces(2)
    one = Scorer.load(path, device="cpu", cache_bytes=0).score_many(traces)
    scorer = Scorer.load(path, device="cpu")
    prefixes = [Trace(t.problem, t.completion[:len(t.completion) // 2], id=t.id) for t in traces]
    scorer.score_many(prefixes)
    before = scorer.cache_stats()
    first = scorer.score_many(traces)
    after_first = scorer.cache_stats()
    second = scorer.score_many(traces)
    after_second = scorer.cache_stats()
    assert after_first["hits"] > before["hits"]  # the halves scored before were reused
    assert after_second["misses"] == after_first["misses"]  # every full block of every trace was cached
    assert after_second["hits"] - after_first["hits"] == sum(len(scorer.tokenizer.encode(t).ids) // 16 for t in traces)
    for a, b, c in zip(one, first, second, strict=True):
        _close(a, b, tol)
        _close(a, c, tol)


def test_small_budget_evicts_and_loses_nothing(fp32_export):
    traces = _traces(3, n=30)
    one = Scorer.load(fp32_export, device="cpu", cache_bytes=0).score_many(traces)
    scorer = Scorer.load(fp32_export, device="cpu", cache_bytes=40_000)
    for _ in range(2):
        for a, b in zip(one, scorer.score_many(traces), strict=True):
            _close(a, b, 1e-5)
    stats = scorer.cache_stats()
    assert stats["evictions"] > 0 and 0 < stats["bytes"] <= 40_000


def test_best_of_n_shares_the_prompt_and_ranks_by_score(fp32_export):
    records = list(generate("arith", 8, seed=9, candidates=8))
    problem = records[0]["problem"] + " " + "Please check every step carefully. " * 20
    candidates = [Trace(problem, parse_trace(r).completion).completion for r in records]
    scorer = Scorer.load(fp32_export, device="cpu")
    ranked = scorer.best_of_n(problem, candidates, k=3)
    alone = [Scorer.load(fp32_export, device="cpu", cache_bytes=0).score(Trace(problem, c)) for c in candidates]
    expected = sorted(range(8), key=lambda i: -alone[i].score)[:3]
    assert [i for i, _ in ranked] == expected
    for i, result in ranked:
        _close(alone[i], result, 1e-5)
    prompt_blocks = len(scorer.tokenizer.encode(Trace(problem, "")).ids) // 16
    assert scorer.cache_stats()["hits"] >= 8 * prompt_blocks  # the prompt ran once, not 8 times


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.sampled_from(["1", "9", "5", " ", "\n", "\n\n", "= 19", "add", "é", "e\u0301", "🎉",
                                        "<think>", "</think>", "x"]), min_size=1, max_size=25),
       fork_at=st.integers(min_value=0, max_value=24))
def test_stream_and_fork_equal_one_pass(fp32_export, pieces, fork_at):
    """Append pieces one by one (cutting numbers and words anywhere, so the end re-tokenizes), fork
    midway and extend the fork differently: every state's result is the one-pass result of its text."""
    one = Scorer.load(fp32_export, device="cpu", cache_bytes=0)
    scorer = Scorer.load(fp32_export, device="cpu", chunk_tokens=7)
    state, fork = scorer.start("Start with 19. Then add 5."), None
    for i, piece in enumerate(pieces):
        changed = state.extend(piece)
        if i == fork_at:
            fork = state.fork()
            fork.extend("\n\n99 + 1 = 100")
        result = state.result()
        assert {(s.section, s.index) for s in changed} <= {(s.section, s.index) for s in result.steps}
        _close(one.score(Trace(state.problem, state.completion)), result, 1e-5)
    if fork is not None:
        fork.extend("\n\nmore")
        _close(one.score(Trace(fork.problem, fork.completion)), fork.result(), 1e-5)
        _close(one.score(Trace(state.problem, state.completion)), state.result(), 1e-5)


def test_stream_int8_and_reported_steps(int8_export):
    one = Scorer.load(int8_export, device="cpu", cache_bytes=0)
    state = Scorer.load(int8_export, device="cpu").start("Start with 12. Then add 7 and subtract 5.")
    # an unclosed <think> is all response (the contract); the step is reported again as it grows
    assert [(s.section, s.index) for s in state.extend("<think>\n12 + 7 = 1")] == [("response", 0)]
    assert [(s.section, s.index) for s in state.extend("9")] == [("response", 0)]
    assert [(s.section, s.index) for s in state.extend("\n\n19 - 5 = 14\n</think>\n\n")] == [
        ("thinking", 0), ("thinking", 1)]
    assert [(s.section, s.index) for s in state.extend("The final number is 14.")] == [("response", 0)]
    _close(one.score(Trace(state.problem, state.completion)), state.result(), 1e-4)


def test_long_trace_past_max_length_in_chunks(fp32_export, scalar_prm):
    """Chunks never exceed chunk_tokens; a trace past max length is cut there, as in one pass."""
    scorer = Scorer.load(fp32_export, device="cpu", cache_bytes=0, chunk_tokens=100)
    seen = []
    run = scorer.session.run_cached
    scorer.session.run_cached = lambda ids, m, p, kv: seen.append(ids.shape[1]) or run(ids, m, p, kv)
    long = Trace("Count.", "\n\n".join(f"step {i} " + "word " * 40 for i in range(30)))
    result = scorer.score(long)
    one = Scorer.load(fp32_export, device="cpu", cache_bytes=0, chunk_tokens=BIG).score(long)
    assert result.truncated and max(seen) <= 100 and sum(seen) == scorer.manifest.max_length
    _close(one, result, 1e-5)


def test_the_cpu_default_runs_long_traces_in_chunks_of_256(fp32_export):
    """On the CPU a trace longer than 256 tokens runs in graph calls of at most 256 (the default,
    constants.DEFAULT_CHUNK_TOKENS: fewer activations alive at once), with the one-pass rewards."""
    scorer = Scorer.load(fp32_export, device="cpu", cache_bytes=0)
    seen = []
    run = scorer.session.run_cached
    scorer.session.run_cached = lambda ids, m, p, kv: seen.append(ids.shape[1]) or run(ids, m, p, kv)
    long = Trace("Count.", "\n\n".join(f"step {i} " + "word " * 20 for i in range(18)))
    result = scorer.score(long)
    assert not result.truncated and sum(seen) == result.num_tokens > 256
    assert seen[:-1] == [256] * (len(seen) - 1) and 0 < seen[-1] <= 256
    _close(Scorer.load(fp32_export, device="cpu", cache_bytes=0, chunk_tokens=BIG).score(long), result, 1e-5)


def test_the_exports_chunk_check_compares_with_a_true_one_pass(fp32_export):
    """validate.chunked_delta runs each trace once whole and once in three chunks, whatever the
    scorer's own chunk size (the CPU default of 256 would cut the "one pass" too)."""
    from rfedge_export.validate import chunked_delta

    scorer = Scorer.load(fp32_export, device="cpu", cache_bytes=0)
    seen = []
    run = scorer.session.run_cached
    scorer.session.run_cached = lambda ids, m, p, kv: seen.append(ids.shape[1]) or run(ids, m, p, kv)
    long = Trace("Count.", "\n\n".join(f"step {i} " + "word " * 20 for i in range(18)))
    n = len(scorer.tokenizer.encode(long).ids)
    assert chunked_delta(scorer, [long]) <= 1e-5
    assert n > 256 and seen == [n, n // 3, 2 * n // 3 - n // 3, n - 2 * n // 3]
    assert scorer.engine.chunk_tokens == 256


def test_windowed_tokenization_equals_whole(qwen_tokenizer, tmp_path):
    """Windows cut only where the pre-tokenizer splits: the ids are those of the whole text."""
    from rfedge.tokenization import TraceTokenizer, windows

    qwen_tokenizer.save(str(tmp_path / "tokenizer.json"))
    rng = random.Random(5)
    parts = ["word", " ", "12345", "\n", "\n\n", "  ", "é", "e\u0301", "🎉", "!!", "\t", "Ünïcode", "a\nb", "\r\n",
             "x.y", " 's", "an apple"]
    whole = TraceTokenizer(tmp_path / "tokenizer.json")
    small = TraceTokenizer(tmp_path / "tokenizer.json", window_chars=64)
    for _ in range(30):
        text = "".join(rng.choice(parts) for _ in range(rng.randint(50, 400)))
        trace = Trace("P: ", text)
        assert len(list(windows(trace.text, 64))) >= len(trace.text) // 64
        a, b = whole.encode(trace), small.encode(trace)
        assert a.total == b.total and np.array_equal(a.ids, b.ids) and np.array_equal(a.step_tokens, b.step_tokens)
        assert a.ids.tolist() == qwen_tokenizer.encode(trace.text, add_special_tokens=False).ids


def test_tokenization_stops_one_window_past_max_length(qwen_tokenizer, tmp_path):
    """A huge trace is encoded only up to the window where max length is passed: same ids, same
    steps and boundary tokens as far as they go, a lower-bound token count, bounded work."""
    from rfedge.tokenization import TraceTokenizer

    qwen_tokenizer.save(str(tmp_path / "tokenizer.json"))
    steps = [f"step {i}: " + "12 + 7 = 19 and so on " * (1 + i % 5) for i in range(20_000)]
    trace = Trace("Add.", "<think>\n" + "\n\n".join(steps) + "\n</think>\n\nDone.")
    full = TraceTokenizer(tmp_path / "tokenizer.json", max_length=300, window_chars=1 << 30).encode(trace)
    bounded = TraceTokenizer(tmp_path / "tokenizer.json", max_length=300, window_chars=4096)
    calls = []
    encode = bounded._tk.encode
    bounded._tk = type("T", (), {"encode": lambda self, text, **kw: calls.append(len(text)) or encode(text, **kw)})()
    got = bounded.encode(trace)
    assert sum(calls) <= 2 * 4096 < len(trace.text) // 100  # one or two windows of a 2.5 MB text
    assert np.array_equal(got.ids, full.ids) and got.truncated and 300 < got.total < full.total
    n = len(got.steps)
    assert 0 < n < len(full.steps) and got.steps == full.steps[:n]  # sections as in the whole text
    assert np.array_equal(got.step_tokens, full.step_tokens[:n]) and got.steps[0].section == "thinking"
    assert (got.step_tokens >= 300).any()  # unscored steps past the cut are still listed, up to the window end


def test_windows_with_a_max_length_at_the_whole_text_change_nothing(qwen_tokenizer, tmp_path):
    """Traces at max length (or one token over it) across many windows: the ids, steps and
    boundaries of one whole-text encoding, nothing dropped before the cut."""
    from rfedge.tokenization import TraceTokenizer

    qwen_tokenizer.save(str(tmp_path / "tokenizer.json"))
    trace = Trace("Add.", "<think>\n" + "\n\n".join(f"step {i}: 12 + 7 = 19" for i in range(300)) + "\n</think>\n\nok")
    whole = TraceTokenizer(tmp_path / "tokenizer.json").encode(trace)
    for max_length in (whole.total, whole.total - 1):
        got = TraceTokenizer(tmp_path / "tokenizer.json", max_length=max_length, window_chars=256).encode(trace)
        assert np.array_equal(got.ids, whole.ids[:max_length]) and got.steps == whole.steps
        assert np.array_equal(got.step_tokens, whole.step_tokens) and got.total == whole.total
        assert got.truncated == (max_length < whole.total)


def test_nested_shared_prefixes_run_once_each(tmp_path):
    """Seven candidates share 3 blocks, the eighth only the first 2 (its third block differs): the
    2-block prefix runs first, the 3-block one then runs only its last block."""
    from rfedge.engine import _Job, _waves
    from rfedge.kvcache import BLOCK_TOKENS, chain_keys

    ids = np.arange(4 * BLOCK_TOKENS, dtype=np.int64)
    other = ids.copy()
    other[2 * BLOCK_TOKENS + 3] = 7
    short, deep = _Job(ids[:2 * BLOCK_TOKENS], chain_keys(ids)[:2]), _Job(ids[:3 * BLOCK_TOKENS], chain_keys(ids)[:3])
    unrelated = _Job(other[:3 * BLOCK_TOKENS] + 1000, chain_keys(other + 1000)[:3])
    waves = _waves([deep, unrelated, short])
    assert [[len(j.keys) for j in w] for w in waves] == [[2, 3], [3]]
    assert waves[0][1] is unrelated and waves[1][0] is deep


def test_a_root_shared_by_branching_groups_runs_once():
    """Four candidates share 2 blocks, then two pairs share a third block each: the root is its own
    prefix, run before the two pairs' prefixes (which then run only their third block)."""
    from rfedge.engine import Engine, _Job, _waves
    from rfedge.kvcache import BLOCK_TOKENS, PrefixCache, chain_keys

    seqs = []
    for pair in range(2):
        for member in range(2):
            ids = np.arange(5 * BLOCK_TOKENS, dtype=np.int64)
            ids[2 * BLOCK_TOKENS:] += 1000 * (pair + 1)  # the pairs differ from block 2 on
            ids[3 * BLOCK_TOKENS:] += 100 * (member + 1)  # the members from block 3 on
            seqs.append(ids)
    engine = Engine(None, None, PrefixCache(1 << 20), 8, 2048, 2048, 0)
    prefixes = engine._shared_prefixes([_Job(ids, chain_keys(ids)) for ids in seqs])
    assert [[len(p.keys) for p in wave] for wave in _waves(prefixes)] == [[2], [3, 3]]
