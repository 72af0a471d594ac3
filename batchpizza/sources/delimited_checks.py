"""What a CSV or TSV file's bytes and header say beside what pyarrow reads: a UTF-16 file
refused in a sentence (pyarrow's header of undecodable names was a traceback), a header that
only looks wrong hinted at, and integer columns kept as written: beyond 64 bits exact (pyarrow
types such a column double, so 12345678901234567890123 became 1.2345678901234568e22 and a 1
beside it 1.0), with leading zeros as text (02134 is a zip code, not 2134); and records whose
quoting breaks RFC 4180 (pyarrow and csv both read `"he said "hi""` as `he said hi""`)."""

from __future__ import annotations

import functools
import gzip
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchpizza.errors import InputError

if TYPE_CHECKING:
    import pyarrow as pa

_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
# A column of integers as text: what JSONL's integers beyond 64 bits become too.
_INTEGER = r"^[+-]?[0-9]+$"
_DECIMAL_DIGITS = 38
# An integer written with a leading zero: 0 alone is a number, 007 an identifier.
_ZERO_LED = r"^[+-]?0[0-9]"


def check_encoding(path: Path, gzipped: bool, name: str) -> None:
    """InputError for a UTF-16 file (Excel's "Unicode Text" export): with a BOM, or without one
    a header holding NUL bytes, which no UTF-8 header has."""
    try:
        with gzip.open(path, "rb") if gzipped else path.open("rb") as handle:
            head = handle.read(4096)
    except (OSError, EOFError):
        return  # what cannot be read is said when the file is read
    if head.startswith(_UTF16_BOMS) or b"\x00" in head.split(b"\n", 1)[0]:
        raise InputError(
            f"{name}: a UTF-16 file (or NUL bytes in its header); CSV and TSV must be UTF-8 "
            "(in Excel: Save As 'CSV UTF-8')"
        )


def header_hint(names: list[str], delimiter: str, wanted: str) -> str:
    """Why a header may lack the column asked for, when it shows: another separator than the
    extension's, or spaces around the name. Empty when nothing shows."""
    if len(names) == 1:
        for separator, said in ((";", "';'"), ("\t", "tabs"), (",", "','"), ("|", "'|'")):
            if separator != delimiter and separator in names[0]:
                return (
                    f"; the header is one column {names[0]!r}: is the file separated by {said}? "
                    "A .csv file is read comma-separated, a .tsv file tab-separated"
                )
    near = [n for n in names if n != wanted and n.strip() == wanted]
    if near:
        return f"; there is a column {near[0]!r}: remove the spaces around its name"
    return ""


def exact_integers(
    table: pa.Table, read_text: Callable[[list[str]], pa.Table], keep: set[str]
) -> pa.Table:
    """`table` with its integer columns as the file wrote them. A double column whose every
    value is an integer as text (one beyond 64 bits made pyarrow type it double) becomes
    decimal128(38, 0), or its text when a value has more than 38 digits. An integer column
    where a value has a leading zero (a zip code, a phone number: 02134 read as 2134) becomes
    its text. `read_text(columns)` reads those columns again as text (null where pyarrow read
    null); only integer columns and double columns of whole numbers alone are read again."""
    import pyarrow as pa
    import pyarrow.compute as pc

    candidates = [
        f.name
        for f in table.schema
        if f.name not in keep
        and table.schema.names.count(f.name) == 1  # a header naming one twice is refused
        and (
            pa.types.is_integer(f.type)
            or (pa.types.is_float64(f.type) and _whole(table.column(f.name)))
        )
    ]
    if not candidates:
        return table
    text = read_text(candidates)
    for column in candidates:
        values = text.column(column)
        exact: Any = values
        if pa.types.is_integer(table.schema.field(column).type):
            if not pc.any(pc.match_substring_regex(values, _ZERO_LED)).as_py():
                continue
        else:
            if not pc.all(pc.match_substring_regex(values, _INTEGER)).as_py():
                continue  # some value is written as a real number: a double column indeed
            if pc.any(pc.match_substring_regex(values, _ZERO_LED)).as_py():
                pass  # zeros to keep: its text
            elif (pc.max(pc.utf8_length(pc.utf8_ltrim(values, characters="+-"))).as_py() or 0) <= (
                _DECIMAL_DIGITS
            ):
                exact = pc.cast(values, pa.decimal128(_DECIMAL_DIGITS, 0))
        index = table.schema.get_field_index(column)
        table = table.set_column(index, pa.field(column, exact.type), exact)
    return table


def _whole(column: pa.ChunkedArray) -> bool:
    import pyarrow.compute as pc

    whole = pc.all(pc.equal(pc.floor(column), column)).as_py()
    return bool(whole)


def quote_inside(start: int, end: int, spaced: bool) -> str:
    """The problem of a row (lines `start` to `end`) where a quoted value has text after its
    closing quote. Over several lines, the likelier cause is a quote left open on the first,
    the lines after it read into its value up to the next quote. `spaced`: that text is only
    spaces before the delimiter or the line end (`"a" ,b`), no quote written once too few."""
    if spaced:
        return (
            'a quoted value has spaces after its closing quote ("a" ,b): a quoted value ends '
            "at its quote, so remove them, or put them inside the quotes"
        )
    said = "a quoted value has text after its closing quote"
    doubled = 'a quote inside a quoted value is written twice ("he said ""hi""")'
    if end == start:
        return f"{said}: {doubled}"
    return (
        f"{said}, in a row running over lines {start}-{end}: is a quote opened on this line "
        f"never closed? ({doubled})"
    )


@functools.cache
def well_quoted(delimiter: str, *, spaced: bool = False) -> re.Pattern[str]:
    """A record whose every value is quoted as RFC 4180 says, or unquoted (a quote inside an
    unquoted value, `say "hi"`, is kept as it is by every reader). `spaced`: spaces (and tabs,
    but for a tab delimiter) allowed after a closing quote."""
    d = re.escape(delimiter)
    blanks = re.escape(" \t".replace(delimiter, ""))
    after = f"[{blanks}]*" if spaced else ""
    value = f'(?:"[^"]*(?:""[^"]*)*"{after}|(?:[^"{d}\\r\\n][^{d}\\r\\n]*)?)'
    return re.compile(f"{value}(?:{d}{value})*(?:\\r?\\n|\\r)?")
