"""JSON in and out, through orjson when it is installed (the `fast` extra) and the standard library
otherwise. Both give the same values; orjson is only faster."""

from __future__ import annotations

import json
from typing import Any

orjson: Any
try:
    import orjson
except ImportError:  # pragma: no cover - exercised where orjson is absent
    orjson = None

JSONDecodeError: tuple[type[Exception], ...] = (ValueError,)  # orjson's error is a ValueError too


def loads(data: bytes | str) -> Any:
    if orjson is not None:
        try:
            return orjson.loads(data)
        except ValueError:
            pass  # orjson refuses some valid JSON (integers beyond 64 bits): let json decide
    return json.loads(data)


def dumps(value: Any, default: Any = None) -> bytes:
    """Compact UTF-8 JSON; `default` converts what JSON cannot hold (as json.dumps's default)."""
    if orjson is not None:
        try:
            return orjson.dumps(value, default=default)  # type: ignore[no-any-return,unused-ignore]
        except TypeError:
            pass  # e.g. integers beyond 64 bits: the standard library handles those
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=default).encode()
