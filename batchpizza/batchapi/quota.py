"""A batch failed for OpenAI's enqueued-token limit ("token_limit_exceeded": the tokens of the
batches an organization has in progress, per model, may not pass a limit): nothing is wrong
with its file, there was no room for it yet. Its lines are resubmitted, as an expired batch's
are, once no other batch of the run is out (each submission before that would fail alike and
spend one of the line's --max-retries); never a reason to stop the run as a refused file is."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("batchpizza")

CODES = frozenset({"token_limit_exceeded"})


def over_enqueued_limit(batch: dict[str, Any]) -> bool:
    """Whether every error a failed batch gives is the enqueued-token limit."""
    errors = batch.get("errors")
    data = errors.get("data") if isinstance(errors, dict) else errors
    if not isinstance(data, list) or not data:
        return False
    return all(isinstance(item, dict) and item.get("code") in CODES for item in data)


def held_back(batch: dict[str, Any], lines: int) -> str:
    """Why a batch over the limit ran none of its lines, said once in the log."""
    log.warning(
        "batch %s failed for the enqueued-token limit (token_limit_exceeded): its %d requests "
        "are submitted again once the run's other batches are done",
        batch.get("id"),
        lines,
    )
    return "failed: token_limit_exceeded (the enqueued-token limit)"
