"""Starting the server: the verified scorer first (a bad model is one line and exit 2, before any
port is bound), then uvicorn on the app. SIGTERM and SIGINT stop it gracefully: it stops accepting
connections and finishes the requests in flight (up to ``graceful_seconds``)."""

from __future__ import annotations

import logging
import sys

from ..extras import require
from .app import ServeConfig, create_app


def serve(scorer, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          graceful_seconds: float = 30.0, log_level: str = "info") -> None:
    uvicorn = require("uvicorn", "serve", "rfedge serve")
    logging.basicConfig(level=log_level.upper(), format="%(message)s", stream=sys.stderr)
    config = config or ServeConfig()
    app = create_app(scorer, config)
    m = scorer.manifest
    threads = scorer.session.threads or "all"
    print(f"rfedge serve: model {m.describe()}, device {scorer.device}, {threads} threads; "
          f"http://{host}:{port} (POST /pooling, POST /v1/score, GET /v1/models, /health, /metrics)"
          + ("; API key required" if config.api_key else ""), file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=graceful_seconds,
                access_log=False)
