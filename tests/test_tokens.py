"""The token pacer (controls/tokens.py) on a virtual clock: tokens per window kept, spacing even
from the start, usage settled, limits learned from the headers, odd headers tolerated."""

from __future__ import annotations

import itertools
import logging

import pytest
from test_ratelimit import VirtualTime

from batchpizza.controls.tokens import (
    AUTO_SHARE,
    DEFAULT_OUTPUT_TOKENS,
    OUTPUT_SAMPLES,
    OutputEstimate,
    TokenPacer,
    learned_rate,
)


def tokens_in_windows(sends: list[tuple[float, int]], window: float) -> int:
    """The most tokens any window (t - window, t] holds."""
    best = 0
    for t, _ in sends:
        best = max(best, sum(n for s, n in sends if t - window < s <= t))
    return best


async def test_sends_keep_the_tokens_per_minute_with_no_burst_at_start() -> None:
    vt = VirtualTime()
    pacer = TokenPacer(1000 / 60, clock=vt.clock, sleep=vt.sleep)  # 1,000 tokens a minute
    sends: list[tuple[float, int]] = []

    async def send(tokens: int) -> None:
        await pacer.acquire(tokens)
        sends.append((vt.now, tokens))
        pacer.settle(tokens, tokens)

    await vt.run(*(send(100) for _ in range(30)))
    # Evenly spaced by size: 100 tokens every 6 s, the first at once, none bunched at start.
    times = [t for t, _ in sends]
    assert times[0] == 100.0
    assert all(b - a == pytest.approx(6.0) for a, b in itertools.pairwise(times))
    assert tokens_in_windows(sends, 60.0) <= 1000


async def test_an_overestimate_is_given_back_and_an_underestimate_paid_by_the_next() -> None:
    vt = VirtualTime()
    pacer = TokenPacer(10.0, clock=vt.clock, sleep=vt.sleep)  # 10 tokens a second
    await pacer.acquire(100)  # booked 100: the next may go 10 s later
    pacer.settle(100, 20)  # used 20: it may go 2 s after the first
    log: list[float] = []

    async def second() -> None:
        await pacer.acquire(50)
        log.append(vt.now)
        pacer.settle(50, 80)  # used 30 more than booked: 3 s more for the third

    await vt.run(second())
    assert log == [pytest.approx(102.0)]
    await vt.run(pacer.acquire(10))
    assert vt.now == pytest.approx(102.0 + 8.0)


async def test_tokens_given_back_make_no_credit_for_a_burst() -> None:
    vt = VirtualTime()
    pacer = TokenPacer(10.0, clock=vt.clock, sleep=vt.sleep)
    await pacer.acquire(100)
    vt.now += 60.0  # a long quiet time, then the answer says it used nothing
    pacer.settle(100, 0)
    sends: list[float] = []

    async def send() -> None:
        await pacer.acquire(10)
        sends.append(vt.now)

    await vt.run(*(send() for _ in range(5)))
    assert sends == pytest.approx([160.0, 161.0, 162.0, 163.0, 164.0])


def test_the_limit_is_learned_from_what_a_continuously_refilled_window_says() -> None:
    # 20,000 a minute, 15,000 left: 5,000 used come back in 15 s.
    assert learned_rate(20000, 15000, 15.0) == pytest.approx(20000 / 60)
    # A 3-second "minute" (a mock's) is seen for what it is.
    assert learned_rate(20000, 10000, 1.5) == pytest.approx(20000 / 3)
    # Nothing used, or no reset: the limit is per minute.
    assert learned_rate(20000, 20000, 0.0) == pytest.approx(20000 / 60)
    assert learned_rate(20000, None, None) == pytest.approx(20000 / 60)


@pytest.mark.parametrize(
    ("limit", "remaining", "reset"),
    [
        (None, None, None),  # missing
        (0.0, 0.0, None),  # zero
        (None, 12.0, 1.5),  # no limit, only what is left
    ],
)
def test_headers_that_say_nothing_usable_teach_nothing(
    limit: float | None, remaining: float | None, reset: float | None
) -> None:
    assert learned_rate(limit, remaining, reset) == 0.0


