"""A JSON Schema as an Arrow type, and a valid value as what that type holds.

objects with `properties` -> structs (a required property not nullable, an optional one
nullable), arrays with `items` -> lists, enums of strings -> dictionary strings, `integer` ->
int64 (exact), `number` -> float64, `["T", "null"]` or `anyOf` of T and null -> T nullable.
What has no one Arrow type (`oneOf`/`anyOf` of unlike branches, `allOf`, an object without
`properties`, a tuple's `prefixItems`, `{}`, a recursive `$ref`) -> a string of the value as JSON,
each such place named in `untyped`, for a warning.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from batchpizza.structured.schema import place

if TYPE_CHECKING:
    import pyarrow as pa

Convert = Callable[[Any], Any]
_INT64 = (-(2**63), 2**63 - 1)


class Unrepresentable(ValueError):
    """A valid value the column's type cannot hold (an integer beyond 64 bits): the nearest
    nullable place around it is null instead (a required property's struct, the row's value)."""


@dataclass
class Typed:
    """A schema's Arrow type and how a valid value becomes a value of it."""

    type: pa.DataType
    convert: Convert
    nullable: bool = False


@dataclass
class Typing:
    root: Mapping[str, Any]
    untyped: list[tuple[str, str]] = field(default_factory=list)  # (place, why)
    _resolving: set[str] = field(default_factory=set)

    def of(self, node: Any, path: tuple[str, ...]) -> Typed:
        import pyarrow as pa

        if node is True or node == {}:
            return self._json(path, "any value")
        if not isinstance(node, Mapping):
            return self._json(path, "not a schema object")
        ref = node.get("$ref")
        if isinstance(ref, str):
            return self._ref(ref, path)
        if "allOf" in node:
            parts = node["allOf"]
            if isinstance(parts, list) and len(parts) == 1:
                return self.of(parts[0], (*path, "allOf", "0"))
            return self._json(path, "allOf")
        for key in ("anyOf", "oneOf"):
            if key in node:
                return self._union(node[key], (*path, key))
        if "enum" in node:
            return self._enum(node["enum"], path)
        if "const" in node:
            return self._enum([node["const"]], path)
        kinds = node.get("type")
        kinds = list(kinds) if isinstance(kinds, list) else [kinds]
        nullable = "null" in kinds
        kinds = [k for k in kinds if k != "null"]
        if not kinds:
            if nullable:
                return Typed(pa.null(), lambda v: None, True)
            return self._json(path, "no type")
        if kinds == ["integer", "number"] or kinds == ["number", "integer"]:
            kinds = ["number"]
        if len(kinds) > 1:
            return self._json(path, f"several types ({', '.join(map(str, kinds))})", nullable)
        typed = self._kind(kinds[0], node, path)
        typed.nullable = typed.nullable or nullable
        return typed

    def _kind(self, kind: Any, node: Mapping[str, Any], path: tuple[str, ...]) -> Typed:
        import pyarrow as pa

        if kind == "string":
            return Typed(pa.string(), _same)
        if kind == "integer":
            return Typed(pa.int64(), _integer)
        if kind == "number":
            return Typed(pa.float64(), _number)
        if kind == "boolean":
            return Typed(pa.bool_(), _same)
        if kind == "array":
            items = node.get("items")
            if "prefixItems" in node or isinstance(items, list):
                return self._json(path, "a tuple (items by position)")
            item = self.of(items if items is not None else {}, (*path, "items"))
            convert = item.convert
            return Typed(
                pa.list_(pa.field("item", item.type, nullable=True)),
                lambda v: [None if x is None else _or_null(convert, x) for x in v],
            )
        if kind == "object":
            props = node.get("properties")
            if not isinstance(props, Mapping) or not props:
                return self._json(path, "an object without properties")
            required = set(node.get("required") or ())
            fields, converts = [], []
            for name, sub in props.items():
                typed = self.of(sub, (*path, "properties", name))
                optional = typed.nullable or name not in required
                fields.append(pa.field(name, typed.type, nullable=optional))
                converts.append((name, _or_null if optional else _call, typed.convert))

            def struct(value: Mapping[str, Any]) -> dict[str, Any]:
                return {
                    n: None if value.get(n) is None else apply(c, value[n])
                    for n, apply, c in converts
                }

            return Typed(pa.struct(fields), struct)
        return self._json(path, f"type {kind!r}")

    def _enum(self, values: Any, path: tuple[str, ...]) -> Typed:
        import pyarrow as pa

        if not isinstance(values, list):
            return self._json(path, "an enum that is not a list")
        nullable = None in values
        values = [v for v in values if v is not None]
        if values and all(isinstance(v, str) for v in values):
            return Typed(pa.dictionary(pa.int32(), pa.string()), _same, nullable)
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return Typed(pa.int64(), _integer, nullable)
        if values and all(isinstance(v, bool) for v in values):
            return Typed(pa.bool_(), _same, nullable)
        return self._json(path, "an enum of mixed values", nullable)

    def _union(self, branches: Any, path: tuple[str, ...]) -> Typed:
        if not isinstance(branches, list) or not branches:
            return self._json(path, "an empty union")
        untyped = len(self.untyped)
        typed = [self.of(b, (*path, str(i))) for i, b in enumerate(branches)]
        import pyarrow as pa

        nullable = any(t.type == pa.null() for t in typed)
        real = [t for t in typed if t.type != pa.null()]
        if real and all(t.type == real[0].type for t in real):
            first = real[0]
            return Typed(first.type, first.convert, nullable or any(t.nullable for t in real))
        del self.untyped[untyped:]  # the union is the place named, not its branches
        return self._json(path[:-1], f"{path[-1]} of unlike branches", nullable)

    def _ref(self, ref: str, path: tuple[str, ...]) -> Typed:
        if not ref.startswith("#"):
            return self._json(path, f"a $ref outside the schema ({ref})")
        if ref in self._resolving:
            return self._json(path, f"a recursive $ref ({ref})")
        target: Any = self.root
        for part in ref[1:].split("/")[1:] if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, Mapping) or part not in target:
                return self._json(path, f"a $ref that leads nowhere ({ref})")
            target = target[part]
        self._resolving.add(ref)
        try:
            return self.of(target, path)
        finally:
            self._resolving.discard(ref)

    def _json(self, path: tuple[str, ...], why: str, nullable: bool = True) -> Typed:
        import pyarrow as pa

        self.untyped.append((place(path), why))
        return Typed(pa.string(), _as_json, True)


def _same(value: Any) -> Any:
    return value


def _call(convert: Convert, value: Any) -> Any:
    return convert(value)


def _or_null(convert: Convert, value: Any) -> Any:
    try:
        return convert(value)
    except Unrepresentable:
        return None


def _integer(value: Any) -> int:
    # Validated as an integer: 3 or 3.0 (JSON Schema counts 3.0 as one). Beyond 64 bits, null
    # where null may go: a required property is not nullable, so its struct is null then.
    number = int(value)
    if not _INT64[0] <= number <= _INT64[1]:
        raise Unrepresentable(number)
    return number


def _number(value: Any) -> float:
    number = float(value)
    return number if math.isfinite(number) else math.nan


def _as_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def arrow_typing(schema: Mapping[str, Any]) -> tuple[Typed, list[tuple[str, str]]]:
    """The Arrow type of values valid against `schema`, and the places written as JSON text."""
    typing = Typing(schema)
    typed = typing.of(schema, ())
    convert = typed.convert
    # The row's value: null at worst, and null as it is (a root of type ["integer", "null"]).
    typed.convert = lambda value: None if value is None else _or_null(convert, value)
    return typed, typing.untyped
