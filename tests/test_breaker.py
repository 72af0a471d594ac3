"""Breaker on a virtual clock: no test here waits for real time.

`VirtualTime` parks each fake sleep until `run` moves the clock to its wake-up time, so tasks
blocked in `admit()` wake in time order, as with asyncio.sleep; a sleep cut short by a state
change (its task cancelled) is dropped without moving the clock.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from batchpizza.controls.adaptive import AdaptiveRate
from batchpizza.controls.breaker import (
    MIN_TRIP,
    Breaker,
    BreakerEvent,
    BreakerExhausted,
    BreakerState,
    Permit,
)


class VirtualTime:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.sleeps = 0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(delay, 0.0), self._seq, future))
        self._seq += 1
        await future

    async def run(self, *coros: Coroutine[Any, Any, Any]) -> list[Any]:
        """Run the coroutines to the end (results or exceptions), moving the clock from one
        wake-up to the next."""
        tasks = [asyncio.ensure_future(c) for c in coros]
        while True:
            for _ in range(30):
                await asyncio.sleep(0)
            if all(t.done() for t in tasks):
                return [t.exception() or t.result() for t in tasks]
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)
            if not self._sleepers:
                for t in tasks:
                    t.cancel()
                raise AssertionError("tasks blocked on something other than the fake sleep")
            wake, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, wake)
            future.set_result(None)

    async def at(self, when: float, action: Callable[[], object]) -> None:
        await self.sleep(when - self.now)
        action()


Events = list[tuple[float, BreakerEvent]]


def breaker_on(vt: VirtualTime, events: Events | None = None, **kwargs: Any) -> Breaker:
    def on_event(t: float, event: BreakerEvent) -> None:
        if events is not None:
            events.append((t, event))

    return Breaker(clock=vt.clock, sleep=vt.sleep, on_event=on_event, **kwargs)


def state(breaker: Breaker) -> BreakerState:
    # A call, not the property, so that mypy does not narrow it from one assert to the next.
    return breaker.state


def refuse(breaker: Breaker, times: int) -> None:
    for _ in range(times):
        breaker.record(True)


def answer(breaker: Breaker, times: int) -> None:
    for _ in range(times):
        breaker.record(False)


async def admitted_at(vt: VirtualTime, breaker: Breaker, log: list[tuple[float, Permit]]) -> None:
    permit = await breaker.admit()
    log.append((vt.now, permit))


def trip(vt: VirtualTime, breaker: Breaker) -> None:
    refuse(breaker, 10)
    assert state(breaker) is BreakerState.OPEN


# --- closed: when it trips --------------------------------------------------------------------


async def test_closed_breaker_admits_at_once_without_sleeping() -> None:
    vt = VirtualTime()
    breaker = breaker_on(vt)
    permits = await vt.run(*(breaker.admit() for _ in range(5)))
    assert permits == [Permit(probe=False, epoch=0)] * 5
    assert vt.sleeps == 0
    assert state(breaker) is BreakerState.CLOSED


def test_trips_when_half_of_the_last_20_finished_attempts_were_refusals() -> None:
    vt = VirtualTime()
    events: Events = []
    breaker = breaker_on(vt, events)
    answer(breaker, 11)
    refuse(breaker, 9)
    assert state(breaker) is BreakerState.CLOSED  # 9 of the last 20
    refuse(breaker, 1)
    assert state(breaker) is BreakerState.OPEN  # 10 of the last 20
    assert events == [(0.0, "open")]


def test_with_fewer_than_20_finished_half_of_them_and_at_least_five_refusals_trip() -> None:
    vt = VirtualTime()
    breaker = breaker_on(vt)
    refuse(breaker, MIN_TRIP - 1)
    assert state(breaker) is BreakerState.CLOSED  # too few to judge a service by
    refuse(breaker, 1)
    assert state(breaker) is BreakerState.OPEN  # 5 of 5: refusing

    other = breaker_on(VirtualTime())
    answer(other, 6)
    refuse(other, 5)
    assert state(other) is BreakerState.CLOSED  # 5 of 11: under half
    refuse(other, 1)
    assert state(other) is BreakerState.OPEN  # 6 of 12


def test_refusals_that_slid_out_of_the_last_20_do_not_count() -> None:
    vt = VirtualTime()
    breaker = breaker_on(vt)
    answer(breaker, 20)  # a full window: the partial-window rule never applies below
    refuse(breaker, 1)
    answer(breaker, 1)
    for _ in range(8):
        answer(breaker, 1)
        refuse(breaker, 1)
    answer(breaker, 2)  # the last 20, oldest first: a refusal, then 8 more among 11 answers
    refuse(breaker, 1)  # the oldest refusal leaves as this one comes: still 9 of the last 20
    assert state(breaker) is BreakerState.CLOSED


def test_re_asks_of_rows_refused_before_judge_those_rows_not_the_service() -> None:
    # The tail of a run with a few always-refused rows: their first refusals are in the window
    # among the answers of the other rows; then nothing is left but their misuse re-asks, each
    # refused again. Those say "this prompt", and must not trip the breaker.
    vt = VirtualTime()
    breaker = breaker_on(vt)
    answer(breaker, 15)
    refuse(breaker, 5)  # five distinct rows refused once: 5 of the last 20
    for _ in range(40):
        breaker.record(True, again=True)
    assert state(breaker) is BreakerState.CLOSED
    # A service that refuses everyone refuses rows it never saw: those still trip it.
    refuse(breaker, 5)
    assert state(breaker) is BreakerState.OPEN


async def test_a_refused_re_ask_as_the_probe_reopens_the_breaker() -> None:
    # One probe cannot tell "this prompt" from "everyone": under a ban, letting re-asks through
    # one after another would spend every refused row's budget against a closed door.
    vt = VirtualTime()
    events: Events = []
    breaker = breaker_on(vt, events)
    trip(vt, breaker)
    log: list[tuple[float, Permit]] = []
    await vt.run(admitted_at(vt, breaker, log))
    breaker.record(True, permit=log[0][1], again=True)
    assert state(breaker) is BreakerState.OPEN
    assert [e for _, e in events] == ["open", "probe", "open"]


# --- open, half-open: the wait and the probe --------------------------------------------------


async def test_open_breaker_admits_nothing_for_60_s_then_exactly_one_probe() -> None:
    vt = VirtualTime()
    events: Events = []
    breaker = breaker_on(vt, events)
    trip(vt, breaker)
    assert breaker.reopens_in == 60.0
    log: list[tuple[float, Permit]] = []

    def probe_answered() -> None:
        assert [p.probe for _, p in log] == [True]  # one probe; the others still wait
        breaker.record(False, permit=log[0][1])

    await vt.run(*(admitted_at(vt, breaker, log) for _ in range(5)), vt.at(61.5, probe_answered))
    assert log[0][0] == 60.0
    assert log[0][1].probe
    # The clean answer closes the breaker and lets the others go at once.
    assert [(t, p.probe) for t, p in log[1:]] == [(61.5, False)] * 4
    assert events == [(0.0, "open"), (60.0, "probe"), (61.5, "closed")]
    assert state(breaker) is BreakerState.CLOSED


async def test_waiters_in_admit_sleep_until_a_state_change_without_polling() -> None:
    vt = VirtualTime()
    breaker = breaker_on(vt)
    trip(vt, breaker)
    log: list[tuple[float, Permit]] = []

    def probe_answered() -> None:
        breaker.record(False, permit=log[0][1])

    await vt.run(*(admitted_at(vt, breaker, log) for _ in range(8)), vt.at(80.0, probe_answered))
    # Each waiter sleeps once for the open wait, the seven not chosen once more for the probe
    # (cut short by the close), plus the helper's own sleep.
    assert vt.sleeps == 8 + 7 + 1


async def test_a_waiter_cancelled_in_admit_is_cancelled_and_the_others_carry_on() -> None:
    vt = VirtualTime()
    breaker = breaker_on(vt)
    trip(vt, breaker)
    victim = asyncio.ensure_future(breaker.admit())
    log: list[tuple[float, Permit]] = []
    await vt.run(vt.at(30.0, victim.cancel), admitted_at(vt, breaker, log))
    assert victim.cancelled()
    assert [(t, p.probe) for t, p in log] == [(60.0, True)]


async def test_refused_probe_reopens_the_breaker_with_the_wait_doubled() -> None:
    vt = VirtualTime()
    events: Events = []
    breaker = breaker_on(vt, events)
    trip(vt, breaker)
    log: list[tuple[float, Permit]] = []

    async def probe_refused_then_answered() -> None:
        for clean in (False, False, True):
            permit = await breaker.admit()
            log.append((vt.now, permit))
            await vt.sleep(2.0)
            breaker.record(not clean, permit=permit)

    await vt.run(probe_refused_then_answered())
    assert [t for t, _ in log] == [60.0, 62.0 + 120.0, 184.0 + 240.0]
    assert events == [
        (0.0, "open"),
        (60.0, "probe"),
        (62.0, "open"),
        (182.0, "probe"),
        (184.0, "open"),
        (424.0, "probe"),
        (426.0, "closed"),
    ]
    assert breaker.trips == 3


async def test_the_wait_keeps_doubling_across_closes() -> None:
    vt = VirtualTime()
    events: Events = []
    breaker = breaker_on(vt, events, patience=10_000)
    for _ in range(3):
        trip(vt, breaker)
        vt.now += breaker.reopens_in
        permit = await breaker.admit()
        breaker.record(False, permit=permit)
    assert [t for t, e in events if e == "probe"] == [60.0, 180.0, 420.0]


async def test_probe_failing_for_another_reason_lets_another_probe_go() -> None:
    vt = VirtualTime()
    events: Events = []
    breaker = breaker_on(vt, events)
    trip(vt, breaker)
    log: list[tuple[float, Permit]] = []

    def probe_timed_out() -> None:
        breaker.record(False, clean=False, permit=log[0][1])

    await vt.run(*(admitted_at(vt, breaker, log) for _ in range(2)), vt.at(70.0, probe_timed_out))
    assert [(t, p.probe) for t, p in log] == [(60.0, True), (70.0, True)]
    assert state(breaker) is BreakerState.HALF_OPEN
    assert events == [(0.0, "open"), (60.0, "probe"), (70.0, "probe")]


async def test_a_probe_that_never_reports_is_replaced_so_half_open_cannot_stick() -> None:
    # resilience4j #903: a half-open state with no time limit stayed stuck. A probe whose
    # result never comes (its task cancelled, a bug) is given up after `probe_timeout`.
    vt = VirtualTime()
    breaker = breaker_on(vt, probe_timeout=90.0)
    trip(vt, breaker)
    log: list[tuple[float, Permit]] = []
    await vt.run(*(admitted_at(vt, breaker, log) for _ in range(2)))
    assert [(t, p.probe) for t, p in log] == [(60.0, True), (150.0, True)]


async def test_results_of_attempts_admitted_before_the_trip_are_ignored() -> None:
    vt = VirtualTime()
    breaker = breaker_on(vt)
    early = await breaker.admit()  # in flight when the breaker trips
    trip(vt, breaker)
    breaker.record(False, permit=early)  # while open
    assert state(breaker) is BreakerState.OPEN
    vt.now = 60.0
    probe = await breaker.admit()
    breaker.record(False, permit=early)  # a straggler is not the probe
    assert state(breaker) is BreakerState.HALF_OPEN
    breaker.record(False, permit=probe)
    assert state(breaker) is BreakerState.CLOSED
    breaker.record(True, permit=probe)  # nor is the probe's permit good after the close
    refuse(breaker, MIN_TRIP - 1)
    assert state(breaker) is BreakerState.CLOSED


async def test_a_permit_stops_admitting_once_the_breaker_trips_after_it_was_given() -> None:
    # A worker admitted while closed, then asleep on the pacer while the breaker trips, must not
    # send when it wakes: no request starts while open.
    vt = VirtualTime()
    breaker = breaker_on(vt)
    early = await breaker.admit()
    assert breaker.still_admits(early)
    trip(vt, breaker)
    assert not breaker.still_admits(early)
    vt.now += breaker.reopens_in
    probe = await breaker.admit()
    assert breaker.still_admits(probe)
    assert not breaker.still_admits(early)
    breaker.record(False, permit=probe)
    assert not breaker.still_admits(probe)  # spent: the others' permits come from admit() again
    assert breaker.still_admits(await breaker.admit())


async def test_closing_clears_the_window_and_calls_on_close() -> None:
    vt = VirtualTime()
    closes: list[float] = []
    breaker = breaker_on(vt, on_close=lambda: closes.append(vt.now))
    answer(breaker, 5)
    trip(vt, breaker)
    vt.now = 60.0
    breaker.record(False, permit=await breaker.admit())
    assert closes == [60.0]
    # The refusals before the trip are forgotten: counted, 4 more would trip it again.
    refuse(breaker, MIN_TRIP - 1)
    assert state(breaker) is BreakerState.CLOSED


async def test_close_resumes_an_adaptive_rate_at_half() -> None:
    vt = VirtualTime()
    rate = AdaptiveRate(start=8.0, clock=vt.clock)
    breaker = breaker_on(vt, on_close=rate.halve)
    trip(vt, breaker)
    vt.now = 60.0
    breaker.record(False, permit=await breaker.admit())
    assert rate.rate == 4.0


# --- patience ---------------------------------------------------------------------------------


async def test_patience_zero_gives_up_at_the_first_trip() -> None:
    vt = VirtualTime()
    events: Events = []
    breaker = breaker_on(vt, events, patience=0)
    refuse(breaker, 10)
    assert state(breaker) is BreakerState.STOPPED
    assert events == [(0.0, "gave-up")]
    with pytest.raises(BreakerExhausted, match="patience of 0 s"):
        await breaker.admit()
    assert breaker.trips == 0


async def test_gives_up_when_the_next_wait_would_pass_the_patience() -> None:
    # 60 + 120 + 240 = 420 s spent open; the next 480 s would make 900 > 600.
    vt = VirtualTime()
    events: Events = []
    breaker = breaker_on(vt, events, patience=600)
    outcomes: list[tuple[float, str]] = []

    async def worker() -> None:
        try:
            while True:
                permit = await breaker.admit()
                await vt.sleep(1.0)
                breaker.record(True, permit=permit)  # every request refused
        except BreakerExhausted as exc:
            outcomes.append((vt.now, str(exc)))
            raise

    results = await vt.run(worker(), worker(), worker())
    assert all(isinstance(r, BreakerExhausted) for r in results)
    assert [e for _, e in events] == ["open", "probe", "open", "probe", "open", "probe", "gave-up"]
    gave_up = events[-1][0]
    # Every blocked worker is woken by the give-up and raises then, not after a timeout.
    assert [t for t, _ in outcomes] == [gave_up] * 3
    assert "420 s" in outcomes[0][1]
    assert isinstance(results[0], BreakerExhausted)
    assert (results[0].waited_s, results[0].patience_s) == (420.0, 600.0)


async def test_a_stopped_breaker_stays_stopped() -> None:
    vt = VirtualTime()
    breaker = breaker_on(vt, patience=0)
    refuse(breaker, 10)
    answer(breaker, 50)
    vt.now = 10_000.0
    assert state(breaker) is BreakerState.STOPPED
    with pytest.raises(BreakerExhausted):
        await breaker.admit()


# --- what the progress bar and the report see -------------------------------------------------


async def test_state_and_reopens_in_follow_the_clock() -> None:
    vt = VirtualTime()
    breaker = breaker_on(vt)
    assert (state(breaker), breaker.reopens_in) == (BreakerState.CLOSED, 0.0)
    trip(vt, breaker)
    vt.now = 18.0
    assert (state(breaker), breaker.reopens_in) == (BreakerState.OPEN, 42.0)
    vt.now = 60.0
    assert (state(breaker), breaker.reopens_in) == (BreakerState.HALF_OPEN, 0.0)
    assert str(breaker.state) == "half-open"


@pytest.mark.parametrize(
    "make",
    [
        lambda: Breaker(patience=-1.0),
        lambda: Breaker(first_wait=0.0),
        lambda: Breaker(probe_timeout=0.0),
    ],
)
def test_breaker_rejects_nonsense_settings(make: Callable[[], Breaker]) -> None:
    with pytest.raises(ValueError, match="must be"):
        make()
