"""The parsed answer as output columns: `parsed` (typed from the schema: see arrow.py) or, with
--flatten, the schema's top-level properties each a column of its own. Built at output time from
each row's stored answer, so the checkpoint keeps only the answer."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from batchpizza.errors import UsageError
from batchpizza.records import OutputRow, is_answered
from batchpizza.structured import NOT_VALIDATED, Structured
from batchpizza.structured.arrow import Typed, arrow_typing

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("batchpizza")
PARSED = "parsed"


def untyped_places(schema: Mapping[str, Any]) -> list[tuple[str, str]]:
    return arrow_typing(schema)[1]


def warn_untyped(schema: Mapping[str, Any]) -> None:
    """Say which places of the schema are written as JSON text, before anything is sent."""
    for where, why in untyped_places(schema):
        log.warning("--schema: %s (%s) has no one column type: written as JSON text", where, why)


def _root(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """The root's object: a `$ref` at the root followed within the schema (pydantic's schema of
    a recursive model is `{"$defs": {...}, "$ref": "#/$defs/Model"}`)."""
    node: Any = schema
    seen: set[str] = set()
    while isinstance(node, Mapping) and isinstance(ref := node.get("$ref"), str):
        if not ref.startswith("#") or ref in seen:
            break
        seen.add(ref)
        target: Any = schema
        for part in ref[1:].split("/")[1:]:
            target = (
                target.get(part.replace("~1", "/").replace("~0", "~"))
                if isinstance(target, Mapping)
                else None
            )
        node = target
    return node if isinstance(node, Mapping) else {}


def flat_names(schema: Mapping[str, Any]) -> list[str]:
    """--flatten's columns: the top-level properties; a usage error for a schema without any."""
    schema = _root(schema)
    props = schema.get("properties")
    if schema.get("type") != "object" or not isinstance(props, Mapping) or not props:
        raise UsageError("--flatten: the schema's root must be an object with properties")
    return list(props)


def check_flatten(parsed: ParsedColumns, taken: Iterable[str]) -> None:
    """Refuse parsed columns named like an input or result column."""
    clash = sorted(set(parsed.names) & set(taken))
    if clash:
        raise UsageError(
            f"--schema: the column(s) {', '.join(clash)} of the parsed answer"
            f"{' (--flatten)' if parsed.flatten else ''} would clash with the input's or "
            "result's column(s) of the same name; rename them (in the schema or the input)"
            f"{' or leave out --flatten' if parsed.flatten else ''}"
        )


class ParsedColumns:
    """The columns a structured run adds after the result columns."""

    @classmethod
    def of(cls, structured: Structured | None, flatten: bool) -> ParsedColumns | None:
        return None if structured is None else cls(structured, flatten=flatten)

    def __init__(self, structured: Structured, *, flatten: bool = False) -> None:
        self.structured = structured
        self.flatten = flatten
        typed, _ = arrow_typing(structured.schema)
        self.typed: Typed = typed
        self.names = flat_names(structured.schema) if flatten else [PARSED]

    def values(self, row: OutputRow) -> Any:
        """The row's answer as its JSON value; None where it has none. Not validated again: an
        answered row of this request fitted the schema when it came (the schema is part of the
        request's fingerprint, so no answer to another schema is here), and validating twice
        was a fifth of the output's cost."""
        reason = row.finish_reason
        if row.answer is None or not is_answered(reason) or reason in NOT_VALIDATED:
            return None
        return self.structured.value(row.answer)

    def objects(self, row: OutputRow) -> dict[str, Any]:
        """The columns of one row as JSON values (JSONL, a list of dicts)."""
        value = self.values(row)
        if not self.flatten:
            return {PARSED: value}
        value = value if isinstance(value, Mapping) else {}
        return {name: value.get(name) for name in self.names}

    def fields(self) -> list[pa.Field]:
        import pyarrow as pa

        if not self.flatten:
            return [pa.field(PARSED, self.typed.type)]
        return [pa.field(f.name, f.type) for f in self.typed.type]

    def arrays(self, rows: Sequence[OutputRow]) -> list[pa.Array]:
        import pyarrow as pa

        convert = self.typed.convert
        found = [self.values(row) for row in rows]
        kind = self.typed.type
        # Built with plain strings for the enums, then encoded: pyarrow builds an enum under a
        # null struct as index 0 of the dictionary, which is out of bounds while the dictionary
        # is empty (no row's answer fitted), and the Parquet writer then fails on it.
        plain = _undictionaried(kind)
        column = pa.array([None if v is None else convert(v) for v in found], plain)
        if plain != kind:
            column = column.cast(kind)
        if not self.flatten:
            return [column]
        return list(column.flatten())  # each child with the struct's nulls


def parquet_dictionary(schema: pa.Schema) -> bool | list[str]:
    """The Parquet writer's `use_dictionary`: every column, but for enums nested in a struct.
    DuckDB (2.0.1) fails on those ("Invalid unicode ... in value construction") when pyarrow
    writes an Arrow dictionary as a Parquet dictionary under a struct that has null rows; written
    plain, their Arrow type (dictionary strings) is kept all the same."""
    import io

    import pyarrow.parquet as pq

    nested = {path for field in schema for path in _nested_dictionaries(field.name, field.type)}
    if not nested:
        return True
    empty = io.BytesIO()
    pq.write_table(schema.empty_table(), empty)
    leaves = pq.ParquetFile(io.BytesIO(empty.getvalue())).schema
    return [
        leaves.column(i).path for i in range(len(leaves)) if leaves.column(i).path not in nested
    ]


def _nested_dictionaries(path: str, kind: pa.DataType, depth: int = 0) -> list[str]:
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        return [path] if depth else []
    if pa.types.is_struct(kind):
        found = []
        for child in kind:
            found += _nested_dictionaries(f"{path}.{child.name}", child.type, depth + 1)
        return found
    if pa.types.is_list(kind):
        return _nested_dictionaries(f"{path}.list.element", kind.value_type, depth + 1)
    return []


def _undictionaried(kind: pa.DataType) -> pa.DataType:
    """`kind` with each dictionary (an enum) replaced by its values' type."""
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        return kind.value_type
    if pa.types.is_struct(kind):
        return pa.struct([f.with_type(_undictionaried(f.type)) for f in kind])
    if pa.types.is_list(kind):
        return pa.list_(kind.value_field.with_type(_undictionaried(kind.value_type)))
    return kind
