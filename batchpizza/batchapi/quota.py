"""A batch failed for OpenAI's enqueued-token limit ("token_limit_exceeded": the tokens of the
batches an organization has in progress, per model, may not pass a limit): nothing is wrong
with its file, there was no room for it yet. Its lines are resubmitted, as an expired batch's
are, once no other batch is out, this run's or an earlier one's (each submission before that
would fail alike and spend one of the line's --max-retries); never a reason to stop the run
as a refused file is."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, TypeVar

from batchpizza.checkpoint import Checkpoint
from batchpizza.checkpoint.batches import BatchFile, BatchLine

log = logging.getLogger("batchpizza")

_R = TypeVar("_R")  # a row as the caller holds it

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
        "are submitted again once no other batch is out",
        batch.get("id"),
        lines,
    )
    return "failed: token_limit_exceeded (the enqueued-token limit)"


def waits_for_room(f: BatchFile) -> bool:
    """Whether the lines of file `f` wait for the run's, or an earlier run's, other batches to
    be done: its batch failed for the enqueued-token limit. Read from the checkpoint, so that a
    cron run after the one that collected it holds them too."""
    return f.done and f.state == "failed" and any(code in (f.errors or "") for code in CODES)


def online_instead(checkpoint: Checkpoint, mine: Mapping[bytes, _R]) -> list[_R]:
    """--via auto near the deadline: the rows (`mine`, by request key) of the lines waiting for
    room, which never came; their lines marked sent online, as those of a batch cancelled."""
    files = {f.seq: f for f in checkpoint.batch_files() if waits_for_room(f)}
    held: dict[int, list[BatchLine]] = {}
    for line in checkpoint.to_resubmit():
        if line.seq in files and line.digest in mine:
            held.setdefault(line.seq, []).append(line)
    for seq, lines in held.items():
        checkpoint.finish_file(
            seq, [(line.custom_id, "online") for line in lines], files[seq].state
        )
    return [mine[line.digest] for lines in held.values() for line in lines]
