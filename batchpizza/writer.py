"""The output: one row per input row, in input order, Parquet or JSONL, appearing whole or not at all.

Rows are streamed: the input's carried fields are read again batch by batch and zipped with the
results read from the checkpoint in the same order. The file is written aside in the same folder,
fsynced, renamed over the output and the folder fsynced, so a reader (or a kill) never meets a
half-written file and an earlier output is replaced only by a complete one.

JSONL fields carried into Parquet: a field that holds one JSON type in every row keeps it (string,
bool, int64, or float64 where ints and floats mix); a field whose type varies between rows, and any
list or object, is stored as JSON text (each cell the JSON of the value).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import decimal
import functools
import itertools
import logging
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from batchpizza import jsoncodec
from batchpizza.errors import InputChanged, Interrupted, OutputError
from batchpizza.plan import Plan
from batchpizza.reader import Source, pylist
from batchpizza.rows import RESULT_COLUMNS, _Bad, interpret, prompt_digest

if TYPE_CHECKING:  # pyarrow is imported where Parquet is written: a JSONL job never pays for it
    import pyarrow as pa
    import pyarrow.parquet as pq

log = logging.getLogger("batchpizza")

RESULT_NAMES = list(RESULT_COLUMNS)


@functools.cache
def result_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("answer", pa.string()),
            ("finish_reason", pa.string()),
            ("misuse", pa.bool_()),
            ("error", pa.string()),
            ("attempts", pa.int64()),
            ("latency_ms", pa.float64()),
            ("model", pa.string()),
        ]
    )


def _arrow_of(kind: str) -> pa.DataType | None:
    import pyarrow as pa

    return {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}.get(
        kind
    )


def _finish(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """(id, bad, answer, finish_reason, error, attempts, latency_ms, model) -> id + result columns."""
    row_id, bad, answer, reason, error, attempts, latency, model, _digest = row
    if bad is not None:
        return (row_id, None, "invalid", False, bad, 0, None, None)
    if reason is None:  # a row not sent (the run ended early): say so rather than invent one
        return (row_id, None, "error", False, "not sent", 0, None, None)
    return (row_id, answer, reason, reason == "misuse", error, attempts, latency, model)


def jsonl_column_types(source: Source) -> dict[str, pa.DataType | None]:
    """Name -> Arrow type for JSONL fields carried into Parquet; None means JSON text."""
    import pyarrow as pa

    types: dict[str, pa.DataType | None] = {}
    for name, kinds in source.field_types.items():
        if kinds == {"int", "float"}:
            types[name] = pa.float64()
        elif len(kinds) == 1 and _arrow_of(next(iter(kinds))) is not None:
            types[name] = _arrow_of(next(iter(kinds)))
        else:
            types[name] = None
            if len(kinds) > 1:
                log.warning(
                    "field %r holds %s across rows; written to Parquet as JSON text",
                    name,
                    " and ".join(sorted(kinds)),
                )
    return types


def _json_default(value: Any) -> Any:
    """What Parquet holds and JSON does not."""
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    raise TypeError(f"cannot write a {type(value).__name__} as JSON")


def _json_text(value: Any) -> str | None:
    return None if value is None else jsoncodec.dumps(value, _json_default).decode()


class _Output:
    """Writes batches of (carried columns, result rows) to one format."""

    def __init__(self, source: Source, handle: IO[bytes], fmt: str) -> None:
        self.source, self.handle, self.fmt = source, handle, fmt
        self.parquet: pq.ParquetWriter | None = None
        if source.kind == "jsonl":
            # A field named like an output column only exists in bad rows (a good row with one
            # is refused): it is not carried, or the output would hold two such columns.
            reserved = source.fields.reserved | {"id"}
            self.names = [n for n in source.field_types if n not in reserved]
            self.types = (
                {n: t for n, t in jsonl_column_types(source).items() if n in self.names}
                if fmt == "parquet"
                else {}
            )
        else:
            assert source.schema is not None
            self.schema = source.schema
            self.names = [n for n in self.schema.names if n != source.fields.id]
        self.columns = ["id", *self.names, *RESULT_NAMES]

    def write(
        self, carried: list[Mapping[str, Any]] | pa.RecordBatch, rows: list[tuple[Any, ...]]
    ) -> None:
        if self.fmt == "jsonl":
            self._write_jsonl(carried, rows)
        else:
            self._write_parquet(carried, rows)

    def _write_jsonl(
        self, carried: list[Mapping[str, Any]] | pa.RecordBatch, rows: list[tuple[Any, ...]]
    ) -> None:
        if not isinstance(carried, list):  # Parquet input; a row not UTF-8 carries nothing
            objects = [o if isinstance(o, Mapping) else {} for o in pylist(carried)]
        else:
            objects = carried
        names, columns = self.names, self.columns
        lines = []
        for obj, row in zip(objects, rows, strict=True):
            record = dict(
                zip(columns, (row[0], *(obj.get(n) for n in names), *row[1:]), strict=True)
            )
            lines.append(jsoncodec.dumps(record, _json_default))
        lines.append(b"")
        self.handle.write(b"\n".join(lines))

    def _write_parquet(
        self, carried: list[Mapping[str, Any]] | pa.RecordBatch, rows: list[tuple[Any, ...]]
    ) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        results = list(zip(*rows, strict=True))
        if isinstance(carried, pa.RecordBatch):
            table = _conform(carried, self.schema)
            arrays = [table.column(n).combine_chunks() for n in self.names]
            fields = [self.schema.field(n) for n in self.names]
        else:
            arrays, fields = [], []
            for name in self.names:
                arrow_type = self.types[name]
                values = [obj.get(name) for obj in carried]
                if arrow_type is None:
                    arrays.append(pa.array([_json_text(v) for v in values], pa.string()))
                    fields.append(pa.field(name, pa.string()))
                else:
                    arrays.append(pa.array(values, arrow_type))
                    fields.append(pa.field(name, arrow_type))
        arrays = [pa.array(results[0], pa.string()), *arrays]
        arrays += [
            pa.array(col, f.type) for col, f in zip(results[1:], result_schema(), strict=True)
        ]
        schema = pa.schema([pa.field("id", pa.string()), *fields, *result_schema()])
        batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
        if self.parquet is None:
            self.parquet = pq.ParquetWriter(self.handle, schema, compression="zstd")
        self.parquet.write_batch(batch)

    def close(self) -> None:
        if self.fmt == "parquet":
            if self.parquet is None:  # an empty input still gets every column
                import pyarrow.parquet as pq

                schema = self._empty_schema()
                self.parquet = pq.ParquetWriter(self.handle, schema, compression="zstd")
            self.parquet.close()

    def _empty_schema(self) -> pa.Schema:
        import pyarrow as pa

        if self.source.kind == "parquet":
            fields = [self.schema.field(n) for n in self.names]
        else:
            fields = [pa.field(n, self.types.get(n) or pa.string()) for n in self.names]
        return pa.schema([pa.field("id", pa.string()), *fields, *result_schema()])


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.Table:
    """A batch from one file of a directory, with the columns of all of them."""
    import pyarrow as pa

    table = pa.Table.from_batches([batch])
    if table.schema.equals(schema):
        return table
    columns = [
        table.column(f.name).cast(f.type)
        if f.name in table.schema.names
        else pa.nulls(len(table), f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A file that replaces `path` only once it is complete and on disk."""
    folder = path.parent if str(path.parent) else Path()
    try:
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".partial")
    except OSError as exc:
        raise OutputError(f"cannot write in {folder}: {exc.strerror}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb", buffering=1024 * 1024) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _normal_mode(path))
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a folder
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _normal_mode(path: Path) -> int:
    """The mode an ordinary new file would get (mkstemp's is 0600), or the replaced file's."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_output(
    source: Source, plan: Plan, output: Path, fmt: str, stop: threading.Event | None = None
) -> None:
    """Write every row of the input, in order, with its result. Runs in a worker thread.

    The input is read again for the carried fields. If its files changed since the scan, each
    JSONL row is checked against the prompt that was sent (Parquet: any change is refused), so
    that an answer is never written beside a prompt it does not answer."""
    changed = plan.input_changed()
    if changed and source.kind == "parquet":
        raise InputChanged(f"{source.names[0]}: the input changed during the run; {_RERUN}")
    results = itertools.chain.from_iterable(plan.output_rows())
    with atomic_file(output) as handle:
        out = _Output(source, handle, fmt)
        written = 0
        for carried in source.carried():
            if stop is not None and stop.is_set():
                raise Interrupted("interrupted while writing the output", 0)
            raw = list(itertools.islice(results, len(carried)))
            if len(raw) != len(carried):
                raise InputChanged(f"{source.names[0]}: the input changed during the run; {_RERUN}")
            if changed and isinstance(carried, list):
                _check_unchanged(source, carried, raw, written)
            out.write(carried, [_finish(r) for r in raw])
            written += len(raw)
        if next(results, None) is not None or written != plan.total:
            raise InputChanged(f"{source.names[0]}: the input changed during the run; {_RERUN}")
        out.close()


_RERUN = "rerun the same command (answered rows are kept)"


def _check_unchanged(
    source: Source, objects: list[Mapping[str, Any]], rows: list[tuple[Any, ...]], first: int
) -> None:
    for pos, (obj, row) in enumerate(zip(objects, rows, strict=True), start=first):
        digest, bad = row[-1], row[1]
        if bad is not None:
            continue
        try:
            _row_id, prompt = interpret(obj, source.fields, pos)
        except _Bad:
            prompt = None
        if prompt is None or prompt_digest(prompt) != digest:
            raise InputChanged(
                f"{source.names[0]}: row {pos} changed during the run (its prompt is not the one "
                f"sent); {_RERUN}"
            )
