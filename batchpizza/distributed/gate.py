"""An actor's gate to the cluster's one rate controller: the runner's Gatekeeper
(`token = await enter()`, then `finished(...)`) over slots leased from it.

`ClusterGate` keeps a small queue of leased slots, refilled by one lease call at a time; sends what
the attempts did back to the controller in batches (at once after a failure, else every
REPORT_EVERY_S); and keeps one `news` call waiting at the controller, whose answer voids the leased
slots that a Retry-After, a cut of the rate, a trip of the breaker or a stop made void.

A slot is checked twice: when the worker wakes for it (`_take`), and as the request is written
(`slot_trace`, the actor session's trace, just before the write): a request later than its slot
by more than SLOT_TOLERANCE there waits for a fresh slot, on its connection. Between the two an
actor starved of CPU can be descheduled for tens of milliseconds.

A stop the gate hears (the deadline, the breaker out of patience, a lost controller) is also
its `stop`'s, which the actor's runner shares: the gate's own waits (a slot ahead, a probe's
hold, a lease call) and the runner's retry waits (a Retry-After, a misuse refusal's backoff)
end at once, as a single process's do, instead of being waited out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from batchpizza.controls.gate import Gatekeeper, Stopped
from batchpizza.controls.ratelimit import Sleep
from batchpizza.controls.stop import Stop
from batchpizza.distributed.budget import SLOT_TOLERANCE, Lease, News, Report
from batchpizza.errors import ProviderError
from batchpizza.records import RateInfo

log = logging.getLogger("batchpizza")

REPORT_EVERY_S = 0.25  # clean outcomes wait this long to travel together; a failure goes at once
# A slot leased longer ago than this is checked with the controller just before it is used: the
# breaker may have tripped or the run stopped while it waited (a Retry-After, a slow rate).
REVALIDATE_AFTER_S = 1.0
REVALIDATE_LEAD_S = 0.05  # ... that long before its time, so the answer does not make it late


@dataclass(slots=True)
class Ticket:
    """A slot let through (the runner's token): what `finished` reports of it, and its time,
    which the request must still be on time for as it goes on the wire (`on_time`), where a
    fresh slot replaces it."""

    slot: float
    epoch: int
    probe: bool
    issued: float  # when the controller handed out the slot


# The ticket of the attempt this task is sending, set by `enter`: the session's trace (`slot_trace`)
# reads it as the request goes on the wire, in the same task.
_SENDING: ContextVar[tuple[ClusterGate, Ticket] | None] = ContextVar("sending", default=None)


def slot_trace() -> aiohttp.TraceConfig:
    """An actor session's trace: the request is held, on its connection, just before it is
    written, until it is on time for its slot (ClusterGate.on_time)."""

    async def on_the_wire(*_: object) -> None:
        sending = _SENDING.get()
        if sending is not None:
            gate, ticket = sending
            await gate.on_time(ticket)

    trace = aiohttp.TraceConfig()
    trace.on_connection_reuseconn.append(on_the_wire)
    trace.on_connection_create_end.append(on_the_wire)
    return trace


class Controller(Protocol):
    """The cluster's budget as an actor sees it (batchpizza.ray wraps the Ray actor handle)."""

    async def lease(self, want: int, reports: Sequence[Report]) -> Lease: ...

    async def record(self, reports: Sequence[Report]) -> Lease: ...

    async def admits(self, epoch: int, probe: bool) -> bool: ...

    async def news(self, known: int) -> News: ...


class ClusterGate(Gatekeeper):
    def __init__(
        self,
        controller: Controller,
        *,
        share: int,
        before_send: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
        stop: Stop | None = None,
    ) -> None:
        self._controller = controller
        self._share = share
        self._before_send = before_send
        self._clock = clock
        self._sleep = sleep
        self.stop = stop if stop is not None else Stop()
        # (slot, epoch, probe, when it was received, when the controller issued it)
        self._queue: deque[tuple[float, int, bool, float, float]] = deque()
        self._leasing: asyncio.Future[None] | None = None
        self._reports: list[Report] = []
        self._urgent: asyncio.Event | None = None
        self._reporter: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._epoch = 0
        self._news = 0  # the version of the controller's news heard last
        self._hold_until = -math.inf  # from the news: what voids leased slots
        self._cut_at = -math.inf
        self.stopped: str | None = None  # why the cluster stopped sending, once it did
        self.forfeited = 0  # slots this actor woke too late for
        self.late = 0  # requests that went on the wire too late for their slot, sent at another
        self.voided = 0  # slots the news voided (a Retry-After, a cut, a trip)
        self.rate = 0.0

    async def enter(self) -> object:
        if self._before_send is not None:
            await self._before_send()  # this worker's last answer is durable before it sends
        self._start_tasks()
        ticket = await self._take()
        _SENDING.set((self, ticket))  # for `on_the_wire`, in this worker's task
        return ticket

    async def on_time(self, ticket: Ticket) -> None:
        """Called as the request goes on the wire: one later than its slot by more than the
        tolerance first takes a fresh slot. The check in `_take` is not the send: an actor
        descheduled between the two sent late and crowded a window with another actor's
        punctual slot (41 requests in one second at --rate 40, the machine under load)."""
        while not ticket.probe and self._clock() - ticket.slot > SLOT_TOLERANCE:
            self.late += 1
            fresh = await self._take()
            ticket.slot, ticket.epoch, ticket.issued = fresh.slot, fresh.epoch, fresh.issued
            ticket.probe = fresh.probe

    async def _take(self) -> Ticket:
        """A slot to send at, once its time has come."""
        while True:
            if self._halted:
                raise Stopped
            if not self._queue:
                await self._refill()
                continue
            slot, epoch, probe, got, issued = self._queue.popleft()
            if self._void(slot, epoch, issued, probe):
                continue
            if slot - got > REVALIDATE_AFTER_S:
                await self._sleep_until(slot - REVALIDATE_LEAD_S)
                if not await self._controller.admits(epoch, probe):
                    continue
            await self._sleep_until(slot)
            while probe and not self._halted and self._hold_until > self._clock():
                await self._sleep_until(self._hold_until)  # a probe waits out a hold
            if self._halted:
                raise Stopped
            if self._void(slot, epoch, issued, probe):
                self.voided += 1  # the news came while this worker slept for its slot
                continue
            if not probe and self._clock() - slot > SLOT_TOLERANCE:
                # Woken too late: sent now it could crowd a window with another actor's slot.
                # (A probe is alone on the wire, and a lost probe would hold the breaker.)
                self.forfeited += 1
                continue
            return Ticket(slot, epoch, probe, issued)

    @property
    def _halted(self) -> bool:
        """The cluster stopped, or the runner this gate shares its stop with (a wrong key, a
        quota spent): every wait ends at once then, so a loop that waits must end too, or it
        goes round without ever awaiting and the actor's event loop spins for good."""
        return self.stopped is not None or self.stop.sending_stopped

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
        wall = self._clock() - (time.monotonic() - started)  # the runner's clock is monotonic
        ticket = token if isinstance(token, Ticket) else Ticket(wall, self._epoch, False, wall)
        self._reports.append(
            Report.of(
                wall,
                error,
                issued=ticket.issued,
                epoch=ticket.epoch,
                probe=ticket.probe,
                again=again,
            )
        )
        if error is not None:
            if error.retry_after is not None:
                # This actor holds at once (the others when the news reaches them); a probe
                # stays, to wait out the hold.
                self._queue = deque(entry for entry in self._queue if entry[2])
            if self._urgent is not None:
                self._urgent.set()

    async def close(self) -> None:
        """Stop the reporter and the listener, and send what the reporter still holds."""
        for task in (self._reporter, self._listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._reports:
            reports, self._reports = self._reports, []
            with contextlib.suppress(Exception):  # a lost controller must not fail the batch
                self._hear(await self._controller.record(reports))

    async def _sleep_until(self, when: float) -> None:
        delay = when - self._clock()
        if delay > 0:
            await self._unless_stopped(self._sleep(delay))

    async def _unless_stopped(self, wait: Awaitable[None]) -> None:
        """`wait`, ended early by a stop: a worker must not sleep out a hold of minutes (a
        Retry-After) after the deadline or the breaker stopped the cluster."""
        if self.stop.sending_stopped:
            if asyncio.iscoroutine(wait):
                wait.close()  # never started: closed, so that it is not reported unawaited
            return
        waiting = asyncio.ensure_future(wait)
        stopping = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiting, stopping):
                task.cancel()
            await asyncio.gather(waiting, stopping, return_exceptions=True)

    def _halt(self, reason: str) -> None:
        self.stopped = reason
        self._queue.clear()
        self.stop.stop_sending(reason)

    async def _refill(self) -> None:
        # One lease call at a time; the other waiting workers share it. Shielded: one worker
        # cancelled must not cancel the lease the others wait for (nor a stop: the lease call
        # ends by itself, within LEASE_WAIT_S).
        if self._leasing is None or self._leasing.done():
            self._leasing = asyncio.ensure_future(self._fetch())
        await self._unless_stopped(asyncio.shield(self._leasing))

    async def _fetch(self) -> None:
        reports, self._reports = self._reports, []
        try:
            lease = await self._controller.lease(self._share, reports)
        except Exception as exc:  # the controller is gone: nothing may be sent any more
            log.error("the rate controller is unreachable (%s); sending stops", exc)
            self._halt("controller lost")
            return
        self._hear(lease)
        got = self._clock()
        self._queue.extend(
            (slot, lease.epoch, lease.probe, got, lease.issued) for slot in lease.slots
        )

    def _hear(self, lease: Lease) -> None:
        self.rate = lease.rate
        if lease.stop is not None:
            self._halt(lease.stop)
        if lease.epoch > self._epoch:
            self._epoch = lease.epoch

    def _void(self, slot: float, epoch: int, issued: float, probe: bool) -> bool:
        """Whether the news voided this slot since it was leased. A probe is void only in a new
        epoch: dropped for a hold or a cut, it would never report, and the controller would
        count it out for its whole timeout (90 s) with no slot for anyone; it waits out a hold."""
        if epoch < self._epoch:
            return True
        return not probe and (slot < self._hold_until or issued < self._cut_at)

    def _start_tasks(self) -> None:
        if self._reporter is None:
            self._urgent = asyncio.Event()
            self._reporter = asyncio.create_task(self._report_loop(self._urgent))
            self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        """One `news` call always waiting at the controller, so what voids leased slots reaches
        this actor in a message's time, not at its next lease."""
        while self.stopped is None:
            try:
                news = await self._controller.news(self._news)
            except Exception as exc:
                log.error("the rate controller is unreachable (%s); sending stops", exc)
                self._halt("controller lost")
                return
            self._hear_news(news)

    def _hear_news(self, news: News) -> None:
        self._news = max(self._news, news.version)
        self._hold_until = max(self._hold_until, news.hold_until)
        self._cut_at = max(self._cut_at, news.cut_at)
        self._epoch = max(self._epoch, news.epoch)
        if news.stop is not None:
            self._halt(news.stop)
            return
        kept = [e for e in self._queue if not self._void(e[0], e[1], e[4], e[2])]
        self.voided += len(self._queue) - len(kept)
        self._queue = deque(kept)

    async def _report_loop(self, urgent: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(urgent.wait(), REPORT_EVERY_S)
            urgent.clear()
            if self._reports:
                reports, self._reports = self._reports, []
                try:
                    self._hear(await self._controller.record(reports))
                except Exception as exc:
                    log.error("the rate controller is unreachable (%s); sending stops", exc)
                    self._halt("controller lost")
