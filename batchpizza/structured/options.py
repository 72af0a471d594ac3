"""--schema, --schema-retries and --flatten, checked for RunConfig."""

from __future__ import annotations

from typing import Any

from batchpizza.errors import UsageError
from batchpizza.structured import Structured


def structured_of(schema: Any, retries: int, flatten: bool, params: Any) -> Structured | None:
    """The run's Structured, or None without a schema; a usage error (exit 2) for a schema that
    is no JSON Schema, naming the place, before anything is sent."""
    if retries < 0:
        raise UsageError("--schema-retries must be 0 or more")
    if schema is None:
        if flatten:
            raise UsageError("--flatten needs --schema: it puts the schema's properties apart")
        return None
    if "response_format" in (params or {}):
        raise UsageError("--param response_format with --schema: --schema sets it; give one")
    from batchpizza.structured.columns import flat_names
    from batchpizza.structured.schema import read_schema

    structured = Structured(read_schema(schema), retries)
    if flatten:
        flat_names(structured.schema)
    return structured
