"""The built prompt as an output column: when prompts are built from each row's fields
(--template, prompt=), the output gains a text column (`prompt`, or --prompt-field's name) with
each row's prompt as it was built, after the input's own columns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from batchpizza.errors import RowProblem
from batchpizza.rows import Fields
from batchpizza.sources.base import Carried, Columns
from batchpizza.written import builder_rows

if TYPE_CHECKING:
    import pyarrow as pa


def built_prompt(fields: Fields, row: Mapping[str, Any]) -> str | None:
    """The row's built prompt; None for a row it cannot be built for (an invalid row)."""
    assert fields.build is not None
    try:
        return fields.build(row)
    except RowProblem:
        return None


class BuiltColumns:
    """The input's columns, then the built prompt's."""

    def __init__(self, base: Columns, name: str) -> None:
        self.base = base
        self.name = name
        self.names = [*base.names, name]

    def arrow_fields(self) -> list[pa.Field]:
        import pyarrow as pa

        return [*self.base.arrow_fields(), pa.field(self.name, pa.string())]

    def carry(self, schema: pa.Schema) -> pa.Schema:
        return self.base.carry(schema)


class BuiltCarried:
    """A batch of carried rows, each with its built prompt."""

    def __init__(self, base: Carried, fields: Fields) -> None:
        self.base = base
        self.fields = fields
        self._rows = base.rows()
        self.prompts = [built_prompt(fields, row) for row in builder_rows(base)]

    def __len__(self) -> int:
        return len(self.base)

    def rows(self) -> list[Mapping[str, Any]]:
        name = self.fields.prompt
        return [{**row, name: text} for row, text in zip(self._rows, self.prompts, strict=True)]

    def arrays(self, columns: Columns) -> list[pa.Array]:
        import pyarrow as pa

        assert isinstance(columns, BuiltColumns)
        return [*self.base.arrays(columns.base), pa.array(self.prompts, pa.string())]

    def head(self, n: int) -> BuiltCarried:
        return BuiltCarried(self.base.head(n), self.fields)


def output_columns(fields: Fields, columns: Columns) -> Columns:
    """The output's carried columns: with the built prompt's where prompts are built."""
    return columns if fields.build is None else BuiltColumns(columns, fields.prompt)


def output_batch(fields: Fields, carried: Carried) -> Carried:
    """A batch of carried rows as the output writes it (see output_columns)."""
    return carried if fields.build is None else BuiltCarried(carried, fields)
