"""Values as every output writes them: what JSON cannot hold (jsoncodec.json_default), and the
result columns' types."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from batchpizza.jsoncodec import json_default, json_text
from batchpizza.records import RESULT_COLUMNS, TOKEN_COLUMNS

__all__ = ["fields_of", "json_default", "json_text", "result_columns", "result_fields"]

if TYPE_CHECKING:
    import pyarrow as pa


def result_fields(extra: tuple[str, ...] = ()) -> tuple[pa.Field, ...]:
    return fields_of((*RESULT_COLUMNS, *extra))


@functools.cache
def fields_of(names: tuple[str, ...]) -> tuple[pa.Field, ...]:
    """The Arrow fields of these result columns."""
    import pyarrow as pa

    types = {
        "sample": pa.int64(),
        "answer": pa.string(),
        "finish_reason": pa.string(),
        "misuse": pa.bool_(),
        "error": pa.string(),
        "attempts": pa.int64(),
        "latency_ms": pa.float64(),
        "model": pa.string(),
        "reused_from": pa.string(),
        "prompt_tokens": pa.int64(),
        "completion_tokens": pa.int64(),
        "tokens_estimated": pa.bool_(),
    }
    return tuple(pa.field(name, types[name]) for name in names)


def result_columns(extra: tuple[str, ...] = (), samples: int = 1) -> tuple[str, ...]:
    """The result columns in order: with --repeat N (N > 1) first the row's `sample`, right
    after the carried fields."""
    unknown = set(extra) - set(TOKEN_COLUMNS)
    if unknown:
        raise ValueError(f"unknown result columns {sorted(unknown)}")
    return (*(("sample",) if samples > 1 else ()), *RESULT_COLUMNS, *extra)
