"""The statuses a batch goes through at OpenAI, and a word, once a batch, for one that is not
among them: it is waited on as in progress (it may end yet), which without a word in the log
would look like a batch that never ends until --deadline. Likewise a poll the server answers
with an error (a 5xx past the client's tries, a 404, no connection): a warning once a batch and
status, so that a cron run at the default verbosity hears of it, and a --wait run polling every
minute for a day does not say it 1,000 times. A status is read in any case (a
gateway's `Completed`, `IN_PROGRESS`): normalised once, as the batch object is read
(client.py), so that everything after compares it as OpenAI spells it."""

from __future__ import annotations

import logging
from typing import Any

from batchpizza.checkpoint.batches import BatchFile
from batchpizza.errors import BatchAPIError

log = logging.getLogger("batchpizza")

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
WAITING = frozenset({"validating", "in_progress", "finalizing", "cancelling"})


def normalised(batch: dict[str, Any]) -> dict[str, Any]:
    """`batch` with its status in lower case, as the Batch API gives it."""
    status = batch.get("status")
    if isinstance(status, str) and status != (low := status.strip().lower()):
        batch["status"] = low
    return batch


class Statuses:
    def __init__(self) -> None:
        self._said: set[int] = set()  # files whose batch's odd status was said
        self._failed: set[tuple[int, int | None]] = set()  # (file, HTTP status) of polls said

    def ended(self, f: BatchFile, batch: dict[str, Any]) -> bool:
        """Whether the batch of file `f` ended (its results can be collected)."""
        status = batch.get("status")
        if status in TERMINAL:
            return True
        if status not in WAITING and f.seq not in self._said:
            self._said.add(f.seq)
            log.warning(
                "batch %s says its status is %.40r, not one the Batch API gives: waited on as in "
                "progress, until it ends or the deadline",
                batch.get("id"),
                status,
            )
        return False

    def poll_failed(self, f: BatchFile, exc: BatchAPIError, then: str) -> None:
        """A poll of the batch of file `f` failed with `exc`: said once for this batch and
        status (None: no reply), with what comes of it (`then`)."""
        if (f.seq, exc.status) in self._failed:
            return
        self._failed.add((f.seq, exc.status))
        log.warning("%s; %s", exc.message, then)
