"""JSONL input (.jsonl, .ndjson, either optionally .gz, or standard input spooled to a file)."""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import logging
from collections.abc import Generator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import batchpizza.jsoncodec as jsoncodec
from batchpizza.errors import InputError
from batchpizza.fieldtypes.inference import FieldTypes
from batchpizza.records import Prompt
from batchpizza.rows import (
    Fields,
    ScanBatch,
    json_type,
    with_article,
)
from batchpizza.sources.base import (
    BATCH_ROWS,
    Columns,
    files_key,
    prompt_of,
    read_errors,
    scan_batches,
)
from batchpizza.sources.jsonl_hints import invalid_json_hint, not_an_object_hint

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("batchpizza")

MAX_LINE_BYTES = 16 * 1024 * 1024  # a longer "line" is a binary file or a missing newline
# Deeper values are refused as bad rows: every later stage (type inference, Arrow, the writers)
# walks values recursively, and a row 990 deep crashed the run with a RecursionError (seen).
MAX_DEPTH = 100
_BOM = b"\xef\xbb\xbf"
_DIGIT_RUN = b"0" * 19  # see jsoncodec.may_hold_big_int
# A line's shape, for the scan's tests of it in one pass: digits as "0" (a run of 19 may be an
# integer beyond 64 bits), "{" as "[" (brackets count the nesting), backslash and "u" as they are
# (an escape to look into), anything else as "x".
_SHAPE = bytes(
    48 if 48 <= b <= 57 else b if b in b"[\\u" else 91 if b == 123 else 120 for b in range(256)
)
# The scan marks where every this-many-th row starts (position, file, byte, line), so that a
# rerun's first row to send is read after a seek, not after every row before it (10,000,000
# lines read to the last ten thousand: seconds before the first request).
MARK_EVERY = 1 << 16
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class JsonlColumns:
    """The carried fields of a JSONL input and the Arrow types inferred for them in the scan."""

    def __init__(self, names: list[str], types: FieldTypes) -> None:
        self.names = names
        self.field_types = types
        self._types: dict[str, pa.DataType | None] | None = None

    def types(self) -> dict[str, pa.DataType | None]:
        """Name -> Arrow type; None means JSON text (shapes that clash across rows)."""
        if self._types is None:
            self._types = self.field_types.arrow_types(self.names)
        return self._types

    def arrow_fields(self) -> list[pa.Field]:
        import pyarrow as pa

        return [pa.field(n, t or pa.string()) for n, t in self.types().items()]

    def carry(self, schema: pa.Schema) -> pa.Schema:
        return schema


class DictBatch:
    """Carried JSONL rows: the parsed objects themselves."""

    def __init__(self, objects: list[Mapping[str, Any]]) -> None:
        self.objects = objects

    def __len__(self) -> int:
        return len(self.objects)

    def rows(self) -> list[Mapping[str, Any]]:
        return self.objects

    def head(self, n: int) -> DictBatch:
        return DictBatch(self.objects[:n])

    def arrays(self, columns: Columns) -> list[pa.Array]:
        assert isinstance(columns, JsonlColumns)
        return [
            FieldTypes.to_array([obj.get(name) for obj in self.objects], arrow_type)
            for name, arrow_type in columns.types().items()
        ]


