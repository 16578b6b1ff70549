"""``rfedge serve`` as a real server (uvicorn in a subprocess on 127.0.0.1) and a real HTTP client:
every endpoint, every error status, results equal to the library's, vLLM's client code shape."""

import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import httpx
import pytest

from rfedge import Scorer
from rfedge.synth import generate
from rfedge.traces import Trace, parse_trace

MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(model, *args):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rfedge", "serve", "--model", str(model), "--port", str(port),
                             *args], stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    lines = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    try:
        for _ in range(300):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError("the server did not come up: " + "".join(lines))
        yield base, proc, lines
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


@pytest.fixture(scope="module")
def live(fp32_export):
    with server(fp32_export) as (base, proc, lines):
        yield base, Scorer.load(fp32_export, device="cpu", cache_bytes=0), lines


def _steps_close(pairs, result, tol=1e-5):
    rewards = [s.reward for s in result.steps if s.reward is not None]
    assert len(pairs) == len(rewards)
    for (bad, good), r in zip(pairs, rewards, strict=True):
        assert abs(good - r) <= tol and abs(bad + good - 1) <= 1e-6


def test_startup_line_and_models(live):
    base, _, lines = live
    line = next(x for x in lines if x.startswith("rfedge serve: "))
    assert f"{base} (POST /pooling, POST /v1/score, GET /v1/models, /health, /metrics)" in line
    models = httpx.get(base + "/v1/models").json()
    assert models["object"] == "list" and len(models["data"]) == 1
    card = models["data"][0]
    assert card["object"] == "model" and card["owned_by"] == "rfedge" and card["max_model_len"] == 512


