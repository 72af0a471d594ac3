"""The run's control: what each attempt outcome means for the learned rate and the breaker, and
the unattended behaviours end to end against the mock server (a service that turns to refusing,
a rate-limited service under --rate auto, the learned rate kept for the next run)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest
from conftest import FAST, write_jsonl

import batchpizza
from batchpizza.checkpoint import Checkpoint
from batchpizza.controls.adaptive import Feedback
from batchpizza.controls.control import Control, feedback_of
from batchpizza.controls.gate import Stopped
from batchpizza.errors import (
    BadReply,
    HTTPStatusError,
    MisuseDetected,
    RequestTimeout,
    TransportError,
)
from batchpizza.mock.faults import MockConfig
from batchpizza.mock.replies import mock_answer
from batchpizza.mock.server import ThreadedMockServer
from batchpizza.records import RateInfo


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (None, (Feedback.CLEAN, False, True)),
        (MisuseDetected("Misuse detected."), (Feedback.REFUSED, True, True)),
        (HTTPStatusError(403, "HTTP 403"), (Feedback.REFUSED, True, True)),
        (HTTPStatusError(401, "HTTP 401"), (Feedback.REFUSED, True, True)),
        (HTTPStatusError(429, "HTTP 429"), (Feedback.THROTTLED, False, True)),
        (HTTPStatusError(503, "HTTP 503", retry_after=2.0), (Feedback.THROTTLED, False, True)),
        (HTTPStatusError(503, "HTTP 503"), (Feedback.OVERLOAD, False, False)),
        (RequestTimeout("slow"), (Feedback.OVERLOAD, False, False)),
        (TransportError("reset"), (Feedback.OVERLOAD, False, False)),
        (BadReply("not JSON"), (Feedback.OVERLOAD, False, False)),
        (HTTPStatusError(404, "HTTP 404"), (Feedback.NEUTRAL, False, True)),
    ],
)
def test_each_outcome_speaks_to_the_rate_and_the_breaker_as_the_table_says(
    error: Exception | None, expected: tuple[Feedback, bool, bool]
) -> None:
    assert feedback_of(error) == expected  # type: ignore[arg-type]


def test_a_re_asked_refusal_is_news_of_that_row_neutral_to_the_learned_rate() -> None:
    # Still a refusal for the breaker (which leaves it out of its window unless it is the
    # probe), but the rate is not cut again and again by one prompt the service will not take.
    assert feedback_of(MisuseDetected("Misuse detected."), again=True) == (
        Feedback.NEUTRAL,
        True,
        True,
    )
    assert feedback_of(None, again=True) == (Feedback.CLEAN, False, True)


def refused_tail(n: int, refused: int) -> list[dict[str, str]]:
    """`n` rows, the last `refused` of them refused as misuse by the mock whatever is done."""
    return [
        {"id": f"r{i}", "prompt": ("[[misuse]] " if i >= n - refused else "") + f"tail {i}"}
        for i in range(n)
    ]


def breaker_events(out: Path) -> list[str]:
    store = Checkpoint.open(Path(f"{out}.checkpoint"), readonly=True)
    try:
        return [e[4] for e in store.events() if e[2] == "breaker"]
    finally:
        store.close()


def test_a_few_always_refused_rows_at_the_tail_neither_trip_the_breaker_nor_come_back(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # Once only the 5 refused rows were left, all the breaker saw was their misuse re-asks: it
    # tripped, and each probe (a re-ask) doubled the wait: 484 s for 53 rows. patience 0 makes
    # a trip end the run at once (exit 4, rows pending) instead of waiting minutes for it.
    inp = write_jsonl(tmp_path / "in.jsonl", refused_tail(40, 5))
    out = tmp_path / "out.jsonl"
    options = {**FAST, "base_url": mock_api.base_url, "concurrency": 8, "patience": 0}

    summary = batchpizza.run(inp, out, **options)

    assert summary["stopped"] is None
    assert summary["exit_code"] == 3
    assert (summary["answered"], summary["misuse"], summary["pending"]) == (35, 5, 0)
    assert mock_api.stats.requests == 35 + 5 * 3  # each refused row asked three times
    assert breaker_events(out) == []
    written = {r["id"]: r for r in (json.loads(line) for line in out.read_text().splitlines())}
    assert {i for i, r in written.items() if r["finish_reason"] == "misuse"} == {
        f"r{i}" for i in range(35, 40)
    }

    # A rerun keeps them as misuse and sends nothing ...
    mock_api.reset()
    again = batchpizza.run(inp, out, **options)
    assert mock_api.stats.requests == 0
    assert (again["exit_code"], again["misuse"], again["requests"]) == (3, 5, 0)

    # ... unless asked to. (New rows ahead of them, as a growing input brings: refused rows
    # alone, all refused again, are what a service refusing everyone looks like to the breaker.)
    write_jsonl(
        inp, [{"id": f"n{i}", "prompt": f"new {i}"} for i in range(20)] + refused_tail(40, 5)
    )
    retried = batchpizza.run(inp, out, **options, retry_refused=True)
    assert mock_api.stats.requests == 20 + 5 * 3
    assert (retried["exit_code"], retried["answered"], retried["misuse"]) == (3, 55, 5)
    assert breaker_events(out) == []


@pytest.mark.parametrize(("limit", "held"), [(10, True), (None, True), (0, False)])
async def test_a_request_limit_about_to_run_out_holds_every_worker_unless_it_is_zero(
    limit: int | None, held: bool
) -> None:
    # An answer announcing a limit of 0 with 0 remaining: placeholders (a real zero is a 429,
    # a spent quota); holding on them paused every worker after each answer.
    control = Control(rate=0, auto_max=None, learned=None, patience=60, retry_after_cap=300,
                      timeout=1, on_give_up=lambda: None)  # fmt: skip
    token = await control.enter()
    rate = RateInfo(limit=limit, remaining=0, reset_s=5.0)
    control.finished(token, time.monotonic(), "answered", None, rate)
    assert (control.gate.pause.remaining > 4) == held


async def test_a_retry_after_holds_every_worker_and_refusals_trip_the_breaker() -> None:
    gave_up: list[bool] = []
    control = Control(
        rate=0,
        auto_max=None,
        learned=None,
        patience=0,
        retry_after_cap=300,
        timeout=1,
        on_give_up=lambda: gave_up.append(True),
    )
    token = await control.enter()
    control.finished(token, time.monotonic(), "http", HTTPStatusError(429, "x", retry_after=7))
    assert control.waiting is not None and "Retry-After" in control.waiting
    assert control.gate.pause.remaining > 6
    for _ in range(10):
        control.finished(None, time.monotonic(), "refusal", MisuseDetected("Misuse detected."))
    # Out of patience (0): the run is told at once, and no attempt starts any more.
    assert gave_up == [True]
    with pytest.raises(Stopped):
        await control.enter()
    assert [e[3] for e in control.take_events() if e[1] == "breaker"] == ["gave-up"]


def test_a_service_that_turns_to_refusing_stops_the_run_early_and_the_rerun_finishes(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    rows = [{"id": f"r{i}", "prompt": f"refusal test {i}"} for i in range(400)]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    mock_api.config = MockConfig(misuse_after=50)
    options = {**FAST, "base_url": mock_api.base_url, "concurrency": 16, "patience": 0}
    started = time.monotonic()

    summary = batchpizza.run(inp, out, **options, summary_json=str(tmp_path / "s.json"))

    assert time.monotonic() - started < 10
    assert summary["exit_code"] == 4
    assert summary["stopped"] == "refusals"
    assert mock_api.stats.requests <= 50 + 16 * 3  # the refusals the window needed, no more
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(written) == 400  # every row, the unanswered ones pending
    answered = {r["id"] for r in written if r["finish_reason"] == "stop"}
    assert len(answered) == 50
    assert {r["finish_reason"] for r in written} <= {"stop", "pending", "misuse"}
    assert json.loads((tmp_path / "s.json").read_text())["stopped"] == "refusals"

    mock_api.config = MockConfig()
    mock_api.reset()
    again = batchpizza.run(inp, out, **options)

    assert again["exit_code"] == 0
    assert mock_api.stats.requests == 400 - 50  # only what was not answered
    assert all(
        r["answer"] == mock_answer(r["prompt"])
        for r in (json.loads(line) for line in out.read_text().splitlines())
    )


def test_the_breaker_and_the_rate_history_are_in_the_report_data(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q{i}"} for i in range(60)])
    out = tmp_path / "out.jsonl"
    mock_api.config = MockConfig(misuse_after=5)
    batchpizza.run(inp, out, **{**FAST, "base_url": mock_api.base_url, "patience": 0})
    store = Checkpoint.open(Path(f"{out}.checkpoint"), readonly=True)
    try:
        events = store.events()
        runs = store.runs()
        outcomes = {row[4] for row in store.attempts()}
    finally:
        store.close()
    assert [e[4] for e in events if e[2] == "breaker"] == ["gave-up"]
    assert runs[-1][4] == 4  # the run's exit code is recorded
    assert {"answered", "refusal"} <= outcomes


@pytest.mark.slow
def test_the_learned_rate_is_saved_and_the_next_run_starts_from_it(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"learn {i}"} for i in range(12)])
    out = tmp_path / "out.jsonl"
    options = {**FAST, "base_url": mock_api.base_url, "rate": "auto:50/s"}
    first = batchpizza.run(inp, out, **options)
    assert first["rate"] is not None and first["rate"] > 1.0  # grew from 1/s on clean replies
    store = Checkpoint.open(Path(f"{out}.checkpoint"), readonly=True)
    try:
        learned = store.learned_rate()
    finally:
        store.close()
    assert learned == pytest.approx(first["rate"])

    write_jsonl(inp, [{"prompt": f"learn {i}"} for i in range(17)])
    second = batchpizza.run(inp, out, **options)
    assert second["requests"] == 5
    # It started from the learned rate (never below it on clean replies), not from 1/s.
    assert second["rate"] >= learned


@pytest.mark.slow
def test_auto_against_a_server_limited_at_10_per_second_learns_its_limit(tmp_path: Path) -> None:
    rows = [{"id": i, "prompt": f"auto {i}"} for i in range(300)]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    with ThreadedMockServer(MockConfig(rate_limit=10, retry_after="1")) as server:
        started = time.monotonic()
        summary = batchpizza.run(
            inp,
            out,
            base_url=server.base_url,
            rate="auto",
            concurrency=32,
            progress=False,
            quiet=True,
        )
        elapsed = time.monotonic() - started
        throttled = server.stats.by_status.get(429, 0)
        requests = server.stats.requests
    assert summary["exit_code"] == 0
    assert summary["answered"] == 300
    assert throttled <= 0.1 * requests
    # The bar is 8 rows/s at this limit (measured 8.4); a loaded CI machine gets slack.
    assert 300 / elapsed >= 7.0


@pytest.mark.slow
def test_auto_finds_a_limit_that_rose_from_4_to_20_per_second_again_within_the_run(
    tmp_path: Path,
) -> None:
    # The service limits at 4/s; once the run has been pushed back there, the limit goes back
    # to 20/s. The run must climb to auto's MAX (20/s) before its 800 rows run out (measured:
    # about 50 s after the cut, some 550 rows in). The fake-time test in test_ratelimit.py is
    # the one that pins the growth; this one prints the figures (pytest -s) for the README.
    rows = [{"id": i, "prompt": f"rise {i}"} for i in range(800)]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    rose_at: list[float] = []
    with ThreadedMockServer(MockConfig(rate_limit=4, retry_after="1")) as server:

        def raise_the_limit_after_pushback() -> None:
            while server.stats.by_status.get(429, 0) == 0 or server.stats.requests < 40:
                time.sleep(0.01)
            server.config = MockConfig(rate_limit=20, retry_after="1")
            rose_at.append(time.time())

        watcher = threading.Thread(target=raise_the_limit_after_pushback, daemon=True)
        watcher.start()
        summary = batchpizza.run(
            inp, out, base_url=server.base_url, rate="auto", concurrency=32, progress=False
        )
        watcher.join(timeout=5)
        throttled = server.stats.by_status.get(429, 0)
    assert summary["exit_code"] == 0
    assert rose_at
    store = Checkpoint.open(Path(f"{out}.checkpoint"), readonly=True)
    try:
        rates = [(e[1], e[3], e[4]) for e in store.events() if e[2] == "rate"]
    finally:
        store.close()
    cut = max(t for t, _, why in rates if why != "grow" and why != "slow-start" and t < rose_at[0])
    at_max = [t for t, r, _ in rates if r >= 20.0 and t > rose_at[0]]
    print(
        f"\nlimit 4 -> 20/s: last cut {rose_at[0] - cut:.1f} s before the rise; MAX reached "
        f"{at_max[0] - rose_at[0] if at_max else float('nan'):.1f} s after it "
        f"({at_max[0] - cut if at_max else float('nan'):.1f} s after the cut); "
        f"{throttled} 429s; {summary['elapsed_s']:.1f} s for 800 rows"
    )
    assert at_max  # before the rows ran out


def test_patience_that_runs_out_while_the_breaker_waits_stops_at_once(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # patience 30 s: the first trip waits 60 s, which would pass it: give up at the trip.
    inp = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"p{i}"} for i in range(100)])
    mock_api.config = MockConfig(misuse_after=0)
    started = time.monotonic()
    summary = batchpizza.run(
        inp, tmp_path / "out.jsonl", **{**FAST, "base_url": mock_api.base_url, "patience": "30s"}
    )
    assert summary["exit_code"] == 4
    assert time.monotonic() - started < 10


async def test_stop_sleep_ends_when_sending_stops() -> None:
    from batchpizza.controls.stop import Stop

    stop = Stop()
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, stop.stop_sending, "deadline")
    started = time.monotonic()
    await stop.sleep(30)
    assert time.monotonic() - started < 5


async def test_workers_queued_for_pacer_slots_stop_at_once_at_the_default_rate() -> None:
    # At the default 2/s, eight workers queue for slots up to 3.5 s off; a SIGTERM waited for
    # every one of them (the race with the stop was kept for rates under 2/s).
    stop = asyncio.Event()
    control = Control(
        rate=2, auto_max=None, learned=None, patience=10, retry_after_cap=300, timeout=1,
        on_give_up=lambda: None, stop_signal=stop.wait,
    )  # fmt: skip
    await control.enter()  # the first slot is free at once
    await all_stopped_at_once(control, stop, waiting=7)


async def all_stopped_at_once(control: Control, stop: asyncio.Event, *, waiting: int) -> None:
    """`waiting` workers entering `control` wait; the stop then ends every wait with Stopped
    within a second."""
    queued = [asyncio.ensure_future(control.enter()) for _ in range(waiting)]
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in queued)
    stop.set()
    done, pending = await asyncio.wait(queued, timeout=1.0)
    assert not pending
    for task in done:
        with pytest.raises(Stopped):
            task.result()


async def test_workers_waiting_on_an_open_breaker_stop_at_once() -> None:
    # The service refusing: the breaker opens for about a minute. A SIGTERM then waited out
    # the whole grace (5 s), the workers asleep in the breaker's wait.
    from batchpizza.controls.breaker import BreakerState

    stop = asyncio.Event()
    control = Control(
        rate=0, auto_max=None, learned=None, patience=3600, retry_after_cap=300, timeout=1,
        on_give_up=lambda: None, stop_signal=stop.wait,
    )  # fmt: skip
    for _ in range(10):
        control.breaker.record(True)
    assert control.breaker.state is BreakerState.OPEN
    await all_stopped_at_once(control, stop, waiting=4)


async def test_a_slot_a_moment_away_is_waited_for_without_a_race() -> None:
    # The race with the stop costs two tasks a wait: a slot under FAR_SLOT away goes without.
    from batchpizza.controls.control import FAR_SLOT

    stop = asyncio.Event()
    control = Control(
        rate=1 / (FAR_SLOT / 2), auto_max=None, learned=None, patience=10,
        retry_after_cap=300, timeout=1, on_give_up=lambda: None, stop_signal=stop.wait,
    )  # fmt: skip
    await control.enter()
    assert control.gate.pacer is not None
    assert 0 < control.gate.pacer.wait_ahead() <= FAR_SLOT
    assert not control._far
    # Two more queued: the next free slot is then 1.5 x FAR_SLOT away, and raced.
    queued = [asyncio.ensure_future(control.enter()) for _ in range(2)]
    await asyncio.sleep(0)
    assert control.gate.pacer.wait_ahead() > FAR_SLOT
    assert control._far
    await asyncio.gather(*queued)


@pytest.mark.slow
@pytest.mark.parametrize("grows", ["retry-after", "rate cut"])
async def test_a_near_slot_whose_wait_grows_meanwhile_still_stops_at_once(grows: str) -> None:
    # A worker queued for a slot a tenth of a second off waits without the race with the stop.
    # A Retry-After from another worker's reply (or a learned rate cut, which voids the slot)
    # then made that wait 300 s long, and a SIGTERM waited out the grace for it.
    stop = asyncio.Event()
    control = Control(
        rate=10, auto_max=None, learned=None, patience=10, retry_after_cap=300, timeout=1,
        on_give_up=lambda: None, stop_signal=stop.wait,
    )  # fmt: skip
    await control.enter()
    assert not control._far  # the next slot is 0.1 s off: waited for without the race
    waiting = asyncio.ensure_future(control.enter())
    await asyncio.sleep(0.01)
    assert control.gate.pacer is not None
    if grows == "retry-after":
        control.finished(None, 0.0, "error", HTTPStatusError(429, "HTTP 429", retry_after=300))
    else:
        control.gate.pacer.set_rate(1 / 300)
    await asyncio.sleep(0.3)  # past the slot it queued for
    assert not waiting.done()
    stop.set()
    with pytest.raises(Stopped):
        await asyncio.wait_for(waiting, 5.0)


async def test_a_near_slot_is_taken_as_before_when_nothing_grows() -> None:
    control = Control(
        rate=10, auto_max=None, learned=None, patience=10, retry_after_cap=300, timeout=1,
        on_give_up=lambda: None, stop_signal=asyncio.Event().wait,
    )  # fmt: skip
    await control.enter()
    assert not control._far
    await asyncio.wait_for(control.enter(), 5.0)
    assert control.gate.pacer is not None
    assert len(control.gate.pacer._recent) == 2  # one slot each, none forfeited


async def test_a_wait_for_tokens_ends_at_once_when_sending_stops() -> None:
    # Under --tpm 60 an interrupt took the whole 5 s grace: the meter's wait for a token slot
    # did not hear the stop, where the request pacer's does.
    from batchpizza.controls.metering import Meter
    from batchpizza.controls.tokens import TokenPacer
    from batchpizza.records import Prompt

    stop = asyncio.Event()
    meter = Meter(params={"max_tokens": 100}, pacer=TokenPacer(1.0))  # 1 token a second
    control = Control(
        rate=0, auto_max=None, learned=None, patience=10, retry_after_cap=300, timeout=1,
        on_give_up=lambda: None, stop_signal=stop.wait, meter=meter,
    )  # fmt: skip
    prompt = Prompt("r", "hello", ())
    await control.enter_for(prompt)  # the first goes at once and books 100 s of the timeline
    waiting = asyncio.ensure_future(control.enter_for(prompt))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    stop.set()
    with pytest.raises(Stopped):
        await asyncio.wait_for(waiting, 2.0)


@pytest.mark.slow
async def test_requests_that_wait_out_a_retry_after_book_their_tokens_after_it() -> None:
    # Under --tpm, requests booked their tokens first, then waited out a Retry-After pause on
    # the bookings made during it: all left together when it ended. Booked after the pause,
    # they leave spaced by the token rate.
    from batchpizza.controls.metering import Meter
    from batchpizza.controls.tokens import TokenPacer
    from batchpizza.records import Prompt

    meter = Meter(params={"max_tokens": 100}, pacer=TokenPacer(1000.0))  # ~0.11 s a request
    control = Control(
        rate=0, auto_max=None, learned=None, patience=10, retry_after_cap=300, timeout=1,
        on_give_up=lambda: None, meter=meter,
    )  # fmt: skip
    prompt = Prompt("r", "hello", ())
    control.gate.pause.hold(0.3)
    loop = asyncio.get_running_loop()

    async def one() -> float:
        await control.enter_for(prompt)
        return loop.time()

    started = loop.time()
    left = sorted(await asyncio.gather(*(one() for _ in range(4))))
    assert left[0] - started >= 0.29  # none before the pause ends
    booked = meter.pacer.rate and 110 / meter.pacer.rate  # what one request books, in seconds
    assert left[-1] - left[0] >= 2.5 * booked  # spaced after it, not a burst
