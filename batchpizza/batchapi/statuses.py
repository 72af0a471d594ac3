"""The statuses a batch goes through at OpenAI, and a word, once a batch, for one that is not
among them: it is waited on as in progress (it may end yet), which without a word in the log
would look like a batch that never ends until --deadline. A status is read in any case (a
gateway's `Completed`, `IN_PROGRESS`): normalised once, as the batch object is read
(client.py), so that everything after compares it as OpenAI spells it."""

from __future__ import annotations

import logging
from typing import Any

from batchpizza.checkpoint.batches import BatchFile

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
