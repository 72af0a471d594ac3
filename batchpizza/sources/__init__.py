"""Inputs: a `Source` per kind (JSONL, Parquet, CSV/TSV), opened from what the user named."""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

from batchpizza.errors import InputError
from batchpizza.rows import Fields
from batchpizza.sources.base import Carried, Columns, Source, describe
from batchpizza.sources.delimited import CSV_SUFFIXES, TSV_SUFFIXES, DelimitedSource
from batchpizza.sources.jsonl import JsonlSource
from batchpizza.sources.parquet import ParquetSource

__all__ = [
    "Carried",
    "Columns",
    "DelimitedSource",
    "JsonlSource",
    "ParquetSource",
    "Source",
    "describe",
    "input_files",
    "open_source",
    "spool_stdin",
]

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")


def input_files(name: str) -> list[Path]:
    """The files INPUT names (a folder's Parquet files), for the same-file checks made before
    anything is read; no error here for what does not exist."""
    path = Path(name)
    if name == "-":
        return []
    if path.is_dir():
        # Hidden and `_` names left out, as pyarrow's datasets and Spark do: macOS's `._x`
        # companions, files a writer has not finished (`_temporary/`), notebook checkpoints.
        return sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix.lower() == ".parquet"
            and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
        )
    return [path]


def open_source(
    input: str, fields: Fields, stdin_copy: Path | None = None, label: str | None = None
) -> Source:
    """Resolve INPUT to its files. File-level problems raise InputError; rows are not read yet.
    For `-`, `stdin_copy` is where standard input was spooled (see spool_stdin). `label` names a
    single-file input in messages instead of its path (in-memory data spooled to a file)."""
    if input == "-":
        if stdin_copy is None:
            raise ValueError("standard input must be spooled first")
        return JsonlSource([stdin_copy], ["<stdin>"], fields, spooled=True)
    path = Path(input)
    name = label or input  # what every message calls it
    lower = path.name.lower()
    if path.is_dir():
        files = input_files(input)
        if not files:
            raise InputError(f"{name}: a directory without any .parquet file")
        return ParquetSource(files, [str(p) for p in files], fields)
    if not path.exists():
        raise InputError(f"{name}: no such file")
    if not lower.endswith((*JSONL_SUFFIXES, *CSV_SUFFIXES, *TSV_SUFFIXES, ".parquet")):
        raise InputError(
            f"{name}: unknown input type; expected .jsonl, .ndjson, .csv, .tsv (each optionally "
            ".gz), .parquet, a directory of .parquet files, or - for standard input"
        )
    try:
        with path.open("rb") as probe:
            probe.read(1)
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {exc.strerror or exc}") from None
    if lower.endswith(".parquet"):
        return ParquetSource([path], [name], fields)
    if lower.endswith(".gz"):
        _check_gzip(path, name)
    if lower.endswith((*CSV_SUFFIXES, *TSV_SUFFIXES)):
        return DelimitedSource(path, name, fields)
    source = JsonlSource([path], [name], fields)
    # In-memory rows spooled one per line: messages name the item (0-based), not the line.
    source.rows_from_lines = label is not None
    return source


def _check_gzip(path: Path, name: str) -> None:
    try:
        with gzip.open(path, "rb") as handle:
            handle.read(1)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{name}: not a readable gzip file: {exc}") from None


def spool_stdin(read: Callable[[int], bytes], dest: Path, stop: threading.Event) -> None:
    """Copy standard input (its `read`) to `dest`, so it can be validated whole and read again.
    Blocks on the stream: run it in a thread that an interrupt may abandon (`stop` is checked
    between chunks). For the real standard input pass `os.read` on its descriptor, not
    sys.stdin.buffer.read: an abandoned thread blocked in the buffered reader holds its lock, and
    the interpreter aborts at exit trying to take it."""
    try:
        with dest.open("wb") as handle:
            while chunk := read(1024 * 1024):
                if stop.is_set():
                    return
                handle.write(chunk)
    except OSError as exc:
        raise InputError(f"<stdin>: cannot read or copy it: {exc.strerror or exc}") from None
