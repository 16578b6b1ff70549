"""Batch scoring on Ray Data: the same scorer on a cluster (the ``distributed`` extra).

:func:`score_dataset` maps a Ray dataset of trace records through a pool of actors, each holding
one verified :class:`~rfedge.scorer.Scorer`, and adds rfedge's columns to every row, keeping the
row and all its columns (a bad record gets ``error`` and null scores, nothing is dropped):

- ``score``, ``trajectory_reward`` (float, null on error), ``steps`` (list of {section, index,
  reward, token_index}), ``num_tokens`` (int), ``truncated`` (bool), ``error`` (string, null when
  scored), ``result`` (the JSON line ``rfedge score`` writes for the record, so a cluster run's JSONL
  output is byte for byte the single machine's).

:func:`read_input` reads JSONL as lines (each line parsed by rfedge's own reader, so a malformed
line is one error row, as on one machine) and Parquet as rows. The model directory must be reachable
at the same path from every node (a shared filesystem, or the same path on each node); each actor
verifies its files' sha256 once when it starts. Nothing here is imported by ``import rfedge``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .reading import (LINE_COLUMN, PATH_COLUMN, WHERE_PATH, WHERE_ROW, input_kind, input_paths,  # noqa: F401
                      read_input)
from ..errors import RfedgeError, RuntimeFailure, TraceFormatError, UsageError
from ..extras import require
from ..sinks import json_line
from ..sources import parse_json
from ..traces import Record

RESULT_COLUMNS = ("score", "trajectory_reward", "steps", "num_tokens", "truncated", "error", "result")


def _ray():
    return require("ray", "distributed", "--ray")


def init(address: str | None = None, object_store_mb: int = 256) -> None:
    """Connect to ``address`` (``auto``, ``ray://host:port``) or start a local Ray (small object store,
    no dashboard, no usage stats). Keeps row order in every dataset (preserve_order)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray = _ray()
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            kwargs["address"] = address
        else:
            kwargs["object_store_memory"] = object_store_mb << 20
        ray.init(**kwargs)
    ray.data.DataContext.get_current().execution_options.preserve_order = True


@dataclass(frozen=True)
class ScoreOptions:
    threads: int = 1
    batch_size: int = 8
    alpha: float | None = None
    max_record_bytes: int = 64 << 20
    batch_tokens: int | None = None  # None: the Scorer's defaults
    cache_bytes: int | None = None
    lines: bool = False  # rows are JSONL lines (read_input's LINE_COLUMN), parsed here
    keep_where: bool = False  # keep a Parquet row's file and row number columns (rfedge select --ray)


class ScoreBatch:
    """The Ray Data callable class: one verified Scorer per actor, a pyarrow table in and out."""

    def __init__(self, model_dir: str, options: ScoreOptions):
        from ..scorer import Scorer

        kwargs = {k: v for k, v in (("alpha", options.alpha), ("batch_tokens", options.batch_tokens),
                                    ("cache_bytes", options.cache_bytes)) if v is not None}
        self.scorer = Scorer.load(model_dir, device="cpu", threads=options.threads, batch_size=options.batch_size,
                                  **kwargs)
        self.options = options

    def __call__(self, table):
        import pyarrow as pa

        rows = table.to_pylist()
        records = [self._record(row) for row in rows]
        columns: dict[str, list] = {c: [] for c in RESULT_COLUMNS}
        types = result_types()
        for record, result in self.scorer.score_records(records):
            for name, value in result_columns(record, result).items():
                columns[name].append(value)
        if not self.options.keep_where:
            table = table.drop_columns([c for c in (WHERE_PATH, WHERE_ROW) if c in table.column_names])
        for name in RESULT_COLUMNS:
            table = table.append_column(name, pa.array(columns[name], type=types[name]))
        return table

    def _record(self, row: dict) -> Record:
        return row_record(row, self.options)


def row_record(row: dict, options: ScoreOptions) -> Record:
    """A dataset row as the Scorer's record: a JSONL line read as ``rfedge score`` reads it, or the
    row itself (its columns are the record's fields)."""
    from ..sources import Row, line_row, to_record

    if not options.lines:
        where = f"{row[WHERE_PATH]}:row {row[WHERE_ROW]}" if WHERE_ROW in row else "record"
        return to_record(Row(where, {k: v for k, v in row.items() if k not in (WHERE_PATH, WHERE_ROW)}))
    return to_record(line_row(row[PATH_COLUMN], row["line"], row[LINE_COLUMN], options.max_record_bytes))


def result_types() -> dict:
    import pyarrow as pa

    step = pa.struct([("section", pa.string()), ("index", pa.int64()), ("reward", pa.float64()),
                      ("token_index", pa.int64())])
    return {"score": pa.float64(), "trajectory_reward": pa.float64(), "steps": pa.list_(step),
            "num_tokens": pa.int64(), "truncated": pa.bool_(), "error": pa.string(), "result": pa.string()}


def result_columns(record: Record, result) -> dict:
    """rfedge's columns for one record (the error's text where it could not be scored)."""
    from ..jobs import result_line

    line = json_line(result_line(record, result)).rstrip("\n")
    if isinstance(result, TraceFormatError):
        return {"score": None, "trajectory_reward": None, "steps": None, "num_tokens": None, "truncated": None,
                "error": str(result), "result": line}
    d = result.to_dict()
    return {"score": d["score"], "trajectory_reward": d["trajectory_reward"], "steps": d["steps"],
            "num_tokens": d["num_tokens"], "truncated": d["truncated"], "error": None, "result": line}


