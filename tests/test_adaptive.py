"""AdaptiveRate (`--rate auto`) on a fake clock: slow start, one cut per episode, the cool-down,
the plateau's probe, the ceilings. No test here waits for real time."""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any

import pytest

from batchpizza.controls import adaptive
from batchpizza.controls.adaptive import (
    CUT,
    GROWTH,
    MISUSE_CEILING,
    PLATEAU_GROWTH,
    PLATEAU_HOLD,
    PROBE_CUBIC,
    RECOVER_STEP,
    RECOVER_TO,
    REFUSED_CUT,
    ROUND_S,
    AdaptiveRate,
    Feedback,
)
from batchpizza.controls.ratelimit import Pacer

# A window of exactly one second, with a nanosecond of slack for the float sums of 1/rate.
EPS = 1e-9


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


Change = tuple[float, float, str]


def controller(
    clock: FakeClock, changes: list[Change] | None = None, **kwargs: Any
) -> AdaptiveRate:
    def on_change(t: float, rate: float, reason: str) -> None:
        if changes is not None:
            changes.append((t, rate, reason))

    return AdaptiveRate(clock=clock, on_change=on_change, **kwargs)


def simulate(
    rate: AdaptiveRate,
    clock: FakeClock,
    *,
    until: float,
    latency: float = 0.2,
    concurrency: int = 1000,
    verdict: Callable[[float], Feedback] = lambda started: Feedback.CLEAN,
) -> list[float]:
    """Send at the controller's rate, evenly spaced (the schedule restarts from the last send
    when the rate changes, as the Pacer's does), at most `concurrency` in flight; each attempt
    finishes `latency` later with `verdict(started_at)`. Returns the send times."""
    sent: list[float] = []
    finishing: list[tuple[float, float]] = []
    last = -math.inf
    while True:
        send_at = max(last + 1.0 / rate.rate, clock.now)
        if len(finishing) >= concurrency:
            send_at = math.inf
        finish_at = finishing[0][0] if finishing else math.inf
        if min(send_at, finish_at) > until:
            clock.now = until
            return sent
        if finish_at <= send_at:
            clock.now, started = heapq.heappop(finishing)
            rate.record(verdict(started), started)
        else:
            clock.now = last = send_at
            sent.append(send_at)
            heapq.heappush(finishing, (send_at + latency, send_at))


def test_auto_starts_at_one_per_second_in_slow_start() -> None:
    rate = AdaptiveRate(clock=FakeClock())
    assert rate.rate == 1.0
    assert rate.max_rate == 20.0
    assert rate.slow_start
    assert rate.ceiling is None


def test_auto_starts_from_a_saved_rate_and_grows_gently_from_it() -> None:
    clock = FakeClock()
    changes: list[Change] = []
    rate = controller(clock, changes, start=6.0)
    assert rate.rate == 6.0
    assert not rate.slow_start  # a saved rate was learned: no doubling from it
    simulate(rate, clock, until=1.1)
    # Six sends at 6/s span 5/6 s; the sixth reply, 0.2 s later, ends the round.
    assert [(t, r) for t, r, _ in changes] == [pytest.approx((5 / 6 + 0.2, 6.0 * GROWTH))]
    assert changes[0][2] == "grow"


def test_auto_saved_rate_is_clamped_to_max() -> None:
    assert AdaptiveRate(10.0, start=35.0, clock=FakeClock()).rate == 10.0


@pytest.mark.parametrize(("max_rate", "start"), [(0.0, None), (-1.0, None), (20.0, 0.0)])
def test_auto_rejects_rates_that_are_not_positive(max_rate: float, start: float | None) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        AdaptiveRate(max_rate, start=start)


def test_auto_slow_start_doubles_per_clean_round_up_to_max() -> None:
    clock = FakeClock()
    changes: list[Change] = []
    rate = controller(clock, changes)
    simulate(rate, clock, until=8.0)
    # A round is one second's worth of clean replies at the rate, to attempts sent at it: at
    # 0.2 s latency, a doubling every second or so, capped at MAX.
    assert [r for _, r, _ in changes] == [2.0, 4.0, 8.0, 16.0, 20.0]
    times = [t for t, _, _ in changes]
    assert times[0] == pytest.approx(0.2)
    assert all(1.0 - EPS <= b - a <= 1.2 for a, b in itertools.pairwise(times))
    assert {why for _, _, why in changes} == {"slow-start"}
    assert rate.rate == 20.0


