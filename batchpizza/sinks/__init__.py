"""Outputs: a `Sink` per format, fed the input's carried fields and the results in input order,
written aside and renamed into place whole (files.atomic_file)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Protocol

from batchpizza.checkpoint import Checkpoint
from batchpizza.collector import collector_paused
from batchpizza.errors import InputChanged, Interrupted, RowProblem
from batchpizza.files import atomic_file
from batchpizza.records import OutputRow
from batchpizza.rows import digests, interpret
from batchpizza.sinks.built import output_batch, output_columns
from batchpizza.sinks.jsonl import JsonlSink
from batchpizza.sinks.parquet import ParquetSink
from batchpizza.sources import Carried, Columns, Source
from batchpizza.structured.columns import ParsedColumns, check_flatten

_RERUN = "rerun the same command (answered rows are kept)"


class Sink(Protocol):
    def write(self, carried: Carried, rows: list[OutputRow]) -> None: ...

    def close(self) -> None: ...


SINKS: dict[str, Any] = {"jsonl": JsonlSink, "parquet": ParquetSink}


def open_sink(
    fmt: str,
    handle: IO[bytes],
    columns: Columns,
    results: tuple[str, ...],
    checkpoint: Checkpoint | None = None,
    parsed: ParsedColumns | None = None,
) -> Sink:
    if fmt == "openai-batch":  # imported only when asked for
        from batchpizza.sinks.openai_batch import OpenAIBatchSink

        statuses = checkpoint.failure_statuses() if checkpoint is not None else None
        return OpenAIBatchSink(handle, columns, results, statuses)
    if parsed is not None:  # --schema: the parsed answer's columns after the results'
        check_flatten(parsed, ["id", *columns.names, *results])
    sink: Sink = SINKS[fmt](handle, columns, results, parsed)
    return sink


def write_output(
    source: Source,
    checkpoint: Checkpoint,
    output: Path,
    fmt: str,
    *,
    results: tuple[str, ...],
    scan_key: str | None,
    limit: int | None = None,
    stop: threading.Event | None = None,
    samples: int = 1,
    parsed: ParsedColumns | None = None,
) -> None:
    """Write every row of the input, in order, with its result. Runs in a worker thread.

    The input is read again for the carried fields. If its files changed since the scan, each
    JSONL row is checked against the prompt that was sent (Parquet: any change is refused), so
    that an answer is never written beside a prompt it does not answer."""
    changed = scan_key is not None and source.input_key() != scan_key
    if changed and source.unit == "row":
        raise InputChanged(f"{source.names[0]}: the input changed during the run; {_RERUN}")
    bodies = fmt == "openai-batch"  # the servers' reply bodies, kept verbatim in its lines
    rows = itertools.chain.from_iterable(checkpoint.output_rows(limit, bodies=bodies))
    total = checkpoint.rows(limit)
    with collector_paused(), atomic_file(output) as handle:
        columns = output_columns(source.fields, source.columns())
        sink = open_sink(fmt, handle, columns, results, checkpoint, parsed)
        try:
            written = 0
            for carried in source.carried():
                if written >= total:
                    break
                if stop is not None and stop.is_set():
                    raise Interrupted("interrupted while writing the output", 0)
                page = list(itertools.islice(rows, len(carried) * samples))
                if len(page) != len(carried) * samples:
                    if limit is None or len(page) == 0:
                        raise InputChanged(
                            f"{source.names[0]}: the input changed during the run; {_RERUN}"
                        )
                    carried = carried.head(len(page) // samples)
                if changed:  # each row's samples ask one prompt: its first stands for them
                    _check_unchanged(source, carried.rows(), page[::samples], written // samples)
                batch = output_batch(source.fields, carried)
                sink.write(batch if samples == 1 else Repeated(batch, samples), page)
                written += len(page)
            if next(rows, None) is not None or written != total:
                raise InputChanged(f"{source.names[0]}: the input changed during the run; {_RERUN}")
            sink.close()
        except BaseException:
            abandon = getattr(sink, "abandon", None)
            if abandon is not None:
                abandon()
            raise


class Repeated:
    """Carried rows, each `times` times in a row (--repeat: a row's samples)."""

    def __init__(self, carried: Carried, times: int) -> None:
        self.carried = carried
        self.times = times

    def __len__(self) -> int:
        return len(self.carried) * self.times

    def rows(self) -> list[Mapping[str, Any]]:
        return [row for row in self.carried.rows() for _ in range(self.times)]

    def arrays(self, columns: Columns) -> list[Any]:
        import pyarrow as pa

        order = pa.array([i for i in range(len(self.carried)) for _ in range(self.times)])
        return [array.take(order) for array in self.carried.arrays(columns)]

    def head(self, n: int) -> Carried:
        return Repeated(self.carried.head(n // self.times), self.times)


def _check_unchanged(
    source: Source, objects: list[Mapping[str, Any]], rows: list[OutputRow], first: int
) -> None:
    for pos, (obj, row) in enumerate(zip(objects, rows, strict=True), start=first):
        if row.digest is None:
            continue
        try:
            digest: bytes | None = digests(interpret(obj, source.fields, pos))[0]
        except RowProblem:
            digest = None
        if digest != row.digest:
            raise InputChanged(
                f"{source.names[0]}: row {pos} changed during the run (its prompt is not the one "
                f"sent); {_RERUN}"
            )