def test_pooling_as_vllm_clients_use_it(live):
    """The shapes vLLM's example client reads: requests.post(f"{base}/pooling", json=prompt).json()."""
    base, scorer, _ = live
    steps = ["12 + 7 = 19", "19 - 5 = 14", "The final number is 14."]
    problem = "Start with 12. Then add 7 and subtract 5. What is the final number?"
    templated = (f"<|im_start|>system\n{MATH_SYSTEM}<|im_end|>\n<|im_start|>user\n{problem}<|im_end|>\n"
                 f"<|im_start|>assistant\n" + "".join(s + "<extra_0>" for s in steps) + "<|im_end|><|endoftext|>")
    plain = "12 + 7 = 19\n\n19 - 5 = 14"
    prompt = {"model": httpx.get(base + "/v1/models").json()["data"][0]["id"], "input": [templated, plain]}
    pooling_response = httpx.post(base + "/pooling", json=prompt, headers={"User-Agent": "Test Client"})
    body = pooling_response.json()
    assert pooling_response.status_code == 200 and body["object"] == "list" and body["id"].startswith("pooling-")
    assert [d["index"] for d in body["data"]] == [0, 1] and all(d["object"] == "pooling" for d in body["data"])
    _steps_close(body["data"][0]["data"], scorer.score(Trace(problem, "\n\n".join(steps))))
    _steps_close(body["data"][1]["data"], scorer.score(Trace("", plain)))
    expected_tokens = scorer.score(Trace(problem, "\n\n".join(steps))).num_tokens + scorer.score(
        Trace("", plain)).num_tokens
    assert body["usage"] == {"prompt_tokens": expected_tokens, "total_tokens": expected_tokens,
                             "completion_tokens": 0, "prompt_tokens_details": None}
    chat = httpx.post(base + "/pooling", json={"messages": [
        {"role": "user", "content": [{"type": "text", "text": problem}]},
        {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"}]}).json()
    assert chat["data"][0]["data"] == body["data"][0]["data"]


def test_v1_score_equals_the_library(live):
    base, scorer, _ = live
    records = list(generate("arith", 5, seed=12))
    got = httpx.post(base + "/v1/score", json=records).json()
    expected = [scorer.score(parse_trace(r)).to_dict() for r in records]
    for a, b in zip(got, expected, strict=True):
        assert a["id"] == b["id"] and a["num_tokens"] == b["num_tokens"]
        assert abs(a["score"] - b["score"]) <= 1e-5
        assert [s["token_index"] for s in a["steps"]] == [s["token_index"] for s in b["steps"]]
    one = httpx.post(base + "/v1/score", json=records[0]).json()
    assert one["id"] == records[0]["id"] and abs(one["score"] - expected[0]["score"]) <= 1e-5
    mixed = httpx.post(base + "/v1/score", json=[records[0], {"id": "bad", "problem": 1, "completion": "c"}]).json()
    assert mixed[1] == {"id": "bad", "error": "request[1]: field 'problem' must be a string, got int"}


@pytest.mark.parametrize("path,body,status,message", [
    ("/pooling", b"{nope", 400, "the request body is not valid JSON: invalid JSON at line 1, column 2: Expecting "
                                "property name enclosed in double quotes"),
    ("/pooling", b'{"input": 3}', 400, "'input' must be a string or a non-empty list of strings (or send 'messages')"),
    ("/pooling", b'{"input": [[1, 2]]}', 400, "'input' as token ids is not supported by rfedge; send text"),
    ("/pooling", b'{"input": "x", "model": "other"}', 404, "The model `other` does not exist."),
    ("/pooling", b'{"messages": [{"role": "user", "content": "2 + 2?"}]}', 400,
     "'messages': field 'messages' has no assistant message to score"),
    ("/pooling", b'{"input": ""}', 422, "input[0]: trace has no text to score (problem and completion are empty)"),
    ("/v1/score", b'{"problem": "p", "completion": 2}', 422, "request: field 'completion' must be a string, got int"),
    ("/v1/score", b"7", 400, "the request body must be a trace object or a list of them"),
    ("/v1/score", b"\xff", 400, "the request body is not UTF-8"),
])
def test_bad_requests_are_one_line_4xx(live, path, body, status, message):
    base, _, _ = live
    r = httpx.post(base + path, content=body)
    assert r.status_code == status
    assert r.json()["error"]["message"] == message and r.json()["error"]["code"] == status


def test_wrong_method_and_route(live):
    base, _, _ = live
    assert httpx.get(base + "/pooling").status_code == 405
    r = httpx.get(base + "/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["message"] == "no route GET /v2/nothing"


def test_body_over_the_limit_is_refused_unread(fp32_export):
    with server(fp32_export, "--max-request-bytes", "1000") as (base, _, _):
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # announces 1 GB, sends 10 bytes
            s.sendall(b"POST /pooling HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000000000\r\n\r\n{\"input\":")
            reply = b""
            while not reply.endswith(b"}}"):  # the whole response, while the announced body never comes
                chunk = s.recv(65536)
                assert chunk, reply
                reply += chunk
            reply = reply.decode()
        assert reply.startswith("HTTP/1.1 413 ")
        assert "request body of 1000000000 bytes is over the limit of 1000 bytes (--max-request-bytes)" in reply
        chunked = httpx.post(base + "/pooling", content=iter([b'{"input": "', b"x" * 2000, b'"}']))
        assert chunked.status_code == 413
        assert chunked.json()["error"]["message"] == "request body is over the limit of 1000 bytes (--max-request-bytes)"


def test_api_key(fp32_export):
    with server(fp32_export, "--api-key", "s3cret") as (base, _, _):
        assert httpx.get(base + "/health").status_code == 200  # probes need no key
        r = httpx.post(base + "/pooling", json={"input": "x"})
        assert r.status_code == 401 and r.json()["error"]["message"] == (
            "missing or wrong API key: send 'Authorization: Bearer <key>'")
        assert httpx.post(base + "/pooling", json={"input": "x"}, headers={"Authorization": "Bearer no"}).status_code == 401
        ok = httpx.post(base + "/pooling", json={"input": "x"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_full_queue_is_503_with_retry_after_and_nothing_is_lost(fp32_export):
    texts = [parse_trace(r) for r in generate("arith", 30, seed=2)]
    with server(fp32_export, "--max-queue", "2", "--batch-wait-ms", "300") as (base, _, _):
        def post(t):
            return httpx.post(base + "/v1/score", json={"problem": t.problem, "completion": t.completion}, timeout=60)
        replies = [None] * len(texts)
        threads = [threading.Thread(target=lambda i=i: replies.__setitem__(i, post(texts[i]))) for i in range(30)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = [r.status_code for r in replies]
        assert set(codes) == {200, 503} and codes.count(503) >= 1
        busy = next(r for r in replies if r.status_code == 503)
        assert busy.headers["retry-after"] == "1" and "(--max-queue)" in busy.json()["error"]["message"]


def test_concurrent_requests_are_batched_and_counted(fp32_export):
    records = list(generate("arith", 24, seed=6))
    with server(fp32_export, "--batch-wait-ms", "50") as (base, _, _):
        with httpx.Client() as client:
            replies = [None] * 24
            threads = [threading.Thread(target=lambda i=i: replies.__setitem__(
                i, client.post(base + "/v1/score", json=records[i], timeout=60))) for i in range(24)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert all(r.status_code == 200 for r in replies)
            assert [r.json()["id"] for r in replies] == [r["id"] for r in records]
            text = client.get(base + "/metrics").text
    metric = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and line[0] != "#"}
    assert metric['rfedge_requests_total{code="200",endpoint="/v1/score"}'] == 24
    assert metric["rfedge_traces_total"] == 24
    assert metric["rfedge_batch_traces_count"] < 24  # some requests shared a batch
    assert "rfedge_queue_depth" in metric and 'rfedge_request_seconds_bucket{endpoint="/v1/score",le="+Inf"}' in metric


def test_sigterm_finishes_the_request_in_flight(fp32_export):
    long = [{"problem": f"p{i}", "completion": "word " * 400} for i in range(60)]
    with server(fp32_export, "--batch-size", "1") as (base, proc, lines):
        reply = []
        t = threading.Thread(target=lambda: reply.append(httpx.post(base + "/v1/score", json=long, timeout=120)))
        t.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        t.join()
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM  # after the graceful shutdown, as every command exits on it
    assert reply[0].status_code == 200 and len(reply[0].json()) == 60
    assert not any("Traceback" in x for x in lines)


def test_bad_model_is_one_line_before_binding(tmp_path):
    port = _free_port()
    p = subprocess.run([sys.executable, "-m", "rfedge", "serve", "--model", str(tmp_path / "none"), "--port", str(port)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.splitlines()[-1] == f"rfedge: error: {tmp_path / 'none'}: no such model directory; export one with 'rfedge export'"