def test_a_reset_of_minutes_or_a_fraction_of_a_second_gives_a_sane_window() -> None:
    # 6m0s to refill half the limit: a 12-minute window, read as said.
    assert learned_rate(1000, 500, 360.0) == pytest.approx(1000 / 720)
    # 1.5 s to refill a tenth: a 15 s window.
    assert learned_rate(1000, 900, 1.5) == pytest.approx(1000 / 15)
    # A reset that would make the window absurd (a tenth of a millisecond) is not believed.
    assert learned_rate(1000, 0, 0.0001) == pytest.approx(1000 / 60)


async def test_auto_sends_one_at_a_time_until_a_reply_says_the_limit() -> None:
    vt = VirtualTime()
    pacer = TokenPacer(None, auto=True, clock=vt.clock, sleep=vt.sleep)
    await pacer.acquire(100)
    assert pacer.rate is None
    waiting = [False]

    async def second() -> None:
        await pacer.acquire(100)
        waiting[0] = True

    async def answer() -> None:
        await vt.sleep(5.0)
        assert not waiting[0]  # held while the first is in flight
        pacer.settle(100, 100)
        pacer.observe(6000, 5900, 1.0, 100)  # 6,000 a minute

    await vt.run(second(), answer())
    assert waiting[0]
    assert pacer.rate == pytest.approx(6000 / 60 * AUTO_SHARE)


async def test_auto_against_a_server_that_announces_no_token_limit_goes_unpaced() -> None:
    vt = VirtualTime()
    pacer = TokenPacer(None, auto=True, clock=vt.clock, sleep=vt.sleep)
    await pacer.acquire(100)
    pacer.settle(100, 100)
    pacer.observe(None, None, None, 100)
    assert pacer.rate == 0.0
    await vt.run(*(pacer.acquire(10_000) for _ in range(50)))
    assert vt.now == 100.0  # nobody waited


async def test_auto_starting_from_an_earlier_runs_limit_drops_it_when_none_is_announced() -> None:
    # A run starting from the learned_tpm of an earlier run (60 a minute, from a server that
    # said so) stayed paced at it against a server announcing no limit: a request a minute.
    vt = VirtualTime()
    pacer = TokenPacer(1.0 * AUTO_SHARE, auto=True, clock=vt.clock, sleep=vt.sleep)
    pacer.limit_per_s = 1.0
    await pacer.acquire(100)
    pacer.settle(100, 100)
    pacer.observe(None, None, None, 100)
    assert pacer.rate == 0.0
    await vt.run(*(pacer.acquire(10_000) for _ in range(50)))
    assert vt.now < 200.0  # nobody waited for the old limit
    pacer.observe(6000, 6000, 0.0, 100)  # a limit heard again is kept
    pacer.observe(None, None, None, 100)
    assert pacer.rate == pytest.approx(6000 / 60 * AUTO_SHARE)


async def test_auto_reads_a_zero_limit_in_answers_as_none_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A zero limit in an answer cannot be one (the request passed; a real zero is a 429):
    # a limit learned before is kept, and without one the run is unpaced, as for none said.
    vt = VirtualTime()
    pacer = TokenPacer(None, auto=True, clock=vt.clock, sleep=vt.sleep)
    pacer.observe(6000, 6000, 0.0, 100)
    with caplog.at_level(logging.WARNING, logger="batchpizza"):
        for _ in range(3):
            pacer.observe(0, 0, 1.0, 100)
    assert pacer.rate == pytest.approx(6000 / 60 * AUTO_SHARE)
    assert pacer.hold_until < vt.now  # nothing "left" to wait for
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "limit learned before is kept" in said[0]
    unlearned = TokenPacer(None, auto=True, clock=vt.clock, sleep=vt.sleep)
    unlearned.observe(0, 0, 1.0, 100, answered=False)  # a refusal's: not said
    unlearned.observe(0, None, None, 100)
    assert unlearned.rate == 0.0


async def test_auto_holds_when_what_is_left_would_not_take_the_next_request() -> None:
    vt = VirtualTime()
    pacer = TokenPacer(None, auto=True, clock=vt.clock, sleep=vt.sleep)
    pacer.observe(6000, 50, 59.5, 250)  # 100 tokens a second; 50 left, the next needs 250
    await vt.run(pacer.acquire(250))
    assert vt.now >= 100.0 + 2.0  # 200 tokens more to come back: 2 s


