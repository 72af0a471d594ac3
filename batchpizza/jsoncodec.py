"""JSON in and out, through orjson (a dependency: it parses our rows 4x faster than json, measured,
and parsing is most of the validation pass), and the standard library where orjson cannot be
installed or refuses a value (integers beyond 64 bits). Both give the same values."""

from __future__ import annotations

import importlib
import json
from typing import Any

orjson: Any
try:
    orjson = importlib.import_module("orjson")
except ImportError:  # pragma: no cover - a platform without an orjson wheel
    orjson = None

# Every digit as b"0", everything else as b"x": a run of 19 digits becomes one substring search,
# both in C (a regex for \d{19} costs several times more per line).
_DIGITS_AS_ZERO = bytes(48 if 48 <= b <= 57 else 120 for b in range(256))
_DIGIT_RUN = b"0" * 19


def loads(data: bytes | str) -> Any:
    if orjson is not None:
        try:
            return orjson.loads(data)
        except ValueError:
            pass  # orjson refuses some valid JSON (integers beyond 64 bits): let json decide
    return json.loads(data)


def may_hold_big_int(line: bytes) -> bool:
    """Could this JSON text hold an integer beyond 64 bits? (It has a run of 19 or more digits.)
    A cheap test, so that only such rare lines pay for a per-field check."""
    return _DIGIT_RUN in line.translate(_DIGITS_AS_ZERO)


def dumps(value: Any, default: Any = None) -> bytes:
    """Compact UTF-8 JSON; `default` converts what JSON cannot hold (as json.dumps's default)."""
    if orjson is not None:
        try:
            return orjson.dumps(value, default=default)  # type: ignore[no-any-return,unused-ignore]
        except TypeError:
            pass  # e.g. integers beyond 64 bits: the standard library handles those
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=default).encode()
