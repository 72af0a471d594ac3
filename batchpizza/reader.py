"""Input files -> prompt rows, streamed in batches so memory does not grow with the input.

A `Source` is read up to three times, each pass streaming: `scan` (validate every row, before
anything is sent), `prompts` (the rows still to send) and `carried` (the fields the writer copies
through). Every pass goes through `interpret`, so all three agree on what a row is.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import sys
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from batchpizza import jsoncodec

if TYPE_CHECKING:  # pyarrow is imported where Parquet is read: a JSONL job never pays for it
    import pyarrow as pa
    import pyarrow.parquet as pq
from batchpizza.config import RunConfig
from batchpizza.errors import BadRow, InputError
from batchpizza.rows import (
    Fields,
    GoodRow,
    Row,
    ScanBatch,
    _Bad,
    interpret,
    json_type,
    prompt_digest,
    with_article,
)

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
MAX_LINE_BYTES = 16 * 1024 * 1024  # a longer "line" is a binary file or a missing newline
BATCH_ROWS = 4096
_BOM = b"\xef\xbb\xbf"


@dataclass
class Source:
    """The input as one or more files. Open with `open_source`."""

    kind: str  # "jsonl" or "parquet"
    paths: list[Path]
    names: list[str]  # what messages call each file
    fields: Fields
    spooled: Path | None = None  # standard input copied to disk, removed by close()
    # JSONL: the distinct (keys, value types) shapes of the rows, in first-seen order; a handful
    # in practice, so tracking them costs one C-level tuple per row instead of a loop per field.
    _shapes: dict[tuple[tuple[str, ...], tuple[type, ...]], None] = field(default_factory=dict)
    _kinds: dict[str, set[str]] = field(default_factory=dict)
    scanned_bytes: list[int] = field(default_factory=list)  # JSONL: bytes of each file scanned
    schema: pa.Schema | None = None  # Parquet: the columns of all its files, unified

    @property
    def field_types(self) -> dict[str, set[str]]:
        """JSONL: carried field name -> the kinds of value seen (see _kind), in first-seen order."""
        self._fold_shapes()
        return self._kinds

    def restore_field_types(self, kinds: dict[str, list[str]]) -> None:
        """Field types as a cached scan recorded them."""
        self._shapes.clear()
        self._kinds = {name: set(k) for name, k in kinds.items()}

    def _fold_shapes(self) -> None:
        kinds, id_name = self._kinds, self.fields.id
        for names, types in self._shapes:
            for name, kind in zip(names, types, strict=True):
                if name != id_name:
                    seen = kinds.setdefault(name, set())
                    if kind is not type(None):
                        seen.add(_KIND_OF.get(kind, "json"))
        self._shapes.clear()

    def _note_shape(self, obj: dict[str, Any]) -> None:
        self._shapes[tuple(obj), tuple(map(type, obj.values()))] = None
        if len(self._shapes) > 4096:  # rows of many shapes: fold now, keep memory flat
            self._fold_shapes()

    def close(self) -> None:
        if self.spooled is not None:
            self.spooled.unlink(missing_ok=True)

    # -- the three passes -------------------------------------------------------------------

    def scan(self) -> Iterator[ScanBatch]:
        """Every row, validated, in batches. Records the carried fields' JSON types on the way."""
        return self._scan(
            self._checked_jsonl() if self.kind == "jsonl" else self._checked_parquet()
        )

    def prompts(self, wanted: Iterable[int]) -> Iterator[tuple[int, str, str]]:
        """(pos, id, prompt) of the rows at the given ascending positions; the others are
        skipped without being parsed."""
        for pos, _file, _at, obj in self._objects(iter(wanted)):
            if not isinstance(obj, Mapping):
                continue  # the file changed since the scan; the writer will notice and say so
            try:
                row_id, prompt = interpret(obj, self.fields, pos)
            except _Bad:
                continue  # the file changed since the scan; the writer will notice and say so
            yield pos, row_id, prompt

    def carried(self) -> Iterator[list[Mapping[str, Any]] | pa.RecordBatch]:
        """For the writer, in input order: JSONL batches of dicts (the input objects), Parquet
        record batches without the id column."""
        if self.kind == "jsonl":
            batch: list[Mapping[str, Any]] = []
            for _pos, _file, _at, obj in self._objects(None):
                batch.append(obj if isinstance(obj, Mapping) else {})
                if len(batch) >= BATCH_ROWS:
                    yield batch
                    batch = []
            if batch:
                yield batch
            return
        for index, path in enumerate(self.paths):
            with _read_errors(self.names[index]):
                yield from _parquet_file(path, self.names[index]).iter_batches(BATCH_ROWS)

    # -- JSONL --------------------------------------------------------------------------------

    def _lines(self, scanning: bool = False) -> Iterator[tuple[int, int, bytes | None]]:
        """(file index, 1-based line, bytes or None when too long), blank lines skipped. The scan
        records how many bytes of each file it read; later passes read no further, so rows
        appended during a run (a cron job's growing file) wait for the next run."""
        for index, path in enumerate(self.paths):
            limit = None if scanning or not self.scanned_bytes else self.scanned_bytes[index]
            consumed = 0
            with _read_errors(self.names[index]), _open_binary(path, self.names[index]) as handle:
                number = 0
                while limit is None or consumed < limit:
                    line = handle.readline(MAX_LINE_BYTES + 1)
                    if not line:
                        break
                    consumed += len(line)
                    number += 1
                    if number == 1 and line.startswith(_BOM):
                        line = line[len(_BOM) :]
                    if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                        while (rest := handle.readline(MAX_LINE_BYTES)) and not rest.endswith(
                            b"\n"
                        ):
                            consumed += len(rest)
                        consumed += len(rest)
                        yield index, number, None
                        continue
                    if line.strip():
                        yield index, number, line
            if scanning:
                self.scanned_bytes[index] = consumed

    def _objects(self, wanted: Iterator[int] | None) -> Iterator[tuple[int, int, int, Any]]:
        """(pos, file, at, parsed object or None) of every row, or of the `wanted` positions
        (ascending); only the rows yielded are parsed."""
        target = next(wanted, None) if wanted is not None else 0
        if target is None:
            return
        rows = self._parquet_rows() if self.kind == "parquet" else self._lines()
        for pos, (index, at, data) in enumerate(rows):
            if wanted is not None and pos != target:
                continue
            obj = data
            if self.kind == "jsonl":
                try:
                    obj = _load(data) if isinstance(data, bytes) else None
                except ValueError:
                    obj = None  # a bad row that cannot even be read: it carries nothing
            yield pos, index, at, obj
            if wanted is not None:
                target = next(wanted, None)
                if target is None:
                    return

    def _scan(self, rows: Iterator[tuple[int, int, int, Any]]) -> Iterator[ScanBatch]:
        """Batches of good and bad rows from (pos, file, at, object) items, where the object is
        a str, the problem, for a row that could not even be read as an object."""
        fields = self.fields
        good: list[GoodRow] = []
        bad: list[Row] = []
        for pos, index, at, obj in rows:
            if len(good) + len(bad) >= BATCH_ROWS:
                yield good, bad
                good, bad = [], []
            if isinstance(obj, str):
                bad.append(Row(pos, index, at, None, obj))
                continue
            try:
                row_id, prompt = interpret(obj, fields, pos)
            except _Bad as exc:
                bad.append(Row(pos, index, at, exc.id, exc.problem, exc.field))
            else:
                good.append((pos, row_id, prompt_digest(prompt), index, at))
        if good or bad:
            yield good, bad

    def _checked_jsonl(self) -> Iterator[tuple[int, int, int, Any]]:
        big_int = jsoncodec.may_hold_big_int
        self.scanned_bytes = [0] * len(self.paths)
        for pos, (index, number, line) in enumerate(self._lines(scanning=True)):
            if line is None:
                yield pos, index, number, f"line longer than {MAX_LINE_BYTES} bytes"
                continue
            try:
                obj = _load(line)
            except ValueError as exc:
                yield pos, index, number, str(exc)
                continue
            if not isinstance(obj, dict):
                yield pos, index, number, f"not a JSON object but {with_article(json_type(obj))}"
                continue
            self._note_shape(obj)
            if big_int(line):
                self._note_big_ints(obj)
            yield pos, index, number, obj

    def _note_big_ints(self, obj: dict[str, Any]) -> None:
        """Integers beyond 64 bits cannot be an int64 column: such a field becomes JSON text."""
        for name, value in obj.items():
            if isinstance(value, int) and not -(2**63) <= value < 2**63 and name != self.fields.id:
                self._kinds.setdefault(name, set()).add("json")

    # -- Parquet ------------------------------------------------------------------------------

    def _parquet_columns(self, schema: pa.Schema, name: str) -> list[str]:
        f = self.fields
        present = set(schema.names)
        clash = sorted(present & f.reserved - {f.id})
        if clash:
            raise InputError(
                f"{name}: column {clash[0]!r} is named like an output column; rename it"
            )
        if f.prompt not in present and f.messages not in present and "custom_id" not in present:
            raise InputError(f"{name}: no {f.prompt!r} column and no {f.messages!r} column")
        if f.prompt in present and not _is_string(schema.field(f.prompt).type):
            raise InputError(
                f"{name}: column {f.prompt!r} must hold strings, not {schema.field(f.prompt).type}"
            )
        wanted = [f.prompt, f.messages, f.id, "custom_id", "body"]
        return [c for c in wanted if c in present]

    def _parquet_rows(self, check_all: bool = False) -> Iterator[tuple[int, int, Any]]:
        """(file index, row, object) of every row, objects holding the prompt, messages and id
        columns; NOT_UTF8 for a row whose strings are not valid UTF-8. With `check_all`, every
        column is decoded, so that a damaged page anywhere in the file is found now."""
        for index, path in enumerate(self.paths):
            name = self.names[index]
            pf = _parquet_file(path, name)
            columns = self._parquet_columns(pf.schema_arrow, name)
            at = 0
            with _read_errors(name):
                for rb in pf.iter_batches(BATCH_ROWS, columns=None if check_all else columns):
                    for obj in pylist(rb.select(columns)):
                        yield index, at, obj
                        at += 1

    def _checked_parquet(self) -> Iterator[tuple[int, int, int, Any]]:
        for pos, (index, at, obj) in enumerate(self._parquet_rows(check_all=True)):
            yield pos, index, at, "invalid UTF-8 in a string column" if obj is NOT_UTF8 else obj


