"""The Arrow types of JSONL fields carried into Parquet, inferred while the rows are validated.

Types survive (SPEC "Output"): a field keeps a native type when its values agree on every row, at
every depth. `observe` sees each parsed row once, in the validation scan, and merges it into a
small tree of types per field (memory grows with the schema, never with the rows):

    null                          ignored: every column is nullable
    bool, str                     bool, string
    int                           int64; beyond 64 bits, kept exact: decimal128(38, 0), else string
    int and float                 float64 (an int beyond 64 bits and a float: JSON text, to stay exact)
    list                          list<the merge of every element of every row>; [] merges with all
    dict                          struct<the union of keys, in first-seen order>; a missing key is null
    dict of more than 100 keys    map<string, V> when the values agree (keys that are data, not names)
    anything else at any depth    a conflict: the top-level field becomes JSON text, said once

The scan is hot (a million rows must validate in seconds), so a row costs one dict lookup keyed by
its (keys, value types) in the common case, and a nested value one lookup keyed by a signature
built with C-level iterators; only a value of a shape not seen before is walked in Python.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import logging
from collections.abc import Hashable, Iterable
from itertools import chain
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from batchpizza import jsoncodec
from batchpizza.jsoncodec import may_hold_big_int as _may_hold_big_int

if TYPE_CHECKING:  # pyarrow is imported where Arrow types are made: a JSONL job never pays for it
    import pyarrow as pa

log = logging.getLogger("batchpizza")

MAX_STRUCT_KEYS: Final = 100  # more distinct keys than this: the keys are data, a map
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_DECIMAL_LIMIT = 10**38  # decimal128(38, 0) holds up to 38 digits
_CACHE_LIMIT = 4096  # shapes or signatures remembered per cache before it starts over
_FORMAT = 1  # of to_json; a cache written in another format is not read

_KIND_OF: dict[type, str] = {bool: "bool", int: "int", float: "float", str: "str"}
_SCALAR_TYPES = frozenset({type(None), bool, int, float, str})
_NAMES = {"bool": "boolean", "int": "integer", "float": "number", "str": "string"}


# -- the tree of types ------------------------------------------------------------------------
# A node is None (only nulls seen yet) or one of these. They are changed in place by merges.


class _Scalar:
    __slots__ = ("kind", "wide")

    def __init__(self, kind: str, wide: int = 0) -> None:
        self.kind = kind  # bool, int, float, str, or the name of a type JSON does not have
        self.wide = wide  # ints: 0 fits int64, 1 fits decimal128(38, 0), 2 only a string


class _List:
    __slots__ = ("item",)

    def __init__(self, item: Node) -> None:
        self.item = item


class _Struct:
    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Node]) -> None:
        self.fields = fields


class _Map:
    __slots__ = ("value",)

    def __init__(self, value: Node) -> None:
        self.value = value


class _Json:
    """A top-level field whose values clash: written as JSON text. Keeps what to say about it."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


Node: TypeAlias = "_Scalar | _List | _Struct | _Map | None"


def _describe(node: Node) -> str:
    if isinstance(node, _Scalar):
        name = _NAMES.get(node.kind, node.kind)
        return "integer beyond 64 bits" if node.kind == "int" and node.wide else name
    return "list" if isinstance(node, _List) else "object"


class _Clash(Exception):
    """Two kinds that cannot share a column; `path` is filled in on the way out of the walk."""

    def __init__(self, first: str, second: str) -> None:
        self.kinds = sorted({first, second})
        self.path: list[str] = []


def _scalar_of(value: Any) -> _Scalar:
    kind = _KIND_OF.get(type(value))
    if kind is None:  # a Python value from an in-memory row: JSON text whatever else it meets
        return _Scalar(type(value).__name__)
    if kind == "int" and not _INT64_MIN <= value <= _INT64_MAX:
        return _Scalar("int", 1 if -_DECIMAL_LIMIT < value < _DECIMAL_LIMIT else 2)
    return _Scalar(kind)


