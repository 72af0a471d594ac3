"""JSON in and out, through orjson (a dependency: it parses our rows 4x faster than json, measured,
and parsing is most of the validation pass), and the standard library where orjson cannot be
installed or would change a value: orjson reads integers beyond 64 bits as floats, so a line that
may hold one (a run of 19 digits) is read by json, which keeps them exact. `json_default` and
`json_text` write what JSON cannot hold (dates, bytes, decimals of in-memory rows) as text JSON can,
alike in every output."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import importlib
import json
import math
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
    """RFC 8259 JSON in UTF-8, exactly: integers of any size kept whole, and what is not JSON
    (NaN, Infinity, a number out of range, a UTF-16 text, invalid UTF-8) refused with ValueError,
    whichever parser reads it."""
    if orjson is not None and not (isinstance(data, bytes) and may_hold_big_int(data)):
        try:
            return orjson.loads(data)
        except ValueError:
            pass  # orjson refuses what json may accept (lone surrogate escapes): json decides
    try:
        # Decoded here, strictly: json.loads on bytes would guess UTF-16 and pass surrogates.
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return STRICT.decode(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


class NotJSON(ValueError):
    """Not JSON, and said why: a value Python's json would take though JSON has not (NaN,
    Infinity, a number beyond a double's range), or no JSON value where one was looked for."""


def _not_json(name: str) -> Any:
    raise NotJSON(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotJSON(f"the number {text[:40]} is beyond a double's range")
    return value


# The standard library's decoder made strict: integers stay exact, what is not JSON is refused.
STRICT = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite)


def may_hold_big_int(line: bytes) -> bool:
    """Could this JSON text hold an integer beyond 64 bits? (It has a run of 19 or more digits.)
    A cheap test, so that only such rare lines pay for a per-field check."""
    return _DIGIT_RUN in line.translate(_DIGITS_AS_ZERO)


def orjson_loads() -> Any:
    """orjson's own loads, or None: for a hot loop that tests `may_hold_big_int` inline and
    gives `loads` whatever orjson refuses."""
    return None if orjson is None else orjson.loads


def dumps(value: Any, default: Any = None) -> bytes:
    """Compact UTF-8 JSON; `default` converts what JSON cannot hold (as json.dumps's default)."""
    if orjson is not None:
        try:
            return orjson.dumps(value, default=default)  # type: ignore[no-any-return,unused-ignore]
        except TypeError:
            pass  # e.g. integers beyond 64 bits: the standard library handles those
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=default).encode()


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
    return dumps(value, json_default).decode()
