"""Values as every output writes them: what JSON cannot hold, and the result columns' types."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import functools
from typing import TYPE_CHECKING, Any

from batchpizza import jsoncodec
from batchpizza.records import RESULT_COLUMNS, TOKEN_COLUMNS

if TYPE_CHECKING:
    import pyarrow as pa


def json_default(value: Any) -> Any:
    """What Parquet holds and JSON does not: timestamps as ISO 8601, bytes as base64, decimals as
    strings."""
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    raise TypeError(f"cannot write a {type(value).__name__} as JSON")


def json_text(value: Any) -> str | None:
    return None if value is None else jsoncodec.dumps(value, json_default).decode()


@functools.cache
def result_fields(extra: tuple[str, ...] = ()) -> tuple[pa.Field, ...]:
    import pyarrow as pa

    types = {
        "answer": pa.string(),
        "finish_reason": pa.string(),
        "misuse": pa.bool_(),
        "error": pa.string(),
        "attempts": pa.int64(),
        "latency_ms": pa.float64(),
        "model": pa.string(),
        "prompt_tokens": pa.int64(),
        "completion_tokens": pa.int64(),
    }
    return tuple(pa.field(name, types[name]) for name in (*RESULT_COLUMNS, *extra))


def result_columns(extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    unknown = set(extra) - set(TOKEN_COLUMNS)
    if unknown:
        raise ValueError(f"unknown result columns {sorted(unknown)}")
    return (*RESULT_COLUMNS, *extra)
