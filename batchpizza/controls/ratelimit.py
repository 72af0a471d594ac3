"""Request pacing, the shared Retry-After pause, and the learned rate behind `--rate auto`.

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

Gate. Every attempt passes it: the shared pause (a Retry-After holds every worker), then the
pacer, then the pause again, because a Retry-After may arrive while a worker sleeps for its slot.

AdaptiveRate. The rate for `--rate auto`, learned from how attempts end, after TCP's slow start
and congestion avoidance as inspect_ai's adaptive connections, botocore's adaptive retries and
Netflix's concurrency-limits apply them: double per clean round until the service first pushes
back, then grow 5 % per clean round, or faster the longer the run goes without a cut (CUBIC's
convex probe, cubic in the time since the last cut); cut once per episode of pushback, where an
episode is recognised by send time (an attempt sent before the last cut is news about the old
rate); a fixed cool-down after a cut; never above MAX, nor above twice the send rate measured
lately, nor back up to a rate the service called misuse.

Every class takes `clock` and `sleep`, so tests move a fake clock instead of waiting.
"""

from __future__ import annotations

import asyncio
import enum
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

    async def acquire(self) -> None:
        while True:
            schedule = self._schedule
            # The slot is reserved before sleeping, so concurrent callers queue on distinct slots.
            slot = max(self._clock(), self._next_slot)
            self._next_slot = slot + self._interval
            if await self._sleep_until(slot, schedule) and await self._window_clear(schedule):
                break
        self._last_send = self._clock()
        self._recent.append(self._last_send)

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


class Feedback(enum.Enum):
    """How one finished attempt speaks of the rate, for `AdaptiveRate.record`."""

    CLEAN = "clean"  # answered (misuse is REFUSED, not CLEAN)
    THROTTLED = "throttled"  # HTTP 429, or any reply with Retry-After
    REFUSED = "refused"  # the misuse refusal or the bot check: the service's abuse control
    OVERLOAD = "overload"  # a timeout, a 5xx, a dropped connection
    NEUTRAL = "neutral"  # says nothing of the rate: a 404, a bad request


DEFAULT_MAX_RATE = 20.0  # SPEC: `auto` means `auto:20/s`
START_RATE = 1.0  # SPEC: `auto` starts at 1/s
# A request every 10 s. A service that still pushes back at that pace is refusing, not rate
# limiting: that is the breaker's business, and a lower rate would take minutes to climb back.
MIN_RATE = 0.1
# A round is one second's worth of clean replies at the current rate, as inspect_ai's round is
# one limit's worth of successes: enough replies that a clean round is news about this rate.
ROUND_S = 1.0
SLOW_START = 2.0  # TCP slow start: double per clean round until the first pushback
# Congestion avoidance, inspect_ai's SCALE_UP_PERCENT: 8 clean rounds (a little over 8 s) after
# the cool-down to win back a 0.7 cut, slow enough to linger near the service's limit. CUBIC as
# botocore tunes it (C = 0.4 in req/s) wins a 0.7 cut of 10/s back in 2 s: too eager here.
GROWTH = 1.05
# A throttle or a run of overloads: x0.8, inspect_ai's cut. botocore's CUBIC beta (0.7) left the
# run 30 % under a 10/s limit for the whole recovery and cost a fifth of the throughput there.
CUT = 0.8
# Misuse is the abuse control: answering it like a mere 429 invites a ban. Halving sits under the
# misuse ceiling below with room to grow, and matches the breaker's "resume at half".
REFUSED_CUT = 0.5
# After a refusal at rate r the run stays under 0.8 r: probing back up to the rate the service
# called abuse is what gets an address blocked.
MISUSE_CEILING = 0.8
# One timeout or 5xx is noise (a slow answer, a restart); three in a row from attempts sent since
# the last cut is the service struggling at this rate.
OVERLOAD_RUN = 3
# No growth for 2 s after a cut: replies to attempts sent in that spell still reflect the
# service's memory of the old rate. Fixed on purpose: a cool-down stretched by Retry-After froze
# inspect_ai's limit at 0.8x for good (#5137); the Retry-After is the pause's. Measured against a
# server limiting at 10/s (300 rows, concurrency 32): inspect_ai's 15 s with +5 % rounds averaged
# 7.05 rows/s, 5 s with the return below 7.03 (the time below the limit is what costs); attempts
# sent before a cut are already ignored (one cut per episode), so a short spell is enough.
COOLDOWN_S = 2.0
# After a cut from a rate W that was pushed back, return quickly towards just under W (half the
# gap per clean round, CUBIC's concave phase), then probe beyond it gently (GROWTH): the run spends
# its time near the service's limit instead of crawling back from 0.7 W at 5 % a round.
RECOVER_TO = 0.95
RECOVER_STEP = 0.5
# Past 0.95 W, CUBIC's plateau: probe slowly where the service pushed back before, so the run
# lingers just under the limit and a 429 (and the Retry-After pause every worker then takes)
# comes rarely; a pushback found there is the known limit, answered by a shallow cut.
PLATEAU_GROWTH = 1.01
PLATEAU_CUT = 0.9
# Clean rounds spent on the plateau before each such probe: every 429 costs every worker a
# Retry-After pause, so the run earns more by holding just under the limit than by finding it
# again every few seconds (measured at a 10/s limit: 5 429s and 7.9 rows/s without the hold).
PLATEAU_HOLD = 5
# CUBIC's convex probe (RFC 9438), in the time t since the last cut: past RECOVER_TO x the pushed
# rate W, a clean round may grow the rate to W x (RECOVER_TO + PROBE_CUBIC x t^3), within MAX, the
# misuse ceiling and twice the measured rate; where that is not above the rate yet, the plateau's
# hold and 1 % step above apply. A limit that rose (the issue: a service's 4/s back to 20/s) was
# found again only at 1 % per PLATEAU_HOLD rounds, then 5 % a round: 3.1 to 3.7/s in 14 s, about
# 100 s from a cut at 4/s to 20/s. With this: W again 12.6 s after the cut, 1.05 W at 15.9 s,
# 2 W at 34.8 s, 5 W at 54.5 s. Flat at first, so a limit that stayed put is met again about
# 13 s after the cut (25 s with the hold alone); a steeper curve would meet it, and draw its 429
# and the Retry-After pause of every worker, more often (measured at a 10/s limit over 300 rows:
# 4 or 5 429s against 3 or 4, 7.7 to 8.1 rows/s against 7.7 to 8.2).
PROBE_CUBIC = 2.5e-5
# "The rate actually measured over the last few seconds": sends (by their start time) of the
# attempts that finished in the last 5 s, counted in their busiest one-second span. Counting by
# start time measures the sending, not the answering, whatever the latency; the busiest span
# rather than an average follows a ramp at once instead of lagging it by the window.
MEASURE_S = 5.0
# botocore's _MAX_RATE_ADJUST_SCALE: grow to at most twice what is really being sent, so a phase
# limited by concurrency or latency cannot ramp the rate to MAX unseen (Netflix's AIMD grows only
# when in flight * 2 >= limit, the same test).
MEASURED_HEADROOM = 2.0
_HISTORY = 256  # rate changes kept to tell the rate an old attempt was sent at


