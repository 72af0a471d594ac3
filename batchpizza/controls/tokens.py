"""Pacing by tokens per minute (`--tpm N|auto`), beside the request pacer.

`TokenPacer` is GCRA over tokens: a request of c tokens takes c / rate seconds of a virtual
timeline, and may go when that timeline has reached now. So requests are spaced evenly by their
size, with no burst at start (the first request opens the timeline, it has no credit stored).
Each request reserves its estimate before it is sent (input from its text, output its
max_tokens or the running high percentile of this run's answers, `OutputEstimate`), and
`settle` moves the timeline by the difference once the server said what it used: an
overestimate is given back, an underestimate is paid by the requests after it.

Under `--tpm auto` the rate is learned from OpenAI's x-ratelimit-*-tokens headers
(`observe`): the limit, what is left of it, and how long until it is full again. A server that
refills continuously (OpenAI) is full again after (limit - remaining) / (limit per second), so
the limit's window is reset * limit / (limit - remaining), whatever the server calls a minute;
a reply that cannot tell (nothing used, no reset) counts the limit per minute. The run keeps
to AUTO_SHARE of what it learned. Until a first reply has said anything, one request goes at a
time; a server that announces no token limit (or a limit of 0 while it answers: a placeholder,
said once) leaves the run unpaced by tokens.

Every class takes `clock` and `sleep`, so tests move a fake clock instead of waiting.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import time
from collections import deque

from batchpizza.controls.ratelimit import Clock, Sleep, Wakeup

log = logging.getLogger("batchpizza")

AUTO_SHARE = 0.9  # of the learned limit: the headroom for estimates that fall short
MINUTE = 60.0
# The window a limit's header speaks of lies between these (a learned one outside is noise).
_WINDOW_RANGE = (0.5, 86400.0)
_ESTIMATES_KEPT = 9  # the median of the last few replies' windows
# A slot this close ahead counts as now: at a high rate two requests in one tick of the event
# loop are nanoseconds apart on the timeline, and a sleep of nanoseconds still costs a turn of the
# loop (measured: 15 us a row at --tpm 1e12). It lets through at most a millisecond's worth of
# tokens early, never more.
SLACK = 0.001
# A request that used less than this share of what it booked makes the queued ones book again
# (cheap enough: it happens while the output estimate is still the default, rarely after).
REBOOK_BELOW = 0.5

# The output a request is assumed to use before this run has seen any answer, when it sets no
# max_tokens; and how many answers it takes before their high percentile replaces it.
DEFAULT_OUTPUT_TOKENS = 512
OUTPUT_SAMPLES = 20
OUTPUT_PERCENTILE = 0.99
_OUTPUTS_KEPT = 2000


class OutputEstimate:
    """A request's worst-case output when it sets no max_tokens: DEFAULT_OUTPUT_TOKENS until
    OUTPUT_SAMPLES answers were seen, then the 99th percentile of the last answers' outputs
    (recomputed every few answers: sorting 2,000 numbers per reply would cost more than the
    rest of the control)."""

    def __init__(self, default: int = DEFAULT_OUTPUT_TOKENS) -> None:
        self.value = default
        # The meter does `observe` for every answer, without the call: appends to `kept`
        # (the one list, trimmed in place), then `update` when it has reached `due_at`.
        self.kept: list[int] = []
        self.due_at = OUTPUT_SAMPLES

    def observe(self, output_tokens: int) -> None:
        self.kept.append(output_tokens)
        if len(self.kept) >= self.due_at:
            self.update()

    def update(self) -> None:
        """`value` from the last _OUTPUTS_KEPT outputs kept."""
        kept = self.kept
        if len(kept) > _OUTPUTS_KEPT:
            del kept[:-_OUTPUTS_KEPT]
        n = len(kept)
        # Again after a tenth more: a sort of 2,000 numbers every 100 answers was a tenth of
        # the meter's cost, and the 99th percentile of thousands moves slowly.
        self.due_at = n + max(10, n // 10)
        ranked = sorted(kept)
        self.value = max(1, ranked[min(n - 1, math.ceil(OUTPUT_PERCENTILE * n) - 1)])


def learned_rate(limit: float | None, remaining: float | None, reset_s: float | None) -> float:
    """Tokens per second a reply's x-ratelimit-*-tokens headers announce; 0 when they say
    nothing usable (missing, zero, unreadable)."""
    if not limit or limit <= 0:
        return 0.0
    window = MINUTE
    if remaining is not None and reset_s and 0 <= remaining < limit:
        window = reset_s * limit / (limit - remaining)
    if not _WINDOW_RANGE[0] <= window <= _WINDOW_RANGE[1]:
        window = MINUTE
    return limit / window


class TokenPacer:
    """Hands out sends by tokens: `rate` tokens a second (None: not known yet, one request at a
    time until a reply says; 0: unlimited).

    A request that may go at once (nobody queued for later, no hold) is booked by
    Meter.admit_now, on this pacer's timeline (`tat`, `sent_tat`, `in_flight`, `hold_until`),
    without a call: every attempt of a metered run passes there. `acquire` is the wait."""

    def __init__(
        self,
        rate: float | None,
        *,
        auto: bool = False,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.rate = rate
        self.auto = auto
        self.limit_per_s: float | None = None  # what the server announced (auto)
        self.clock = clock
        self._wakeup = Wakeup(sleep)
        self.tat = -math.inf  # when the virtual timeline is free again
        self.sent_tat = -math.inf  # the same, counting only requests sent
        self._schedule = 0
        self.in_flight = 0
        self._estimates: deque[float] = deque(maxlen=_ESTIMATES_KEPT)
        self.hold_until = -math.inf
        self._warned = False  # of a rate at which one request takes over a minute
        self._zero_said = False  # of a limit of 0 announced in answers
        self._usage_said = False  # of a reply's usage that holds the run over a minute

    @property
    def per_minute(self) -> float | None:
        return None if self.rate is None else self.rate * MINUTE

    def set_rate(self, rate: float) -> None:
        if rate == self.rate:
            return
        now = self.clock()
        # Bookings of requests still waiting are void (they book again); those sent stay
        # booked, at the new rate.
        base = self.sent_tat
        if self.rate and rate > 0 and base > now:
            base = now + (base - now) * self.rate / rate
        self.tat = base
        self.rate = rate
        self._schedule += 1
        self._wakeup.fire()

    async def acquire(self, tokens: int) -> None:
        """Wait until `tokens` may be sent, and book them."""
        while True:
            schedule = self._schedule
            rate = self.rate
            if rate is None:  # auto, nothing learned yet: one at a time
                if self.in_flight == 0:
                    break
                await self._wakeup.sleep(1.0)
                continue
            now = self.clock()
            if self.hold_until > now:
                await self._wakeup.sleep(self.hold_until - now)
                continue
            if rate == 0:
                break
            if tokens > rate * MINUTE and not self._warned:
                self._warn_slow(tokens, rate)
            slot = max(now, self.tat)
            self.tat = slot + tokens / rate
            if await self._sleep_until(slot, schedule):
                self.sent_tat = max(self.sent_tat, slot + tokens / rate)
                break
        self.in_flight += 1

    def _warn_slow(self, tokens: int, rate: float) -> None:
        """Said once: a rate this low holds the run for minutes a request, which would look
        like a hang (a server announcing a limit of a few tokens, a --tpm below one request)."""
        self._warned = True
        source = "the limit the server announces" if self.auto else "--tpm"
        log.warning(
            "--tpm: a request here books %d tokens, more than a minute's worth at "
            "%s (%.0f tokens a minute kept): each waits about %.0f s",
            tokens,
            source,
            rate * MINUTE,
            tokens / rate,
        )

    def _say_usage(self, booked: int, used: int, rate: float, wait: float) -> None:
        """Said once: a reply that used far more than it booked holds every request after it
        (a server's broken usage, 10**12 tokens, held a run for years in silence)."""
        self._usage_said = True
        log.warning(
            "--tpm: a reply says its request used %s tokens (%s booked), more than a minute's "
            "worth at %.0f tokens a minute: the next request waits about %.0f s",
            f"{used:,}",
            f"{booked:,}",
            rate * MINUTE,
            wait,
        )

    def settle(self, booked: int, used: int | None) -> None:
        """A request that booked `booked` tokens ended having used `used` (None: no usage said,
        the booking stands)."""
        if self.in_flight:
            self.in_flight -= 1
        rate = self.rate
        if used is not None and used != booked and rate:
            clock = self.clock  # from a local: as a method call, a slow lookup (per answer)
            shift, now = (used - booked) / rate, clock()
            # Tokens given back never make credit for a burst.
            tat, sent = self.tat + shift, self.sent_tat + shift
            self.tat = tat if tat > now else now
            self.sent_tat = sent if sent > now else now
            if shift > MINUTE and not self._usage_said:
                self._say_usage(booked, used, rate, self.tat - now)
            if used < booked * REBOOK_BELOW and self.tat > now:
                # Much was given back (the first answers, booked at the default output): the
                # requests queued behind slots booked at the old size book again, or the
                # start of a run would go at a fraction of the limit.
                self.tat = self.sent_tat
                self._schedule += 1
                self._wakeup.fire()
        if rate is None:
            self._wakeup.fire()

    def observe(
        self,
        limit: float | None,
        remaining: float | None,
        reset_s: float | None,
        next_cost: int,
        *,
        answered: bool = True,
    ) -> None:
        """What a reply announced of the token limit (auto): learn the rate, and hold every
        request when what is left would not take the next one."""
        if not self.auto:
            return
        if limit == 0:
            # In a reply that passed, a zero limit cannot be one (a real zero is a 429, and
            # stops the run: providers/quota.py): nothing announced, then.
            if answered and not self._zero_said:
                self._zero_said = True
                log.warning(
                    "--tpm auto: the server answers but announces a token limit of 0 "
                    "(x-ratelimit-limit-tokens: 0), read as no limit: %s; give --tpm N to pace "
                    "by tokens",
                    "the limit learned before is kept"
                    if self._estimates
                    else "the run is not paced by tokens",
                )
            limit = remaining = None
        per_s = learned_rate(limit, remaining, reset_s)
        if per_s <= 0:
            if not limit and not self._estimates:
                # The server announces no token limit, and none was heard this run: none to
                # keep (not even the one an earlier run learned, from this server or another).
                self.set_rate(0.0)
            return
        self._estimates.append(per_s)
        learned = statistics.median(self._estimates)
        known = self.limit_per_s
        if not self.rate or known is None or abs(learned - known) > 0.01 * known:
            # Not for the noise of a reset rounded to the millisecond: a new rate makes every
            # queued request book again. Unpaced (a reply announced no limit), a limit heard
            # again is kept even when it is the one known before.
            self.limit_per_s = learned
            self.set_rate(learned * AUTO_SHARE)
        rate = self.rate
        if rate and next_cost > rate * MINUTE and not self._warned:
            self._warn_slow(next_cost, rate)
        if remaining is not None and remaining < next_cost:
            # Nearly spent at the server: wait until the next request's worth is back, and never
            # past the reset, when all of it is (a fixed window at its edge says "0 left, full
            # in 0s": at the rate, a request of 520 tokens of a 1,000 limit waited 31 s).
            wait = (next_cost - remaining) / per_s
            if reset_s is not None:
                wait = min(wait, reset_s)
            self.hold_until = max(self.hold_until, self.clock() + wait)

    async def _sleep_until(self, when: float, schedule: int) -> bool:
        while self._schedule == schedule:
            delay = when - self.clock()
            if delay <= SLACK:
                return True
            await self._wakeup.sleep(delay)
        return False
