"""Rows held in memory (a DataFrame, an Arrow table, a dataset, a list of dicts) as a `Source`,
read where they are: no copy to a file. Messages name the data by `label` and a row by its
0-based index.

A list's items are checked as JSONL lines are; an Arrow-backed table as a Parquet file is (its
schema first: a missing prompt column or a result column's name is refused before any row is
read), through the same `rows.interpret`. The rows are read more than once (the scan, the
sending, the output), so a RecordBatchReader, which can be read once, is read into a table first
by the caller (api.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Generator, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from batchpizza.records import Prompt
from batchpizza.rows import Fields, ScanBatch, json_type, with_article
from batchpizza.sources.base import prompt_of, scan_batches
from batchpizza.sources.parquet import NOT_UTF8, pylist, wanted_columns
from batchpizza.tables import InMemory

if TYPE_CHECKING:
    pass


class MemorySource:
    unit = "row"
    rows_from_lines = False

    def __init__(self, mem: InMemory, fields: Fields, label: str) -> None:
        self.names = [label]
        self.fields = fields
        self.mem = mem
        self._columns: list[str] | None = None
        if mem.kind == "stream":  # read more than once here: its callers read it into a table
            raise TypeError("a RecordBatchReader is read into a Table before it is run")
        if mem.kind != "rows":
            self._columns = wanted_columns(fields, mem.schema, label, empty=mem.num_rows == 0)

    def objects(self) -> Iterator[tuple[int, Any]]:
        """(position, object) of every row: the object the row is, or the problem (a str) of an
        item that is no object at all."""
        if self._columns is None:
            for pos, obj in enumerate(self.mem.rows):
                if isinstance(obj, Mapping):
                    yield pos, obj
                else:
                    yield pos, f"not a JSON object but {with_article(json_type(obj))}"
            return
        pos = 0
        for batch in self.mem.batches(self._columns):
            for obj in pylist(batch):
                yield pos, "invalid UTF-8 in a string column" if obj is NOT_UTF8 else obj
                pos += 1

    def scan(self, limit: int | None = None) -> Iterator[ScanBatch]:
        rows = itertools.islice(self.objects(), limit)
        return scan_batches(self.fields, ((pos, 0, pos, obj) for pos, obj in rows))

    def prompts(self, wanted: Iterable[int]) -> Generator[tuple[int, Prompt], None, None]:
        it = iter(wanted)
        target = next(it, None)
        if target is None:
            return
        for pos, obj in self.objects():
            if pos != target:
                continue
            prompt = prompt_of(obj, self.fields, pos)
            if prompt is not None:
                yield pos, prompt
            target = next(it, None)
            if target is None:
                return

    def index_label(self, pos: int) -> str | None:
        """A pandas frame's index label of the row at `pos`, where the index is not the rows'
        positions: "row 1" of a frame indexed 10, 5, 7 is found as its label, 5."""
        if self.mem.kind != "pandas":
            return None
        index = self.mem.data.index
        if type(index).__name__ == "RangeIndex" and index.start == 0 and index.step == 1:
            return None
        return shown_label(index[pos])

    def input_key(self) -> str | None:
        return None  # data in memory may change between calls: never reuse a scan

    def scan_state(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def shown_label(label: object) -> str:
    """An index label as one would write it in `df.loc[...]` (a level's numpy int as a plain 2)."""
    if isinstance(label, tuple):  # a MultiIndex
        return "(" + ", ".join(shown_label(part) for part in label) + ")"
    return repr(label) if isinstance(label, str) else str(label)
