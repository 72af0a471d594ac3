"""The --max-cost budget (controls/budget.py) and the meter around it: the cap never passed by
what is spent plus what is reserved, at any concurrency."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
from test_ratelimit import VirtualTime

from batchpizza.controls.budget import Budget, BudgetReached
from batchpizza.controls.metering import Meter, Ticket
from batchpizza.controls.tokens import TokenPacer
from batchpizza.errors import HTTPStatusError, RequestTimeout
from batchpizza.pricing import Price, cost
from batchpizza.records import Answer, Prompt
from batchpizza.tokencount import input_bound, input_estimate

PRICE = Price(1.0, 2.0)  # dollars per million


def test_a_reservation_that_would_pass_the_cap_is_refused() -> None:
    budget = Budget(0.003, PRICE)
    first = budget.try_reserve(1000, 500)  # $0.002
    assert first is not None
    assert budget.try_reserve(1000, 500) is None  # $0.004 > $0.003
    budget.settle(first, 100, 50)  # used $0.0002
    assert budget.spent == pytest.approx(0.0002)
    assert budget.try_reserve(1000, 500) is not None


async def test_the_budget_is_reached_only_when_nothing_in_flight_could_free_room() -> None:
    budget = Budget(0.003, PRICE, spent=0.0005)
    first = await budget.reserve(1000, 500)
    waiter = asyncio.ensure_future(budget.reserve(1000, 500))
    await asyncio.sleep(0)
    assert not waiter.done()  # waits: the first may use less than its worst case
    budget.settle(first, 1000, 500)  # it did not: $0.0025 spent
    with pytest.raises(BudgetReached):
        await waiter


async def test_spent_plus_reserved_never_passes_the_cap_at_concurrency_32() -> None:
    rng = random.Random(7)
    budget = Budget(0.05, PRICE)
    spent_by_server = 0.0

    async def request() -> None:
        nonlocal spent_by_server
        while True:
            try:
                reservation = await budget.reserve(400, 300)
            except BudgetReached:
                return
            assert budget.spent + budget.reserved <= budget.cap + 1e-12
            await asyncio.sleep(rng.uniform(0, 0.002))
            used = (rng.randint(50, 400), rng.randint(1, 300))  # never above the worst case
            spent_by_server += cost(PRICE, *used)
            budget.settle(reservation, *used)

    await asyncio.gather(*(request() for _ in range(32)))
    assert spent_by_server <= 0.05
    assert spent_by_server > 0.05 - 32 * cost(PRICE, 400, 300)  # and the cap was used


def meter(**kw: object) -> Meter:
    return Meter(params={"max_tokens": 100}, budget=Budget(1.0, PRICE), **kw)  # type: ignore[arg-type]


async def test_an_http_error_frees_the_reservation_and_a_timeout_spends_it() -> None:
    m = meter()
    prompt = Prompt("r", "hello", ())
    assert m.budget is not None
    ticket = await m.admit(prompt)
    assert m.budget.reserved > 0
    m.settle(ticket, HTTPStatusError(429, "slow down"), None, None)
    assert m.budget.spent == 0 and m.budget.reserved == 0
    ticket = await m.admit(prompt)
    worst = ticket.dollars
    m.settle(ticket, RequestTimeout("no reply"), None, None)
    assert m.budget.spent == pytest.approx(worst)  # the server may have done the work


async def test_the_worst_case_is_max_tokens_else_the_running_estimate() -> None:
    prompt = Prompt("r", "hello", ())
    assert Meter(params={"max_tokens": 7}).worst_output(prompt) == 7
    assert Meter(params={}).worst_output(Prompt("r", "x", (), {"max_completion_tokens": 9})) == 9
    m = Meter(params={})
    for _ in range(30):
        m.settle(Ticket(0.0, booked=10), None, None, (5, 40))
    assert m.worst_output(prompt) == 40


async def test_a_batch_lines_own_answers_count_beside_the_params_cap() -> None:
    # --param max_tokens=20 and a line asking n=3 answers: three caps, all billed.
    line = Prompt("r", "hello", ({"role": "user", "content": "hello"},), {"n": 3})
    meter = Meter(params={"max_tokens": 20}, budget=Budget(1.0, Price(1.0, 1.0)))
    assert meter.worst_output(line) == 60
    assert meter.worst_output(Prompt("r", "hello", ())) == 20  # a prompt row: the param's cap
    ticket = meter.admit_now(line)
    assert ticket is not None and ticket.output_tokens == 60
    assert Meter(params={}).worst_output(Prompt("r", "x", (), {"max_tokens": 5, "n": 2})) == 10


async def test_a_wait_for_room_cancelled_as_room_comes_gives_the_room_back() -> None:
    # A worker cancelled (the end of the grace) in the very turn its wait for room under the cap
    # ended: the reservation made for it was kept by nobody, in flight for the rest of the run.
    from batchpizza.controls.control import Control

    stop = asyncio.Event()
    m = Meter(params={"max_tokens": 100}, budget=Budget(0.0003, PRICE))
    control = Control(
        rate=0, auto_max=None, learned=None, patience=10, retry_after_cap=300, timeout=1,
        on_give_up=lambda: None, stop_signal=stop.wait, meter=m,
    )  # fmt: skip
    assert m.budget is not None
    prompt = Prompt("r", "hello", ())
    first = await control.enter_for(prompt)  # reserves most of the cap
    waiting = asyncio.ensure_future(control.enter_for(prompt))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done()  # no room for a second
    control.finished(first, 0.0, "answered", None, usage=(5, 5))  # room: the waiter's turn next
    waiting.cancel()  # ...in the same turn of the loop
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert m.budget.in_flight == 0 and m.budget.reserved == 0


PROMPTS = [
    Prompt("ascii", "a prompt row of plain text, " * 3, ({"role": "user", "content": "x"},)),
    Prompt("utf8", "Pizza mit Käse und Öl, bitte 🍕", ()),
    Prompt("chat", "system: be brief\nuser: hi", ({"content": "be brief"}, {"content": "hi"})),
    Prompt("batch", "a batch line's", (), {"max_completion_tokens": 33}),
]


@pytest.mark.parametrize("prompt", PROMPTS, ids=lambda p: p.id)
@pytest.mark.parametrize("params", [{}, {"max_tokens": 50}])
async def test_a_request_admitted_at_once_reserves_and_books_as_one_that_waited(
    prompt: Prompt, params: dict[str, int]
) -> None:
    # admit_now counts a prompt row's sizes itself (without tokencount's call): it must come to
    # what `admit` reserves and books, for every kind of prompt.
    def twin() -> Meter:
        return Meter(
            params=params, budget=Budget(1.0, PRICE), pacer=TokenPacer(1e9), overhead=(40, 30)
        )

    at_once, waited = twin(), twin()
    fast = at_once.admit_now(prompt, "permit")
    slow = await waited.admit(prompt)
    assert fast is not None
    assert (fast.dollars, fast.input_tokens, fast.output_tokens, fast.booked, fast.batch) == (
        slow.dollars,
        slow.input_tokens,
        slow.output_tokens,
        slow.booked,
        slow.batch,
    )
    assert fast.permit == "permit"
    assert fast.input_tokens == input_bound(prompt) + 40
    assert fast.booked == input_estimate(prompt) + 30 + fast.output_tokens
    for m in (at_once, waited):
        assert m.budget is not None and m.budget.in_flight == 1
        assert m.budget.reserved == pytest.approx(fast.dollars)


@pytest.mark.parametrize(
    "usage", [(120, 30), (None, 30), (120, None), None], ids=["both", "no-in", "no-out", "none"]
)
async def test_an_answer_settles_with_its_usage_or_else_spends_its_worst_case(
    usage: tuple[int | None, int | None] | None,
) -> None:
    m = Meter(params={"max_tokens": 100}, budget=Budget(1.0, PRICE), pacer=TokenPacer(1e9))
    assert m.budget is not None and m.pacer is not None
    ticket = await m.admit(Prompt("r", "hello", ()))
    worst = ticket.dollars
    m.settle(ticket, None, None, usage)
    assert m.budget.in_flight == 0 and m.budget.reserved == 0
    assert m.pacer.in_flight == 0
    if usage == (120, 30):
        assert m.budget.spent == pytest.approx(cost(PRICE, 120, 30))
    else:  # the server's count is not whole: the worst case is kept as spent, the safe side
        assert m.budget.spent == pytest.approx(worst)


def test_a_reservation_freed_already_is_not_freed_again_when_settled() -> None:
    budget = Budget(1.0, PRICE)
    first, second = budget.try_reserve(100, 100), budget.try_reserve(100, 100)
    assert first is not None and second is not None
    budget.release(first)
    budget.settle(first, 10, 10)  # freed already: the other's reservation stays whole
    assert budget.in_flight == 1
    assert budget.reserved == pytest.approx(second.dollars)


def test_a_ticket_given_back_is_not_freed_again_by_a_late_settle() -> None:
    m = Meter(params={"max_tokens": 100}, budget=Budget(1.0, PRICE))
    assert m.budget is not None
    first, second = m.admit_now(Prompt("a", "hello", ())), m.admit_now(Prompt("b", "hi", ()))
    assert first is not None and second is not None
    m.cancel(first)
    m.settle(first, None, None, (10, 10))  # freed already: the other's reservation stays whole
    assert m.budget.in_flight == 1
    assert m.budget.reserved == pytest.approx(second.dollars)


async def test_a_request_at_once_waits_behind_a_hold_or_queued_requests_and_books_nothing() -> None:
    vt = VirtualTime()
    pacer = TokenPacer(10.0, clock=vt.clock, sleep=vt.sleep)
    m = Meter(params={"max_tokens": 100}, budget=Budget(1.0, PRICE), pacer=pacer)
    assert m.budget is not None
    first = m.admit_now(Prompt("a", "hello", ()))
    assert first is not None and pacer.in_flight == 1
    assert pacer.tat == pytest.approx(vt.now + first.booked / 10.0)
    assert m.admit_now(Prompt("b", "hello", ())) is None  # the timeline is booked ahead
    assert m.budget.in_flight == 1 and pacer.in_flight == 1  # nothing taken for it
    vt.now = pacer.tat
    pacer.hold_until = vt.now + 5.0  # what the server said was left would not take it
    assert m.admit_now(Prompt("c", "hello", ())) is None
    vt.now += 5.0
    assert m.admit_now(Prompt("c", "hello", ())) is not None


def test_a_request_that_does_not_fit_the_cap_reserves_and_books_nothing() -> None:
    pacer = TokenPacer(1e9)
    m = Meter(params={"max_tokens": 100}, budget=Budget(0.0003, PRICE), pacer=pacer)
    assert m.budget is not None
    assert m.admit_now(Prompt("a", "hello", ())) is not None
    assert m.admit_now(Prompt("b", "hello", ())) is None  # no room under the cap
    assert m.budget.in_flight == 1 and pacer.in_flight == 1


async def test_a_retry_let_through_after_a_stop_gives_back_what_it_reserved(
    tmp_path: Path,
) -> None:
    # A row in its retry's backoff when the run stops (the deadline) tries again at once: the
    # meter reserved and booked it, then the runner saw the stop and left the row unsent, with
    # its reservation and booking held for good (the budget's `in_flight` never back to 0).
    from test_runner import Scripted, rows

    from batchpizza.checkpoint import Checkpoint
    from batchpizza.controls.control import Control
    from batchpizza.controls.retrying import RetryPolicy
    from batchpizza.controls.stop import Stop
    from batchpizza.engine.runner import Runner

    stop = Stop()

    class StoppedMidRetry(Scripted):
        async def ask(self, session: Any, prompt: Prompt) -> Answer:
            stop.stop_sending("deadline")  # while this attempt is out: its retry finds it
            raise HTTPStatusError(500, "HTTP 500")

    budget, pacer = Budget(100.0, PRICE), TokenPacer(1e9)
    control = Control(
        rate=0, auto_max=None, learned=None, patience=60.0, retry_after_cap=60.0, timeout=5.0,
        on_give_up=lambda: None, stop_signal=stop.wait,
        meter=Meter(params={"max_tokens": 10}, budget=budget, pacer=pacer),
    )  # fmt: skip
    policy = RetryPolicy(
        max_retries=2, misuse_retries=0, misuse_backoff=0.0, backoff_base=0.0, backoff_cap=0.0,
        retry_after_cap=0.0,
    )  # fmt: skip
    store = Checkpoint.open(tmp_path / "out.checkpoint")
    try:
        runner = Runner(StoppedMidRetry(), store, policy, control, concurrency=1, stop=stop)
        await runner.run(rows(3))
    finally:
        store.close()
    assert runner.counters.requests == 1  # the retry was not sent
    assert (budget.in_flight, budget.reserved, budget.spent) == (0, 0.0, 0.0)
    assert pacer.in_flight == 0
