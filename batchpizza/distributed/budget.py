"""The cluster's one rate budget: send slots handed out in small leases, the learned rate, the
breaker and the deadline, owned by a single controller (a Ray actor in batchpizza.ray).

Why leases of slots, not a token per request: a round trip to the controller per request
measured 16.6/s against a 20/s bucket (issue 15); a lease carries a few slots, each a wall-clock
time at which one request may be sent. The controller plans slots on one timeline for the whole
cluster, `interval` apart and never more than the rate in any window, whichever actor gets them.

Why a slot is valid only for SLOT_TOLERANCE after its time: an actor whose event loop wakes late
must not send late, because a late send and the next actor's punctual one crowd a window; it is
checked when the actor wakes for its slot and again as the request is written (gate.slot_trace:
an actor may be descheduled between the two, for longer on a loaded machine). The
controller's window is widened by that tolerance, so sends made within it still hold no more than
the rate in any one-second window at the server (with the 10 ms of ratelimit.WINDOW for the
network). It is also what makes leases expire: a dead actor's slots pass unused, there is nothing
to give back. A lease reaches at most LEASE_HORIZON_S ahead, so a Retry-After, a cut of the rate
or a trip of the breaker reaches every actor within about that time.

Slot times are wall-clock (time.time) on the controller's host; across hosts the budget is as
exact as the clocks are synchronised (NTP keeps them within a few ms; add the skew to the
tolerance if yours do not).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from batchpizza.controls.adaptive import AdaptiveRate, Feedback
from batchpizza.controls.breaker import (
    Breaker,
    BreakerEvent,
    BreakerExhausted,
    BreakerState,
    Permit,
)
from batchpizza.controls.control import feedback_of
from batchpizza.controls.ratelimit import WINDOW, Clock, Sleep, sends_per_window
from batchpizza.errors import ProviderError

# An actor's event loop may wake this late for its slot and still send; later, the slot is void.
# Measured here (2 cores shared, 4 actors): wake-ups within 2-5 ms, rare ones at 10-15 ms.
SLOT_TOLERANCE = 0.020
CLUSTER_WINDOW = WINDOW + SLOT_TOLERANCE
# How far ahead one lease may reach: the delay with which a cut, a pause or a trip reaches actors
# holding slots, and what a dead actor's lease can waste.
LEASE_HORIZON_S = 0.25
MAX_LEASE = 16  # slots in one lease at most
# A lease call waiting on an open breaker returns empty after this long, so the actor also hears
# of a stop (the deadline) and the controller never holds a call for minutes.
LEASE_WAIT_S = 1.0
# A `news` call with nothing to tell returns after this long (the actor asks again): no call is
# held open for the whole run, and a deadline passing is told within it.
NEWS_WAIT_S = 1.0


@dataclass(frozen=True, slots=True)
class Report:
    """One finished attempt, as an actor tells the controller (in batches)."""

    started: float  # wall-clock time it was sent
    issued: float  # when the controller handed out its slot
    feedback: str  # a Feedback value
    refused: bool
    clean: bool
    retry_after: float | None
    epoch: int  # the breaker epoch of its lease
    probe: bool
    again: bool = False  # it re-asked a row refused before (see Breaker.record)

    @classmethod
    def of(
        cls,
        started: float,
        error: ProviderError | None,
        *,
        issued: float,
        epoch: int,
        probe: bool,
        again: bool = False,
    ) -> Report:
        feedback, refused, clean = feedback_of(error, again)
        retry_after = error.retry_after if error is not None else None
        return cls(
            started, issued, feedback.value, refused, clean, retry_after, epoch, probe, again
        )


@dataclass(frozen=True, slots=True)
class News:
    """What voids slots already leased, as the controller tells every actor the moment it
    happens (each actor keeps one `news` call waiting): slots before `hold_until` (a Retry-After
    holds the cluster), slots issued before `cut_at` (planned at a rate the service pushed back
    on), slots of an epoch before `epoch` (the breaker tripped or closed), and every slot once
    `stop` is set. Without it a slot leased before a 429 still went out from the other actors:
    7 to 14 429s per 100 rows against a 10/s limit, where one process drew 2."""

    version: int  # bumped at each of the above
    hold_until: float
    cut_at: float
    epoch: int
    stop: str | None


@dataclass(frozen=True, slots=True)
class Lease:
    """What the controller answers: slots (wall-clock times) to send at, or why there are none."""

    slots: tuple[float, ...]
    issued: float  # when they were handed out, to be given back in each Report
    epoch: int
    probe: bool
    stop: str | None  # "refusals" or "deadline": send nothing more, ever
    rate: float  # the rate in force, for a progress line

    @property
    def empty(self) -> bool:
        return not self.slots


class SlotBook:
    """Slot times on one timeline: `interval` apart, at most the rate in any CLUSTER_WINDOW, none
    before a Retry-After hold ends. Rate 0 is unlimited (slots at once, only the hold applies)."""

    def __init__(self, rate: float, *, window: float = CLUSTER_WINDOW, clock: Clock) -> None:
        self._window = window
        self._clock = clock
        self._recent: deque[float] = deque()  # slots handed out within the last window
        self._next = -math.inf
        self._last = -math.inf
        self._hold_until = -math.inf
        self.rate = 0.0
        self._interval = 0.0
        self._limit = 0
        self.set_rate(rate)

    def set_rate(self, rate: float) -> None:
        """Plan at `rate` from now on; slots already handed out stay valid. As Pacer.set_rate,
        the schedule restarts late enough that the new spacing with the slots of the last window
        never crowds one."""
        if rate < 0:
            raise ValueError("rate must be 0 (unlimited) or positive")
        if rate == self.rate:
            return
        self.rate = rate
        if rate == 0:
            self._interval, self._limit = 0.0, 0
            return
        self._limit = limit = sends_per_window(rate)
        # Evenly spread over the widened window, so a whole-number rate has no gap each second.
        self._interval = interval = max(1.0 / rate, self._window / limit)
        recent = self._prune()
        start = self._last + interval
        for nth in range(1, min(limit, len(recent)) + 1):
            start = max(start, recent[-nth] + self._window - (limit - nth) * interval)
        self._next = start

    def hold(self, seconds: float) -> bool:
        """No slot before `seconds` from now (a Retry-After holds the whole cluster). True if
        that holds longer than before."""
        until = self._clock() + seconds
        if until <= self._hold_until:
            return False
        self._hold_until = until
        return True

    @property
    def hold_until(self) -> float:
        return self._hold_until

    def peek(self) -> float:
        """When the next slot would fall, without taking it."""
        slot = max(self._clock(), self._next, self._hold_until)
        recent = self._prune()
        if self._limit and len(recent) >= self._limit:
            slot = max(slot, recent[-self._limit] + self._window)
        return slot

    def take(self, n: int, horizon: float = LEASE_HORIZON_S) -> list[float]:
        """Up to `n` slots: the first whenever it falls, the others only within `horizon`."""
        now = self._clock()
        recent = self._prune()
        slots: list[float] = []
        while len(slots) < n:
            slot = max(now, self._next, self._hold_until)
            if self._limit and len(recent) >= self._limit:
                slot = max(slot, recent[-self._limit] + self._window)
            if slots and slot > now + horizon:
                break
            slots.append(slot)
            if self._limit:
                recent.append(slot)
            self._next = slot + self._interval
            self._last = slot
        return slots

    def _prune(self) -> deque[float]:
        recent, now = self._recent, self._clock()
        while recent and recent[0] + self._window <= now:
            recent.popleft()
        return recent


class Budget:
    """The controller's state and its two calls, `lease` and `report`; see the module docstring.
    Async because the breaker's `admit` waits; run it on one event loop (a Ray async actor)."""

    def __init__(
        self,
        *,
        rate: float,
        auto_max: float | None,
        patience: float,
        retry_after_cap: float,
        timeout: float,
        deadline_at: float | None = None,
        learned: float | None = None,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self.adaptive: AdaptiveRate | None = None
        self.book = SlotBook(rate, clock=clock)
        if auto_max is not None:
            start = min(learned, auto_max) if learned else None
            self.adaptive = AdaptiveRate(
                auto_max, start=start, clock=clock, on_change=self._rate_changed
            )
            self.book.set_rate(self.adaptive.rate)
        self.breaker = Breaker(
            patience=patience,
            probe_timeout=timeout + 30.0,
            clock=clock,
            sleep=sleep,
            on_event=self._breaker_event,
            on_close=self.adaptive.halve if self.adaptive is not None else None,
        )
        self._epoch = 0  # the breaker's epoch, followed from its events (it bumps at each)
        self.retry_after_cap = retry_after_cap
        self.deadline_at = deadline_at
        self.stopped: str | None = None
        self._version = 0  # of the news: what voids leased slots (see News)
        self._cut_at = -math.inf
        self._changed = asyncio.Event()
        self.handed = 0  # slots handed out
        self.reported = 0  # attempts reported
        self.rates: list[tuple[float, float, str]] = []  # (time, rate, reason) under auto

    @property
    def rate(self) -> float:
        return self.book.rate

    async def lease(self, want: int, reports: Sequence[Report] = ()) -> Lease:
        """Slots for up to `want` requests (one for the breaker's probe), after recording
        `reports`. An empty lease without `stop`: ask again (the breaker is open)."""
        self.record(reports)
        if self._stop_reason() is not None:
            return self._lease(())
        # No slot is handed out further ahead than the horizon, not even the first: slots held
        # by waiting workers would keep the old rate for as long as they reach (at 2/s, eight
        # workers' slots reach 4 s) and hide a change of rate from the server.
        waited = 0.0
        while (wait := self.book.peek() - LEASE_HORIZON_S - self._clock()) > 0:
            if waited >= LEASE_WAIT_S:
                return self._lease(())
            await self._sleep(min(wait, LEASE_WAIT_S - waited))
            waited += min(wait, LEASE_WAIT_S - waited)
        try:
            permit = await asyncio.wait_for(self.breaker.admit(), LEASE_WAIT_S)
        except asyncio.TimeoutError:
            return self._lease(())
        except BreakerExhausted:
            self.stopped = "refusals"
            return self._lease(())
        slots = self.book.take(1 if permit.probe else max(1, min(want, MAX_LEASE)))
        self.handed += len(slots)
        return self._lease(tuple(slots), permit)

    def admits(self, epoch: int, probe: bool) -> bool:
        """Whether a slot leased in `epoch` may still be used (asked after a long wait for it)."""
        if self._stop_reason() is not None:
            return False
        return self.breaker.still_admits(Permit(probe=probe, epoch=epoch))

    def record(self, reports: Sequence[Report]) -> Lease:
        """Hear finished attempts; the answer says whether to stop and the epoch now."""
        for r in reports:
            self.reported += 1
            if self.adaptive is not None:
                feedback = Feedback(r.feedback)
                # Pushback on a slot handed out before the last cut is news about the old rate,
                # however late it was sent: its episode is that of its lease, not of its send.
                at = r.started if feedback is Feedback.CLEAN else min(r.started, r.issued)
                self.adaptive.record(feedback, at)
            self.breaker.record(
                r.refused, clean=r.clean, permit=Permit(r.probe, r.epoch), again=r.again
            )
            if r.retry_after is not None and self.book.hold(
                min(r.retry_after, self.retry_after_cap)
            ):
                self._tell()
        if self.breaker.state is BreakerState.STOPPED and self.stopped is None:
            self.stopped = "refusals"
            self._tell()
        return self._lease(())

    async def news(self, known: int, wait: float = NEWS_WAIT_S) -> News:
        """The news as soon as it is newer than version `known`, else after `wait` seconds."""
        if self._version == known and self._stop_reason() is None:
            changed = self._changed
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), wait)
        self._stop_reason()
        return News(self._version, self.book.hold_until, self._cut_at, self._epoch, self.stopped)

    def _tell(self) -> None:
        """Something voids leased slots: wake every waiting `news` call."""
        self._version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def stop(self, reason: str) -> None:
        """Send nothing more (a signal to the driver): every actor hears it in the news at once,
        and its requests in flight finish."""
        if self.stopped is None:
            self.stopped = reason
            self._tell()

    def status(self) -> dict[str, object]:
        return {
            "rate": self.rate,
            "breaker": str(self.breaker.state),
            "trips": self.breaker.trips,
            "stopped": self._stop_reason(),
            "slots_handed": self.handed,
            "attempts_reported": self.reported,
            "rates": list(self.rates),
        }

    def _stop_reason(self) -> str | None:
        deadline = self.deadline_at
        if self.stopped is None and deadline is not None and self._clock() >= deadline:
            self.stopped = "deadline"
            self._tell()
        return self.stopped

    def _lease(self, slots: tuple[float, ...], permit: Permit | None = None) -> Lease:
        epoch = permit.epoch if permit is not None else self._epoch
        probe = permit.probe if permit is not None else False
        return Lease(slots, self._clock(), epoch, probe, self._stop_reason(), self.rate)

    def _breaker_event(self, t: float, event: BreakerEvent) -> None:
        if event != "probe":  # a trip ("open", "gave-up") or a close: a new epoch
            self._epoch += 1
            self._tell()

    def _rate_changed(self, t: float, rate: float, reason: str) -> None:
        cut = rate < self.book.rate
        self.book.set_rate(rate)
        self.rates.append((t, rate, reason))
        if cut:
            self._cut_at = self._clock()
            self._tell()
