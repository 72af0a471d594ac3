"""Where the engine hands each finished result: the `Store` protocol. The SQLite checkpoint is
the store of every run (a file, or in memory for rows in memory without one); a Ray actor's
part store is another."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from batchpizza.records import Attempt, Result


class Store(Protocol):
    path: Path | None  # what an error names; None for a store in memory

    def write(
        self, results: Sequence[Result], attempts: Sequence[Attempt] = (), run: int = 0
    ) -> None:
        """Commit a group of results and the attempts behind them: once it returns, a crash of
        this process loses none of them."""
        ...

    def sync_due(self) -> bool:
        """Whether committed results have waited long enough for `sync`."""
        ...

    def sync_delay(self) -> float:
        """Seconds until committed results are due for `sync` (the committer's timer)."""
        ...

    def sync(self) -> None:
        """Make every commit so far durable against power loss (called in a worker thread)."""
        ...
