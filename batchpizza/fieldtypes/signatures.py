"""Signatures: the fast path of the scan for nested values. A million rows must validate in
seconds, so a nested value is keyed by a signature built with C-level iterators, and only a value
whose signature has not been seen before is walked in Python and merged into the tree of types
(tree.py). A signature holds the Python types of a value's leaves, not their ranges; the scan
(inference.py) remembers which ones hold ints, to range-check those.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from itertools import chain
from typing import Any, Final

from batchpizza.fieldtypes.tree import JsonNode, ListNode, MapNode, Node, StructNode

_EMPTY_LIST: Final = ("[]",)
_SHORT_LIST: Final = 32  # a list of objects this long or shorter is keyed by its exact shape


# Bound once: looking these names up again for every row costs a tenth of the signature.
_flat = chain.from_iterable
_keys, _values, _list_iter = dict.keys, dict.values, list.__iter__


def signature(value: Any, node: Node | JsonNode) -> Hashable:
    """A key such that two values with equal keys widen a type alike, built with C-level iterators
    (a list of 3 messages costs about a microsecond). It holds the Python types of the leaves; one
    holding a list or dict type it does not describe further is never trusted (`leaf_types`).
    None when the value has no cheap signature: it is walked each time."""
    kind = type(value)
    if kind is list:
        if not value:
            return _EMPTY_LIST
        first = type(value[0])
        try:  # dict.keys, dict.values, list.__iter__ raise TypeError on an element of another type
            if first is dict:
                types = map(type, _flat(map(_values, value)))
                if isinstance(node, ListNode) and isinstance(node.item, MapNode):
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
    if isinstance(node, MapNode):
        return ("{}", frozenset(map(type, value.values())))
    leaves = tuple(map(type, value.values()))
    if list not in leaves and dict not in leaves:
        return ("{", tuple(value), leaves)
    fields = node.fields if isinstance(node, StructNode) else {}
    children = tuple(
        signature(v, fields.get(k)) for k, v in value.items() if type(v) in (list, dict)
    )
    return ("{", tuple(value), leaves, children)


def leaf_types(sig: Any) -> Iterable[type] | None:
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
        inner = [leaf_types(child) for child in body[2]]
        if any(t is None for t in inner):
            return None
        return chain((t for t in types if t not in (list, dict)), *inner)  # type: ignore[arg-type]
    if tag == "[{":
        return body[1]  # type: ignore[no-any-return]
    if tag == "[{*":
        return (t for _key, t in body[0])
    return body[0]  # type: ignore[no-any-return]
