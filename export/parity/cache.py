"""Reference rewards on disk, one JSON line per trace: a rerun never pays for the reference twice.

Keyed by the reference (layout, source, options) and the trace's text, so ``rfedge parity`` with
another candidate and ``rfedge distill`` on the same traces reuse what was computed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from rfedge.traces import Trace


def cache_key(reference, trace: Trace) -> str:
    h = hashlib.sha256()
    h.update(reference.key().encode())
    h.update(b"\0" + trace.problem.encode("utf-8", "surrogatepass") + b"\0" + trace.completion.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


class RewardCache:
    """Reference rewards on disk, one JSON line per trace key: a rerun never pays for the reference twice."""

    def __init__(self, path: Path | None):
        self.path = path
        self.data: dict = {}
        if path and path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    row = json.loads(line)
                    self.data[row["key"]] = row
                except (ValueError, KeyError, TypeError, RecursionError):
                    continue  # a damaged line (an interrupted write) is only a cache miss
        self.hits = 0

    def get(self, key):
        row = self.data.get(key)
        if row is not None:
            self.hits += 1
        return row

    def rewards(self, reference, trace: Trace) -> dict:
        """The cached row of ``trace``, computing it with ``reference`` on a miss."""
        key = cache_key(reference, trace)
        row = self.get(key)
        if row is None:
            r = reference.score_trace(trace)
            row = self.put(key, [list(s) for s in r.steps], r.trajectory)
        return row

    def put(self, key, steps, trajectory):
        row = {"key": key, "steps": steps, "trajectory": trajectory}
        self.data[key] = row
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        return row