def score_dataset(ds, model_dir: str | Path, *, actors: int = 1, threads_per_actor: int = 1, batch_size: int = 8,
                  alpha: float | None = None, rows_per_call: int = 64, lines: bool = False,
                  max_record_bytes: int = 64 << 20, batch_tokens: int | None = None, cache_bytes: int | None = None,
                  keep_where: bool = False):
    """``ds`` with rfedge's columns added (see the module doc), scored by ``actors`` actors of
    ``threads_per_actor`` ONNX Runtime threads each (each actor reserves that many CPUs). ``lines``:
    the rows are JSONL lines from :func:`read_input`. Rows keep their input order: this sets Ray
    Data's ``preserve_order`` for the driver."""
    ray = _ray()
    if actors < 1 or threads_per_actor < 1:
        raise UsageError(f"actors and threads per actor must be at least 1, got {actors} and {threads_per_actor}")
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    _check_columns(ds)
    options = ScoreOptions(threads=threads_per_actor, batch_size=batch_size, alpha=alpha,
                           max_record_bytes=max_record_bytes, lines=lines, batch_tokens=batch_tokens,
                           cache_bytes=cache_bytes, keep_where=keep_where)
    return ds.map_batches(ScoreBatch, fn_constructor_args=(str(Path(model_dir).resolve()), options),
                          batch_size=rows_per_call, batch_format="pyarrow",
                          compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=threads_per_actor)


def _check_columns(ds) -> None:
    """Input columns named as rfedge's would be overwritten: refuse them up front."""
    schema = ds.schema()
    clash = sorted(set(schema.names if schema else ()) & set(RESULT_COLUMNS))
    if clash:
        raise UsageError(f"the input has columns named {', '.join(clash)}, which rfedge adds to every row; "
                         "rename them first (e.g. ds.rename_columns)")


@dataclass
class Summary:
    rows: int = 0
    errors: int = 0
    tokens: int = 0

    def add(self, row: dict) -> None:
        self.rows += 1
        self.errors += row["error"] is not None
        self.tokens += row["num_tokens"] or 0


def iter_results(ds) -> Iterator[dict]:
    """The scored rows in input order (on the driver)."""
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=256):
        yield from batch.to_pylist()


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None
    actors: int = 1
    threads_per_actor: int = 1


def scored_input(data: str, fmt: str, model_dir, ray_options: RayOptions, max_record_bytes: int = 64 << 20,
                 keep_where: bool = False, **scorer_options):
    """(dataset with rfedge's columns, whether its rows are JSONL lines) for ``data``;
    ``scorer_options``: batch_size, batch_tokens, alpha, cache_bytes as :func:`score_dataset` takes them."""
    init(ray_options.address)
    paths = input_paths(data)
    lines = input_kind(paths, fmt) == "jsonl"
    ds = score_dataset(read_input(data, fmt, max_record_bytes), model_dir, actors=ray_options.actors,
                       threads_per_actor=ray_options.threads_per_actor, lines=lines,
                       max_record_bytes=max_record_bytes, keep_where=keep_where, **scorer_options)
    return ds, lines


def write_scores(ds, output: str | None, output_fmt: str | None = None) -> Summary:
    """Every row to ``output`` in input order: JSONL as ``rfedge score`` writes it (the ``result``
    column), or Parquet with the input's columns and rfedge's (without ``result``)."""
    from ..sinks import output_format, row_writer

    summary, fmt = Summary(), output_format(output, output_fmt)
    schema = ds.schema() if fmt == "parquet" else None  # the whole dataset's, not the first batch's
    if schema is not None:
        schema = getattr(schema, "base_schema", schema)
        schema = schema.remove(schema.get_field_index("result"))
    with row_writer(output, fmt, schema=schema) as writer:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=256):
            for row in batch.select(["error", "num_tokens"]).to_pylist():
                summary.add(row)
            if fmt == "jsonl":
                writer.write_lines(batch.column("result").to_pylist())
            else:
                writer.write_table(batch.drop_columns(["result"]))
    return summary


@contextmanager
def ray_errors():
    """Ray's own failures (no cluster at --address, an actor that cannot start, a failed task) as
    one line instead of a traceback."""
    ray = _ray()
    try:
        yield
    except RfedgeError:
        raise
    except (ray.exceptions.RayError, ConnectionError, TimeoutError) as e:
        text = str(e).strip()
        raise RuntimeFailure(f"Ray: {text.splitlines()[0] if text else type(e).__name__}") from None


@dataclass(frozen=True)
class _Scored:
    score: float
    trajectory_reward: float
    num_tokens: int


def scored_rows(ds, lines: bool, max_record_bytes: int = 64 << 20) -> Iterator[tuple]:
    """(row, record, result or TraceFormatError) per scored dataset row, in input order, as
    :func:`rfedge.select.scored_rows` gives them on one machine (for ``rfedge select --ray``; the
    dataset from :func:`scored_input` with ``keep_where``)."""
    options = ScoreOptions(lines=lines, max_record_bytes=max_record_bytes)
    with ray_errors():
        yield from _scored(iter_results(ds), options, lines)


def _scored(rows, options: ScoreOptions, lines: bool) -> Iterator[tuple]:
    from ..sources import Row

    for row in rows:
        fields = {k: v for k, v in row.items() if k not in RESULT_COLUMNS}
        record = row_record(fields, options)
        value = record.trace and (parse_json(fields[LINE_COLUMN].decode("utf-8")) if lines else
                                  {k: v for k, v in fields.items() if k not in (WHERE_PATH, WHERE_ROW)})
        if record.error is not None:
            result = record.error
        elif row["error"] is not None:
            result = TraceFormatError(row["error"])
        else:
            result = _Scored(row["score"], row["trajectory_reward"], row["num_tokens"])
        yield Row(record.where, value), record, result
