"""What stands between the engine and the server: the gatekeeper every attempt passes. The
engine imports this protocol; the controls (one run's Control, a Ray actor's ClusterGate)
implement it."""

from __future__ import annotations

from batchpizza.errors import ProviderError
from batchpizza.records import RateInfo


class Stopped(Exception):
    """A worker about to send (a row or a retry) when the run was told to stop: the row is left
    uncommitted, to be sent again by the next run."""


class Gatekeeper:
    """What every attempt passes before it is sent, and hears how it ended: pacing, pauses, the
    breaker. The runner knows nothing else of them."""

    async def enter(self) -> object:
        """Wait until an attempt may be sent; raise Stopped if none may be sent any more. The
        token returned is handed back to `finished`."""
        return None

    def finished(
        self,
        token: object,
        started: float,
        outcome: str,
        error: ProviderError | None,
        rate: RateInfo | None = None,
        *,
        again: bool = False,
    ) -> None:
        """Told of every finished attempt: the clock time it was sent, its outcome kind, its
        error, what the server announced of its limit, and `again` when it re-asked a row the
        service already refused in this run (a refusal then judges the row, not the service)."""