def test_auto_round_counts_only_replies_to_attempts_sent_since_the_last_change() -> None:
    clock = FakeClock(10.0)
    rate = controller(clock, start=4.0, slow_start=True)
    # Four attempts sent at 4/s; the rate doubles at the fourth clean reply...
    for started in (9.0, 9.25, 9.5, 9.75):
        rate.record(Feedback.CLEAN, started)
    assert rate.rate == 8.0
    # ... and replies to attempts sent before that say nothing of 8/s.
    for _ in range(20):
        rate.record(Feedback.CLEAN, 9.9)
    assert rate.rate == 8.0


def test_auto_after_pushback_returns_fast_holds_a_plateau_then_grows_five_percent() -> None:
    clock = FakeClock()
    changes: list[Change] = []
    rate = controller(clock, changes, start=10.0, slow_start=True)
    # Nine clean replies to attempts sent at 10/s (one short of a round), then a 429: slow start
    # measured 10 sends in its busiest second, so its estimate of the limit is the rate it hit.
    for i in range(9):
        rate.record(Feedback.CLEAN, started_at=(i - 9) / 10)
    rate.record(Feedback.THROTTLED, started_at=0.0)
    pushed = 10.0
    assert rate.measured_rate() == pushed
    cut = min(pushed * CUT, RECOVER_TO * pushed)
    assert rate.rate == pytest.approx(cut)
    assert not rate.slow_start  # the pushback ends slow start: no doubling from here
    # Long enough to cross the plateau: its PLATEAU_GROWTH steps from RECOVER_TO to GROWTH x the
    # pushed rate, each held PLATEAU_HOLD rounds (a round is a little over ROUND_S here).
    plateau_steps = math.ceil(math.log(GROWTH / RECOVER_TO) / math.log(PLATEAU_GROWTH))
    simulate(rate, clock, until=30.0 + plateau_steps * PLATEAU_HOLD * 1.5 * ROUND_S)
    grown = [(t, r) for t, r, reason in changes if reason == "grow"]
    steps = list(itertools.pairwise([(0.0, cut), *grown]))
    knee = RECOVER_TO * pushed
    returning = [(a, b) for a, b in steps if a[1] < knee]
    plateau = [(a, b) for a, b in steps if knee <= a[1] < pushed * GROWTH]
    beyond = [(a, b) for a, b in steps if a[1] >= pushed * GROWTH]
    assert returning
    assert plateau
    assert len(beyond) >= 4
    # Back towards just under the pushed rate quickly, one clean round a step: half the gap (CUBIC's
    # concave return) or GROWTH where that is more, never past RECOVER_TO x pushed ...
    assert [b for _, (_, b) in returning] == pytest.approx(
        [min(max(a * GROWTH, a + (knee - a) * RECOVER_STEP), knee) for (_, a), _ in returning]
    )
    assert returning[-1][1][1] == pytest.approx(knee)
    assert all(
        tb - ta <= 1.5 * ROUND_S for (_, (ta, _)), (_, (tb, _)) in itertools.pairwise(returning)
    )
    # ... then, on the plateau, the cubic probe in the time since the cut (at 0): flat at
    # first, so the run lingers near the rate pushed back, a step a round (where the probe is
    # not above the rate yet, PLATEAU_GROWTH after PLATEAU_HOLD clean rounds) ...
    for (ta, a), (tb, b) in plateau:
        if b == pytest.approx(probe(pushed, tb)):
            assert tb - ta <= 1.5 * ROUND_S
        else:
            assert b == pytest.approx(a * PLATEAU_GROWTH)
            assert tb - ta >= PLATEAU_HOLD * ROUND_S
    assert 8.0 <= plateau[-1][1][0] - plateau[0][0][0] <= 15.0
    # ... and past GROWTH x pushed, GROWTH or the probe every clean round, up to MAX.
    assert [b for _, (_, b) in beyond] == pytest.approx(
        [min(max(a * GROWTH, probe(pushed, tb)), rate.max_rate) for (_, a), (tb, _) in beyond]
    )
    assert all(tb - ta <= 1.5 * ROUND_S for (ta, _), (tb, _) in beyond)


