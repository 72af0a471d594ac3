"""Why the run stops, in one object that the signal handler, the deadline, the breaker, the
workers and the blocking stages' threads all read."""

from __future__ import annotations

import asyncio
import contextlib
import threading


class Stop:
    """`stop_sending(reason)`: no new request starts (a deadline, the breaker out of patience, a
    fatal reply, a signal). `interrupt(signum)`: a signal, which also ends the blocking stages
    (scan, output) at their next batch, so that nothing is written."""

    def __init__(self) -> None:
        self.reason: str | None = None  # "deadline", "refusals", "fatal" or "signal"
        self.signum: int | None = None
        # Read by worker threads (the scan, the output), which cannot await an asyncio event.
        self.interrupted = threading.Event()
        self._event: asyncio.Event | None = None  # made inside the running loop by `wait`

    @property
    def sending_stopped(self) -> bool:
        return self.reason is not None

    def stop_sending(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        if self._event is not None:
            self._event.set()

    def interrupt(self, signum: int) -> None:
        self.signum = signum
        self.interrupted.set()
        self.stop_sending("signal")

    async def sleep(self, delay: float) -> None:
        """Sleep `delay` seconds, or less if sending stops meanwhile: a row waiting out a long
        backoff (a misuse refusal's 30 s) must not hold a stopped run open."""
        if self.reason is not None:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.wait(), timeout=delay)

    async def wait(self) -> None:
        if self._event is None:
            self._event = asyncio.Event()
            if self.reason is not None:
                self._event.set()
        await self._event.wait()
