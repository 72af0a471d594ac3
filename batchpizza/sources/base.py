"""What every input kind gives the run: the `Source` protocol, and the batch of carried fields
that sinks write beside the results.

A source is read up to three times, each pass streaming: `scan` (validate every row, before
anything is sent), `prompts` (the rows still to send) and `carried` (the fields the output copies
through). Every pass goes through `rows.interpret`, so all three agree on what a row is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from batchpizza.errors import BadRow, InputError, RowProblem
from batchpizza.records import Prompt
from batchpizza.rows import (
    BadRecord,
    Fields,
    GoodRow,
    ScanBatch,
    digests,
    interpret,
    to_prompt,
)

if TYPE_CHECKING:
    import pyarrow as pa

BATCH_ROWS = 4096


class Columns(Protocol):
    """The carried columns of an input, as an output writes them."""

    names: list[str]

    def arrow_fields(self) -> list[pa.Field]:
        """The carried columns' Arrow fields (JSON text where a field's shapes conflict)."""
        ...

    def carry(self, schema: pa.Schema) -> pa.Schema:
        """The output `schema` with the input's schema metadata carried over, where it has any."""
        ...


class Carried(Protocol):
    """One batch of input rows' carried fields, in input order."""

    def __len__(self) -> int: ...

    def rows(self) -> list[Mapping[str, Any]]:
        """Each row as a mapping of carried field -> Python value (for JSONL output)."""
        ...

    def arrays(self, columns: Columns) -> list[pa.Array]:
        """The carried columns as Arrow arrays of `columns.arrow_fields()` types."""
        ...

    def head(self, n: int) -> Carried:
        """The first `n` rows (--limit ends the output inside a batch)."""
        ...


class Rows(Protocol):
    """What the run reads of any input, in a file or in memory: the rows to check, then those
    to send."""

    names: list[str]  # what messages call each file
    fields: Fields
    unit: str  # how a message places a row: "line" (JSONL, 1-based) or "row" (0-based)
    rows_from_lines: bool  # a spooled list of dicts: messages name the item, not the line

    def scan(self, limit: int | None = None) -> Iterator[ScanBatch]:
        """Every row, validated, in batches; only the first `limit` rows when given (--limit):
        the rows after them are never read."""
        ...

    def prompts(self, wanted: Iterable[int]) -> Generator[tuple[int, Prompt], None, None]:
        """(pos, prompt) of the rows at the given ascending positions; the others are skipped
        without being parsed."""
        ...

    def input_key(self) -> str | None:
        """What identifies the input's exact bytes (None: cannot tell, never reuse a scan)."""
        ...

    def scan_state(self) -> dict[str, Any]:
        """What the scan learned besides the rows, kept with it for the next run."""
        ...

    def restore(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class Source(Rows, Protocol):
    """An input file: its rows, and the fields an output file carries through beside them."""

    def carried(self) -> Iterator[Carried]: ...

    def columns(self) -> Columns: ...


def scan_batches(fields: Fields, rows: Iterable[tuple[int, int, int, Any]]) -> Iterator[ScanBatch]:
    """Batches of good and bad rows from (pos, file, at, object) items, where the object is a str,
    the problem, for a row that could not even be read as an object (a RowProblem for one read
    but bad as a whole). Every kind of source scans through this, so all agree on what a row
    is."""
    good: list[GoodRow] = []
    bad: list[BadRecord] = []
    blake2b, left = hashlib.blake2b, BATCH_ROWS  # (prompt_digest inline: a call a row saved)
    for pos, index, at, obj in rows:
        if not left:
            yield good, bad
            good, bad, left = [], [], BATCH_ROWS
        left -= 1
        if isinstance(obj, str):
            bad.append(BadRecord(pos, index, at, None, obj))
            continue
        if isinstance(obj, RowProblem):  # read, but bad whatever it holds; its id kept
            bad.append(BadRecord(pos, index, at, obj.id, obj.problem, obj.field))
            continue
        try:
            row = interpret(obj, fields, pos)
        except RowProblem as exc:
            bad.append(BadRecord(pos, index, at, exc.id, exc.problem, exc.field))
        else:
            if row[2] is None and row[3] is None:  # a prompt row (most): its text is the request
                text = row[1].encode("utf-8", "surrogatepass")
                good.append((pos, row[0], blake2b(text, digest_size=16).digest(), None, index, at))
            else:
                good.append((pos, row[0], *digests(row), index, at))
    if good or bad:
        yield good, bad


def prompt_of(obj: object, fields: Fields, pos: int) -> Prompt | None:
    """What to send for a row read again after the scan; None if it no longer reads (the file
    changed since the scan, which the output notices and says)."""
    # A dict (a parsed line, every row of a JSONL file) spares the Mapping ABC's check.
    if type(obj) is not dict and not isinstance(obj, Mapping):
        return None
    try:
        return to_prompt(interpret(obj, fields, pos))
    except RowProblem:
        return None


def describe(source: Rows, rows: Sequence[BadRecord]) -> tuple[BadRow, ...]:
    """Bad rows as the user reads them: file, line (JSONL) or row (Parquet), field, problem."""
    out = []
    # Rows in memory: a DataFrame's index label beside the position, where they differ.
    label_of: Callable[[int], str | None] | None = getattr(source, "index_label", None)
    for row in rows:
        name = source.names[row.file]
        if source.rows_from_lines:
            out.append(BadRow(name, row.problem, row=row.at - 1, field=row.field))
        elif source.unit == "line":
            out.append(BadRow(name, row.problem, line=row.at, field=row.field))
        else:
            label = None if label_of is None else label_of(row.at)
            out.append(BadRow(name, row.problem, row=row.at, field=row.field, label=label))
    return tuple(out)


def with_arrow_errors(*errors: type[Exception]) -> tuple[type[Exception], ...]:
    """`errors` and pyarrow's own, if pyarrow is loaded (if it is not, none can have happened)."""
    arrow = sys.modules.get("pyarrow")
    return (*errors, arrow.ArrowException) if arrow is not None else errors


@contextlib.contextmanager
def read_errors(name: str) -> Iterator[None]:
    """A file that breaks while being read (truncated gzip, torn Parquet page, I/O error) is an
    input error naming the file, not a traceback."""
    try:
        yield
    except InputError:
        raise
    except with_arrow_errors(OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{name}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None


def files_key(paths: Sequence[Path]) -> list[list[object]]:
    """What identifies the input files' exact bytes without reading them (path, size, times,
    inode), for a source's input_key: a scan is reused only while these are unchanged."""
    files: list[list[object]] = []
    for path in paths:
        st = path.stat()
        files.append([str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
    return files


def files_changed(input_key: str | None) -> bool | None:
    """Whether the input files an input_key recorded (a checkpoint's scan_key) are no longer as
    they were then: edited, grown, replaced or gone. None where it recorded no files (rows in
    memory, standard input, no scan yet). Files added to an input folder since are not seen."""
    try:
        recorded = json.loads(input_key)["files"] if input_key else None
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(recorded, list) or not recorded:
        return None
    try:
        return files_key([Path(str(entry[0])) for entry in recorded]) != recorded
    except OSError:  # gone, or no longer readable
        return True
