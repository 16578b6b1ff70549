"""Writing records: JSON lines, or Parquet (pyarrow, the ``parquet`` extra), through AtomicOutput.

JSON lines are strict JSON (no NaN); values JSON has no type for (dates, bytes, decimals from a
Parquet input) are written as strings. Parquet keeps the schema it is given (an input's, plus the
columns added) or infers it from the first rows written; a later row that does not fit it is an
error naming the row, never a silently changed type.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import OutputError
from .output import AtomicOutput

OUTPUT_FORMATS = ("jsonl", "parquet")


def output_format(path: str | None, fmt: str | None = None) -> str:
    """``fmt``, else by the output's suffix (``.parquet``), else JSON lines (also for stdout)."""
    if fmt:
        return fmt
    return "parquet" if path and path != "-" and Path(path).suffix.lower() == ".parquet" else "jsonl"


def json_line(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, default=str) + "\n"


class _JsonlWriter:
    def __init__(self, fh):
        self.fh = fh

    def write(self, rows: list[dict]) -> None:
        self.fh.write("".join(json_line(r) for r in rows))

    def write_lines(self, lines: list[str]) -> None:
        """Lines already made by :func:`json_line` (without their newline)."""
        self.fh.write("".join(line + "\n" for line in lines))


class _ParquetWriter:
    def __init__(self, fh, schema=None):
        from .extras import require

        self.pa = require("pyarrow", "parquet", "writing Parquet")
        self.pq = require("pyarrow.parquet", "parquet", "writing Parquet")
        self.fh, self.schema, self.writer = fh, schema, None

    def write(self, rows: list[dict]) -> None:
        if not rows:
            return
        try:
            table = self.pa.Table.from_pylist(rows, schema=self.schema)
        except (self.pa.ArrowInvalid, self.pa.ArrowTypeError, TypeError, KeyError) as e:
            raise OutputError(f"a row does not fit the Parquet schema of the rows before it ({str(e).splitlines()[0]}); "
                              "write JSONL instead (-o OUT.jsonl)") from None
        self._append(table)

    def write_table(self, table) -> None:
        """An Arrow table, cast to the writer's schema when one was given (a column of nulls in one
        batch and strings in the next is one string column)."""
        if self.schema is not None:
            try:
                table = table.select(self.schema.names).cast(self.schema)
            except (self.pa.ArrowInvalid, self.pa.ArrowTypeError, KeyError) as e:
                raise OutputError(f"a batch does not fit the Parquet schema ({str(e).splitlines()[0]}); "
                                  "write JSONL instead (-o OUT.jsonl)") from None
        self._append(table)

    def _append(self, table) -> None:
        """The file is opened with the first table's schema; every later table must have it."""
        if self.writer is None:
            self.schema = table.schema
            self.writer = self.pq.ParquetWriter(self.fh, table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is None and self.schema is not None:  # no rows: still a valid file with the schema
            self.writer = self.pq.ParquetWriter(self.fh, self.schema)
        if self.writer is not None:
            self.writer.close()


@contextmanager
def row_writer(path: str | None, fmt: str | None = None, schema=None, option: str = "--output") -> Iterator[Any]:
    """A writer with ``write(list of dict rows)``, to ``path`` (None or ``-``: stdout), atomically."""
    fmt = output_format(path, fmt)
    with AtomicOutput(path, option, binary=fmt == "parquet") as fh:
        writer = _ParquetWriter(fh, schema) if fmt == "parquet" else _JsonlWriter(fh)
        yield writer
        if fmt == "parquet":
            writer.close()
