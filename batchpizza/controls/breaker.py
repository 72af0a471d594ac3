"""When the service keeps refusing: open, wait, probe, give up.

A circuit breaker as pybreaker and resilience4j define it, counting refusals (misuse, the bot
check, HTTP 401, 403) rather than errors: a service that refuses half of what it is sent is
telling the run to stop, and more requests only deepen the ban.

    closed     every request may start; each finished attempt is recorded in a window of the
               last 20. At least 10 refusals among them trips the breaker (half of 20); before 20
               have finished, half of those that have, and at least 5. A refusal of a row the
               service already refused in this run (its misuse re-ask) is not recorded: it
               judges that prompt, not the service. A service that refuses everyone refuses
               distinct rows, and those trip it; a few always-refused rows, once nothing else
               is left, no longer did so with their re-asks alone, and held the run's tail for
               minutes of doubling waits (53 rows, 5 of them always refused: 484 s).
    open       no request starts, for 60 s at the first trip, doubling at each trip after.
    half-open  exactly one request, the probe, may start. A clean answer closes the breaker
               (window cleared; `on_close` so that an adaptive rate resumes at half); a refusal,
               a re-ask's too (one probe cannot tell the two apart, and a ban must hold), opens
               it again with the doubled wait; a failure of another kind (a timeout, a
               5xx) lets another probe go. A probe that never reports (its task cancelled, a
               result lost) is given up after `probe_timeout` and another one goes:
               resilience4j #903 was a half-open state with no time limit, stuck for good.
    stopped    the next wait would take the total time spent open beyond `patience`: every
               `admit()` raises BreakerExhausted, for good.

A request starts as: `permit = await breaker.admit()`, `await gate.enter()`, and, if
`breaker.still_admits(permit)` (it may have tripped during the gate's wait), send; else admit again.
Each state change wakes the tasks blocked in `admit()` (a Wakeup: the injected sleep, cut short),
so nobody polls and a fake clock drives it all. A Permit ties a result to the state it was
admitted in: results of attempts admitted before a trip or a close are old news and ignored.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from batchpizza.controls.ratelimit import Clock, Sleep, Wakeup

DEFAULT_PATIENCE_S = 600.0  # --patience defaults to 10m
FIRST_WAIT_S = 60.0  # the first wait; each trip doubles it
WINDOW = 20  # the last 20 finished attempts
TRIP_AT = 10  # at least half of 20
# Before 20 attempts have finished, half of those that have, and at least this many: a run at
# the default concurrency of 8 against a service refusing everything otherwise sat out a 30 s
# misuse backoff (8 refusals, short of 10) before the breaker could trip (27 s to stop, seen).
MIN_TRIP = 5
# A probe is one attempt, bounded by the runner's --timeout (60 s by default): after 90 s without
# its result it is lost, not slow. Runners with a longer timeout should pass theirs plus a margin.
PROBE_TIMEOUT_S = 90.0

BreakerEvent = Literal["open", "probe", "closed", "gave-up"]


class BreakerExhausted(Exception):
    """The service kept refusing past the run's patience; the runner stops early (exit 4)."""

    def __init__(self, waited_s: float, patience_s: float) -> None:
        super().__init__(
            f"the service kept refusing: {waited_s:.0f} s spent waiting for it, "
            f"and the next wait would pass the patience of {patience_s:.0f} s"
        )
        self.waited_s = waited_s
        self.patience_s = patience_s


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Permit:
    """What `admit()` hands out; give it back to `record()` with the attempt's result."""

    probe: bool  # this attempt is the half-open state's probe
    epoch: int  # bumped at every trip and close: a result from another epoch is old news


