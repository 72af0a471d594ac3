"""Every `$ref` of a schema checked before it is compiled, so that a broken one is refused naming
itself and its place: fastjsonschema says only `Unresolvable ref: $defs` for a
`#/$defs/missing`, and nothing of where in the schema it is."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

from batchpizza.errors import UsageError


def check_refs(schema: dict[str, Any], where: str, place: Callable[[tuple[str, ...]], str]) -> None:
    """A usage error for the first `$ref` that points at nothing in `schema`, or outside it.
    `place(path)` writes a place in the schema as the other messages do."""
    with_ids = any(key == "$id" for _path, key, _value in _walk(schema, ()))
    for path, key, ref in _walk(schema, ()):
        if key != "$ref" or not isinstance(ref, str):
            continue
        at = place((*path, "$ref"))
        if not ref.startswith("#"):
            if with_ids:
                continue  # may name a subschema by its $id: fastjsonschema resolves those
            raise UsageError(
                f"{where}: $ref {ref} at {at} is outside the schema, and is not fetched: "
                "put it under definitions"
            )
        if ref == "#" or ref.startswith("#/"):
            missing = _missing(schema, ref)
            if missing is not None:
                step, parent = missing
                raise UsageError(
                    f"{where}: $ref {ref} at {at} points at nothing in the schema: "
                    f"{place(parent)} has no {step!r}"
                )


def _walk(node: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str, Any]]:
    """(the path of a mapping, a key of it, its value) for every mapping in `node`: data too
    (an `enum`'s), as fastjsonschema resolves a `$ref` wherever it is."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from _walk(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, (*path, str(index)))


def _missing(schema: dict[str, Any], ref: str) -> tuple[str, tuple[str, ...]] | None:
    """The first step of the JSON pointer `ref` (`#/$defs/name`) that leads nowhere and the
    path it was looked for in, or None when the pointer leads somewhere."""
    node: Any = schema
    path: tuple[str, ...] = ()
    for raw in ref[2:].split("/") if ref != "#" else []:
        step = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and step in node:
            node = node[step]
        elif isinstance(node, list) and step.isascii() and step.isdigit() and int(step) < len(node):
            node = node[int(step)]
        else:
            return step, path
        path = (*path, step)
    return None