class JsonlSource:
    unit = "line"

    def __init__(self, paths: list[Path], names: list[str], fields: Fields, spooled: bool = False):
        self.paths = paths
        self.names = names
        self.fields = fields
        self.spooled = spooled  # standard input copied to disk: removed by close()
        # A list of dicts spooled one per line: messages name the item (0-based), not the line.
        self.rows_from_lines = False
        # The carried fields' shapes, learned in the scan (memory: the schema, not the rows).
        self.types = FieldTypes(exclude={fields.id})
        self.scanned_bytes: list[
            int
        ] = []  # bytes of each file the scan read; later passes stop there
        self.marks: list[list[int]] = []  # [position, file, byte, line] of every MARK_EVERY-th row

    # -- what the scan learned ----------------------------------------------------------------

    def columns(self) -> JsonlColumns:
        # A field named like an output column only exists in bad rows (a good row with one is
        # refused): it is not carried, or the output would hold two such columns.
        reserved = self.fields.reserved | {"id"}
        return JsonlColumns([n for n in self.types.names if n not in reserved], self.types)

    def scan_state(self) -> dict[str, Any]:
        return {"types": self.types.to_json(), "bytes": self.scanned_bytes, "marks": self.marks}

    def restore(self, state: dict[str, Any]) -> None:
        self.types = FieldTypes.from_json(state["types"])
        self.scanned_bytes = list(state["bytes"])
        self.marks = [list(mark) for mark in state.get("marks", ())]  # none in an older scan

    def input_key(self) -> str | None:
        if self.spooled:
            return None
        files = files_key(self.paths)
        return json.dumps({"kind": "jsonl", "fields": list(self.fields.key()), "files": files})

    def close(self) -> None:
        if self.spooled:
            for path in self.paths:
                path.unlink(missing_ok=True)

    # -- the passes ---------------------------------------------------------------------------

    def scan(self, limit: int | None = None) -> Iterator[ScanBatch]:
        """Every row (the first `limit`), validated, in batches. Infers the carried fields'
        types on the way."""
        return scan_batches(self.fields, self._checked(limit))

    def prompts(self, wanted: Iterable[int]) -> Generator[tuple[int, Prompt], None, None]:
        for pos, _file, _at, obj in self._objects(iter(wanted)):
            prompt = prompt_of(obj, self.fields, pos)
            if prompt is not None:
                yield pos, prompt

    def carried(self) -> Iterator[DictBatch]:
        batch: list[Mapping[str, Any]] = []
        for _pos, _file, _at, obj in self._objects(None):
            batch.append(obj if type(obj) is dict else {})  # parsed JSON: a dict or not an object
            if len(batch) >= BATCH_ROWS:
                yield DictBatch(batch)
                batch = []
        if batch:
            yield DictBatch(batch)

    # -- reading ------------------------------------------------------------------------------

    def _lines(
        self, scanning: bool = False, mark: list[int] | None = None
    ) -> Generator[tuple[int, int, bytes | None], None, None]:
        """(file index, 1-based line, bytes or None when too long), blank lines skipped; from
        the row `mark` names when given. The scan records how many bytes of each file it read;
        later passes read no further, so rows appended during a run (a cron job's growing file)
        wait for the next run. It also marks where every MARK_EVERY-th row starts."""
        _pos, first, offset, line_number = mark if mark is not None else (0, 0, 0, 1)
        rows = 0  # yielded so far (while scanning: the position of the next row)
        next_mark = MARK_EVERY if scanning else -1
        for index, path in enumerate(self.paths):
            if index < first:
                continue
            limit = None if scanning or not self.scanned_bytes else self.scanned_bytes[index]
            consumed = offset if index == first else 0
            try:
                with (
                    read_errors(self.names[index]),
                    _open_binary(path, self.names[index]) as handle,
                ):
                    number = 0
                    if consumed:
                        handle.seek(consumed)
                        number = line_number - 1
                    while limit is None or consumed < limit:
                        line = handle.readline(MAX_LINE_BYTES + 1)
                        if not line:
                            break
                        number += 1
                        if number == 1:
                            if line.startswith(_UTF16_BOMS):
                                raise InputError(
                                    f"{self.names[index]}: a UTF-16 file; JSONL must be UTF-8"
                                )
                            if line.startswith(_BOM):
                                consumed += len(_BOM)
                                line = line[len(_BOM) :]
                        if rows == next_mark and line.strip():
                            self.marks.append([rows, index, consumed, number])
                            next_mark += MARK_EVERY
                        # No newline (one test, not two calls a line): too long, or the last.
                        if not line or line[-1] != 10:
                            if len(line) > MAX_LINE_BYTES:
                                consumed += len(line)
                                while (
                                    rest := handle.readline(MAX_LINE_BYTES)
                                ) and not rest.endswith(b"\n"):
                                    consumed += len(rest)
                                consumed += len(rest)
                                rows += 1
                                yield index, number, None
                                continue
                            if scanning and not self.spooled and line.strip() and _torn(line):
                                # The file's last line, without its newline and not JSON: a line
                                # still being written by an appender. It waits for the next run.
                                # Standard input has ended for good: its cut line is a bad row.
                                log.warning(
                                    "%s:%d: the last line has no newline and is not complete "
                                    "JSON; left for the next run (is the file still being "
                                    "written?)",
                                    self.names[index],
                                    number,
                                )
                                break
                        consumed += len(line)
                        if line and not line.isspace():  # (strip() copied every line)
                            rows += 1
                            yield index, number, line
            finally:
                if scanning:  # also when the scan is closed after --limit's rows
                    self.scanned_bytes[index] = consumed

    def _objects(self, wanted: Iterator[int] | None) -> Iterator[tuple[int, int, int, Any]]:
        """(pos, file, at, parsed object or None) of every row, or of the `wanted` positions
        (ascending); only the rows yielded are parsed."""
        target = next(wanted, None) if wanted is not None else 0
        if target is None:
            return
        # From the last mark at or before the first row wanted.
        mark = next((m for m in reversed(self.marks) if m[0] <= target), None)
        start = 0 if mark is None else mark[0]
        for pos, (index, at, data) in enumerate(self._lines(mark=mark), start=start):
            if wanted is not None and pos != target:
                continue
            try:
                obj = read_line(data) if data is not None else None
            except ValueError:
                obj = None  # a bad row that cannot even be read: it carries nothing
            yield pos, index, at, obj
            if wanted is not None:
                target = next(wanted, None)
                if target is None:
                    return

    def _checked(self, limit: int | None = None) -> Iterator[tuple[int, int, int, Any]]:
        """(pos, file, at, object) of every row (the first `limit`), the object a str, the
        problem, for a row that cannot be read as an object."""
        self.scanned_bytes = [0] * len(self.paths)
        self.marks = []
        self.types = FieldTypes(exclude={self.fields.id})
        observe = self.types.observe
        lines = self._lines(scanning=True)
        # Closed once the first `limit` rows are read, so that it records how far it read now
        # (not whenever the collector gets to it): the later passes read that far, no further.
        with contextlib.closing(lines):
            for pos, (index, number, line) in enumerate(
                lines if limit is None else itertools.islice(lines, limit)
            ):
                if line is None:
                    yield pos, index, number, f"line longer than {MAX_LINE_BYTES} bytes"
                    continue
                try:
                    obj = read_line(line)
                except ValueError as exc:
                    problem = str(exc)
                    if self.spooled and not line.endswith(b"\n"):
                        problem = f"the last line is cut short (standard input ended in it): {exc}"
                    yield pos, index, number, problem
                    continue
                if not isinstance(obj, dict):
                    problem = f"not a JSON object but {with_article(json_type(obj))}"
                    problem += not_an_object_hint(obj)
                    yield pos, index, number, problem
                    continue
                observe(obj, line)
                yield pos, index, number, obj


