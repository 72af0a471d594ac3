"""The tree of types one field's values have been seen to hold, and how a value widens it.
A field keeps a native type when its values agree on every row, at every depth; each node here is
changed in place as values are merged into it (memory grows with the schema, never with the rows):

    null                          ignored: every column is nullable
    bool, str                     bool, string
    int                           int64; beyond 64 bits, kept exact: decimal128(38, 0), else string
    int and float                 float64 (an int beyond 64 bits and a float: JSON text, to stay exact)
    list                          list<the merge of every element of every row>; [] merges with all
    dict                          struct<the union of keys, in first-seen order>; a missing key is null
    dict of more than 100 keys    map<string, V> when the values agree (keys that are data, not names)
    anything else at any depth    a conflict (`Clash`): the top-level field becomes JSON text

It knows nothing of rows, caches or Arrow: inference.py drives it, arrow.py reads it.
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias

MAX_STRUCT_KEYS: Final = 100  # more distinct keys than this: the keys are data, a map
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_DECIMAL_LIMIT = 10**38  # decimal128(38, 0) holds up to 38 digits

_KIND_OF: dict[type, str] = {bool: "bool", int: "int", float: "float", str: "str"}
_NAMES = {"bool": "boolean", "int": "integer", "float": "number", "str": "string"}


# A node is None (only nulls seen yet) or one of these. They are changed in place by merges.
class ScalarNode:
    __slots__ = ("kind", "wide")

    def __init__(self, kind: str, wide: int = 0) -> None:
        self.kind = kind  # bool, int, float, str, or the name of a type JSON does not have
        self.wide = wide  # ints: 0 fits int64, 1 fits decimal128(38, 0), 2 only a string


class ListNode:
    __slots__ = ("item",)

    def __init__(self, item: Node) -> None:
        self.item = item


class StructNode:
    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Node]) -> None:
        self.fields = fields


class MapNode:
    __slots__ = ("value",)

    def __init__(self, value: Node) -> None:
        self.value = value


class JsonNode:
    """A top-level field whose values clash: written as JSON text. Keeps what to say about it."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


Node: TypeAlias = "ScalarNode | ListNode | StructNode | MapNode | None"


def _describe(node: Node) -> str:
    if isinstance(node, ScalarNode):
        name = _NAMES.get(node.kind, node.kind)
        return "integer beyond 64 bits" if node.kind == "int" and node.wide else name
    return "list" if isinstance(node, ListNode) else "object"


class Clash(Exception):
    """Two kinds that cannot share a column; `path` is filled in on the way out of the walk."""

    def __init__(self, first: str, second: str) -> None:
        self.kinds = sorted({first, second})
        self.path: list[str] = []


def _scalar_of(value: Any) -> ScalarNode:
    kind = _KIND_OF.get(type(value))
    if kind is None:  # a Python value from an in-memory row: JSON text whatever else it meets
        return ScalarNode(type(value).__name__)
    if kind == "int" and not INT64_MIN <= value <= INT64_MAX:
        return ScalarNode("int", 1 if -_DECIMAL_LIMIT < value < _DECIMAL_LIMIT else 2)
    return ScalarNode(kind)


def merge(node: Node, value: Any) -> Node:
    """`node` widened to hold `value` too; raises Clash where they cannot share a type."""
    kind = type(value)
    if value is None:
        return node
    if kind is list:
        if node is None:
            node = ListNode(None)
        elif not isinstance(node, ListNode):
            raise Clash(_describe(node), "list")
        item = node.item
        try:
            for element in value:
                item = merge(item, element)
        except Clash as clash:
            clash.path.append("[]")
            raise
        node.item = item
        return node
    if kind is dict:
        if node is None:
            node = StructNode({})
        if isinstance(node, MapNode):
            return _merge_map(node, value)
        if not isinstance(node, StructNode):
            raise Clash(_describe(node), "object")
        fields = node.fields
        for key, element in value.items():
            if type(key) is not str:  # JSON keys are strings; an in-memory row's may not be
                raise Clash("object", f"object with {type(key).__name__} keys")
            try:
                fields[key] = merge(fields.get(key), element)
            except Clash as clash:
                clash.path.append(f".{key}")
                raise
        return _to_map(node) if len(fields) > MAX_STRUCT_KEYS else node
    return _merge_scalar(node, _scalar_of(value))


def _merge_map(node: MapNode, value: dict[Any, Any]) -> MapNode:
    merged = node.value
    for element in value.values():
        try:
            merged = merge(merged, element)
        except Clash as clash:
            clash.path.append("{}")
            raise
    node.value = merged
    return node


def _to_map(node: StructNode) -> MapNode:
    """A struct with too many keys becomes a map of the join of its fields' types."""
    merged: Node = None
    for child in node.fields.values():
        try:
            merged = _join(merged, child)
        except Clash as clash:
            clash.path.append("{}")
            raise
    return MapNode(merged)


def _join(a: Node, b: Node) -> Node:
    """The least type holding both (for a struct turning into a map)."""
    if a is None or b is None:
        return a if b is None else b
    if isinstance(a, ScalarNode) and isinstance(b, ScalarNode):
        return _merge_scalar(a, b)
    if isinstance(a, ListNode) and isinstance(b, ListNode):
        return ListNode(_join(a.item, b.item))
    if isinstance(a, StructNode) and isinstance(b, StructNode):
        fields = dict(a.fields)
        for key, child in b.fields.items():
            fields[key] = _join(fields.get(key), child)
        joined = StructNode(fields)
        return _to_map(joined) if len(fields) > MAX_STRUCT_KEYS else joined
    if isinstance(a, MapNode | StructNode) and isinstance(b, MapNode | StructNode):
        values = [n.value if isinstance(n, MapNode) else _to_map(n).value for n in (a, b)]
        return MapNode(_join(values[0], values[1]))
    raise Clash(_describe(a), _describe(b))


def _merge_scalar(node: Node, new: ScalarNode) -> ScalarNode:
    if node is None:
        return new
    if not isinstance(node, ScalarNode):
        raise Clash(_describe(node), _describe(new))
    if node.kind == new.kind:
        node.wide = max(node.wide, new.wide)
        return node
    if {node.kind, new.kind} == {"int", "float"} and not (node.wide or new.wide):
        return ScalarNode("float")  # JSON has one number type: 1 and 1.5 share a float column
    raise Clash(_describe(node), _describe(new))


# -- kept across runs (a cached scan) ----------------------------------------------------------


def node_to_json(node: Node | JsonNode) -> Any:
    if node is None:
        return None
    if isinstance(node, ScalarNode):
        return {"scalar": node.kind, "wide": node.wide}
    if isinstance(node, ListNode):
        return {"list": node_to_json(node.item)}
    if isinstance(node, MapNode):
        return {"map": node_to_json(node.value)}
    if isinstance(node, JsonNode):
        return {"json": node.why}
    return {"struct": [[k, node_to_json(v)] for k, v in node.fields.items()]}


def node_from_json(data: Any) -> Any:
    if data is None:
        return None
    if "scalar" in data:
        return ScalarNode(str(data["scalar"]), int(data["wide"]))
    if "list" in data:
        return ListNode(node_from_json(data["list"]))
    if "map" in data:
        return MapNode(node_from_json(data["map"]))
    if "json" in data:
        return JsonNode(str(data["json"]))
    return StructNode({str(k): node_from_json(v) for k, v in data["struct"]})
