"""Reliability: any input ends in a result or one line of error; threads; batches; memory bounds."""

import json
import string
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rfedge import Scorer
from rfedge.errors import TraceFormatError
from rfedge.traces import Record, parse_trace

# Text that exercises unicode edge cases: combining marks, RTL, NUL, surrogate-free astral chars,
# separators and think tags in odd places.
PIECES = st.sampled_from(["\n\n", "\n", "<think>", "</think>", " ", "e\u0301", "\u202e", "\u0000", "\ufeff",
                          "العربية", "🎉", "\u200b", "=", "12 + 3 = 15", "\r\n", "\t"])
TEXT = st.lists(st.one_of(PIECES, st.text(alphabet=string.printable, max_size=20),
                          st.text(max_size=8)), max_size=12).map("".join)
JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
                       lambda c: st.lists(c, max_size=4) | st.dictionaries(TEXT, c, max_size=4), max_leaves=10)
FIELDS = ["problem", "trajectory", "response", "completion", "prompt", "completions", "labels", "messages", "id"]
RECORDS = st.one_of(
    JSONISH,
    st.dictionaries(st.sampled_from(FIELDS), st.one_of(TEXT, st.lists(TEXT, max_size=5), JSONISH), max_size=5),
    st.fixed_dictionaries({"problem": TEXT, "trajectory": st.one_of(TEXT, st.lists(TEXT, max_size=6)),
                           "response": st.one_of(TEXT, st.lists(TEXT, max_size=3))}),
    st.fixed_dictionaries({"messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system"]), "content": st.one_of(TEXT, JSONISH)}), max_size=4)}),
)


@pytest.fixture(scope="module")
def scorer(fp32_export):
    return Scorer.load(fp32_export, device="cpu", batch_size=4)


def _check(scorer, obj):
    records = [Record(where="r", trace=None, error=None)]
    try:
        records = [Record(where="r", trace=parse_trace(obj))]
    except TraceFormatError as e:
        assert "\n" not in str(e)
        return "error"
    (_, result), = list(scorer.score_records(records))
    if isinstance(result, TraceFormatError):
        assert "\n" not in str(result)
        return "error"
    json.dumps(result.to_dict())
    assert result.num_tokens >= 1
    assert all(s.reward is None or 0.0 <= s.reward <= 1.0 for s in result.steps)
    return "ok"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RECORDS)
def test_any_record_gives_a_result_or_one_line(scorer, obj):
    _check(scorer, obj)


@pytest.mark.slow
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RECORDS)
def test_fuzz_long(scorer, obj):
    _check(scorer, obj)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=300))
def test_any_jsonl_line_gives_exactly_one_output(tmp_path_factory, scorer, line):
    from click.testing import CliRunner

    from rfedge.cli import main

    f = tmp_path_factory.mktemp("fz") / "in.jsonl"
    good = json.dumps({"problem": "p", "completion": "c"})
    body = line.replace("\n", " ").replace("\r", " ")
    f.write_text(good + "\n" + body + "\n" + good + "\n", encoding="utf-8", errors="surrogatepass")
    r = CliRunner().invoke(main, ["score", str(f), "--model", str(scorer.manifest.directory)])
    assert r.exit_code in (0, 1, 2), r.output
    assert "Traceback" not in r.output
    if r.exit_code != 2:
        assert len(r.stdout.splitlines()) == (3 if body.strip(" \t\r") else 2)  # JSON whitespace only: no record


def test_lone_surrogate_escape_is_one_clear_error(scorer):
    obj = json.loads('{"problem": "x\\ud800y", "completion": "a\\n\\nb\\udfff"}')
    (_, result), = list(scorer.score_records([Record(where="r", trace=parse_trace(obj))]))
    assert str(result) == ("r: text has an unpaired surrogate (\\ud800) at character 1; send valid UTF-8 or "
                           "complete \\uD8xx\\uDCxx pairs")


def test_threads_share_one_scorer(scorer):
    from rfedge.synth import generate

    traces = list(generate("arith", 24, seed=5))
    serial = [r.to_dict() for r in scorer.score_many(traces)]
    outputs = [None] * 8
    errors = []

    def work(k):
        try:
            outputs[k] = [r.to_dict() for r in scorer.score_many(traces[k:] + traces[:k])]
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k, out in enumerate(outputs):
        rotated = serial[k:] + serial[:k]
        for a, b in zip(out, rotated, strict=True):
            assert a["id"] == b["id"]
            assert abs(a["trajectory_reward"] - b["trajectory_reward"]) <= 1e-5
            assert all(abs(x["reward"] - y["reward"]) <= 1e-5 for x, y in zip(a["steps"], b["steps"], strict=True))


def _watch(scorer, monkeypatch) -> list:
    """Record (new tokens shape, cache capacity) of every graph call."""
    seen = []
    run = scorer.session.run_cached
    monkeypatch.setattr(scorer.session, "run_cached",
                        lambda ids, m, p, kv: seen.append((ids.shape, kv.capacity)) or run(ids, m, p, kv))
    return seen


def test_huge_trace_stays_within_max_length(scorer, monkeypatch):
    seen = _watch(scorer, monkeypatch)
    r = scorer.score({"problem": "x", "trajectory": ["word " * 5000, "more"], "response": "end"})
    n = scorer.manifest.max_length
    assert r.truncated and n == 512 and seen == [((1, 256), n)] * 2  # the CPU's chunks over one buffer of max length
    assert [s.reward is None for s in r.steps] == [True, True, True]


def test_batch_token_budget_bounds_padded_batch(fp32_export, monkeypatch):
    from rfedge.synth import generate

    scorer = Scorer.load(fp32_export, device="cpu", batch_size=64, batch_tokens=600, cache_bytes=0)
    seen = _watch(scorer, monkeypatch)
    scorer.score_many(list(generate("arith", 40, seed=1)))
    assert len(seen) > 1 and all(b * capacity <= 600 for (b, _), capacity in seen)
