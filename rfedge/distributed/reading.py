"""Inputs of a Ray job: which files (a file, a folder, a glob, URIs), and Ray datasources that read
JSONL as lines and Parquet as rows, reserving no CPU (reading is I/O; actors may hold every core)."""

from __future__ import annotations

import glob
import io
from pathlib import Path

from ..errors import UsageError

LINE_COLUMN, PATH_COLUMN = "record", "path"  # a JSONL input's line (bytes) and its file
# A Parquet row's file and row number, carried to the actors (so errors name them as on one
# machine) and dropped from the output.
WHERE_PATH, WHERE_ROW = "__rfedge_path", "__rfedge_row"


def _ray():
    from ..extras import require

    return require("ray", "distributed", "--ray")


def input_paths(data: str) -> list[str]:
    """A file, a folder or a glob (expanded here for local paths); URIs (``s3://``...) pass through."""
    if "://" in data:
        return [data]
    paths = sorted(glob.glob(data)) if glob.has_magic(data) else [data]
    if not paths or not all(Path(p).exists() for p in paths):
        raise UsageError(f"{data}: no such file, folder or matching files")
    return paths


def input_kind(paths: list[str], fmt: str = "auto") -> str:
    if fmt in ("jsonl", "parquet"):
        return fmt
    if fmt != "auto":
        raise UsageError(f"--format {fmt} is not supported with --ray: use JSONL or Parquet")
    names = [p for path in paths for p in ([path] if not Path(path).is_dir() else
                                             [str(q) for q in Path(path).iterdir() if q.is_file()])]
    kinds = {"parquet" if n.lower().endswith(".parquet") else "jsonl" if n.lower().endswith((".jsonl", ".jsonl.gz"))
             else None for n in names}
    if len(kinds) != 1 or None in kinds:
        raise UsageError(f"{', '.join(paths)}: --ray reads .jsonl or .parquet files (one kind per run); "
                         "pass --format jsonl|parquet")
    return kinds.pop()


class _RawReader(io.RawIOBase):
    """A pyarrow input stream as a raw Python file (its own readline takes no size limit)."""

    def __init__(self, stream):
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._stream.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _parquet_datasource(paths: list[str]):
    """Parquet files as their own columns, row group by row group (read_parquet would list files in
    a task of its own that needs a whole CPU, which actors holding every CPU would starve)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from ray.data.datasource import FileBasedDatasource

    from ..sources import display_name

    class ParquetRowGroups(FileBasedDatasource):
        def _open_input_source(self, filesystem, path: str, **open_args):
            return filesystem.open_input_file(path)  # Parquet needs random access

        def _read_stream(self, f, path: str):
            name, first = display_name(path), 1
            for batch in pq.ParquetFile(f).iter_batches(batch_size=1024):
                table = pa.Table.from_batches([batch])
                table = table.append_column(WHERE_PATH, pa.array([name] * len(table), pa.string()))
                yield table.append_column(WHERE_ROW, pa.array(range(first, first + len(table)), pa.int64()))
                first += len(table)

    return ParquetRowGroups(paths)


def _jsonl_datasource(paths: list[str], max_bytes: int):
    """JSONL split at ``\\n`` bytes only, streamed, one row per non-blank line: {path, line, record
    (bytes, null when over ``max_bytes``)}; decoding and parsing happen in the actors, as
    :func:`rfedge.sources.jsonl_rows` does them, so every line's error reads as on one machine."""
    import pyarrow as pa
    from ray.data.datasource import FileBasedDatasource

    from ..sources import display_name, jsonl_lines

    class JsonlLines(FileBasedDatasource):
        def _read_stream(self, f, path: str):
            name, rows = display_name(path), {PATH_COLUMN: [], "line": [], LINE_COLUMN: []}

            def block():
                return pa.table({PATH_COLUMN: pa.array(rows[PATH_COLUMN], pa.string()),
                                 "line": pa.array(rows["line"], pa.int64()),
                                 LINE_COLUMN: pa.array(rows[LINE_COLUMN], pa.binary())})
            for lineno, raw in jsonl_lines(io.BufferedReader(_RawReader(f), 1 << 20), max_bytes):
                rows[PATH_COLUMN].append(name)
                rows["line"].append(lineno)
                rows[LINE_COLUMN].append(raw)
                if len(rows["line"]) >= 1024:
                    yield block()
                    rows = {k: [] for k in rows}
            if rows["line"]:
                yield block()

    return JsonlLines(paths)


READ_CPUS = 0  # see read_input


def read_input(data: str, fmt: str = "auto", max_record_bytes: int = 64 << 20):
    """A Ray dataset of ``data``'s records: JSONL as {path, line, record (the line's bytes)} rows,
    Parquet as its own columns."""
    ray = _ray()
    paths = input_paths(data)
    # Reading is I/O: it reserves no CPU, so actors that hold every CPU cannot starve it.
    if input_kind(paths, fmt) == "parquet":
        return ray.data.read_datasource(_parquet_datasource(paths), num_cpus=READ_CPUS)
    return ray.data.read_datasource(_jsonl_datasource(paths, max_record_bytes), num_cpus=READ_CPUS)
