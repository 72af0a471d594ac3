"""CSV and TSV input (optionally gzipped), typed by pyarrow's CSV reader: a header line names the
columns, every other column gets the type its values share (int64, double, bool, timestamp,
string), and the prompt and id columns are read as strings (a prompt `42` is text, an id `007`
keeps its zeros).

The file is read once, whole, into an Arrow table that the three passes (scan, prompts, carried)
share: pyarrow's streaming reader fixes each column's type from the first block and fails on a
later value that does not fit it, while the whole-file reader widens the type instead. Bad rows
are named by their physical line (1-based, the header is line 1), counted by Python's csv module
during the scan, since pyarrow counts records, not lines (a quoted value may span lines).
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import itertools
import json
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from batchpizza.errors import InputError, RowProblem
from batchpizza.records import Prompt
from batchpizza.rows import Fields, ScanBatch
from batchpizza.sources.base import BATCH_ROWS, files_key, prompt_of, read_errors, scan_batches
from batchpizza.sources.delimited_checks import (
    check_encoding,
    exact_integers,
    header_hint,
    quote_inside,
    well_quoted,
)
from batchpizza.sources.parquet import NOT_UTF8, ArrowBatch, ArrowColumns, pylist, wanted_columns
from batchpizza.written import with_text

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.csv as pacsv

CSV_SUFFIXES = (".csv", ".csv.gz")
TSV_SUFFIXES = (".tsv", ".tsv.gz")


class WrittenBatch(ArrowBatch):
    """Carried rows of a CSV file, and for a prompt builder the text of the columns whose
    values print otherwise than the file wrote them (DelimitedSource._texts)."""

    def __init__(self, batch: pa.RecordBatch, texts: pa.Table | None) -> None:
        super().__init__(batch)
        self.texts = texts

    def head(self, n: int) -> WrittenBatch:
        texts = None if self.texts is None else self.texts.slice(0, n)
        return WrittenBatch(self.batch.slice(0, n), texts)

    def builder_rows(self, columns: list[str] | None = None) -> list[Any]:
        """The rows as a prompt builder reads them, each value whose text the batch holds
        printing as that text: of `columns` alone as pylist gives them (NOT_UTF8 for a row
        that cannot be decoded), or all of them as `rows` does."""
        rows = self.rows() if columns is None else pylist(self.batch.select(columns))
        return rows if self.texts is None else with_text(rows, self.texts.to_pylist())


class DelimitedSource:
    """One CSV or TSV file: its rows, and its columns carried through with their inferred types."""

    unit = "line"
    rows_from_lines = False

    def __init__(self, path: Path, name: str, fields: Fields) -> None:
        self.paths = [path]
        self.names = [name]
        self.fields = fields
        lower = path.name.lower()
        self.delimiter = "\t" if lower.endswith(TSV_SUFFIXES) else ","
        self.gzipped = lower.endswith(".gz")
        # Rows whose field count differs from the header's: position -> the problem. They are
        # bad rows, kept in their place (as null rows) so that every pass agrees on positions.
        self.ragged: dict[int, str] = {}
        # Rows with a quote inside a quoted value (_misquoted): position -> the problem. Bad
        # rows, their id still read.
        self.misquoted: dict[int, str] = {}
        self._taken: pa.Array | None = None  # where _read put the ragged rows back
        check_encoding(path, self.gzipped, name)
        self.table = self._read()
        self.schema = self.table.schema
        names = self.schema.names
        if len(set(names)) != len(names):
            unnamed = [str(i + 1) for i, n in enumerate(names) if not n]
            if len(unnamed) > 1:  # one is pandas' index, written without a name: read as ''
                columns = f"{', '.join(unnamed[:-1])} and {unnamed[-1]}"
                raise InputError(f"{name}: the header leaves columns {columns} without a name")
            twice = sorted({n for n in names if names.count(n) > 1})
            raise InputError(f"{name}: the header names column {twice[0]!r} twice; rename one")
        self.columns_read: list[str] = []
        if names:  # an empty file is an empty input, as for JSONL
            try:
                self.columns_read = wanted_columns(fields, self.schema, name)
            except InputError as exc:
                hint = header_hint(names, self.delimiter, fields.prompt)
                raise InputError(f"{exc}{hint}") from None
        with read_errors(name):
            self.texts = self._texts()

    def _read(self) -> pa.Table:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        name = self.names[0]
        ragged: list[tuple[int, int, int]] = []

        def bad_row(row: Any) -> str:
            # row.number counts records from 1, the header included, blank lines not; it is
            # known because the reader runs on one thread.
            ragged.append((row.number, row.expected_columns, row.actual_columns))
            return "skip"

        parse = pacsv.ParseOptions(
            delimiter=self.delimiter, newlines_in_values=True, invalid_row_handler=bad_row
        )
        as_text = {c: pa.string() for c in (self.fields.prompt, self.fields.id)}
        # check_utf8=False: a row with invalid UTF-8 is a bad row of its own (NOT_UTF8), not a
        # file that cannot be read at all.
        convert = pacsv.ConvertOptions(column_types=as_text, check_utf8=False)
        try:
            table = self._read_csv(convert, parse)
            table = exact_integers(table, self._read_text, set(as_text))
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" in str(exc):
                return pa.table({})
            if "straddles two block boundaries" in str(exc):
                raise InputError(
                    f"{name}: a row longer than 16 MiB (or a quote opened and never closed "
                    "before then); split its value, or give the input as JSONL or Parquet"
                ) from None
            raise InputError(f"{name}: not a readable CSV file: {exc}") from None
        except (OSError, EOFError, pa.ArrowException) as exc:
            raise InputError(
                f"{name}: cannot read: {getattr(exc, 'strerror', None) or exc}"
            ) from None
        if not ragged:
            return table
        # The skipped rows back in their places, as rows of nulls.
        rows = table.num_rows + len(ragged)
        skipped = {number - 2: (want, got) for number, want, got in ragged}
        for pos, (want, got) in skipped.items():
            self.ragged[pos] = f"expected {want} fields as the header has, found {got}"
        taken: list[int | None] = []
        index = 0
        for pos in range(rows):
            if pos in skipped:
                taken.append(None)
            else:
                taken.append(index)
                index += 1
        self._taken = pa.array(taken, pa.int64())
        return table.take(self._taken)

    def _read_csv(self, convert: pacsv.ConvertOptions, parse: pacsv.ParseOptions) -> pa.Table:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        read = pacsv.ReadOptions(use_threads=False, block_size=1 << 24)
        # The compression said outright: pyarrow's guess from the name misses `.GZ`.
        compression = "gzip" if self.gzipped else None
        with pa.input_stream(str(self.paths[0]), compression=compression) as stream:
            return pacsv.read_csv(
                stream, read_options=read, parse_options=parse, convert_options=convert
            )

    def _read_text(self, columns: list[str]) -> pa.Table:
        """`columns` as the file's text (null where the typed read has null), the rows the
        typed read skipped skipped too (they were counted then)."""
        import pyarrow as pa
        import pyarrow.csv as pacsv

        again = pacsv.ParseOptions(
            delimiter=self.delimiter, newlines_in_values=True, invalid_row_handler=_skip
        )
        text = pacsv.ConvertOptions(
            column_types=dict.fromkeys(columns, pa.string()),
            include_columns=columns,
            strings_can_be_null=True,
            check_utf8=False,
        )
        return self._read_csv(text, again)

    def _texts(self) -> pa.Table | None:
        """For a prompt builder, the text of each column it reads whose type prints otherwise
        than the file wrote it (a double's `1` as `1.0`: written.py), row for row as the table
        (the ragged rows null)."""
        import pyarrow as pa

        if self.fields.build is None:
            return None
        columns = [
            c
            for c in self.columns_read
            if c not in (self.fields.id, self.fields.prompt)
            and (
                pa.types.is_floating(t := self.schema.field(c).type)
                or pa.types.is_timestamp(t)
                or pa.types.is_time(t)
            )
        ]
        if not columns:
            return None
        text = self._read_text(columns)
        return text if self._taken is None else text.take(self._taken)

    def columns(self) -> ArrowColumns:
        return ArrowColumns(self.schema, self.fields.id)

    def scan_state(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        pass

    def input_key(self) -> str | None:
        key = {"kind": "csv", "delimiter": self.delimiter, "fields": list(self.fields.key())}
        return json.dumps({**key, "files": files_key(self.paths[:1])})

    def close(self) -> None:
        pass

    def scan(self, limit: int | None = None) -> Iterator[ScanBatch]:
        lines = self._lines()

        def rows() -> Iterator[tuple[int, int, int, Any]]:
            # The line counter is closed after --limit's rows: it restores the csv module's limit.
            with contextlib.closing(lines):
                for pos, obj in enumerate(itertools.islice(self._objects(), limit)):
                    line = next(lines, 0)
                    if pos in self.ragged:
                        obj = self.ragged[pos]
                    elif pos in self.misquoted:
                        row_id = obj.get(self.fields.id) if isinstance(obj, dict) else None
                        obj = RowProblem(self.misquoted[pos], None, row_id or None)
                    elif obj is NOT_UTF8:
                        obj = "invalid UTF-8 in a string column"
                    yield pos, 0, line, obj

        return scan_batches(self.fields, rows())

    def prompts(self, wanted: Iterable[int]) -> Generator[tuple[int, Prompt], None, None]:
        it = iter(wanted)
        target = next(it, None)
        if target is None:
            return
        for pos, obj in enumerate(self._objects()):
            if pos != target:
                continue
            prompt = prompt_of(obj, self.fields, pos)
            if prompt is not None:
                yield pos, prompt
            target = next(it, None)
            if target is None:
                return

    def carried(self) -> Iterator[WrittenBatch]:
        at = 0
        for batch in self.table.to_batches(BATCH_ROWS):
            texts = None if self.texts is None else self.texts.slice(at, batch.num_rows)
            at += batch.num_rows
            yield WrittenBatch(batch, texts)

    def _objects(self) -> Iterator[Any]:
        """Each row's prompt, messages and id columns as a dict (None for a ragged row)."""
        if not self.columns_read:
            return
        for batch in self.carried():
            yield from batch.builder_rows(self.columns_read)

    def _lines(self) -> Generator[int, None, None]:
        """The physical line (1-based) each data row starts on, as pyarrow reads the rows:
        blank lines skipped, the header the first record."""
        # A prompt may be longer than the csv module's default limit of 128 KiB a field.
        limit = csv.field_size_limit(1 << 30)
        try:
            with read_errors(self.names[0]), self._text() as handle:
                raw: list[str] = []  # the lines of the record being read, as the file has them
                reader = csv.reader(_kept(handle, raw), delimiter=self.delimiter)
                fits = well_quoted(self.delimiter).fullmatch
                header_seen = False
                ended = 0  # the line the last record ended on
                # Each row's line is handed on once the next is read, so that the last one is
                # known as the last.
                rows, last, last_start = 0, None, 0
                # A record that csv cannot read ends the count: the rows after it say line 0
                # (pyarrow, which reads the rows, has read it).
                with contextlib.suppress(csv.Error):
                    for record in reader:
                        start, ended = ended + 1, reader.line_num
                        text = raw[0] if len(raw) == 1 else "".join(raw)
                        raw.clear()
                        if not record:  # a blank line
                            continue
                        if not header_seen:
                            header_seen = True
                            continue
                        # A regular expression passes nearly every record with quotes (1 us
                        # each); csv.reader's strict reading decides the others.
                        if '"' in text and not fits(text) and self._misquoted(text):
                            spaced = well_quoted(self.delimiter, spaced=True).fullmatch(text)
                            self.misquoted[rows] = quote_inside(start, ended, bool(spaced))
                        if last is not None:
                            yield last_start
                        rows, last, last_start = rows + 1, record, start
                if last is not None:
                    if self._never_closed(last, last_start):
                        self.ragged[rows - 1] = (
                            "a quoted value opened on this line is never closed: it runs to the "
                            "end of the file"
                        )
                    yield last_start
        finally:
            csv.field_size_limit(limit)

    def _never_closed(self, last: list[str], start: int) -> bool:
        """Did the file end inside a quoted value? Both readers then take the rest of the file
        as that value. Only a last value over several lines, or one the file ends on without a
        line end, can be one, so only then is the last record (from its line, `start`) read
        again, strictly."""
        if not last:
            return False
        if "\n" not in last[-1] and "\r" not in last[-1] and self._ends_with_line_end():
            return False
        with read_errors(self.names[0]), self._text() as handle:
            record = itertools.islice(handle, start - 1, None)
            try:
                for _record in csv.reader(record, delimiter=self.delimiter, strict=True):
                    pass
            except csv.Error as exc:
                # Another strictness (a quote inside a value) says nothing of the end.
                return "unexpected end of data" in str(exc)
        return False

    def _misquoted(self, record: str) -> bool:
        """Does `record` have text after a quoted value's closing quote? Both lenient readers
        take `"he said "hi""` as `he said hi""` and `"a"b` as `ab`, quotes lost without a word;
        read strictly, such a record is an error."""
        try:
            for _record in csv.reader([record], delimiter=self.delimiter, strict=True):
                pass
        except csv.Error as exc:
            return "expected after" in str(exc)  # not "unexpected end of data": _never_closed
        return False

    def _ends_with_line_end(self) -> bool:
        """Does the file end with a line end? Said cheaply only of a plain file (its last
        byte); a gzipped one would be decompressed whole to tell, as reading its last record
        again does anyway, so it is taken as not."""
        if self.gzipped:
            return False
        with read_errors(self.names[0]), self.paths[0].open("rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(size - 1, 0))
            return handle.read(1) in (b"\n", b"\r")

    def _text(self) -> TextIO:
        # Only line numbers are read here: undecodable bytes must not stop the count.
        path = self.paths[0]
        if self.gzipped:
            return gzip.open(path, "rt", encoding="utf-8-sig", errors="replace", newline="")
        return path.open("r", encoding="utf-8-sig", errors="replace", newline="")


def _skip(row: Any) -> str:
    return "skip"


def _kept(lines: Iterable[str], kept: list[str]) -> Iterator[str]:
    """`lines`, each also added to `kept` (the caller empties it after each record)."""
    for line in lines:
        kept.append(line)
        yield line
