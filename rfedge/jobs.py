"""The batch job behind ``rfedge score``: a trace source in, one JSON line per record out.

A single JSON object in gives one object out (a bad one raises); a list or JSONL gives a line per
record in input order, a bad record an ``{"id", "error"}`` line in its place.
"""

from __future__ import annotations

from typing import IO

from .errors import TraceFormatError
from .sinks import json_line
from .sources import TraceSource
from .traces import Record


def result_line(record: Record, result) -> dict:
    """A record's output: its result, or its error with its id (when it had one)."""
    if isinstance(result, TraceFormatError):
        return {"id": record.id, "error": str(result)} if record.id is not None else {"error": str(result)}
    return result.to_dict()


def score_source(scorer, source: TraceSource, out: IO[str]) -> int:
    """Score every record of ``source`` into ``out``; returns how many could not be scored."""
    if source.single:
        _, result = next(scorer.score_records(source.records))
        if isinstance(result, TraceFormatError):
            raise result
        out.write(json_line(result.to_dict()))
        return 0
    failed = 0
    for record, result in scorer.score_records(source.records):
        failed += isinstance(result, TraceFormatError)
        out.write(json_line(result_line(record, result)))
    return failed
