"""``rfedge select``: offline data selection, the paper's main use of the PRM.

Score every candidate trajectory, group them (by ``group_by``, a field of the record, or by
identical problem text), keep the ``top_k`` best per group by score (ties: the earlier record),
optionally only those scoring at least ``min_score``, and write the ORIGINAL records that were kept,
in input order, each with an added ``rfedge`` field ``{score, trajectory_reward, rank}`` (rank 1 is
the best of its group).

Two passes over the input: the first scores and keeps, per group, only the K best (score, record
number) pairs; the second re-reads the input and writes the records kept. Memory is bounded by the
number of groups x K, not by the file (stdin is copied to a temporary file first). Records that
cannot be read or scored are written, one ``{"where", "id"?, "error"}`` line each, to the errors
file, and counted; nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import shutil
import sys
import tempfile
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import TraceFormatError, UsageError
from .output import AtomicOutput
from .sinks import json_line, row_writer
from .sources import DEFAULT_MAX_RECORD_BYTES, Row, input_format, open_traces, to_record
from .traces import Record


@dataclass
class Selection:
    records: int = 0
    errors: int = 0
    groups: int = 0
    kept: int = 0
    tokens: int = 0

    def summary(self, top_k: int) -> str:
        return (f"{self.records} records, {self.groups} groups, {self.kept} kept (top {top_k} per group), "
                f"{self.errors} could not be scored, {self.tokens} tokens")


def _group_key(row: Row, record: Record, group_by: str | None) -> bytes:
    if group_by is None:
        key = record.trace.problem
    elif not isinstance(row.value, dict) or group_by not in row.value:
        raise TraceFormatError(f"field '{group_by}' is missing; --group-by needs it in every record")
    else:
        key = json.dumps(row.value[group_by], sort_keys=True, default=str)
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def _error(record: Record, error: TraceFormatError) -> dict:
    return {"where": record.where, **({"id": record.id} if record.id is not None else {}), "error": error.reason}


class _TopK:
    """Per group, the K best (score, record number) so far: a min-heap each, ties to the earlier record."""

    def __init__(self, k: int):
        self.k, self.heaps = k, {}

    def add(self, key: bytes, index: int, result=None) -> None:
        heap = self.heaps.setdefault(key, [])
        if result is None:  # the group exists, this record is not a candidate (below --min-score)
            return
        entry = (result.score, -index, result.trajectory_reward)
        if len(heap) < self.k:
            heapq.heappush(heap, entry)
        elif entry > heap[0]:
            heapq.heapreplace(heap, entry)

    def kept(self) -> dict[int, dict]:
        out = {}
        for heap in self.heaps.values():
            for rank, (score, neg_index, traj) in enumerate(sorted(heap, key=lambda e: (-e[0], -e[1])), start=1):
                out[-neg_index] = {"score": score, "trajectory_reward": traj, "rank": rank}
        return out


def scored_rows(scorer, rows: Iterator[Row]) -> Iterator[tuple[Row, Record, object]]:
    """(row, record, result or TraceFormatError) for each row, in order, scored in this process."""
    pending: deque = deque()

    def records() -> Iterator[Record]:
        for row in rows:
            pending.append(row)
            yield to_record(row)

    for record, result in scorer.score_records(records()):
        yield pending.popleft(), record, result


def _score_pass(scored: Iterator[tuple[Row, Record, object]], top_k: int, group_by: str | None,
                min_score: float | None, errors) -> tuple[dict[int, dict], Selection]:
    """Pass 1: the kept records' numbers by record number, and the counts."""
    best, stats = _TopK(top_k), Selection()
    for index, (row, record, result) in enumerate(scored):
        stats.records += 1
        try:
            if isinstance(result, TraceFormatError):
                raise result
            key = _group_key(row, record, group_by)
        except TraceFormatError as e:
            stats.errors += 1
            errors.write(json_line(_error(record, e)))
            continue
        stats.tokens += result.num_tokens
        best.add(key, index, result if min_score is None or result.score >= min_score else None)
    kept = best.kept()
    stats.groups, stats.kept = len(best.heaps), len(kept)
    return kept, stats


def _rfedge_schema(source: Path):
    """A Parquet input's schema plus the ``rfedge`` struct column (so the output keeps the input's types)."""
    from .extras import require

    pa, pq = require("pyarrow", "parquet", "Parquet"), require("pyarrow.parquet", "parquet", "Parquet")
    schema = pq.ParquetFile(str(source)).schema_arrow
    column = pa.struct([("score", pa.float64()), ("trajectory_reward", pa.float64()), ("rank", pa.int64())])
    return schema.append(pa.field("rfedge", column))


def select(scorer, data: str, output: str | None, top_k: int, group_by: str | None = None,
           min_score: float | None = None, fmt: str = "auto", errors_path: str | None = None,
           max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES, output_fmt: str | None = None,
           batch_rows: int = 512, score=None) -> Selection:
    """Select the ``top_k`` best records per group of ``data`` into ``output`` (see the module doc).
    ``score(path, fmt)``: the scored rows of pass 1 from elsewhere (``--ray``), else ``scorer`` scores here."""
    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    with _rereadable(data, fmt) as (path, fmt):
        name = "<stdin>" if data == "-" else None
        errors_out = AtomicOutput(errors_path, "--errors") if errors_path else nullcontext(sys.stderr)
        with errors_out as errors:
            scored = score(path, fmt) if score else scored_rows(scorer, open_traces(path, fmt, max_record_bytes, name).rows)
            kept, stats = _score_pass(scored, top_k, group_by, min_score, errors)
        schema = _rfedge_schema(Path(path)) if input_format(path, fmt) == "parquet" and \
            (output_fmt or "") != "jsonl" else None
        with row_writer(output, output_fmt, schema) as writer:
            batch = []
            for index, row in enumerate(open_traces(path, fmt, max_record_bytes, name).rows):
                if index in kept:
                    batch.append({**row.value, "rfedge": kept[index]})
                    if len(batch) >= batch_rows:
                        writer.write(batch)
                        batch = []
            writer.write(batch)
    return stats


class _rereadable:
    """``data`` as a path that can be read twice: stdin is copied to a temporary file first."""

    def __init__(self, data: str, fmt: str):
        self.data, self.fmt, self.tmp = data, fmt, None

    def __enter__(self) -> tuple[str, str]:
        if self.data != "-":
            return self.data, self.fmt
        fd, name = tempfile.mkstemp(prefix="rfedge-select-", suffix=".jsonl")
        self.tmp = Path(name)
        with open(fd, "wb") as f:
            shutil.copyfileobj(sys.stdin.buffer, f)
        return name, "jsonl" if self.fmt == "auto" else self.fmt

    def __exit__(self, *exc) -> bool:
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)
        return False


def default_errors_path(output: str | None) -> str | None:
    """``OUT.errors.jsonl`` beside a file output; None (stderr) when the output is stdout."""
    return None if output in (None, "-") else str(Path(output).with_suffix("")) + ".errors.jsonl"
