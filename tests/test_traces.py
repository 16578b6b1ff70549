"""Every accepted trace format, and the exact messages for bad records."""

import json

import pytest

from rfedge.errors import TraceFormatError
from rfedge.sources import open_traces
from rfedge.traces import parse_trace


def test_trajectory_response_lists_and_strings():
    t = parse_trace({"id": 7, "problem": "P", "trajectory": ["s1", "s2"], "response": "R"})
    assert (t.problem, t.completion, t.id) == ("P", "<think>\ns1\n\ns2\n</think>\n\nR", 7)


def test_completion_as_given():
    t = parse_trace({"problem": "P", "completion": "<think>x</think>y"})
    assert t.completion == "<think>x</think>y"


def test_trl_stepwise_with_labels():
    t = parse_trace({"prompt": "P", "completions": ["a", "b"], "labels": [True, False]})
    assert (t.problem, t.completion, t.labels) == ("P", "a\n\nb", (1.0, 0.0))


def test_chat_with_reasoning_content():
    t = parse_trace({"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "old"},
                                  {"role": "assistant", "content": "x"}, {"role": "user", "content": "Q"},
                                  {"role": "assistant", "content": "A", "reasoning_content": "r1\n\nr2"}]})
    assert (t.problem, t.completion) == ("Q", "<think>\nr1\n\nr2\n</think>\n\nA")


def test_chat_without_reasoning_content():
    t = parse_trace({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]})
    assert (t.problem, t.completion) == ("Q", "A")


@pytest.mark.parametrize("obj,message", [
    ([1], "a trace must be a JSON object, got an array"),
    ({"question": "x"}, "unrecognised trace fields (question); expected one of: {problem, trajectory, response}, "
                        "{problem, completion}, {prompt, completions}, {messages}"),
    ({"problem": 3, "completion": "c"}, "field 'problem' must be a string, got int"),
    ({"problem": "p", "trajectory": ["a", 2], "response": "r"}, "field 'trajectory[1]' must be a string, got int"),
    ({"problem": "p", "trajectory": None, "response": "r"},
     "field 'trajectory' must be a string or a list of strings, got NoneType"),
    ({"messages": [{"role": "assistant", "content": "a"}]},
     "field 'messages' has no user message; the last one is the problem"),
    ({"problem": "p", "completion": "c", "labels": "yes"}, "field 'labels' must be a list of numbers or booleans"),
    ({"problem": "p", "completion": "c", "id": [1]}, "field 'id' must be a string (valid Unicode) or an integer"),
    ({"problem": "p", "completion": "c", "id": "x\udc80"},
     "field 'id' must be a string (valid Unicode) or an integer"),
    ({"problem": "p", "completion": "c", "id": True}, "field 'id' must be a string (valid Unicode) or an integer"),
])
def test_bad_records_have_exact_messages(obj, message):
    with pytest.raises(TraceFormatError) as e:
        parse_trace(obj)
    assert str(e.value) == message


def test_jsonl_keeps_every_record_and_says_where(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text('{"problem": "p", "completion": "c"}\n{broken\n\n{"problem": 1, "completion": "c"}\n')
    records = list(open_traces(str(f)).records)
    assert [r.where for r in records] == [f"{f}:1", f"{f}:2", f"{f}:4"]
    assert records[0].trace is not None
    assert str(records[1].error) == f"{f}:2: invalid JSON at column 2: Expecting property name enclosed in double quotes"
    assert str(records[2].error) == f"{f}:4: field 'problem' must be a string, got int"


def test_json_list_and_single(tmp_path):
    f = tmp_path / "l.json"
    f.write_text(json.dumps([{"problem": "p", "completion": "c"}, {"x": 1}]))
    src = open_traces(str(f))
    records = list(src.records)
    assert not src.single and records[1].where == f"{f}[1]"
    g = tmp_path / "one.json"
    g.write_text(json.dumps({"problem": "p", "completion": "c"}))
    assert open_traces(str(g)).single


def test_missing_file_and_invalid_json(tmp_path):
    with pytest.raises(TraceFormatError) as e:
        open_traces(str(tmp_path / "nope.json"))
    assert str(e.value) == f"{tmp_path / 'nope.json'}: no such trace file; pass a .jsonl, .json or .parquet file, or - for stdin"
    bad = tmp_path / "bad.json"
    bad.write_text('{"problem": ')
    with pytest.raises(TraceFormatError) as e:
        open_traces(str(bad))
    assert str(e.value) == f"{bad}: invalid JSON at line 1, column 13: Expecting value"
