"""What every attempt of a run passes and reports to: the breaker, the pacer with its shared
Retry-After pause, and the learned rate under `--rate auto`. The runner sees one `Gatekeeper`;
this module decides what each outcome means for all of them.

    attempt outcome                         learned rate   breaker
    answered                                CLEAN          clean
    429, or any reply with Retry-After      THROTTLED      clean (the service is busy, not
                                                                  refusing)
    misuse, bot check, HTTP 401 / 403       REFUSED        refusal
    the same, re-asking a row refused       NEUTRAL        refusal of that row: not in the
      before in this run                                   window (a probe's still trips)
    timeout, transport, 408, 5xx, no text   OVERLOAD       not clean (a probe may go again)
    other 4xx, a refused redirect           NEUTRAL        clean
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from batchpizza.controls.adaptive import AdaptiveRate, Feedback
from batchpizza.controls.breaker import Breaker, BreakerExhausted, BreakerState, Permit
from batchpizza.controls.budget import BudgetReached
from batchpizza.controls.failing import FailingWatch
from batchpizza.controls.gate import Gatekeeper, Stopped
from batchpizza.controls.metering import Meter, Ticket
from batchpizza.controls.ratelimit import RETRY_AFTER, WINDOW, Clock, Pacer, Pause, Sleep
from batchpizza.errors import (
    RETRYABLE_STATUSES,
    BadReply,
    HTTPStatusError,
    MisuseDetected,
    ProviderError,
    TransportError,
)
from batchpizza.records import Prompt, RateInfo

# (unix time, kind, value, detail): what the checkpoint's events table records.
Event = tuple[float, str, float, str]
REFUSAL_STATUSES = frozenset({401, 403})
T = TypeVar("T")
# A pacer slot further off than this (seconds) is waited for in a race with the stop signal.
FAR_SLOT = 0.25


def feedback_of(error: ProviderError | None, again: bool = False) -> tuple[Feedback, bool, bool]:
    """(what the learned rate hears, whether it was a refusal, whether it was clean). `again`:
    the attempt re-asked a row already refused in this run, so a refusal speaks of that prompt,
    not of the rate."""
    if error is None:
        return Feedback.CLEAN, False, True
    if isinstance(error, MisuseDetected) or error.status in REFUSAL_STATUSES:
        return (Feedback.NEUTRAL if again else Feedback.REFUSED), True, True
    if error.retry_after is not None or error.status == 429:
        return Feedback.THROTTLED, False, True
    overloaded = isinstance(error, (TransportError, BadReply)) or (
        isinstance(error, HTTPStatusError) and error.status in RETRYABLE_STATUSES
    )
    if overloaded:
        return Feedback.OVERLOAD, False, False
    return Feedback.NEUTRAL, False, True


class Gate:
    """What every attempt passes before it is sent: the shared pause, then the pacer. `rate` is
    a fixed rate (0 = unlimited) or an AdaptiveRate, which then sets the pacer's rate."""

    def __init__(
        self,
        rate: float | AdaptiveRate,
        *,
        window: float = WINDOW,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.pause = Pause(clock=clock, sleep=sleep)
        self.adaptive = rate if isinstance(rate, AdaptiveRate) else None
        self.pacer: Pacer | None = None
        start = rate.rate if isinstance(rate, AdaptiveRate) else rate
        if start > 0:
            self.pacer = Pacer(start, window=window, clock=clock, sleep=sleep)
        if self.adaptive is not None and self.pacer is not None:
            self.adaptive.drive(self.pacer)
        self._waiting: str | None = None

    @property
    def rate(self) -> float:
        """The rate in force, requests/s; 0 when unlimited."""
        return self.pacer.rate if self.pacer is not None else 0.0

    @property
    def waiting(self) -> str | None:
        """What holds the run back now, for a progress bar: "retry-after" while a Retry-After
        pause lasts (`pause.remaining` says how long), else what the runner set (e.g. "breaker"),
        else None."""
        if self.pause.remaining > 0:
            return RETRY_AFTER
        return self._waiting

    @waiting.setter
    def waiting(self, reason: str | None) -> None:
        self._waiting = reason

    def try_enter(self) -> bool:
        """`enter()` if it can pass at once (no Retry-After pause holding, and no pacer or a
        free slot this instant, which it then takes); False: call `enter()`."""
        if self.pause.holding:
            return False
        return self.pacer is None or self.pacer.try_now()

    async def enter(self) -> None:
        while True:
            await self.pause.wait()
            if self.pacer is None:
                return
            await self.pacer.acquire()
            # A Retry-After that arrived while this worker slept for its slot holds it too. The
            # slot is forfeited (it stays in the pacer's log, which only errs on the safe side)
            # and a fresh one is taken after the pause, so the waiters do not leave in a burst.
            if self.pause.remaining <= 0:
                return

    async def enter_near(self) -> bool:
        """`enter()` for a slot a moment away, with no Retry-After pause holding: False, as soon
        as the wait grows (a pause begins, the rate changes and voids the slot), with no slot
        taken: then call `enter()`, whose wait may be long."""
        if self.pacer is None:
            return not self.pause.holding
        return await self.pacer.acquire(once=True) and self.pause.remaining <= 0


class Control(Gatekeeper):
    def __init__(
        self,
        *,
        rate: float,
        auto_max: float | None,
        learned: float | None,
        patience: float,
        retry_after_cap: float,
        timeout: float,
        on_give_up: Callable[[], None],
        stop_signal: Callable[[], Awaitable[None]] | None = None,
        meter: Meter | None = None,
        on_stop: Callable[[str, str], None] | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._clock = clock
        # --max-cost / --tpm: what each request reserves and books (None: neither asked).
        self.meter = meter
        self.meters = meter is not None
        # The early stops that are no breaker's: (reason, message): "budget", "failing".
        self.on_stop = on_stop
        self.failing = FailingWatch(clock=clock)
        self.stop_message: str | None = None
        self.events: list[Event] = []
        self.adaptive: AdaptiveRate | None = None
        if auto_max is not None:
            start = min(learned, auto_max) if learned else None
            self.adaptive = AdaptiveRate(
                auto_max, start=start, clock=clock, on_change=self._rate_changed
            )
        self.gate = Gate(self.adaptive or rate, clock=clock, sleep=sleep)
        self.breaker = Breaker(
            patience=patience,
            probe_timeout=timeout + 30.0,  # a probe may take a whole attempt, and then some
            clock=clock,
            sleep=sleep,
            on_event=self._breaker_event,
            on_close=self.adaptive.halve if self.adaptive is not None else None,
        )
        self.retry_after_cap = retry_after_cap
        self.on_give_up = on_give_up
        self.stop_signal = stop_signal  # awaitable that returns when sending stops
        self.stopped = False

    @property
    def rate(self) -> float | None:
        """Requests per second now; None when unlimited."""
        return self.gate.rate or None

    @property
    def waiting(self) -> str | None:
        """What the whole run is waiting for, if anything (for the progress bar)."""
        if self.breaker.state is BreakerState.OPEN:
            return f"service refusing: probe in {self.breaker.reopens_in:.0f}s"
        if self.gate.pause.remaining > 0:
            return f"Retry-After {self.gate.pause.remaining:.0f}s"
        return None

    async def enter(self) -> object:
        # The fast path, the usual case of a run at full speed: the breaker closed, no
        # Retry-After pause, and the rate unlimited or a pacer slot free this instant. Nothing is
        # awaited between these checks, so nothing can trip the breaker meanwhile and it need not
        # be asked again. Measured: 1.6 us an attempt through the loop below (three coroutines,
        # a new Permit), 0.4 us this way. The breaker is asked first: a slot taken and then not
        # used would only err on the safe side, but would cost a slot.
        if not self.stopped:
            permit = self.breaker.permit_now()
            if permit is not None and self.gate.try_enter():
                return permit
        while True:
            if self.stopped:
                raise Stopped
            try:
                permit = self.breaker.permit_now()
                if permit is None:  # open, or a probe out: its wait ends when sending stops
                    permit = await self._unless_stopped(self.breaker.admit())
            except BreakerExhausted:
                self.stopped = True
                self.on_give_up()
                raise Stopped from None
            await self._gate()
            if self.breaker.still_admits(permit):
                return permit
            # The breaker tripped while this worker waited for its slot: ask it again.

    async def enter_for(self, prompt: Prompt) -> object:
        """`enter`, with the request's worst case reserved and its tokens booked (the Meter)."""
        meter = self.meter
        if meter is None or self.stopped:
            return await self.enter()
        # The fast path of `enter`, and the meter's: nothing awaited, no coroutine made.
        permit = self.breaker.permit_now()
        if permit is not None:
            ticket = meter.admit_now(prompt, permit)
            if ticket is not None:
                if self.gate.try_enter():
                    return ticket
                meter.cancel(ticket)  # the gate makes it wait: booked after the wait
        # The gate's wait first (a request slot, a Retry-After pause, the breaker), then the
        # meter's: tokens booked before a pause were spent on a timeline nobody used, and the
        # requests that waited it out left together when it ended.
        while True:
            entered = await self.enter()
            ticket = meter.admit_now(prompt, entered)
            if ticket is None:
                ticket = await self._admit(meter, prompt)
                ticket.permit = entered
            admits = not isinstance(entered, Permit) or self.breaker.still_admits(entered)
            if admits and not self.gate.pause.holding:
                return ticket
            # A Retry-After or a trip came while it waited for its tokens: the gate again.
            meter.cancel(ticket)

    async def _admit(self, meter: Meter, prompt: Prompt) -> Ticket:
        """The meter's wait (a --tpm slot, room under --max-cost), which ends at once when
        sending stops, as the pacer's does (an interrupt waited for the grace otherwise)."""
        try:
            if self.stop_signal is None:
                return await meter.admit(prompt)
            admitting = asyncio.ensure_future(meter.admit(prompt))
            stopping = asyncio.ensure_future(self.stop_signal())
            try:
                await asyncio.wait({admitting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            except BaseException:
                # Cancelled in the very turn the admission came: nobody else will give it back.
                if admitting.done() and not admitting.cancelled() and not admitting.exception():
                    meter.cancel(admitting.result())
                raise
            finally:
                stopping.cancel()
                if not admitting.done():
                    admitting.cancel()  # meter.admit gives back what it reserved
                    await asyncio.wait({admitting})
            if admitting.cancelled():
                raise Stopped
            return admitting.result()
        except BudgetReached:
            self._stop("budget", "the next request's worst-case cost would pass --max-cost")
            raise Stopped from None

    def _stop(self, reason: str, message: str) -> None:
        if not self.stopped:
            self.stopped = True
            self.stop_message = message
            if self.on_stop is not None:
                self.on_stop(reason, message)

    async def _gate(self) -> None:
        """The pacer and the shared pause; a long wait there (a Retry-After, a slow rate) ends
        at once when sending stops (a deadline), instead of holding the run for the grace."""
        # A near slot is waited for without the race, but a wait that grows meanwhile (a
        # Retry-After from another worker's reply, a learned rate cut) is raced from then on: a
        # SIGTERM waited out the grace for a worker that had queued a tenth of a second off.
        if self.gate.pause.remaining <= 0 and not self._far and await self.gate.enter_near():
            return
        await self._unless_stopped(self.gate.enter())

    async def _unless_stopped(self, waited: Awaitable[T]) -> T:
        """What `waited` gives, or Stopped as soon as sending stops (then `waited` is
        cancelled): a long wait must not hold a stopped run for the whole grace."""
        if self.stop_signal is None:
            return await waited
        waiting = asyncio.ensure_future(waited)
        stopping = asyncio.ensure_future(self.stop_signal())
        try:
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiting, stopping):
                task.cancel()
        if not waiting.done() or waiting.cancelled():
            raise Stopped
        return waiting.result()

    @property
    def _far(self) -> bool:
        """The next pacer slot is more than a moment away. Workers queue for slots: at the
        default 2/s, eight waiting workers hold slots up to 4 s off, and a SIGTERM waited for
        them all (it once checked the rate alone, under 2/s). A wait this short is not worth
        the two tasks of the race with the stop."""
        pacer = self.gate.pacer
        return pacer is not None and pacer.wait_ahead() > FAR_SLOT

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
        if isinstance(token, Ticket):
            if self.meter is not None:
                self.meter.settle(token, error, rate, usage)
            token = token.permit
        if rate is not None:
            self._heed(rate)
        if error is not None or self.failing.watching:
            why = self.failing.record(error)
            if why is not None:
                self._stop("failing", why)
        if error is None and self.breaker.untroubled:
            # An answer, nothing refused lately: the breaker's window would not change (0.65 us
            # an attempt when it was updated, 0.2 us this way); only a learned rate hears it.
            if self.adaptive is not None:
                self.adaptive.record(Feedback.CLEAN, started)
            return
        feedback, refused, clean = feedback_of(error, again)
        if self.adaptive is not None:
            self.adaptive.record(feedback, started)
        permit = token if isinstance(token, Permit) else None
        self.breaker.record(refused, clean=clean, permit=permit, again=again)
        if error is not None and error.retry_after is not None:
            # Held for every worker, including those already waiting on the pacer.
            self.gate.pause.hold(min(error.retry_after, self.retry_after_cap))

    def unsent(self, token: object) -> None:
        if isinstance(token, Ticket) and self.meter is not None:
            self.meter.cancel(token)

    def cut_off(self, token: object) -> None:
        if isinstance(token, Ticket) and self.meter is not None:
            self.meter.cut_off(token)

    def spent_unrecorded(self, usage: tuple[int | None, int | None]) -> None:
        budget = self.meter.budget if self.meter is not None else None
        if budget is not None:
            budget.keep(*usage)

    def _heed(self, info: RateInfo) -> None:
        """OpenAI-style limits: when `remaining` is about to run out, hold every worker until it
        resets rather than collect 429s. (The announced limit is not turned into a rate: its
        window differs between servers, a minute for OpenAI, a second for others.)"""
        # A limit of 0 with it: a placeholder, not a count (a real zero refuses with a 429 and
        # stops the run, providers/quota.py); holding on it paused every worker each reply.
        if info.remaining is not None and info.remaining <= 1 and info.reset_s and info.limit != 0:
            self.gate.pause.hold(min(info.reset_s, self.retry_after_cap))

    def _wall(self, t: float) -> float:
        return time.time() - (self._clock() - t)

    def _rate_changed(self, t: float, rate: float, reason: str) -> None:
        self.events.append((self._wall(t), "rate", rate, reason))

    def _breaker_event(self, t: float, event: str) -> None:
        rate = self.gate.rate
        self.events.append((self._wall(t), "breaker", rate, event))
        if event == "gave-up" and not self.stopped:
            # Out of patience: stop now, not when some worker next asks to send (they may all be
            # asleep in a misuse backoff for half a minute).
            self.stopped = True
            self.on_give_up()

    def take_events(self) -> list[Event]:
        events, self.events = self.events, []
        return events