def probe(pushed: float, since_cut: float) -> float:
    """CUBIC's convex probe, `since_cut` seconds after a cut from `pushed`."""
    return pushed * (RECOVER_TO + PROBE_CUBIC * since_cut**3)


def test_auto_after_a_cut_clean_replies_bring_4_per_second_back_to_max_within_60_s() -> None:
    # The service limited at 4/s, then went back to 20/s: the probe grows faster the longer it
    # goes unrefused. Before it, 1 % per PLATEAU_HOLD rounds on the plateau, then 5 % a round:
    # about 4.3/s a minute after the cut, and 20/s only after about 100 s.
    clock = FakeClock()
    changes: list[Change] = []
    rate = controller(clock, changes, start=4.0, slow_start=False)
    rate.record(Feedback.THROTTLED, started_at=0.0)
    assert rate.rate == pytest.approx(4.0 * CUT)
    simulate(rate, clock, until=60.0)
    assert rate.rate == rate.max_rate == 20.0
    reached = next(t for t, r, _ in changes if r == rate.max_rate)
    assert reached < 57.0  # 5 x 4/s is the probe's at 54.5 s; a round is 1.2 s here
    assert {why for _, _, why in changes[1:]} == {"grow"}
    # Growth stays a step a round: never more than twice the rate before it.
    assert all(b <= 2 * a for (_, a, _), (_, b, _) in itertools.pairwise(changes))


def test_auto_a_pushback_after_a_long_probe_still_cuts_once_and_restarts_it() -> None:
    clock = FakeClock()
    changes: list[Change] = []
    rate = controller(clock, changes, start=4.0, slow_start=False)
    rate.record(Feedback.THROTTLED, started_at=0.0)
    simulate(rate, clock, until=60.0)
    assert rate.rate == 20.0
    # A burst of 429s from attempts sent before the first of them is answered: one episode.
    for started in (59.5, 59.6, 59.7):
        rate.record(Feedback.THROTTLED, started)
    top = 20.0 * adaptive.PLATEAU_CUT  # far above the knee of 4/s: the shallow cut
    assert rate.rate == pytest.approx(top)
    # The probe restarts from this cut: flat at first again, no jump back to 20/s.
    simulate(rate, clock, until=70.0)
    assert rate.rate < 20.0 * (RECOVER_TO + PROBE_CUBIC * 10.0**3) + EPS
    # A refusal still cuts at once, by half, and sets the misuse ceiling.
    before = rate.rate
    rate.record(Feedback.REFUSED, started_at=clock.now - 0.1)
    assert rate.rate == pytest.approx(before * REFUSED_CUT)
    assert rate.ceiling == pytest.approx(before * MISUSE_CEILING)
    simulate(rate, clock, until=200.0)
    assert rate.rate <= before * MISUSE_CEILING + EPS


def test_auto_one_cut_per_episode_of_pushback() -> None:
    clock = FakeClock(5.0)
    changes: list[Change] = []
    rate = controller(clock, changes, start=10.0)
    # A burst of 429s to attempts all sent before the cut is one episode: one cut.
    for started in (4.6, 4.7, 4.8, 4.9):
        rate.record(Feedback.THROTTLED, started)
        clock.now += 0.1
    rate.record(Feedback.REFUSED, 4.95)  # a refusal in that episode sets a ceiling, no cut
    rate.record(Feedback.OVERLOAD, 4.95)
    rate.record(Feedback.OVERLOAD, 4.96)
    rate.record(Feedback.OVERLOAD, 4.97)
    assert [why for _, _, why in changes] == ["throttled"]
    assert changes[0][1] == pytest.approx(10.0 * CUT)
    # A 429 to an attempt sent after the cut is news: the new rate is still too high. (Cut
    # again by CUT: the rate is below RECOVER_TO x the pushed 10/s, so not a plateau probe.)
    rate.record(Feedback.THROTTLED, started_at=5.2)
    assert rate.rate == pytest.approx(10.0 * CUT * CUT)
    assert len(changes) == 2