def _load(line: bytes) -> Any:
    """A line's JSON value; ValueError saying why when no row can be made of it."""
    try:
        obj = jsoncodec.loads(line)
    except ValueError:
        raise ValueError(_why_not_json(line)) from None
    if b"\\u" in line and _lone_surrogate(obj):
        raise ValueError("invalid UTF-8: a lone surrogate escape (\\udXXX)")
    return obj


def _lone_surrogate(obj: object) -> bool:
    """JSON may escape half of a UTF-16 pair (\\ud800) alone: it parses (through json, orjson
    refuses it) but can never be written out as UTF-8, so the row would fail only after sending.
    Checked only on lines with an escape, so it costs nothing on the rest."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


NOT_UTF8 = object()  # a Parquet row whose strings cannot be decoded


def pylist(rb: pa.RecordBatch) -> list[Any]:
    """The batch as Python objects; where a string is not valid UTF-8, row by row, NOT_UTF8 for
    each row that cannot be decoded."""
    try:
        return rb.to_pylist()  # type: ignore[no-any-return]
    except UnicodeDecodeError:
        rows: list[Any] = []
        for i in range(rb.num_rows):
            try:
                rows.extend(rb.slice(i, 1).to_pylist())
            except UnicodeDecodeError:
                rows.append(NOT_UTF8)
        return rows


def _why_not_json(line: bytes) -> str:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"invalid UTF-8 at byte {exc.start + 1}"
    try:
        import json

        json.loads(text)
    except json.JSONDecodeError as exc:
        return f"invalid JSON: {exc.msg} at column {exc.colno}"
    except ValueError as exc:
        return f"invalid JSON: {exc}"
    return "invalid JSON"


# Python type of a parsed JSON value -> the kind the writer maps to an Arrow type.
_KIND_OF: dict[type, str] = {bool: "bool", int: "int", float: "float", str: "str"}


def _is_string(dtype: pa.DataType) -> bool:
    import pyarrow as pa

    return bool(
        pa.types.is_string(dtype)
        or pa.types.is_large_string(dtype)
        or (pa.types.is_dictionary(dtype) and _is_string(dtype.value_type))
    )


@contextlib.contextmanager
def _read_errors(name: str) -> Iterator[None]:
    """A file that breaks while being read (truncated gzip, torn Parquet page, I/O error) is an
    input error naming the file, not a traceback."""
    try:
        yield
    except InputError:
        raise
    except _with_arrow_errors(OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{name}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None


def _open_binary(path: Path, name: str) -> IO[bytes]:
    try:
        if path.name.lower().endswith(".gz"):
            return gzip.open(path, "rb")  # type: ignore[return-value]
        return path.open("rb", buffering=1024 * 1024)
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {exc.strerror or exc}") from None


def _with_arrow_errors(*errors: type[Exception]) -> tuple[type[Exception], ...]:
    """`errors` and pyarrow's own, if pyarrow is loaded (if it is not, none can have happened)."""
    arrow = sys.modules.get("pyarrow")
    return (*errors, arrow.ArrowException) if arrow is not None else errors


