"""The ASGI application: routes, limits, the API key, errors as vLLM shapes them, Prometheus metrics.

Statuses: 400 malformed JSON or request shape, 401 a missing or wrong API key, 404 an unknown
``model``, 413 a body over ``max_request_bytes`` (refused from its Content-Length, or once that
many bytes arrived, never read whole), 422 a trace that cannot be scored, 503 a full queue (with
``Retry-After``). Errors are one line in ``{"error": {"message", "type", "param", "code"}}``; an
unexpected failure is a 500 with that shape, and its traceback goes to the server's log only.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

from ..errors import RfedgeError, TraceFormatError
from ..extras import require
from ..jobs import result_line
from ..sources import parse_json
from ..traces import Record
from .batcher import Batcher, Overloaded
from .protocol import (RequestError, error_body, models_response, pooling_response, pooling_traces,
                       score_records)

fastapi = require("fastapi", "serve", "rfedge serve")
prometheus = require("prometheus_client", "serve", "rfedge serve")
log = logging.getLogger("rfedge.serve")

ENDPOINTS = ("/pooling", "/v1/score", "/v1/models", "/health", "/metrics")  # metric labels; others: "other"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass(frozen=True)
class ServeConfig:
    max_batch_tokens: int = 16384  # 0: no batching across requests
    batch_wait_ms: float = 5.0
    max_queue: int = 512
    max_request_bytes: int = 16 << 20
    api_key: str | None = None
    served_name: str | None = None  # the name in /v1/models and "model" (default: the source id)


class _Metrics:
    def __init__(self):
        r = self.registry = prometheus.CollectorRegistry()
        self.requests = prometheus.Counter("rfedge_requests_total", "HTTP requests", ["endpoint", "code"], registry=r)
        self.tokens = prometheus.Counter("rfedge_tokens_total", "Tokens scored", registry=r)
        self.traces = prometheus.Counter("rfedge_traces_total", "Traces scored", registry=r)
        self.batch = prometheus.Histogram("rfedge_batch_traces", "Traces per scoring batch", registry=r,
                                          buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.queue = prometheus.Gauge("rfedge_queue_depth", "Requests waiting to be batched", registry=r)
        self.latency = prometheus.Histogram("rfedge_request_seconds", "Request latency", ["endpoint"], registry=r,
                                            buckets=LATENCY_BUCKETS)


def _error(status: int, message: str, param: str | None = None, headers: dict | None = None):
    return fastapi.responses.JSONResponse(error_body(status, message, param), status_code=status, headers=headers)


async def _body(request, limit: int):
    """The JSON body, refused (413) past ``limit`` bytes without reading the rest; 400 if not JSON."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RequestError(413, f"request body of {int(length)} bytes is over the limit of {limit} bytes "
                                "(--max-request-bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body is over the limit of {limit} bytes (--max-request-bytes)")
        chunks.append(chunk)
    try:
        return parse_json(b"".join(chunks).decode("utf-8"))
    except UnicodeDecodeError:
        raise RequestError(400, "the request body is not UTF-8") from None
    except TraceFormatError as e:
        raise RequestError(400, f"the request body is not valid JSON: {e.reason}") from None


class Service:
    """The endpoints over one loaded, verified scorer."""

    def __init__(self, scorer, config: ServeConfig):
        self.scorer, self.config, self.metrics = scorer, config, _Metrics()
        m = scorer.manifest
        self.served = config.served_name or str(m.source.get("id") or m.directory.name)
        self.created = int(time.time())
        self.batcher = Batcher(scorer, config.max_batch_tokens, config.batch_wait_ms / 1000, config.max_queue,
                               on_batch=lambda records: self.metrics.batch.observe(len(records)))

    async def run(self, records: list[Record]) -> list:
        self.metrics.queue.set(self.batcher.waiting)
        try:
            results = await self.batcher.submit(records)
        except Overloaded:
            raise RequestError(503, f"the server is at its limit of {self.config.max_queue} waiting requests "
                                    "(--max-queue); retry shortly") from None
        except RfedgeError as e:
            raise RequestError(503, str(e)) from None
        scored = [r for r in results if not isinstance(r, TraceFormatError)]
        self.metrics.traces.inc(len(scored))
        self.metrics.tokens.inc(sum(r.num_tokens for r in scored))
        return results

    def _authorized(self, request) -> bool:
        key = self.config.api_key
        return not key or request.url.path == "/health" or request.headers.get("authorization") == f"Bearer {key}"

    async def guard(self, request, call_next):
        """The API key, typed errors as responses, and each request counted and timed."""
        endpoint = request.url.path if request.url.path in ENDPOINTS else "other"
        t0 = time.perf_counter()
        try:
            if not self._authorized(request):
                raise RequestError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")
            response = await call_next(request)
        except RequestError as e:
            response = _error(e.status, e.message, e.param, {"Retry-After": "1"} if e.status == 503 else None)
        except Exception:
            log.exception("unexpected failure on %s", endpoint)
            response = _error(500, "internal error; see the server's log")
        self.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
        return response

    async def pooling(self, request: fastapi.Request):
        """vLLM's pooling API for process reward models: per-step [P(wrong), P(right)]."""
        traces = pooling_traces(await _body(request, self.config.max_request_bytes), self.served)
        results = await self.run([Record(where=f"input[{i}]", trace=t) for i, t in enumerate(traces)])
        bad = next((r for r in results if isinstance(r, TraceFormatError)), None)
        if bad is not None:
            raise RequestError(422, str(bad), "input")
        return pooling_response(results, self.served)

    async def score(self, request: fastapi.Request):
        """rfedge's records, as ``rfedge score`` writes them: one trace in, one out; a list, a list
        (a bad trace is an {"error"} entry in its place)."""
        records, single = score_records(await _body(request, self.config.max_request_bytes))
        results = await self.run(records)
        if single and isinstance(results[0], TraceFormatError):
            raise RequestError(422, str(results[0]))
        out = [result_line(record, r) for record, r in zip(records, results, strict=True)]
        return out[0] if single else out

    async def models(self):
        m = self.scorer.manifest
        return models_response(self.served, str(m.directory), m.max_length, self.created)

    async def health(self):
        return fastapi.Response(status_code=200)

    async def prometheus_text(self):
        self.metrics.queue.set(self.batcher.waiting)
        return fastapi.Response(prometheus.generate_latest(self.metrics.registry),
                                media_type=prometheus.CONTENT_TYPE_LATEST)


def create_app(scorer, config: ServeConfig | None = None):
    """The application for one loaded, verified scorer."""
    svc = Service(scorer, config or ServeConfig())

    @asynccontextmanager
    async def lifespan(app):
        svc.batcher.start()
        yield
        await svc.batcher.stop()

    app = fastapi.FastAPI(title="rfedge", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = svc
    app.middleware("http")(svc.guard)
    app.post("/pooling")(svc.pooling)
    app.post("/v1/score")(svc.score)
    app.get("/v1/models")(svc.models)
    app.get("/health")(svc.health)
    app.get("/metrics")(svc.prometheus_text)
    for status, text in ((404, "no route {method} {path}"), (405, "{method} is not allowed on {path}")):
        app.exception_handler(status)(
            lambda request, exc, status=status, text=text: _error(
                status, text.format(method=request.method, path=request.url.path)))
    return app