def test_auto_sustained_throttling_keeps_walking_the_rate_down_not_frozen() -> None:
    # inspect_ai #5137: a 429 every 2 s with an 89 s Retry-After froze the limit after one cut.
    # Here the Retry-After is the pause's business, not the controller's: each 429 to an attempt
    # sent after the last cut cuts again, down to the floor.
    clock = FakeClock()
    rate = controller(clock, start=20.0)
    seen = [rate.rate]
    for step in range(1, 30):
        clock.now = 2.0 * step
        rate.record(Feedback.THROTTLED, started_at=clock.now - 0.5)
        seen.append(rate.rate)
    # Each cut lands at CUT x the rate just pushed back, below RECOVER_TO x it, so the next 429
    # is a new congestion (a full CUT), never a probe of the plateau (the shallow PLATEAU_CUT).
    assert seen[:4] == pytest.approx([20.0 * CUT**k for k in range(4)])
    assert seen[-1] == adaptive.MIN_RATE
    assert all(b < a or b == adaptive.MIN_RATE for a, b in itertools.pairwise(seen))


def test_auto_cooldown_after_a_cut_holds_growth_for_a_fixed_time() -> None:
    clock = FakeClock()
    changes: list[Change] = []
    rate = controller(clock, changes, start=10.0)
    rate.record(Feedback.THROTTLED, started_at=0.0)
    simulate(rate, clock, until=30.0)
    first_growth = next(t for t, _, why in changes if why == "grow")
    # Replies to attempts sent in the cool-down do not count; the first round after it does.
    assert adaptive.COOLDOWN_S < first_growth < adaptive.COOLDOWN_S + 1.5


def test_auto_cooldown_does_not_stretch_with_a_long_retry_after() -> None:
    clock = FakeClock()
    changes: list[Change] = []
    rate = controller(clock, changes, start=10.0)
    rate.record(Feedback.THROTTLED, started_at=0.0)  # with Retry-After: 89 (held by the Gate)
    for _ in range(10):  # more 429s of that episode, each with the same hint
        clock.now += 2.0
        rate.record(Feedback.THROTTLED, started_at=-0.1)
    clock.now = 89.0  # the pause ends; sending resumes at 10 x CUT per second
    simulate(rate, clock, until=92.0)
    growth = [t for t, _, why in changes if why == "grow"]
    assert growth
    assert growth[0] < 89.0 + 1.5  # one round after the pause, not a cool-down after it


def test_auto_a_single_overload_only_spoils_the_round_three_in_a_row_cut() -> None:
    clock = FakeClock(1.0)
    changes: list[Change] = []
    rate = controller(clock, changes, start=10.0, slow_start=False)
    for _ in range(9):
        rate.record(Feedback.CLEAN, 0.5)
    rate.record(Feedback.OVERLOAD, 0.5)  # the round restarts: ten clean replies needed again
    for _ in range(9):
        rate.record(Feedback.CLEAN, 0.5)
    assert changes == []
    rate.record(Feedback.OVERLOAD, 0.6)
    rate.record(Feedback.CLEAN, 0.6)  # a clean reply breaks the run
    rate.record(Feedback.OVERLOAD, 0.7)
    rate.record(Feedback.OVERLOAD, 0.7)
    assert changes == []
    rate.record(Feedback.OVERLOAD, 0.8)
    assert [why for _, _, why in changes] == ["overload"]
    assert changes[0][1] == pytest.approx(10.0 * CUT)


def test_auto_neutral_feedback_changes_nothing() -> None:
    clock = FakeClock()
    changes: list[Change] = []
    rate = controller(clock, changes)
    for _ in range(50):
        rate.record(Feedback.NEUTRAL, 0.0)
    assert changes == []
    assert rate.slow_start


