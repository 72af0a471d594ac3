"""The Arrow side of a tree of types: the Arrow type a field is written as (`arrow_type`), and
values made acceptable to pyarrow as that type (`coerce`: integers beyond 64 bits kept as text
where the type says string). pyarrow is imported inside the functions, where Arrow types are made,
so that a JSONL job which never writes Parquet never pays for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from batchpizza.fieldtypes.tree import ListNode, MapNode, Node, ScalarNode

if TYPE_CHECKING:
    import pyarrow as pa


class NotNative(Exception):
    """A type Parquet cannot hold natively; the message says why."""


def arrow_type(node: Node, name: str, notes: list[str], path: str = "") -> pa.DataType:
    """The Arrow type of a node of field `name`; `path` is where it sits below the field, `notes`
    collects where integers beyond 64 bits are and how they are kept."""
    import pyarrow as pa

    at = f" at {name}{path}" if path else ""
    if node is None:
        return pa.string()  # only nulls seen: the most general type, and it reads as null anyway
    if isinstance(node, ScalarNode):
        if node.kind == "int" and node.wide:
            exact = "decimal128(38, 0)" if node.wide == 1 else "text (more than 38 digits)"
            notes.append(f"holds integers beyond 64 bits{at}; written exactly as {exact}")
            return pa.decimal128(38, 0) if node.wide == 1 else pa.string()
        scalar = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "str": pa.string()}
        if node.kind not in scalar:
            raise NotNative(f"holds {node.kind} values{at}, which JSON has no type for")
        return scalar[node.kind]
    if isinstance(node, ListNode):
        return pa.list_(arrow_type(node.item, name, notes, f"{path}[]"))
    if isinstance(node, MapNode):
        return pa.map_(pa.string(), arrow_type(node.value, name, notes, f"{path}{{}}"))
    if not node.fields:
        raise NotNative(f"holds only empty objects{at}, which Parquet cannot store")
    return pa.struct(
        [(k, arrow_type(v, name, notes, f"{path}.{k}")) for k, v in node.fields.items()]
    )


def coerce(value: Any, type: pa.DataType) -> Any:
    """`value` made acceptable to pa.array as `type`: ints beyond 64 bits in string positions."""
    import pyarrow as pa

    if value is None:
        return None
    if pa.types.is_string(type):
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if pa.types.is_map(type):
        return [(k, coerce(v, type.item_type)) for k, v in value.items()]
    if pa.types.is_list(type):
        return [coerce(v, type.value_type) for v in value]
    if pa.types.is_struct(type):
        return {f.name: coerce(value.get(f.name), f.type) for f in type}
    return value