def _merge(node: Node, value: Any) -> Node:
    """`node` widened to hold `value` too; raises _Clash where they cannot share a type."""
    kind = type(value)
    if value is None:
        return node
    if kind is list:
        if node is None:
            node = _List(None)
        elif not isinstance(node, _List):
            raise _Clash(_describe(node), "list")
        item = node.item
        try:
            for element in value:
                item = _merge(item, element)
        except _Clash as clash:
            clash.path.append("[]")
            raise
        node.item = item
        return node
    if kind is dict:
        if node is None:
            node = _Struct({})
        if isinstance(node, _Map):
            return _merge_map(node, value)
        if not isinstance(node, _Struct):
            raise _Clash(_describe(node), "object")
        fields = node.fields
        for key, element in value.items():
            if type(key) is not str:  # JSON keys are strings; an in-memory row's may not be
                raise _Clash("object", f"object with {type(key).__name__} keys")
            try:
                fields[key] = _merge(fields.get(key), element)
            except _Clash as clash:
                clash.path.append(f".{key}")
                raise
        return _to_map(node) if len(fields) > MAX_STRUCT_KEYS else node
    return _merge_scalar(node, _scalar_of(value))


def _merge_map(node: _Map, value: dict[Any, Any]) -> _Map:
    merged = node.value
    for element in value.values():
        try:
            merged = _merge(merged, element)
        except _Clash as clash:
            clash.path.append("{}")
            raise
    node.value = merged
    return node


def _to_map(node: _Struct) -> _Map:
    """A struct with too many keys becomes a map of the join of its fields' types."""
    merged: Node = None
    for child in node.fields.values():
        try:
            merged = _join(merged, child)
        except _Clash as clash:
            clash.path.append("{}")
            raise
    return _Map(merged)


def _join(a: Node, b: Node) -> Node:
    """The least type holding both (for a struct turning into a map)."""
    if a is None or b is None:
        return a if b is None else b
    if isinstance(a, _Scalar) and isinstance(b, _Scalar):
        return _merge_scalar(a, b)
    if isinstance(a, _List) and isinstance(b, _List):
        return _List(_join(a.item, b.item))
    if isinstance(a, _Struct) and isinstance(b, _Struct):
        fields = dict(a.fields)
        for key, child in b.fields.items():
            fields[key] = _join(fields.get(key), child)
        joined = _Struct(fields)
        return _to_map(joined) if len(fields) > MAX_STRUCT_KEYS else joined
    if isinstance(a, _Map | _Struct) and isinstance(b, _Map | _Struct):
        values = [n.value if isinstance(n, _Map) else _to_map(n).value for n in (a, b)]
        return _Map(_join(values[0], values[1]))
    raise _Clash(_describe(a), _describe(b))


def _merge_scalar(node: Node, new: _Scalar) -> _Scalar:
    if node is None:
        return new
    if not isinstance(node, _Scalar):
        raise _Clash(_describe(node), _describe(new))
    if node.kind == new.kind:
        node.wide = max(node.wide, new.wide)
        return node
    if {node.kind, new.kind} == {"int", "float"} and not (node.wide or new.wide):
        return _Scalar("float")  # JSON has one number type: 1 and 1.5 share a float column
    raise _Clash(_describe(node), _describe(new))


# -- signatures: the fast path for nested values ----------------------------------------------

_EMPTY_LIST: Final = ("[]",)
_SHORT_LIST: Final = 32  # a list of objects this long or shorter is keyed by its exact shape


# Bound once: looking these names up again for every row costs a tenth of the signature.
_flat = chain.from_iterable
_keys, _values, _list_iter = dict.keys, dict.values, list.__iter__


