"""An actor's ClusterGate (batchpizza.distributed.gate) when the cluster stops: its own waits
and the runner's retry waits end at once, as a single process's do, in this process (no Ray).

Found measuring `--ray auto --deadline 30` against a mock refusing everything as misuse: the
run exited 34 s after its deadline, each actor's worker sleeping out the refusal's 30 s backoff
before it heard of the stop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from batchpizza.controls.gate import Stopped
from batchpizza.distributed.budget import SLOT_TOLERANCE, Budget, Report
from batchpizza.distributed.gate import ClusterGate
from batchpizza.distributed.worker import Answerer
from tests.local_controller import LocalController

# Far longer than any test may take: reached, the test fails by its guard rather than hangs.
GUARD_S = 20.0


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def forever(_delay: float) -> None:
    """A sleep that never ends by itself: a hold of minutes, as far as the test can tell."""
    await asyncio.Event().wait()


async def test_a_stop_ends_a_probes_wait_for_a_hold_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import batchpizza.distributed.budget as budget_module

    monkeypatch.setattr(budget_module, "LEASE_WAIT_S", 0.05)
    clock = FakeClock()
    budget = Budget(
        rate=10, auto_max=None, patience=600, retry_after_cap=300, timeout=60, clock=clock
    )
    refusal = Report(clock(), clock(), "refused", True, True, None, 0, False)
    budget.record([refusal] * 10)  # the breaker trips
    clock.t += 61  # half-open: the next lease is the probe's
    probe = await budget.lease(4)
    assert probe.probe
    gate = ClusterGate(LocalController(budget), share=4, clock=clock, sleep=forever)
    gate._queue.append((probe.slots[0], probe.epoch, True, clock(), probe.issued))
    # A 429 with a Retry-After of minutes: the probe waits it out, as it should ...
    budget.record([Report(clock(), clock(), "throttled", False, True, 300.0, 0, False)])
    gate._hear_news(await budget.news(0, wait=0.01))
    entering = asyncio.ensure_future(gate.enter())
    try:
        for _ in range(5):
            await asyncio.sleep(0)
        assert not entering.done()
        # ... until the deadline passes: the news of the stop ends the wait.
        budget.deadline_at = clock()
        gate._hear_news(await budget.news(gate._news, wait=0.01))
        with pytest.raises(Stopped):
            await asyncio.wait_for(entering, GUARD_S)
        assert gate.stop.reason == "deadline"
    finally:
        entering.cancel()
        await gate.close()


async def test_a_stop_ends_a_slot_wait_and_a_lease_call_at_once() -> None:
    clock = FakeClock()
    budget = Budget(rate=1, auto_max=None, patience=600, retry_after_cap=300, timeout=60)
    gate = ClusterGate(LocalController(budget), share=4, clock=clock, sleep=forever)
    gate._queue.append((clock() + 0.2, 0, False, clock(), clock()))  # a slot a moment away
    entering = asyncio.ensure_future(gate.enter())
    try:
        for _ in range(5):
            await asyncio.sleep(0)
        assert not entering.done()
        gate._halt("deadline")
        with pytest.raises(Stopped):
            await asyncio.wait_for(entering, GUARD_S)
    finally:
        entering.cancel()
        await gate.close()


async def test_the_deadline_ends_an_actors_retry_wait_and_leaves_the_row_pending(
    mock_api: Any, tmp_path: Path
) -> None:
    """A misuse refusal's 30 s backoff was slept out after the deadline: the runner's stop was
    its own, which nothing stopped."""
    budget = Budget(rate=0, auto_max=None, patience=600, retry_after_cap=300, timeout=60)

    class DeadlineAtTheFirstReport(LocalController):
        async def record(self, reports: Any) -> Any:
            if reports:  # the refusal, reported at once: its backoff has begun
                self.budget.deadline_at = time.time()
            return await super().record(reports)

    answerer = Answerer(
        DeadlineAtTheFirstReport(budget), options={"base_url": mock_api.base_url}, share=4
    )
    batch = pa.table({"id": ["a"], "prompt": ["[[misuse]] one"]})
    try:
        out = await asyncio.wait_for(answerer.answer_batch(batch), GUARD_S)
    finally:
        await answerer.close()
    assert out.column("finish_reason").to_pylist() == ["pending"]
    assert mock_api.stats.requests == 1  # refused once, then the wait ended at the stop
    assert budget.status()["stopped"] == "deadline"


async def test_a_stop_told_to_the_controller_reaches_a_waiting_actor_and_every_lease() -> None:
    budget = Budget(rate=0, auto_max=None, patience=600, retry_after_cap=300, timeout=60)
    waiting = asyncio.ensure_future(budget.news(0, wait=GUARD_S))
    await asyncio.sleep(0)
    budget.stop("signal")  # the driver's, on SIGTERM: the actors finish what is in flight
    news = await asyncio.wait_for(waiting, GUARD_S)
    assert news.stop == "signal"
    lease = await budget.lease(4)
    assert lease.empty and lease.stop == "signal"
    budget.stop("deadline")
    assert budget.status()["stopped"] == "signal"  # the first reason stays


async def test_a_stop_of_the_actors_own_runner_ends_a_wait_for_a_lease_without_spinning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The runner stops the Stop it shares with the gate by itself: a wrong key (fatal), a quota
    # spent. A worker waiting in the gate for a lease then went round its loop for good, the
    # stopped wait returning at once and nothing awaited: the actor's event loop spun at 100 %
    # CPU and its batch never came back.
    class NeverLeases(LocalController):
        async def lease(self, want: int, reports: Any) -> Any:
            await asyncio.Event().wait()

    budget = Budget(rate=1, auto_max=None, patience=600, retry_after_cap=300, timeout=60)
    gate = ClusterGate(NeverLeases(budget), share=4, clock=FakeClock(), sleep=forever)
    waits = 0
    wait_once = gate._unless_stopped

    async def counted(wait: Any) -> None:
        nonlocal waits
        waits += 1
        if waits > 100:  # the loop, not a wait: fail here rather than hang the test
            raise AssertionError("the gate spins")
        await wait_once(wait)

    monkeypatch.setattr(gate, "_unless_stopped", counted)
    entering = asyncio.ensure_future(gate.enter())
    try:
        for _ in range(5):
            await asyncio.sleep(0)
        assert not entering.done()
        gate.stop.stop_sending("fatal")  # as the runner does
        with pytest.raises(Stopped):
            await asyncio.wait_for(entering, GUARD_S)
    finally:
        entering.cancel()
        if gate._leasing is not None:
            gate._leasing.cancel()
        await gate.close()


async def test_a_wrong_key_in_one_batch_ends_it_with_its_other_rows_pending(
    mock_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Eight rows on four workers at 1 a second: the first request's 401 stops the runner
    # while the other workers wait in the gate for their slots.
    budget = Budget(rate=1, auto_max=None, patience=600, retry_after_cap=300, timeout=60)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    options = {"base_url": f"{mock_api.base_url}/v1", "provider": "openai", "model": "m"}
    answerer = Answerer(LocalController(budget), options=options, share=4)
    batch = pa.table({"id": [f"r{i}" for i in range(8)], "prompt": ["[[status:401]] hi"] * 8})
    try:
        with pytest.raises(Exception) as caught:
            await asyncio.wait_for(answerer.answer_batch(batch), GUARD_S)
    finally:
        await answerer.close()
    assert "401" in str(caught.value)
    assert mock_api.stats.requests == 1


async def test_a_request_written_later_than_its_slot_waits_for_a_fresh_one() -> None:
    # The gate let the request through on time, then the actor was descheduled before the
    # request was written: sent late, it crowded a window with another actor's punctual slot
    # (41 requests in one second at --rate 40, the machine under load).
    from aiohttp import web

    clock = FakeClock()

    async def sleep(delay: float) -> None:
        clock.t += max(0.0, delay)
        await asyncio.sleep(0)

    budget = Budget(
        rate=10, auto_max=None, patience=600, retry_after_cap=300, timeout=60, clock=clock
    )
    controller = LocalController(budget)
    handed: list[float] = []
    lease = controller.lease

    async def leasing(want: int, reports: Any) -> Any:
        got = await lease(want, reports)
        handed.extend(got.slots)
        return got

    controller.lease = leasing  # type: ignore[method-assign]
    arrivals: list[float] = []

    async def arrive(request: web.Request) -> web.Response:
        arrivals.append(clock())  # the server's clock, as the rate limiter counts
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/", arrive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    answerer = Answerer(controller, options={"base_url": url}, share=1)
    session = answerer._actor_session()  # the actor's own session
    gate = ClusterGate(controller, share=1, clock=clock, sleep=sleep)
    try:
        for late in (0.0, 0.05):
            await gate.enter()
            clock.t += late  # descheduled between the gate and the write
            async with session.post(url, json={}) as reply:
                assert reply.status == 200
        # Each request reached the server on time for a slot the controller handed out: the
        # late one at a fresh slot, not 50 ms after its own.
        assert len(arrivals) == 2
        for arrival in arrivals:
            assert any(0 <= arrival - slot <= SLOT_TOLERANCE for slot in handed), (arrivals, handed)
        assert gate.late == 1
    finally:
        await gate.close()
        await session.close()
        await runner.cleanup()