def _torn(line: bytes) -> bool:
    try:
        load(line)
    except ValueError:
        return True
    return False


_ORJSON = jsoncodec.orjson_loads()


def read_line(line: bytes) -> Any:
    """`load`, its common case first: orjson alone on a line that cannot hold a big integer,
    without an escape to look into or deep nesting: one pass over the line's shape tells (a row
    read again to be sent: 3.9 -> 3.5 us, measured, against load()'s checks one by one).
    Anything else, and whatever orjson refuses, goes through load(), which says why."""
    shape = line.translate(_SHAPE)
    if (
        _ORJSON is not None
        and _DIGIT_RUN not in shape
        and b"\\u" not in shape
        and shape.count(b"[") <= MAX_DEPTH
    ):
        try:
            return _ORJSON(line)
        except ValueError:
            pass
    return load(line)


def load(line: bytes) -> Any:
    """A line's JSON value; ValueError saying why when no row can be made of it."""
    if line.startswith(_BOM):  # a file saved with a BOM, concatenated after another
        line = line[len(_BOM) :]
    try:
        obj = jsoncodec.loads(line)
    except ValueError as exc:
        raise ValueError(_why_not_json(line, exc)) from None
    if b"\\u" in line and _lone_surrogate(obj):
        raise ValueError("invalid UTF-8: a lone surrogate escape (\\udXXX)")
    # Counting brackets is a C-speed test that spares the walk on every ordinary line.
    if line.count(b"[") + line.count(b"{") > MAX_DEPTH and _deeper_than(obj, MAX_DEPTH):
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    return obj


def _deeper_than(obj: object, limit: int) -> bool:
    """Is `obj` nested deeper than `limit`? Walked with a stack, not recursion."""
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return False


def _lone_surrogate(obj: object) -> bool:
    """JSON may escape half of a UTF-16 pair (\\ud800) alone: it parses (through json, orjson
    refuses it) but can never be written out as UTF-8, so the row would fail only after sending.
    Checked only on lines with an escape, so it costs nothing on the rest."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _why_not_json(line: bytes, error: ValueError) -> str:
    try:
        # The line's end is no part of its JSON: a string cut short there is unterminated, not a
        # string holding a control character.
        text = line.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        return f"invalid UTF-8 at byte {exc.start + 1}"
    if "out of range" in str(error) or "is not JSON" in str(error) or "nested" in str(error):
        return f"invalid JSON: {error}"
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        # Some of json's messages end in "at" ("Unterminated string starting at").
        at = "" if exc.msg.endswith(" at") else " at"
        hint = invalid_json_hint(text, exc.msg)
        return hint or f"invalid JSON: {exc.msg}{at} column {exc.colno}"
    except (ValueError, RecursionError) as exc:
        return f"invalid JSON: {exc}"
    return f"invalid JSON: {error}"


def _open_binary(path: Path, name: str) -> IO[bytes]:
    try:
        if path.name.lower().endswith(".gz"):
            return gzip.open(path, "rb")  # type: ignore[return-value]
        return path.open("rb", buffering=1024 * 1024)
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {exc.strerror or exc}") from None