class AdaptiveRate:
    """The learned rate behind `--rate auto[:MAX]`; see the module docstring for the rules.

    Feed it every finished attempt with `record(feedback, started_at)`, `started_at` being the
    clock time the attempt was sent (the same clock). The rate is `rate`; every Pacer given to
    `drive` follows it, and `on_change(t, rate, reason)` hears each change, reason one of
    "slow-start", "grow", "throttled", "refused", "overload", "ceiling", "halve".
    """

    def __init__(
        self,
        max_rate: float = DEFAULT_MAX_RATE,
        *,
        start: float | None = None,
        slow_start: bool | None = None,
        clock: Clock = time.monotonic,
        on_change: Callable[[float, float, str], None] | None = None,
    ) -> None:
        if max_rate <= 0:
            raise ValueError("max_rate must be positive")
        if start is not None and start <= 0:
            raise ValueError("start must be positive")
        self.max_rate = max_rate
        self._floor = min(MIN_RATE, max_rate)
        self._rate = min(max(start if start is not None else START_RATE, self._floor), max_rate)
        # A saved rate was learned against this service: probe up from it gently, not double.
        self._slow_start = start is None if slow_start is None else slow_start
        self._clock = clock
        self._on_change = on_change
        self._pacers: list[Pacer] = []
        self._ceiling = math.inf
        self._pushed_at: float | None = None  # the rate last pushed back (CUBIC's W_max)
        self._held = 0  # clean rounds on the plateau since its last probe
        self._episode_start = -math.inf  # attempts sent before this belong to an answered episode
        self._round_start = -math.inf  # a round counts clean replies to attempts sent since
        self._round_clean = 0
        self._round_size = sends_per_window(self._rate * ROUND_S)  # clean replies in a round
        self._overloads = 0
        self._finished: deque[tuple[float, float]] = deque()  # (finished at, started at)
        self._changes: deque[tuple[float, float]] = deque([(-math.inf, self._rate)], _HISTORY)

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def slow_start(self) -> bool:
        return self._slow_start

    @property
    def ceiling(self) -> float | None:
        """The misuse ceiling, once a refusal set one."""
        return None if self._ceiling == math.inf else self._ceiling

    def drive(self, pacer: Pacer) -> None:
        """Keep `pacer` at this rate from now on."""
        self._pacers.append(pacer)
        pacer.set_rate(self._rate)

    def record(self, feedback: Feedback, started_at: float) -> None:
        now = self._clock()
        self._finished.append((now, started_at))
        self._forget_before(now - MEASURE_S)
        if feedback is Feedback.NEUTRAL:
            return
        if feedback is Feedback.REFUSED:
            self._ceiling = min(self._ceiling, MISUSE_CEILING * self._rate_at(started_at))
        if feedback is Feedback.CLEAN:
            self._overloads = 0
            if started_at >= self._round_start:
                self._round_clean += 1
                if self._round_clean >= self._round_size:
                    self._grow(now)
            return
        if started_at < self._episode_start:
            # Sent at the old rate: the cut already answered it. But a refusal of an attempt sent
            # at a rate regained since still bounds the rate.
            if self._rate > self._ceiling:
                self._set(now, self._ceiling, "ceiling")
            return
        if feedback is Feedback.OVERLOAD:
            self._round_clean = 0
            self._overloads += 1
            if self._overloads < OVERLOAD_RUN:
                return
        self._cut(now, REFUSED_CUT if feedback is Feedback.REFUSED else CUT, feedback.value)

    def halve(self) -> float:
        """Halve the rate, for the breaker's "resume at half the rate" (SPEC), as a cut: a new
        episode and a cool-down. Returns the new rate."""
        self._cut(self._clock(), 0.5, "halve")
        return self._rate

    def measured_rate(self) -> float:
        """Sends in the busiest one-second span among attempts finished in the last MEASURE_S."""
        self._forget_before(self._clock() - MEASURE_S)
        starts = sorted(started for _, started in self._finished)
        busiest, lo = 0, 0
        for hi, t in enumerate(starts):
            while starts[lo] <= t - 1.0:
                lo += 1
            busiest = max(busiest, hi - lo + 1)
        return float(busiest)

    def _forget_before(self, t: float) -> None:
        while self._finished and self._finished[0][0] <= t:
            self._finished.popleft()

    def _grow(self, now: float) -> None:
        self._round_start, self._round_clean = now, 0
        rate, pushed = self._rate, self._pushed_at
        if self._slow_start:
            target = rate * SLOW_START
        elif pushed is not None and rate < RECOVER_TO * pushed:
            step = max(rate * GROWTH, rate + (RECOVER_TO * pushed - rate) * RECOVER_STEP)
            target = min(step, RECOVER_TO * pushed)
        elif pushed is not None and rate < pushed * GROWTH:
            target = self._probe(now, pushed)
            if target <= rate:  # the probe is still flat: hold, then step 1 %
                self._held += 1
                if self._held < PLATEAU_HOLD:
                    return
                target = rate * PLATEAU_GROWTH
            self._held = 0
        else:
            target = rate * GROWTH
            if pushed is not None:
                target = max(target, self._probe(now, pushed))
        used = MEASURED_HEADROOM * self.measured_rate()
        new = min(target, self.max_rate, self._ceiling, max(self._rate, used))
        if new > self._rate:
            self._set(now, new, "slow-start" if self._slow_start else "grow")

    def _probe(self, now: float, pushed: float) -> float:
        """CUBIC's convex probe: the longer since the last cut, the faster it grows."""
        return pushed * (RECOVER_TO + PROBE_CUBIC * (now - self._episode_start) ** 3)

    def _cut(self, now: float, factor: float, reason: str) -> None:
        pushed, rate = self._pushed_at, self._rate
        if reason == "throttled" and pushed is not None and rate >= RECOVER_TO * pushed:
            factor = max(factor, PLATEAU_CUT)  # probing the known limit, not a new congestion
        target = rate * factor
        self._pushed_at = rate
        if self._slow_start and reason != "halve":
            # Slow start doubled past the limit within a round: the limit lies between the last
            # clean rate and this one. What was really sent in the busiest second is the best
            # estimate of it (TCP halves here; the measurement spares two more episodes).
            measured = self.measured_rate()
            if measured > 0:
                self._pushed_at = min(rate, max(measured, rate / SLOW_START))
                target = min(target, RECOVER_TO * self._pushed_at)
        self._slow_start = False
        self._held = 0
        self._episode_start = now
        # Growth counts only attempts sent after the cool-down, whatever a Retry-After says.
        self._round_start, self._round_clean = now + COOLDOWN_S, 0
        self._overloads = 0
        self._set(now, min(max(target, self._floor), self._ceiling), reason)

    def _rate_at(self, t: float) -> float:
        for since, rate in reversed(self._changes):
            if since <= t:
                return rate
        return self._rate  # older than the history kept: the rate now is the best guess

    def _set(self, now: float, rate: float, reason: str) -> None:
        if rate == self._rate:
            return
        self._rate = rate
        self._round_size = sends_per_window(rate * ROUND_S)
        self._changes.append((now, rate))
        for pacer in self._pacers:
            pacer.set_rate(rate)
        if self._on_change is not None:
            self._on_change(now, rate, reason)
