"""Request pacing and the shared Retry-After pause (the learned rate of `--rate auto` is in
adaptive.py).

Pacer. Why not aiolimiter: its leaky bucket configured without burst (`AsyncLimiter(1, 1 / rate)`)
paces from the moment each waiter actually woke, so every late wake-up is lost for good; on this
machine that gave 49.0/s for a rate of 50 and 189/s for 200 (2 to 5 % short). `Pacer` schedules
slots on a virtual timeline (GCRA), so a late wake-up does not push back the slots after it, and
also keeps a log of the sends of the last window so that no sliding one-second window ever holds
more than the rate. At a whole-number rate that window has no slack, so lateness can still
accumulate, but by about one wake-up delay per second rather than per request (0.1 % at 1 ms).
The rate may change at run time (`set_rate`): slots reserved under the old rate become void and
their waiters, woken at once, take fresh slots on a schedule restarted from the last real send,
so neither a cut nor a raise lets a burst through. The log is pruned by time, not cut to the new
rate's length: its size follows the rate (a window never holds more sends than the rate let
through), and after a cut it still knows the sends a raise a moment later must count.

Every class takes `clock` and `sleep`, so tests move a fake clock instead of waiting.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# The one-second window, checked with 10 ms to spare: the server counts arrivals, and a request
# reaches it a variable time after it passed the pacer (building it, a connection, scheduling).
# Measured at a local server: 21 arrivals within 998.75 ms at 20/s with no margin, and spans as
# short as 0.9928 s for 51 arrivals at 50/s on a loaded machine. At a whole-number rate the
# margin costs 1 % of the rate; the spacing between requests is unchanged.
WINDOW = 1.010

# Products like 10 * 0.7 give 7.000000000000001: that rate allows 7 sends a window, not 8.
_FUZZ = 1e-9

RETRY_AFTER = "retry-after"


def sends_per_window(rate: float) -> int:
    """How many sends one window may hold at `rate`: a fractional rate rounds up, as 2.5/s paced
    0.4 s apart puts three sends in some one-second windows."""
    return max(1, math.ceil(rate - _FUZZ))


# Sleeps shorter than this are not cut short by `Wakeup.fire` (see there).
_SHORT_SLEEP = 0.005


class Wakeup:
    """A sleep on the injected clock that `fire()` cuts short for every sleeper.

    A task sleeping for a send slot or for a breaker to reopen must learn at once that the rate
    or the state changed; the sleep itself stays the injected one, so a fake clock drives it.
    """

    def __init__(self, sleep: Sleep) -> None:
        self._sleep = sleep
        self._fired: asyncio.Future[None] | None = None

    def fire(self) -> None:
        if self._fired is not None and not self._fired.done():
            self._fired.set_result(None)
        self._fired = None

    async def sleep(self, delay: float) -> None:
        """Sleep `delay` seconds or until `fire()`; the caller checks again what it waited for."""
        if delay <= 0:
            return
        if delay < _SHORT_SLEEP:
            # A slot a few milliseconds away (a high rate): not worth a task and a wait on two
            # futures; a rate change then takes effect at most this late.
            await self._sleep(delay)
            return
        if self._fired is None:
            self._fired = asyncio.get_running_loop().create_future()
        fired = self._fired
        sleeper = asyncio.ensure_future(self._sleep(delay))
        try:
            await asyncio.wait((sleeper, fired), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not sleeper.done():
                sleeper.cancel()
        if sleeper.done() and not sleeper.cancelled():
            sleeper.result()  # an error of the sleep itself is not swallowed


class Pacer:
    """Hands out send slots `1/rate` seconds apart: no burst at start-up, after a pause or after
    a change of rate."""

    def __init__(
        self,
        rate: float,
        *,
        window: float = WINDOW,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive; use no Pacer for an unlimited rate")
        self.rate = rate
        self._interval = 1.0 / rate
        self._window = window
        self._clock = clock
        self._wakeup = Wakeup(sleep)
        self._next_slot = -math.inf
        self._limit = sends_per_window(rate)
        self._recent: deque[float] = deque()  # the sends of the last window, oldest first
        self._last_send = -math.inf  # kept apart: the log may have pruned it
        self._schedule = 0  # bumped by set_rate: a slot reserved under another number is void

    def set_rate(self, rate: float) -> None:
        """Pace at `rate` from now on; slots already reserved are handed out again."""
        if rate <= 0:
            raise ValueError("rate must be positive; use no Pacer for an unlimited rate")
        if rate == self.rate:
            return
        self.rate = rate
        self._interval = interval = 1.0 / rate
        self._limit = limit = sends_per_window(rate)
        recent = self._prune()
        # Restart the schedule one new interval after the last send, and late enough that sends
        # evenly spaced at the new rate, with those still in the log, never crowd a window. The
        # window rule alone would keep any pattern the log holds: after a cut from 20/s to 2/s,
        # a pair of sends 50 ms apart would be copied into every later second.
        start = self._last_send + interval
        for nth in range(1, min(limit, len(recent)) + 1):
            # The (limit - nth + 1)-th new send is the first whose window must no longer hold
            # the nth newest logged send; the new sends before it count as all in that window.
            start = max(start, recent[-nth] + self._window - (limit - nth) * interval)
        self._next_slot = start
        self._schedule += 1
        self._wakeup.fire()

    def try_now(self) -> bool:
        """Take a slot if one is free this instant (nobody queued for a later one, the window
        not full), without awaiting; False leaves the pacer as it was: call `acquire()`. At
        thousands of slots a second most slots are free at once, and this spares each of them
        three coroutines (measured with cProfile under --rate auto:100000, 20,000 rows)."""
        now = self._clock()
        if self._next_slot > now:
            return False  # waiters hold the slots before the next free one: no jumping them
        recent = self._prune()
        if len(recent) >= self._limit:
            return False
        self._next_slot = now + self._interval
        self._last_send = now
        recent.append(now)
        return True

    def wait_ahead(self) -> float:
        """Seconds until the next free slot: how long a caller arriving now would wait (the
        window rule may add to it)."""
        return max(0.0, self._next_slot - self._clock())

    async def acquire(self, *, once: bool = False) -> bool:
        """Wait for a slot and take it. `once`: False as soon as the rate changes, no slot
        taken (the slot reserved became void, and a fresh one may be far off)."""
        while True:
            schedule = self._schedule
            # The slot is reserved before sleeping, so concurrent callers queue on distinct slots.
            slot = max(self._clock(), self._next_slot)
            self._next_slot = slot + self._interval
            if await self._sleep_until(slot, schedule) and await self._window_clear(schedule):
                break
            if once:
                return False
        self._last_send = self._clock()
        self._recent.append(self._last_send)
        return True

    async def _window_clear(self, schedule: int) -> bool:
        # A waiter woken late must not let the next ones crowd one window above the rate. Checked
        # again after each sleep: two waiters may have slept for the same send to leave the window.
        while self._schedule == schedule:
            recent = self._prune()
            if len(recent) < self._limit:
                return True
            await self._sleep_until(recent[-self._limit] + self._window, schedule)
        return False

    def _prune(self) -> deque[float]:
        recent, now = self._recent, self._clock()
        while recent and recent[0] + self._window <= now:
            recent.popleft()
        return recent

    async def _sleep_until(self, when: float, schedule: int) -> bool:
        """False as soon as the rate changes: the caller's slot is void."""
        while self._schedule == schedule:
            delay = when - self._clock()
            if delay <= 0:
                return True
            await self._wakeup.sleep(delay)
        return False


class Pause:
    """A hold on every worker: a Retry-After seen by one request delays all of them."""

    def __init__(self, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self._until = -math.inf

    def hold(self, seconds: float) -> None:
        self._until = max(self._until, self._clock() + seconds)

    @property
    def remaining(self) -> float:
        return max(0.0, self._until - self._clock())

    @property
    def holding(self) -> bool:
        return self._until > self._clock()

    async def wait(self) -> None:
        while (delay := self._until - self._clock()) > 0:
            await self._sleep(delay)