def _signature(value: Any, node: Node | _Json) -> Hashable:
    """A key such that two values with equal keys widen a type alike, built with C-level iterators
    (a list of 3 messages costs about a microsecond). It holds the Python types of the leaves; one
    holding a list or dict type it does not describe further is never trusted (`_leaf_types`).
    None when the value has no cheap signature: it is walked each time."""
    kind = type(value)
    if kind is list:
        if not value:
            return _EMPTY_LIST
        first = type(value[0])
        try:  # dict.keys, dict.values, list.__iter__ raise TypeError on an element of another type
            if first is dict:
                types = map(type, _flat(map(_values, value)))
                if isinstance(node, _List) and isinstance(node.item, _Map):
                    return ("[{}]", frozenset(types))  # keys are data: only value types matter
                keys = _flat(map(_keys, value))
                if len(value) <= _SHORT_LIST:  # the cheapest key, but it grows with the list
                    return ("[{", tuple(keys), tuple(types))
                return ("[{*", frozenset(zip(keys, types, strict=False)))
            if first is list:
                return ("[[", frozenset(map(type, _flat(map(_list_iter, value)))))
        except TypeError:
            return None
        return ("[", frozenset(map(type, value)))
    if kind is not dict:
        return None
    if isinstance(node, _Map):
        return ("{}", frozenset(map(type, value.values())))
    leaves = tuple(map(type, value.values()))
    if list not in leaves and dict not in leaves:
        return ("{", tuple(value), leaves)
    fields = node.fields if isinstance(node, _Struct) else {}
    children = tuple(
        _signature(v, fields.get(k)) for k, v in value.items() if type(v) in (list, dict)
    )
    return ("{", tuple(value), leaves, children)


def _leaf_types(sig: Any) -> Iterable[type] | None:
    """Every leaf type a signature holds, or None when it does not describe its value whole."""
    if sig is None:
        return None
    if sig is _EMPTY_LIST:
        return ()
    tag, body = sig[0], sig[1:]
    if tag == "{":
        types = body[1]
        if len(body) == 2:
            return types  # type: ignore[no-any-return]
        inner = [_leaf_types(child) for child in body[2]]
        if any(t is None for t in inner):
            return None
        return chain((t for t in types if t not in (list, dict)), *inner)  # type: ignore[arg-type]
    if tag == "[{":
        return body[1]  # type: ignore[no-any-return]
    if tag == "[{*":
        return (t for _key, t in body[0])
    return body[0]  # type: ignore[no-any-return]


class _Field:
    """One top-level field: its type so far, and the signatures of nested values already merged
    (signature -> whether its leaves hold ints, whose ranges a signature does not show)."""

    __slots__ = ("name", "node", "seen")

    def __init__(self, name: str, node: Node | _Json = None) -> None:
        self.name = name
        self.node = node
        self.seen: dict[Hashable, bool] = {}