def _parquet_file(path: Path, name: str) -> pq.ParquetFile:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    except _with_arrow_errors(ValueError) as exc:
        raise InputError(f"{name}: not a readable Parquet file: {exc}") from None


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


def open_source(config: RunConfig, stdin_copy: Path | None = None) -> Source:
    """Resolve INPUT to its files. File-level problems raise InputError; rows are not read yet.
    For `-`, `stdin_copy` is where standard input was spooled (see spool_stdin)."""
    fields = Fields.from_config(config)
    if config.input == "-":
        if stdin_copy is None:
            raise ValueError("standard input must be spooled first")
        return Source("jsonl", [stdin_copy], ["<stdin>"], fields, spooled=stdin_copy)
    path = Path(config.input)
    name = str(config.input)
    lower = path.name.lower()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() == ".parquet")
        if not files:
            raise InputError(f"{name}: a directory without any .parquet file")
        return _parquet_source(files, [str(p) for p in files], fields)
    if not path.exists():
        raise InputError(f"{name}: no such file")
    if lower.endswith(JSONL_SUFFIXES):
        kind = "jsonl"
    elif lower.endswith(".parquet"):
        kind = "parquet"
    else:
        raise InputError(
            f"{name}: unknown input type; expected .jsonl, .ndjson (optionally .gz), "
            ".parquet, a directory of .parquet files, or - for standard input"
        )
    try:
        with path.open("rb") as probe:
            probe.read(1)
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {exc.strerror or exc}") from None
    if kind == "jsonl" and lower.endswith(".gz"):
        _check_gzip(path, name)
    if kind == "parquet":
        return _parquet_source([path], [name], fields)
    return Source(kind, [path], [name], fields)


def _parquet_source(paths: list[Path], names: list[str], fields: Fields) -> Source:
    """Parquet files whose columns must agree, checked now: a clash found only when the output
    is written would come after every row was sent."""
    import pyarrow as pa

    schemas = [
        _parquet_file(path, name).schema_arrow for path, name in zip(paths, names, strict=True)
    ]
    try:
        schema = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowException, TypeError) as exc:
        raise InputError(f"{names[0]}: the Parquet files have clashing columns: {exc}") from None
    return Source("parquet", paths, names, fields, schema=schema)


def _check_gzip(path: Path, name: str) -> None:
    try:
        with gzip.open(path, "rb") as handle:
            handle.read(1)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{name}: not a readable gzip file: {exc}") from None


def describe_bad(source: Source, rows: Sequence[Row]) -> tuple[BadRow, ...]:
    out = []
    for row in rows:
        name = source.names[row.file]
        if source.kind == "jsonl":
            out.append(BadRow(name, row.problem, line=row.at, field=row.field))
        else:
            out.append(BadRow(name, row.problem, row=row.at, field=row.field))
    return tuple(out)
