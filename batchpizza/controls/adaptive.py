"""The learned rate behind `--rate auto`.

`AdaptiveRate` is the rate, learned from how attempts end, after TCP's slow start
and congestion avoidance as inspect_ai's adaptive connections, botocore's adaptive retries and
Netflix's concurrency-limits apply them: double per clean round until the service first pushes
back, then grow 5 % per clean round, or faster the longer the run goes without a cut (CUBIC's
convex probe, cubic in the time since the last cut); cut once per episode of pushback, where an
episode is recognised by send time (an attempt sent before the last cut is news about the old
rate); a fixed cool-down after a cut; never above MAX, nor above twice the send rate measured
lately, nor back up to a rate the service called misuse.

It takes a `clock`, so tests move a fake clock instead of waiting.
"""

from __future__ import annotations

import enum
import math
import time
from collections import deque
from collections.abc import Callable

from batchpizza.controls.ratelimit import Clock, Pacer, sends_per_window


class Feedback(enum.Enum):
    """How one finished attempt speaks of the rate, for `AdaptiveRate.record`."""

    CLEAN = "clean"  # answered (misuse is REFUSED, not CLEAN)
    THROTTLED = "throttled"  # HTTP 429, or any reply with Retry-After
    REFUSED = "refused"  # the misuse refusal or the bot check: the service's abuse control
    OVERLOAD = "overload"  # a timeout, a 5xx, a dropped connection
    NEUTRAL = "neutral"  # says nothing of the rate: a 404, a bad request


DEFAULT_MAX_RATE = 20.0  # `--rate auto` means `auto:20/s`
START_RATE = 1.0  # where `--rate auto` starts
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
        """Halve the rate, for the breaker's "resume at half the rate" , as a cut: a new
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