class FieldTypes:
    """Streaming type inference for the carried fields of JSONL rows. See the module docstring.

    `observe` every parsed row (an object), then ask `arrow_types` for the columns to write and
    build them with `to_array`. `to_json` / `from_json` keep the state across runs (a cached scan).
    """

    def __init__(self, exclude: Iterable[str] = ()) -> None:
        self.exclude = frozenset(exclude)  # the id field: it is written as its own column
        self._fields: dict[str, _Field] = {}  # first-seen order
        # (keys, value types) of a row -> (int fields to range-check, nested fields to look into)
        self._shapes: dict[tuple[tuple[str, ...], tuple[type, ...]], _Shape] = {}
        self._warned: set[str] = set()

    @property
    def names(self) -> list[str]:
        """The fields seen, in first-seen order."""
        return list(self._fields)

    def observe(self, obj: dict[str, Any], line: bytes | None = None) -> None:
        """Merge one row into the types. `line`, the JSON text the row was parsed from, is an
        optional shortcut: ints nested in lists and objects are then range-checked only on a line
        that may hold one beyond 64 bits (a run of 19 digits), which the common row does not."""
        key = (tuple(obj), tuple(map(type, obj.values())))
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._learn(key)
        ints, nested = shape
        for name in ints:  # top-level ints: one comparison is cheaper than looking at the line
            value = obj[name]
            if not _INT64_MIN <= value <= _INT64_MAX:
                self._merge(self._fields[name], value)
        for field in nested:
            value = obj[field.name]
            sig = _signature(value, field.node)
            holds_int = field.seen.get(sig)
            if holds_int is None or (holds_int and (line is None or _may_hold_big_int(line))):
                self._look_into(field, value, sig)

    def _learn(self, key: tuple[tuple[str, ...], tuple[type, ...]]) -> _Shape:
        """A row shape not seen before: merge its scalar types once, for every row of the shape."""
        if len(self._shapes) >= _CACHE_LIMIT:  # rows of many shapes: memory stays flat
            self._shapes.clear()
        ints: list[str] = []
        nested: list[_Field] = []
        for name, kind in zip(*key, strict=True):
            if name in self.exclude:
                continue
            field = self._fields.get(name)
            if field is None:
                field = self._fields[name] = _Field(name)
            if isinstance(field.node, _Json):
                continue
            if kind not in _SCALAR_TYPES:  # a list or dict (or an unknown type): per row
                nested.append(field)
            elif kind is not type(None):
                self._merge(field, _ZERO[kind])
                if kind is int:
                    ints.append(name)
        shape = (tuple(ints), tuple(nested))
        self._shapes[key] = shape
        return shape

    def _look_into(self, field: _Field, value: Any, sig: Hashable) -> None:
        self._merge(field, value)
        leaves = _leaf_types(sig)
        if leaves is None or isinstance(field.node, _Json):
            return
        leaves = frozenset(leaves)
        if leaves <= _SCALAR_TYPES:  # the signature describes the value whole: trust it
            if len(field.seen) >= _CACHE_LIMIT:
                field.seen.clear()
            field.seen[sig] = int in leaves

    def _merge(self, field: _Field, value: Any) -> None:
        node = field.node
        if isinstance(node, _Json):
            return
        try:
            field.node = _merge(node, value)
        except _Clash as clash:
            at = f" at {field.name}{''.join(reversed(clash.path))}" if clash.path else ""
            field.node = _Json(f"{' and '.join(clash.kinds)} values{at}")
            field.seen.clear()
            self._shapes.clear()  # shapes that look into this field would do so for nothing

    # -- Arrow -------------------------------------------------------------------------------

    def arrow_types(self, names: Iterable[str] | None = None) -> dict[str, pa.DataType | None]:
        """Name -> Arrow type of each field (all, or `names`, in that order); None means JSON
        text. A field never seen, or only ever null, is a string column. Says once per field, on
        the `batchpizza` logger, why a field is JSON text or where an integer is beyond 64 bits."""
        types: dict[str, pa.DataType | None] = {}
        for name in self._fields if names is None else names:
            field = self._fields.get(name)
            node = None if field is None else field.node
            notes: list[str] = []
            if isinstance(node, _Json):
                arrow, why = None, f"holds {node.why} across rows"
            else:
                try:
                    arrow, why = _arrow(node, name, notes), ""
                except _NotNative as exc:
                    arrow, why = None, str(exc)
            types[name] = arrow
            if name not in self._warned and (why or notes):
                self._warned.add(name)
                if why:
                    log.warning("field %r %s; written to Parquet as JSON text", name, why)
                else:
                    log.warning("field %r %s", name, notes[0])
        return types

    @staticmethod
    def to_array(values: list[Any], type: pa.DataType | None) -> pa.Array:
        """One column of `values` as `type` from `arrow_types` (None: each cell the JSON text of
        its value, null for null). Integers beyond 64 bits land exactly, as Decimal or text."""
        import pyarrow as pa

        if type is None:
            return pa.array([None if v is None else json_text(v) for v in values], pa.string())
        try:
            return pa.array(values, type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            pass  # an integer kept as text, somewhere inside: convert, then try again
        try:
            return pa.array([_coerce(v, type) for v in values], type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, AttributeError) as exc:
            raise ValueError(f"values do not fit the scanned type {type}: {exc}") from None

    # -- cached scans ------------------------------------------------------------------------

    def to_json(self) -> str:
        """The inferred state (not the caches, which are rebuilt as rows come)."""
        fields = [[name, _node_json(field.node)] for name, field in self._fields.items()]
        return json.dumps({"format": _FORMAT, "exclude": sorted(self.exclude), "fields": fields})

    @classmethod
    def from_json(cls, text: str) -> FieldTypes:
        """The state `to_json` wrote; ValueError if it is not one (a stale or damaged cache)."""
        try:
            state = json.loads(text)
            if state["format"] != _FORMAT:
                raise ValueError(f"field types of format {state['format']}, not {_FORMAT}")
            types = cls(state["exclude"])
            for name, node in state["fields"]:
                types._fields[name] = _Field(name, _node_from_json(node))
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"not a record of field types: {exc!r}") from None
        return types