@pytest.mark.parametrize("reset_s", [0.0, 0.001, 0.3])
async def test_auto_holds_no_longer_than_the_server_says_the_limit_takes_to_reset(
    reset_s: float,
) -> None:
    # "1,000 tokens, 0 left, full again in 0s" (a fixed window at its edge): the window could not
    # be read from so short a reset, so the hold was counted at a minute's rate: 31 s for each
    # request of 520 tokens, two requests a minute against a server that had them all back.
    vt = VirtualTime()
    pacer = TokenPacer(None, auto=True, clock=vt.clock, sleep=vt.sleep)
    pacer.observe(1000, 0, reset_s, 520)
    await vt.run(pacer.acquire(520))
    assert vt.now <= 100.0 + reset_s + 0.01


def test_the_output_estimate_starts_at_the_default_then_follows_the_99th_percentile() -> None:
    estimate = OutputEstimate()
    for _ in range(OUTPUT_SAMPLES - 1):
        estimate.observe(10)
    assert estimate.value == DEFAULT_OUTPUT_TOKENS
    estimate.observe(10)
    assert estimate.value == 10
    for n in range(1, 201):
        estimate.observe(n)
    # Recomputed every few answers, so it may lag the last ones a little.
    assert 180 <= estimate.value <= 200


async def test_a_rate_below_one_request_a_minute_is_said_once_not_waited_in_silence(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A server announcing (or a --tpm of) fewer tokens a minute than one request books: every
    # request waits minutes, which without a word looks like a hang.
    vt = VirtualTime()
    pacer = TokenPacer(50 / 60, clock=vt.clock, sleep=vt.sleep)  # 50 tokens a minute

    async def send() -> None:
        await pacer.acquire(100)
        pacer.settle(100, 100)

    with caplog.at_level("WARNING", logger="batchpizza"):
        await vt.run(send(), send(), send())
    said = [r.getMessage() for r in caplog.records if "--tpm" in r.getMessage()]
    assert len(said) == 1
    assert "books 100 tokens" in said[0] and "about 120 s" in said[0]
    assert vt.now == pytest.approx(100.0 + 2 * 120.0)  # and the pace kept all the same


async def test_a_reply_using_more_than_a_minutes_worth_says_how_long_the_next_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A server reporting 2,000,000,000,000 tokens for one request (a gateway's broken usage)
    # at --tpm 100k: the next request waited 38 years, in silence: a run that looked hung.
    vt = VirtualTime()
    pacer = TokenPacer(100_000 / 60, clock=vt.clock, sleep=vt.sleep)
    with caplog.at_level("WARNING", logger="batchpizza"):
        await pacer.acquire(100)
        pacer.settle(100, 2 * 10**12)
        pacer.settle(0, 2 * 10**12)  # said once
    said = [r.getMessage() for r in caplog.records if "--tpm" in r.getMessage()]
    assert len(said) == 1, said
    assert "2,000,000,000,000 tokens" in said[0] and "100 booked" in said[0], said[0]
    assert "the next request waits about" in said[0], said[0]


def test_a_limit_announced_below_one_request_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    vt = VirtualTime()
    pacer = TokenPacer(None, auto=True, clock=vt.clock, sleep=vt.sleep)
    with caplog.at_level("WARNING", logger="batchpizza"):
        for _ in range(3):  # 30 tokens a minute announced; the last request booked 530
            pacer.observe(30, 0, 60.0, 530)
    said = [r.getMessage() for r in caplog.records if "--tpm" in r.getMessage()]
    assert len(said) == 1
    assert "the limit the server announces" in said[0] and "books 530 tokens" in said[0]


async def test_a_limit_announced_again_after_a_reply_without_one_paces_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A run resumed from an earlier run's limit (6,000 a minute), whose first reply announced
    # none (request limits only): unpaced, rightly. Later replies announced the same 6,000: the
    # run stayed unpaced (the limit had not changed from what it knew), and the warning of a
    # rate too low for one request divided by that zero rate and ended the run.
    vt = VirtualTime()
    pacer = TokenPacer(100.0 * AUTO_SHARE, auto=True, clock=vt.clock, sleep=vt.sleep)
    pacer.limit_per_s = 100.0
    pacer.observe(None, None, None, 100)
    assert pacer.rate == 0.0
    with caplog.at_level("WARNING", logger="batchpizza"):
        pacer.observe(6000, 6000, 0.0, 100)
    assert pacer.rate == pytest.approx(100.0 * AUTO_SHARE)
    assert not caplog.records  # 100 tokens a request is far from a minute's worth
    await vt.run(*(pacer.acquire(90) for _ in range(3)))
    assert vt.now == pytest.approx(100.0 + 2.0)  # paced: 90 tokens a second
