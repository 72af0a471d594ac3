"""What every attempt of a run passes and reports to: the pacer, the shared Retry-After pause,
the learned rate under `--rate auto`, the breaker and the deadline. The runner sees one
`Gatekeeper`; this module decides what each signal means for all of them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from batchpizza.errors import HTTPStatusError, ProviderError
from batchpizza.ratelimit import Clock, Gate, Sleep
from batchpizza.runner import Gatekeeper, Stopped
from batchpizza.stop import Stop


class Control(Gatekeeper):
    def __init__(
        self,
        *,
        rate: float,
        retry_after_cap: float,
        stop: Stop,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        on_event: Callable[[float, str, float, str], None] | None = None,
    ) -> None:
        self.gate = Gate(rate, clock=clock, sleep=sleep)
        self.stop = stop
        self.retry_after_cap = retry_after_cap
        self._clock = clock
        self.on_event = on_event

    @property
    def rate(self) -> float | None:
        pacer = self.gate.pacer
        return pacer.rate if pacer is not None else None

    @property
    def waiting(self) -> str | None:
        remaining = self.gate.pause.remaining
        return f"Retry-After {remaining:.0f}s" if remaining > 0 else None

    async def enter(self) -> None:
        if self.stop.sending_stopped:
            raise Stopped
        await self.gate.enter()

    def finished(self, started: float, outcome: str, error: ProviderError | None) -> None:
        if error is None:
            return
        retry_after = error.retry_after
        if retry_after is not None and isinstance(error, HTTPStatusError):
            self.gate.pause.hold(min(retry_after, self.retry_after_cap))