_Shape = tuple[tuple[str, ...], tuple[_Field, ...]]
_ZERO: dict[type, Any] = {bool: False, int: 0, float: 0.0, str: ""}  # a value of each kind


class _NotNative(Exception):
    """A type Parquet cannot hold natively; the message says why."""


def _arrow(node: Node, name: str, notes: list[str], path: str = "") -> pa.DataType:
    """The Arrow type of a node of field `name`; `path` is where it sits below the field, `notes`
    collects where integers beyond 64 bits are and how they are kept."""
    import pyarrow as pa

    at = f" at {name}{path}" if path else ""
    if node is None:
        return pa.string()  # only nulls seen: the most general type, and it reads as null anyway
    if isinstance(node, _Scalar):
        if node.kind == "int" and node.wide:
            exact = "decimal128(38, 0)" if node.wide == 1 else "text (more than 38 digits)"
            notes.append(f"holds integers beyond 64 bits{at}; written exactly as {exact}")
            return pa.decimal128(38, 0) if node.wide == 1 else pa.string()
        scalar = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "str": pa.string()}
        if node.kind not in scalar:
            raise _NotNative(f"holds {node.kind} values{at}, which JSON has no type for")
        return scalar[node.kind]
    if isinstance(node, _List):
        return pa.list_(_arrow(node.item, name, notes, f"{path}[]"))
    if isinstance(node, _Map):
        return pa.map_(pa.string(), _arrow(node.value, name, notes, f"{path}{{}}"))
    if not node.fields:
        raise _NotNative(f"holds only empty objects{at}, which Parquet cannot store")
    return pa.struct([(k, _arrow(v, name, notes, f"{path}.{k}")) for k, v in node.fields.items()])


def _coerce(value: Any, type: pa.DataType) -> Any:
    """`value` made acceptable to pa.array as `type`: ints beyond 64 bits in string positions."""
    import pyarrow as pa

    if value is None:
        return None
    if pa.types.is_string(type):
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if pa.types.is_map(type):
        return [(k, _coerce(v, type.item_type)) for k, v in value.items()]
    if pa.types.is_list(type):
        return [_coerce(v, type.value_type) for v in value]
    if pa.types.is_struct(type):
        return {f.name: _coerce(value.get(f.name), f.type) for f in type}
    return value


def json_default(value: Any) -> Any:
    """What JSON cannot hold, as text JSON can (for values from in-memory rows)."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def json_text(value: Any) -> str:
    return jsoncodec.dumps(value, json_default).decode()


# -- to_json / from_json ----------------------------------------------------------------------


def _node_json(node: Node | _Json) -> Any:
    if node is None:
        return None
    if isinstance(node, _Scalar):
        return {"scalar": node.kind, "wide": node.wide}
    if isinstance(node, _List):
        return {"list": _node_json(node.item)}
    if isinstance(node, _Map):
        return {"map": _node_json(node.value)}
    if isinstance(node, _Json):
        return {"json": node.why}
    return {"struct": [[k, _node_json(v)] for k, v in node.fields.items()]}


def _node_from_json(data: Any) -> Any:
    if data is None:
        return None
    if "scalar" in data:
        return _Scalar(str(data["scalar"]), int(data["wide"]))
    if "list" in data:
        return _List(_node_from_json(data["list"]))
    if "map" in data:
        return _Map(_node_from_json(data["map"]))
    if "json" in data:
        return _Json(str(data["json"]))
    return _Struct({str(k): _node_from_json(v) for k, v in data["struct"]})
