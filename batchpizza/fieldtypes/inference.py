"""Streaming type inference for the fields of JSONL rows that are carried into Parquet:
`FieldTypes` sees each parsed row once, in the validation scan, merges it into a tree of types per
field (tree.py), and then gives each field's Arrow type and builds its column (arrow.py). The scan
is hot, so a row costs one dict lookup keyed by its (keys, value types) in the common case, and a
nested value one lookup keyed by its signature (signatures.py); only a value of a shape not seen
before is walked in Python. Its state is kept across runs as JSON, for a cached scan.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING, Any

from batchpizza.fieldtypes.arrow import NotNative, arrow_type, coerce
from batchpizza.fieldtypes.signatures import leaf_types, signature
from batchpizza.fieldtypes.tree import (
    INT64_MAX,
    INT64_MIN,
    Clash,
    JsonNode,
    Node,
    merge,
    node_from_json,
    node_to_json,
)
from batchpizza.jsoncodec import json_text, may_hold_big_int

if TYPE_CHECKING:  # pyarrow is imported where Arrow types are made: a JSONL job never pays for it
    import pyarrow as pa

log = logging.getLogger("batchpizza")

_CACHE_LIMIT = 4096  # shapes or signatures remembered per cache before it starts over
_FORMAT = 1  # of to_json; a cache written in another format is not read
_SCALAR_TYPES = frozenset({type(None), bool, int, float, str})


class _Field:
    """One top-level field: its type so far, and the signatures of nested values already merged
    (signature -> whether its leaves hold ints, whose ranges a signature does not show)."""

    __slots__ = ("name", "node", "seen")

    def __init__(self, name: str, node: Node | JsonNode = None) -> None:
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
            if not INT64_MIN <= value <= INT64_MAX:
                self._merge(self._fields[name], value)
        for field in nested:
            value = obj[field.name]
            sig = signature(value, field.node)
            holds_int = field.seen.get(sig)
            if holds_int is None or (holds_int and (line is None or may_hold_big_int(line))):
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
            if isinstance(field.node, JsonNode):
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
        leaves = leaf_types(sig)
        if leaves is None or isinstance(field.node, JsonNode):
            return
        leaves = frozenset(leaves)
        if leaves <= _SCALAR_TYPES:  # the signature describes the value whole: trust it
            if len(field.seen) >= _CACHE_LIMIT:
                field.seen.clear()
            field.seen[sig] = int in leaves

    def _merge(self, field: _Field, value: Any) -> None:
        node = field.node
        if isinstance(node, JsonNode):
            return
        try:
            field.node = merge(node, value)
        except Clash as clash:
            at = f" at {field.name}{''.join(reversed(clash.path))}" if clash.path else ""
            field.node = JsonNode(f"{' and '.join(clash.kinds)} values{at}")
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
            if isinstance(node, JsonNode):
                arrow, why = None, f"holds {node.why} across rows"
            else:
                try:
                    arrow, why = arrow_type(node, name, notes), ""
                except NotNative as exc:
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
            return pa.array([coerce(v, type) for v in values], type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, AttributeError) as exc:
            raise ValueError(f"values do not fit the scanned type {type}: {exc}") from None

    # -- cached scans ------------------------------------------------------------------------

    def to_json(self) -> str:
        """The inferred state (not the caches, which are rebuilt as rows come)."""
        fields = [[name, node_to_json(field.node)] for name, field in self._fields.items()]
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
                types._fields[name] = _Field(name, node_from_json(node))
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"not a record of field types: {exc!r}") from None
        return types


_Shape = tuple[tuple[str, ...], tuple[_Field, ...]]
_ZERO: dict[type, Any] = {bool: False, int: 0, float: 0.0, str: ""}  # a value of each kind
