"""When a batch the server answers 404 for is lost for good (its lines then resubmitted), and
when it is only not known yet: a server whose replicas learn of a new batch a little late
answers 404 to its first polls, and resubmitting then would run every line twice (the first
batch runs all the same, and is never collected). The same rule holds for the output and error
files a finished batch announces (download.py)."""

from __future__ import annotations

import time

from batchpizza.checkpoint.batches import BatchFile

POLLS = 3  # polls in a row, in one run, that found it unknown
AGE = 600.0  # or seconds since its file was recorded: a cron run polls each batch once


class Lost:
    def __init__(self) -> None:
        self._unknown: dict[int, int] = {}  # file seq -> polls in a row that answered 404

    def gone(self, f: BatchFile) -> bool:
        """One more 404 for the batch of file `f`: whether it is lost for good now."""
        n = self._unknown[f.seq] = self._unknown.get(f.seq, 0) + 1
        return n >= POLLS or time.time() - f.created >= AGE

    def known(self, f: BatchFile) -> None:
        self._unknown.pop(f.seq, None)
