"""Arrow map values as JSON objects. pyarrow gives a `map<K, V>` value as a list of (key, value)
pairs, since its keys may be of any type and may repeat; a map whose keys are strings is what a
user means by an object, so a row reads it as a dict (in the JSONL output, in a prompt template),
the last value of a repeated key winning, as in JSON. A map with keys of another type stays a list
of pairs: a JSON object's keys are strings, and turning 1 and "1" into one key would lose a value.
Maps are found at any depth (in a list, a struct, another map's values)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

Convert = Callable[[Any], Any]


def map_converters(schema: pa.Schema) -> dict[str, Convert]:
    """For each column whose type holds a map, the function that rewrites one of its Python
    values (None stays None); no entry for the other columns."""
    found = {field.name: _converter(field.type) for field in schema}
    return {name: convert for name, convert in found.items() if convert is not None}


def with_maps_as_objects(schema: pa.Schema, rows: list[Any]) -> list[Any]:
    """`rows` (a record batch's to_pylist(), dicts changed in place; anything else, a row that
    could not be decoded, left alone) with their string-keyed maps as dicts."""
    converters = map_converters(schema)
    if not converters:
        return rows
    for row in rows:
        if isinstance(row, dict):
            for name, convert in converters.items():
                if name in row:
                    row[name] = convert(row[name])
    return rows


def _converter(type_: pa.DataType) -> Convert | None:
    if _is(type_, "map"):
        inner = _converter(type_.item_type)
        if _is_text(type_.key_type):
            if inner is None:
                return lambda v: None if v is None else dict(v)
            return lambda v: None if v is None else {k: inner(x) for k, x in v}
        if inner is None:
            return None
        return lambda v: None if v is None else [(k, inner(x)) for k, x in v]
    if _is(type_, "list", "large_list", "fixed_size_list", "list_view", "large_list_view"):
        item = _converter(type_.value_type)
        if item is None:
            return None
        return lambda v: None if v is None else [item(x) for x in v]
    if _is(type_, "struct"):
        fields = {f.name: c for f in type_ if (c := _converter(f.type)) is not None}
        if not fields:
            return None
        return lambda v: None if v is None else {k: _apply(fields, k, x) for k, x in v.items()}
    return None


def _apply(converters: dict[str, Convert], name: str, value: Any) -> Any:
    convert = converters.get(name)
    return value if convert is None else convert(value)


def _is_text(type_: pa.DataType) -> bool:
    if _is(type_, "dictionary"):
        return _is_text(type_.value_type)
    return _is(type_, "string", "large_string", "string_view")


def _is(type_: pa.DataType, *kinds: str) -> bool:
    """Is `type_` of any of these kinds (pyarrow.types.is_<kind>; this pyarrow's only: the
    views came in pyarrow 16)?"""
    import pyarrow as pa

    return any(bool(getattr(pa.types, f"is_{kind}", _never)(type_)) for kind in kinds)


def _never(type_: pa.DataType) -> bool:
    return False
