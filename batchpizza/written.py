"""Values that print as their file wrote them. A CSV column is typed from its values by pyarrow,
and its values then print as that type does: a double column holding `1` and `1.5` prints the
first as `1.0`, `1.50` as `1.5`, `1e3` as `1000.0`, a timestamp `2024-01-01T10:00` as
`2024-01-01 10:00:00`. A template's prompt must say what the file says, while a format spec
(`{score:.2f}`), Jinja2's filters, comparisons and arithmetic still see the number or the time:
so a prompt builder is given the typed value as a subclass of its own type that prints (`str`,
an empty format spec, `{field}`, `{{ field }}`) as the file's text.

A JSONL row needs none of this: its values are Python's own from the line (`1` an int, `1.5` a
float), whatever type the output column gets. Nor does Parquet: its types are the file's own.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, SupportsIndex


class Written:
    """A typed value that prints as the text it was read from."""

    __slots__ = ()
    text: str
    value: Any  # the value itself, of its own type

    def __str__(self) -> str:
        # A value computed from this one (a timestamp plus a day) has the type but no text.
        text: str | None = getattr(self, "text", None)
        return super().__str__() if text is None else text

    def __format__(self, spec: str) -> str:
        return str(self) if not spec else super().__format__(spec)

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        # datetime's and time's own reduction keeps the value alone (a float's keeps its slots):
        # a copy, or a row pickled to another process, printed as the type does, not the file.
        text: str | None = getattr(self, "text", None)
        if text is None:
            return super().__reduce_ex__(protocol)
        return written, (self.value, text)


class WrittenFloat(Written, float):
    __slots__ = ("text", "value")


class WrittenDatetime(Written, datetime.datetime):
    __slots__ = ("text", "value")


class WrittenTime(Written, datetime.time):
    __slots__ = ("text", "value")


def written(value: Any, text: str) -> Any:
    """`value` printing as `text`, where its own printing may differ (a float, a time of day, a
    timestamp); any other value as it is."""
    kind = type(value)
    made: Written
    if kind is float:
        made = WrittenFloat(value)
    elif kind is datetime.datetime:
        made = WrittenDatetime.combine(value.date(), value.timetz(), value.tzinfo)
    elif kind is datetime.time:
        made = WrittenTime(value.hour, value.minute, value.second, value.microsecond, value.tzinfo)
    else:
        return value
    made.text, made.value = text, value
    return made


def plain(value: Any) -> Any:
    """The value itself, where `value` is one printing as written."""
    return value.value if isinstance(value, Written) else value


def with_text(rows: list[Any], texts: list[dict[str, str | None]]) -> list[Any]:
    """`rows` (dicts of typed values; anything else, a row that could not be read, as it is),
    each value whose text `texts` gives (row for row) printing as that text."""
    for row, text in zip(rows, texts, strict=True):
        if isinstance(row, dict):
            for name, said in text.items():
                value = row.get(name)
                if said is not None and value is not None:
                    row[name] = written(value, said)
    return rows


def builder_rows(carried: Any) -> list[Mapping[str, Any]]:
    """A batch of carried rows as a prompt builder reads them: with their values as written
    where the batch knows it (a CSV file's), else its rows as the output has them."""
    rows: list[Mapping[str, Any]] = getattr(carried, "builder_rows", carried.rows)()
    return rows
