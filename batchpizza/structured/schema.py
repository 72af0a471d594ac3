"""A run's JSON Schema (--schema, `schema=`): read from a file, a dict or a pydantic model class,
checked against the JSON Schema metaschema (draft-07, the draft fastjsonschema validates by),
compiled once, and judged against OpenAI's rules for strict structured outputs."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from batchpizza import storable
from batchpizza.errors import UsageError
from batchpizza.structured.refs import check_refs

# What OpenAI's strict mode accepts, per https://platform.openai.com/docs/guides/structured-outputs
# ("Supported schemas"): a keyword outside these makes the schema non-strict, not refused.
STRICT_KEYWORDS = frozenset(
    {
        *("type", "properties", "required", "additionalProperties", "items", "enum", "const"),
        *("anyOf", "$ref", "$defs", "definitions", "description", "title", "$schema"),
        *("pattern", "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"),
        *("multipleOf", "minItems", "maxItems"),
    }
)
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


def place(path: list[str] | tuple[str, ...]) -> str:
    """A place in the schema as a JSON pointer: `/properties/label/type` (`/` for the root)."""
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _metaschema_check() -> Callable[[Any], Any]:
    from batchpizza.structured import draft07  # generated: see metaschema.py

    return draft07.validate_http___json_schema_org_draft_07_schema


def read_schema(value: Any) -> dict[str, Any]:
    """The schema `value` names, as a JSON object: a file's path, a mapping, or a pydantic model
    class (its `model_json_schema()`). A usage error (exit 2) names what is wrong and where."""
    if isinstance(value, (str, os.PathLike)):
        where = f"--schema {os.fspath(value)}"
        try:
            text = Path(value).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or exc
            raise UsageError(f"{where}: cannot read: {why}") from None
        try:
            schema = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(
                f"{where}: not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
    elif isinstance(value, Mapping):
        where = "schema="
        try:  # a copy the caller cannot change under us, and only what JSON holds
            schema = json.loads(json.dumps(value))
        except (TypeError, ValueError) as exc:
            raise UsageError(f"schema=: not a JSON object: {exc}") from None
    elif isinstance(value, type) and callable(getattr(value, "model_json_schema", None)):
        where = f"schema={value.__name__}"
        schema = getattr(value, "model_json_schema")()  # noqa: B009 (a pydantic class)
    else:
        raise UsageError(
            "schema= must be a JSON Schema (a dict), a path to one, or a pydantic model class"
        )
    if not isinstance(schema, dict):
        raise UsageError(f"{where}: a JSON Schema is a JSON object, not {type(schema).__name__}")
    if storable.has_surrogate(json.dumps(schema, ensure_ascii=False)):
        # Sent in every request, it would fail each one's encoding (UTF-8 has no such code).
        raise UsageError(
            f"{where}: holds a lone surrogate (an escape such as \\ud83d without its pair), "
            "which no request can carry: use the whole character"
        )
    check_schema(schema, where)
    return schema


def check_schema(schema: dict[str, Any], where: str) -> None:
    """Refuse a schema that is not valid JSON Schema, naming the place in it."""
    import fastjsonschema

    try:
        _metaschema_check()(schema)
    except fastjsonschema.JsonSchemaValueException as exc:
        # "data.properties.a.type must be ...": the place, then what is wrong there.
        name, _, said = exc.message.partition(" ")
        path = re.sub(r"\[(\d+)\]", r".\1", name).split(".")[1:]
        raise UsageError(f"{where}: not a valid JSON Schema at {place(path)}: {said}") from None
    check_refs(schema, where, place)
    try:
        compile_validator(schema)
    except fastjsonschema.JsonSchemaDefinitionException as exc:
        raise UsageError(f"{where}: not a usable JSON Schema: {exc}") from None


class _NoRemote(Mapping[str, Callable[[str], Any]]):
    """fastjsonschema's handlers for a `$ref` outside the schema, whatever its scheme: refused.
    Left to itself it fetches the URL (urlopen: a request to any host the schema names, a local
    file by file://) and fails with the network's error."""

    def __getitem__(self, scheme: str) -> Callable[[str], Any]:
        return _refuse

    def __contains__(self, scheme: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _refuse(uri: str) -> Any:
    import fastjsonschema

    raise fastjsonschema.JsonSchemaDefinitionException(
        f"$ref {uri} is outside the schema, and is not fetched: put it under definitions"
    )


def compile_validator(schema: dict[str, Any]) -> Callable[[Any], Any]:
    """The schema's validator: returns the value, raises JsonSchemaValueException."""
    import fastjsonschema

    # use_default=False: a value as the model gave it.
    return fastjsonschema.compile(schema, handlers=_NoRemote(), use_default=False)


def schema_name(schema: Mapping[str, Any]) -> str:
    """The `name` response_format asks for ([A-Za-z0-9_-], at most 64): the schema's title, else
    `answer`."""
    title = schema.get("title")
    name = _NAME_CHARS.sub("_", title).strip("_")[:64] if isinstance(title, str) else ""
    return name or "answer"


def is_strict(schema: Mapping[str, Any]) -> bool:
    """Whether OpenAI's strict mode accepts the schema: an object at the root, every object with
    `additionalProperties: false` and every property required, only supported keywords."""
    if schema.get("type") != "object":
        return False
    return _strict(schema)


def _strict(node: Any) -> bool:
    if isinstance(node, bool):
        return False
    if not isinstance(node, Mapping):
        return True
    if any(key not in STRICT_KEYWORDS for key in node):
        return False
    kinds = node.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if "object" in kinds:
        props = node.get("properties")
        if not isinstance(props, Mapping) or node.get("additionalProperties") is not False:
            return False
        if set(node.get("required") or ()) != set(props):
            return False
    subs: list[Any] = []
    for key in ("properties", "$defs", "definitions"):
        subs += list((node.get(key) or {}).values())
    if "items" in node:
        subs.append(node["items"])
    subs += list(node.get("anyOf") or ())
    return all(_strict(sub) for sub in subs)


def response_format(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The `response_format` of an OpenAI-compatible request bound to `schema`."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": schema_name(schema),
            "schema": dict(schema),
            "strict": is_strict(schema),
        },
    }
