"""The cluster's controller in this process, as an actor sees it (no Ray): tests of the
ClusterGate and the actor's worker talk to a Budget through it."""

from __future__ import annotations

from typing import Any

from batchpizza.distributed.budget import Budget


class LocalController:
    """The worker's protocol over a Budget in this process."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget

    async def lease(self, want: int, reports: Any) -> Any:
        return await self.budget.lease(want, reports)

    async def record(self, reports: Any) -> Any:
        return self.budget.record(reports)

    async def admits(self, epoch: int, probe: bool) -> bool:
        return self.budget.admits(epoch, probe)

    async def news(self, known: int) -> Any:
        return await self.budget.news(known)