class Breaker:
    """Stops requests from starting while the service refuses; see the module docstring."""

    def __init__(
        self,
        *,
        patience: float = DEFAULT_PATIENCE_S,
        first_wait: float = FIRST_WAIT_S,
        probe_timeout: float = PROBE_TIMEOUT_S,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        on_event: Callable[[float, BreakerEvent], None] | None = None,
        on_close: Callable[[], object] | None = None,
    ) -> None:
        if patience < 0 or first_wait <= 0 or probe_timeout <= 0:
            raise ValueError("patience must be >= 0, first_wait and probe_timeout > 0")
        self.patience = patience
        self.first_wait = first_wait
        self.probe_timeout = probe_timeout
        self._clock = clock
        self._wakeup = Wakeup(sleep)
        self._on_event = on_event
        self._on_close = on_close
        self._state = BreakerState.CLOSED
        self._results: deque[bool] = deque(maxlen=WINDOW)  # True: refused
        self._refused = 0  # how many of _results are True, kept as they come and go
        self._epoch = 0
        self._permit = Permit(probe=False, epoch=0)  # what admit() hands out while closed
        self._trips = 0
        self._waited = 0.0  # total of the open waits so far, what patience is spent on
        self._open_until = 0.0
        self._probe_until: float | None = None  # half-open: when the probe out counts as lost

    @property
    def state(self) -> BreakerState:
        self._refresh()
        return self._state

    @property
    def trips(self) -> int:
        """How many times the breaker opened (a trip that gave up instead is not counted)."""
        return self._trips

    @property
    def reopens_in(self) -> float:
        """Seconds until the probe may go while open, else 0: for "waiting: breaker 42s"."""
        if self.state is BreakerState.OPEN:
            return self._open_until - self._clock()
        return 0.0

    async def admit(self) -> Permit:
        """Return when a request may start; raise BreakerExhausted once out of patience."""
        while True:
            self._refresh()
            now = self._clock()
            if self._state is BreakerState.STOPPED:
                raise BreakerExhausted(self._waited, self.patience)
            if self._state is BreakerState.CLOSED:
                return self._permit
            if self._state is BreakerState.OPEN:
                await self._wakeup.sleep(self._open_until - now)
                continue
            if self._probe_until is None or now >= self._probe_until:
                self._probe_until = now + self.probe_timeout
                self._emit(now, "probe")
                return Permit(probe=True, epoch=self._epoch)
            await self._wakeup.sleep(self._probe_until - now)

    def permit_now(self) -> Permit | None:
        """`admit()` without waiting: the permit while closed, else None (call `admit()`)."""
        return self._permit if self._state is BreakerState.CLOSED else None

    @property
    def untroubled(self) -> bool:
        """Closed, and no refusal among the attempts of its window: recording a clean result
        then changes nothing (the window's count of refusals stays 0), so it may be skipped."""
        # A full window: before it is, a clean answer changes what half of it is (MIN_TRIP).
        return (
            self._state is BreakerState.CLOSED
            and not self._refused
            and len(self._results) == WINDOW
        )

    def still_admits(self, permit: Permit) -> bool:
        """Whether `permit` still lets its request start. A worker admitted while closed may then
        sleep on the pacer or a Retry-After; if the breaker tripped meanwhile, it must go back
        to `admit()` instead of sending."""
        state = self.state
        if permit.epoch != self._epoch:
            return False
        return state is BreakerState.CLOSED or (state is BreakerState.HALF_OPEN and permit.probe)

    def record(
        self,
        refused: bool,
        *,
        clean: bool = True,
        permit: Permit | None = None,
        again: bool = False,
    ) -> None:
        """Record a finished attempt: `refused` for misuse, the bot check, HTTP 401 or 403;
        else `clean` says whether it was answered (False: a timeout, a 5xx, another failure).
        `again`: the attempt re-asked a row already refused in this run. Pass the attempt's
        Permit: without it, a result is taken as belonging to the current state, so a
        straggler could be mistaken for the probe."""
        self._refresh()
        if permit is not None and permit.epoch != self._epoch:
            return
        if self._state is BreakerState.CLOSED:
            if refused and again:
                return  # news about that prompt; the window counts the service's verdicts
            results = self._results
            if len(results) == WINDOW and results[0]:
                self._refused -= 1  # about to leave the window
            results.append(refused)
            if refused:
                self._refused += 1
                if self._refused >= min(TRIP_AT, max(MIN_TRIP, (len(results) + 1) // 2)):
                    self._trip(self._clock())
        elif self._state is BreakerState.HALF_OPEN and self._probe_until is not None:
            if refused:
                self._trip(self._clock())
            elif clean:
                self._close(self._clock())
            else:
                self._probe_until = None  # the probe told nothing: another one may go
                self._wakeup.fire()
        # Open or stopped: the attempt was admitted before the trip; the verdict is in.

    def _refresh(self) -> None:
        if self._state is BreakerState.OPEN and self._clock() >= self._open_until:
            self._state = BreakerState.HALF_OPEN
            self._probe_until = None

    def _trip(self, now: float) -> None:
        self._new_epoch()
        self._probe_until = None
        wait = self.first_wait * 2**self._trips
        if self._waited + wait > self.patience:
            self._state = BreakerState.STOPPED
            self._emit(now, "gave-up")
        else:
            self._trips += 1
            self._waited += wait
            self._open_until = now + wait
            self._state = BreakerState.OPEN
            self._emit(now, "open")
        self._wakeup.fire()

    def _close(self, now: float) -> None:
        self._new_epoch()
        self._probe_until = None
        self._state = BreakerState.CLOSED
        self._emit(now, "closed")
        if self._on_close is not None:
            self._on_close()
        self._wakeup.fire()

    def _new_epoch(self) -> None:
        """A trip or a close: results of attempts admitted before it are old news."""
        self._epoch += 1
        self._permit = Permit(probe=False, epoch=self._epoch)
        self._results.clear()
        self._refused = 0

    def _emit(self, now: float, event: BreakerEvent) -> None:
        if self._on_event is not None:
            self._on_event(now, event)
