"""When a batch the server answers 404 for is lost for good (its lines then resubmitted), and
when it is only not known yet: a server whose replicas learn of a new batch a little late
answers 404 to its first polls, and resubmitting then would run every line twice (the first
batch runs all the same, and is never collected). The same rule holds for the output and error
files a finished batch announces (download.py)."""

from __future__ import annotations

import time
from typing import Any

from batchpizza.checkpoint.batches import BatchFile

POLLS = 3  # polls in a row, in one run, that found it unknown
AGE = 600.0  # or seconds since its file was recorded: a cron run polls each batch once


class Lost:
    def __init__(self) -> None:
        self._unknown: dict[int, int] = {}  # file seq -> polls in a row that answered 404

    def gone(self, f: BatchFile, since: float | None = None) -> bool:
        """One more 404 for the batch of file `f`: whether it is lost for good now. Its age
        counts from when the server last told of it (made, or polled), not from the file's
        record: a rerun long after a kill makes the batch of an old file. `since`: when what
        is missing came to be instead (a batch's output file: the batch's end)."""
        n = self._unknown[f.seq] = self._unknown.get(f.seq, 0) + 1
        if since is None:
            since = max(f.created, f.updated)
        return n >= POLLS or time.time() - since >= AGE

    def file_gone(self, f: BatchFile, batch: dict[str, Any]) -> bool:
        """One more 404 for an output or error file of `batch`: counted from the batch's end
        (from its file's record where the batch gives no time)."""
        return self.gone(f, self.ended(batch) or f.created)

    @staticmethod
    def ended(batch: dict[str, Any]) -> float | None:
        """When the batch ended, as it says (None: it does not, and its file's age counts)."""
        for key in ("completed_at", "failed_at", "expired_at", "cancelled_at", "finalizing_at"):
            at = batch.get(key)
            if isinstance(at, int | float) and not isinstance(at, bool) and at > 0:
                return float(at)
        return None

    def known(self, f: BatchFile) -> None:
        self._unknown.pop(f.seq, None)