def test_auto_refusal_cuts_harder_and_never_probes_back_to_the_refused_rate() -> None:
    clock = FakeClock()
    changes: list[Change] = []
    rate = controller(clock, changes, start=10.0)
    rate.record(Feedback.REFUSED, started_at=0.0)
    assert rate.rate == pytest.approx(10.0 * REFUSED_CUT)
    assert REFUSED_CUT < CUT  # harder than a throttle's cut
    ceiling = 10.0 * MISUSE_CEILING
    assert rate.ceiling == pytest.approx(ceiling)
    simulate(rate, clock, until=120.0)
    assert max(r for _, r, _ in changes) <= ceiling
    # Grows back up to the ceiling, not past it (nor to RECOVER_TO x the refused 10/s above it).
    assert ceiling < RECOVER_TO * 10.0
    assert rate.rate == pytest.approx(ceiling)


def test_auto_refusal_ceiling_is_below_the_rate_the_refused_attempt_was_sent_at() -> None:
    clock = FakeClock()
    rate = controller(clock, start=10.0)
    clock.now = 1.0
    rate.record(Feedback.THROTTLED, started_at=0.9)  # 10 -> 10 x CUT
    clock.now = 2.0
    rate.record(Feedback.THROTTLED, started_at=1.5)  # sent at 10 x CUT: cut by CUT again
    sent_at = 10.0 * CUT
    ceiling = MISUSE_CEILING * sent_at
    assert rate.rate == pytest.approx(sent_at * CUT)
    clock.now = 30.0
    simulate(rate, clock, until=60.0)
    assert rate.rate > ceiling
    # The rate now is not the one the attempt was sent at, so the two ceilings differ.
    assert MISUSE_CEILING * rate.rate != pytest.approx(ceiling)
    # A late refusal of the attempt sent at 1.5 s, at 10 x CUT per second: its episode was
    # answered, so no cut, but the run must now stay under MISUSE_CEILING x that rate.
    rate.record(Feedback.REFUSED, started_at=1.5)
    assert rate.ceiling == pytest.approx(ceiling)
    assert rate.rate == pytest.approx(ceiling)
    simulate(rate, clock, until=120.0)
    assert rate.rate == pytest.approx(ceiling)


def test_auto_never_grows_above_twice_the_measured_send_rate() -> None:
    # Two requests in flight at most and a second of latency: whatever the rate allows, 2/s
    # is what is really sent. Clean replies keep coming, but the rate stops at twice that.
    clock = FakeClock()
    changes: list[Change] = []
    rate = controller(clock, changes)
    simulate(rate, clock, until=60.0, latency=1.0, concurrency=2)
    assert rate.rate == 4.0
    assert max(r for _, r, _ in changes) == 4.0
    assert rate.measured_rate() == 2.0


def test_auto_sparse_replies_do_not_ramp_the_rate_unseen() -> None:
    # A slow phase: one clean reply every 3 s. Slow start would double forever on that; the
    # measured rate (one send a second at best) holds it at 2.
    clock = FakeClock()
    rate = controller(clock)
    for step in range(100):
        clock.now = 3.0 * step + 0.2
        rate.record(Feedback.CLEAN, started_at=3.0 * step)
    assert rate.rate == 2.0


def test_auto_halve_halves_and_opens_a_new_episode() -> None:
    clock = FakeClock(10.0)
    changes: list[Change] = []
    rate = controller(clock, changes, start=12.0)
    assert rate.halve() == 6.0
    assert changes == [(10.0, 6.0, "halve")]
    rate.record(Feedback.THROTTLED, started_at=9.0)  # sent before: answered
    assert rate.rate == 6.0
    rate.record(Feedback.THROTTLED, started_at=10.5)
    assert rate.rate == pytest.approx(6.0 * CUT)


def test_auto_rate_has_a_floor() -> None:
    clock = FakeClock()
    rate = controller(clock, start=0.15)
    rate.record(Feedback.REFUSED, started_at=0.0)
    assert rate.rate == adaptive.MIN_RATE
    # ... unless MAX itself is lower (auto:3/min).
    assert AdaptiveRate(0.05, clock=clock).rate == 0.05


def test_auto_drives_every_pacer_given_to_it() -> None:
    clock = FakeClock()
    rate = controller(clock, start=5.0)
    pacer = Pacer(1.0, clock=clock)
    rate.drive(pacer)
    assert pacer.rate == 5.0
    rate.record(Feedback.THROTTLED, started_at=0.0)
    assert pacer.rate == pytest.approx(5.0 * CUT)
    assert pacer.rate == rate.rate
