"""What stands between the engine and the server: the gatekeeper every attempt passes. The
engine imports this protocol; the controls (one run's Control, a Ray actor's ClusterGate)
implement it."""

from __future__ import annotations

from batchpizza.errors import ProviderError
from batchpizza.records import Prompt, RateInfo


class Stopped(Exception):
    """A worker about to send (a row or a retry) when the run was told to stop: the row is left
    uncommitted, to be sent again by the next run."""


class Gatekeeper:
    """What every attempt passes before it is sent, and hears how it ended: pacing, pauses, the
    breaker. The runner knows nothing else of them."""

    # Whether `enter_for` must be called (it reserves by the request: --max-cost, --tpm);
    # otherwise the runner calls `enter`, which is cheaper.
    meters = False

    async def enter(self) -> object:
        """Wait until an attempt may be sent; raise Stopped if none may be sent any more. The
        token returned is handed back to `finished`."""
        return None

    async def enter_for(self, prompt: Prompt) -> object:
        """`enter` for this request, when what it may cost is counted (`meters`)."""
        return await self.enter()

    def finished(
        self,
        token: object,
        started: float,
        outcome: str,
        error: ProviderError | None,
        rate: RateInfo | None = None,
        *,
        again: bool = False,
        usage: tuple[int | None, int | None] | None = None,
    ) -> None:
        """Told of every finished attempt: the clock time it was sent, its outcome kind, its
        error, what the server announced of its limit, `again` when it re-asked a row the
        service already refused in this run (a refusal then judges the row, not the service),
        and an answer's token usage (input, output)."""

    def unsent(self, token: object) -> None:
        """Told of an attempt let through and then not sent (the run stopped meanwhile): what
        `enter` or `enter_for` took for it is given back."""

    def cut_off(self, token: object) -> None:
        """Told of an attempt sent and then cut off (the grace after a stop ran out): it says
        nothing of the service, but the server may have done the work."""

    def spent_unrecorded(self, usage: tuple[int | None, int | None]) -> None:
        """Told of the tokens (input, output) of answers that no result will carry (a row
        stopped while re-asked): spent all the same."""
