"""batchpizza.ray: one rate budget for a cluster, failures as rows, a resumable checkpoint.

The budget's logic is tested on a fake clock; the cluster on a local Ray (2 CPUs, started once
for the module) against the mock server in its own process, as a real service would be.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from conftest import MockProcess

from batchpizza.controls.breaker import MIN_TRIP
from batchpizza.distributed.budget import CLUSTER_WINDOW, Budget, Report, SlotBook
from batchpizza.distributed.gate import ClusterGate, Ticket
from batchpizza.distributed.parts import PartStore, key_of
from batchpizza.distributed.worker import Answerer, Kept, part_schema
from batchpizza.errors import HTTPStatusError
from batchpizza.mock.replies import mock_answer
from tests.local_controller import LocalController


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    async def sleep(self, delay: float) -> None:
        self.t += max(0.0, delay)


def most_in_window(times: list[float], window: float) -> int:
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


# -- the budget, on a fake clock ----------------------------------------------------------------


def test_slots_are_spaced_and_never_crowd_a_window() -> None:
    clock = FakeClock()
    book = SlotBook(40, clock=clock)
    slots: list[float] = []
    for _ in range(200):  # four actors asking in turn, each for a few slots
        slots += book.take(3)
        clock.t += 0.07
    assert slots == sorted(slots)
    assert min(b - a for a, b in itertools.pairwise(slots)) >= CLUSTER_WINDOW / 40 - 1e-9
    assert most_in_window(slots, CLUSTER_WINDOW) <= 40


def test_a_lease_reaches_only_a_little_ahead() -> None:
    clock = FakeClock()
    book = SlotBook(10, clock=clock)
    slots = book.take(16)
    assert len(slots) < 16 and slots[-1] - clock() <= 0.25


def test_a_cut_of_the_rate_lets_no_burst_through() -> None:
    clock = FakeClock()
    book = SlotBook(20, clock=clock)
    slots = book.take(16, horizon=10)
    book.set_rate(2)
    clock.t += 0.2
    later = book.take(16, horizon=10)
    both = slots + later
    assert most_in_window(both, CLUSTER_WINDOW) <= 20
    assert most_in_window([t for t in both if t > slots[-1] + 0.001], CLUSTER_WINDOW) <= 2


def test_retry_after_holds_every_lease() -> None:
    clock = FakeClock()
    book = SlotBook(10, clock=clock)
    book.hold(5)
    assert book.take(1)[0] >= clock() + 5


def refused(epoch: int = 0) -> Report:
    return Report(0.0, 0.0, "refused", True, True, None, epoch, False)


async def test_refusals_from_any_actor_stop_the_cluster() -> None:
    clock = FakeClock()
    budget = Budget(
        rate=10,
        auto_max=None,
        patience=0,
        retry_after_cap=300,
        timeout=60,
        clock=clock,
        sleep=clock.sleep,
    )
    first = await budget.lease(4)
    assert first.slots and first.stop is None
    verdict = budget.record([refused()] * 4)  # one actor's refusals ...
    assert verdict.stop is None
    verdict = budget.record([refused()] * 4)  # ... and another's: the breaker's verdict
    assert verdict.stop == "refusals"
    assert (await budget.lease(4)).slots == ()


async def test_the_deadline_stops_every_lease() -> None:
    clock = FakeClock()
    budget = Budget(
        rate=10,
        auto_max=None,
        patience=600,
        retry_after_cap=300,
        timeout=60,
        deadline_at=clock() + 30,
        clock=clock,
        sleep=clock.sleep,
    )
    assert (await budget.lease(1)).slots
    clock.t += 31
    lease = await budget.lease(1)
    assert lease.stop == "deadline" and not lease.slots


async def test_news_of_a_retry_after_reaches_a_waiting_actor_at_once() -> None:
    clock = FakeClock()
    budget = Budget(
        rate=10, auto_max=None, patience=600, retry_after_cap=300, timeout=60, clock=clock
    )
    await budget.lease(4)
    waiting = asyncio.ensure_future(budget.news(0, wait=30))  # another actor, listening
    await asyncio.sleep(0)
    assert not waiting.done()
    throttled = Report.of(
        clock(), HTTPStatusError(429, "slow down", 2.0), issued=clock(), epoch=0, probe=False
    )
    budget.record([throttled])
    news = await asyncio.wait_for(waiting, 1)  # woken by the report, not by its 30 s wait
    assert news.version == 1 and news.hold_until == clock() + 2.0
    # Nothing new since: the next call waits (here briefly) and tells the same.
    assert (await budget.news(news.version, wait=0.01)).version == 1


async def test_news_of_a_cut_voids_the_slots_leased_before_it() -> None:
    clock = FakeClock()
    budget = Budget(
        rate=0, auto_max=20, patience=600, retry_after_cap=300, timeout=60, learned=10, clock=clock
    )
    lease = await budget.lease(4)
    clock.t += 0.05
    pushback = Report(clock(), lease.issued, "throttled", False, True, None, 0, False)
    budget.record([pushback])
    news = await budget.news(0, wait=0.01)
    assert budget.rate < 10
    assert news.version == 1 and news.cut_at == clock() > lease.issued


@pytest.mark.slow
async def test_a_retry_after_seen_by_one_actor_holds_the_slots_another_already_leased() -> None:
    budget = Budget(rate=40, auto_max=None, patience=600, retry_after_cap=300, timeout=60)
    controller = LocalController(budget)
    first, second = (ClusterGate(controller, share=4) for _ in range(2))
    sent: list[float] = []

    async def send_from_second(n: int) -> None:
        for _ in range(n):
            await second.enter()
            sent.append(time.time())

    try:
        token = await first.enter()
        started = time.monotonic()
        await send_from_second(2)  # the second actor is under way, holding a lease of slots
        assert second._queue, "the second actor should hold leased slots"
        first.finished(token, started, "http_429", HTTPStatusError(429, "slow", 0.5))
        seen = time.time()
        await send_from_second(3)
    finally:
        await first.close()
        await second.close()
    after = [t for t in sent if t > seen]
    # Before the news, a slot leased by the second actor went out within the 429's hold.
    assert after and min(after) >= seen + 0.5 - 0.03
    assert second.voided >= 1 and second.forfeited == 0  # voided by the news, not by lateness


async def answer_here(
    batch: pa.Table, url: str, checkpoint: Path, *, done: pa.Table | None = None
) -> pa.Table:
    """One actor's work on one batch, in this process: the Answerer over an in-process budget."""
    budget = Budget(rate=0, auto_max=None, patience=600, retry_after_cap=300, timeout=60)
    answerer = Answerer(
        LocalController(budget),
        options={"base_url": url},
        share=4,
        checkpoint=str(checkpoint),
        done=done,
    )
    try:
        return await answerer.answer_batch(batch)
    finally:
        await answerer.close()


async def test_a_rerun_asks_again_for_a_row_whose_prompt_changed(
    mock_api: Any, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "ck"
    first = pa.table({"id": ["a", "b", "c"], "prompt": ["one", "two", "three"]})
    out = await answer_here(first, mock_api.base_url, checkpoint)
    assert out.column("answer").to_pylist() == [mock_answer(p) for p in ("one", "two", "three")]
    assert mock_api.stats.requests == 3

    # The next run: the same ids, one prompt edited; its done table is what the driver reads.
    done = PartStore(str(checkpoint)).read_all(part_schema())
    second = pa.table({"id": ["a", "b", "c"], "prompt": ["one", "TWO?", "three"]})
    out = await answer_here(second, mock_api.base_url, checkpoint, done=done)
    assert out.column("answer").to_pylist() == [mock_answer(p) for p in ("one", "TWO?", "three")]
    assert mock_api.stats.requests == 4  # only the changed row was sent

    # The batch's part now holds the answer to the new prompt, as the SQLite checkpoint would;
    # going back to the old prompt asks for it again, and only for it.
    done = PartStore(str(checkpoint)).read_all(part_schema())
    assert sorted(done.column("id").to_pylist()) == ["a", "b", "c"]
    out = await answer_here(first, mock_api.base_url, checkpoint, done=done)
    assert out.column("answer").to_pylist() == [mock_answer(p) for p in ("one", "two", "three")]
    assert mock_api.stats.requests == 5


def test_kept_answers_of_ids_the_earlier_run_never_saw_are_none() -> None:
    row = {"answer": "a", "finish_reason": "stop", "misuse": False, "error": None}
    row |= {"attempts": 1, "latency_ms": 1.0, "model": "m", "digest": b"d"}
    kept = Kept(pa.Table.from_pylist([{"id": "x", **row}], schema=part_schema()))
    assert kept.of(["y", "z"]).num_rows == 0  # found by CI: an empty take was untyped
    assert kept.of(["x", "y"]).column("id").to_pylist() == ["x"]


def test_parts_from_before_digests_are_matched_by_id(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    store = PartStore(str(tmp_path / "ck"))
    legacy = part_schema().remove(part_schema().get_field_index("digest"))
    row = {"id": "x", "answer": "a", "finish_reason": "stop", "misuse": False, "error": None}
    row |= {"attempts": 1, "latency_ms": 1.0, "model": "m"}
    pq.write_table(
        pa.Table.from_pylist([row], schema=legacy), tmp_path / "ck" / "parts" / "old.parquet"
    )
    done = store.read_all(part_schema())
    assert done.to_pylist()[0]["id"] == "x" and done.to_pylist()[0]["digest"] is None


def _answerer(url: str, checkpoint: Path, done: pa.Table | None = None) -> Answerer:
    budget = Budget(rate=0, auto_max=None, patience=600, retry_after_cap=300, timeout=60)
    return Answerer(
        LocalController(budget),
        options={"base_url": url},
        share=4,
        checkpoint=str(checkpoint),
        done=done,
    )


@pytest.mark.parametrize("kind", ["prompt", "messages"])
async def test_a_crash_before_the_seal_resends_nothing_answered(
    mock_api: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Small parts carry the Job's digest, the sealed part the Answerer's: they must agree."""
    checkpoint = tmp_path / "ck"
    if kind == "prompt":
        batch = pa.table({"id": ["a", "b", "7"], "prompt": ["one", " two\n", "thr\u00e9e"]})
    else:
        msgs = [
            [{"role": "system", "content": "be brief"}, {"role": "user", "content": str(i)}]
            for i in range(3)
        ]
        batch = pa.table({"id": ["a", "b", "c"], "messages": msgs})

    def boom(self: PartStore, key: str, rows: pa.Table) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(PartStore, "seal", boom)
    answerer = _answerer(mock_api.base_url, checkpoint)
    with pytest.raises(OSError):
        await answerer.answer_batch(batch)
    await answerer.close()
    sent = mock_api.stats.requests
    assert sent == 3
    monkeypatch.undo()
    answerer = _answerer(mock_api.base_url, checkpoint)
    try:
        await answerer.answer_batch(batch)
    finally:
        await answerer.close()
    assert mock_api.stats.requests == sent  # every row was answered and durable before


async def test_a_probe_slot_waits_out_a_hold_instead_of_being_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A probe leased while half-open, then news of a hold (a late 429 of the old epoch): were
    it dropped, it would never report, and the controller would count it out for timeout + 30 s
    with no slot for anyone (found in review). It stays, and waits out the hold."""
    import batchpizza.distributed.budget as budget_module

    monkeypatch.setattr(budget_module, "LEASE_WAIT_S", 0.05)  # a real wait, on a fake clock
    clock = FakeClock()
    budget = Budget(
        rate=10, auto_max=None, patience=600, retry_after_cap=300, timeout=60, clock=clock
    )
    refusal = Report(clock(), clock(), "refused", True, True, None, 0, False)
    budget.record([refusal] * 10)  # the breaker trips
    clock.t += 61  # half-open
    probe = await budget.lease(4)
    assert probe.probe and len(probe.slots) == 1
    gate = ClusterGate(LocalController(budget), share=4, clock=clock, sleep=clock.sleep)
    gate._queue.append((probe.slots[0], probe.epoch, True, clock(), probe.issued))
    # A straggler of the old epoch reports a Retry-After (a 429 answered late).
    late = Report(clock(), clock(), "throttled", False, True, 5.0, 0, False)
    budget.record([late])
    gate._hear_news(await budget.news(0, wait=0.01))
    assert gate.voided == 0 and len(gate._queue) == 1  # the probe stays
    token = await gate.enter()  # ... and goes when the hold is over
    assert token == Ticket(probe.slots[0], probe.epoch, True, probe.issued)
    assert clock() >= budget.book.hold_until
    await gate.close()


def test_shutdown_stops_the_actor_loop_and_closes_its_session(
    mock_api: Any, tmp_path: Path
) -> None:
    """The actor's loop thread and session live from batch to batch; shutdown (Ray Data calls
    __del__ on a graceful actor shutdown) ends both (found in review: nothing stopped them)."""
    answerer = _answerer(mock_api.base_url, tmp_path / "ck")
    out = answerer(pa.table({"id": ["a"], "prompt": ["one"]}))
    again = answerer(pa.table({"id": ["b"], "prompt": ["two"]}))
    assert out.column("finish_reason").to_pylist() == again.column("finish_reason").to_pylist()
    session = answerer._session
    assert session is not None
    answerer.shutdown()
    assert session.closed
    alive = [t.name for t in threading.enumerate() if t.name == "batchpizza-actor"]
    assert not alive, f"still running after shutdown(): {alive}"


async def test_an_id_only_legacy_answer_is_not_reused_once_the_prompt_is_known_to_change(
    mock_api: Any, tmp_path: Path
) -> None:
    """A part from before digests answers id x for prompt P. A run after the upgrade reuses it
    for P (matched by id) and seals it as (x, digest(P)); the legacy part stays (another batch
    key: batches change as the input grows). When the prompt then changes, the id-only
    fallback handed back the answer to P (found in review)."""
    import pyarrow.parquet as pq

    from batchpizza.mock.replies import mock_answer

    checkpoint = tmp_path / "ck"
    store = PartStore(str(checkpoint))
    legacy = part_schema().remove(part_schema().get_field_index("digest"))
    row = {"id": "x", "answer": mock_answer("P"), "finish_reason": "stop", "misuse": False}
    row |= {"error": None, "attempts": 1, "latency_ms": 1.0, "model": "m"}
    pq.write_table(pa.Table.from_pylist([row], schema=legacy), checkpoint / "parts" / "old.parquet")

    async def run(batch: pa.Table) -> pa.Table:
        answerer = _answerer(mock_api.base_url, checkpoint, store.read_all(part_schema()))
        try:
            return await answerer.answer_batch(batch)
        finally:
            await answerer.close()

    await run(pa.table({"id": ["x", "y"], "prompt": ["P", "Q"]}))  # x reused, y sent
    assert mock_api.stats.requests == 1
    out = await run(pa.table({"id": ["x", "z"], "prompt": ["P2", "R"]}))  # x's prompt changed
    assert out.column("answer").to_pylist()[0] == mock_answer("P2"), "the answer to P came back"


def test_shutdown_on_the_actor_loop_thread_itself_neither_hangs_nor_raises(
    mock_api: Any, tmp_path: Path
) -> None:
    """__del__ may run wherever the last reference goes, the actor's own loop thread too."""
    answerer = _answerer(mock_api.base_url, tmp_path / "ck")
    answerer(pa.table({"id": ["a"], "prompt": ["one"]}))
    loop, thread = answerer._loop, answerer._thread
    assert loop is not None and thread is not None
    started = time.monotonic()
    loop.call_soon_threadsafe(answerer.shutdown)
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - started < 2
    loop.close()


@pytest.mark.slow
@pytest.mark.parametrize("stop", [False, True])
def test_no_task_is_left_on_the_actor_loop_after_a_batch(
    mock_api: Any, tmp_path: Path, stop: bool
) -> None:
    """The actor's loop lives as long as the actor: a task a batch leaves behind stays there."""
    from batchpizza.mock.faults import MockConfig

    if stop:
        mock_api.config = MockConfig(seed=1, latency_ms=300)
    budget = Budget(
        rate=20 if stop else 0,
        auto_max=None,
        patience=600,
        retry_after_cap=300,
        timeout=60,
        deadline_at=time.time() + 0.5 if stop else None,
    )
    answerer = Answerer(
        LocalController(budget),
        options={"base_url": mock_api.base_url},
        share=4,
        checkpoint=str(tmp_path / "ck"),
    )
    batch = pa.table({"id": [f"r{i}" for i in range(40)], "prompt": [f"q{i}" for i in range(40)]})
    answerer(batch)
    loop = answerer._loop
    assert loop is not None

    async def others() -> list[str]:
        me = asyncio.current_task()
        return [repr(t.get_coro()) for t in asyncio.all_tasks() if t is not me]

    left = asyncio.run_coroutine_threadsafe(others(), loop).result()
    time.sleep(0.5)
    later = asyncio.run_coroutine_threadsafe(others(), loop).result()
    answerer.shutdown()
    assert not left, f"left right after the batch: {left}; 0.5 s later: {later}"


def test_an_actor_keeps_its_loop_of_the_kind_a_run_uses(
    mock_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("uvloop")
    kinds = []
    for wanted in ("", "asyncio"):
        monkeypatch.setenv("BATCHPIZZA_LOOP", wanted)
        budget = Budget(rate=0, auto_max=None, patience=600, retry_after_cap=300, timeout=60)
        answerer = Answerer(
            LocalController(budget), options={"base_url": mock_api.base_url}, share=2
        )
        answerer(pa.table({"prompt": ["q"]}))
        kinds.append(type(answerer._loop).__module__.split(".")[0])
        answerer.shutdown()
    assert kinds == ["uvloop", "asyncio"]


def test_parts_are_idempotent_and_each_id_is_read_once(tmp_path: Path) -> None:
    store = PartStore(str(tmp_path / "ck"))
    schema = part_schema()
    row = {"answer": "a", "finish_reason": "stop", "misuse": False, "error": None}
    row |= {"attempts": 1, "latency_ms": 1.0, "model": "m"}
    rows = pa.Table.from_pylist([{"id": "x", **row}, {"id": "y", **row}], schema=schema)
    key = key_of(["x", "y", "z"])
    store.write_part(key, rows)
    store.write_part(key, rows)  # the same part again: the same file
    assert store.read_batch(key, schema).num_rows == 2
    store.seal(key, rows)  # the batch done: one part, the small ones gone
    assert sorted(store.read_all(schema).column("id").to_pylist()) == ["x", "y"]
    assert not (tmp_path / "ck" / "parts" / key).exists()


# -- on a local Ray cluster ---------------------------------------------------------------------

try:
    import ray
except ImportError:  # without the ray extra: the tests below are deselected (conftest.py)
    ray = None
# Ray's own deprecation notices (its DataContext warns about its own defaults) are not ours.
pytestmark = pytest.mark.filterwarnings("ignore:::ray")


@pytest.mark.ray
def test_answer_refuses_mock_rather_than_sending_to_the_real_service() -> None:
    # mock=True is an option of batchpizza.answer; here nothing would start the mock, and the
    # rows went to the real service (www.pizzagpt.it), each an error offline.
    from batchpizza.errors import UsageError
    from batchpizza.ray import answer

    with pytest.raises(UsageError, match=r"mock=True: batchpizza\.ray\.answer starts no mock"):
        # Refused before the dataset is read: no cluster is started.
        answer(None, mock=True)  # type: ignore[arg-type]


@pytest.mark.ray
async def test_the_controller_keeps_the_learned_rate_for_the_next_run(tmp_path: Path) -> None:
    from batchpizza.ray import ControllerActor

    checkpoint = str(tmp_path / "ck")
    options: dict[str, Any] = {"rate": 0, "auto_max": 20, "patience": 600}
    options |= {"retry_after_cap": 300, "timeout": 60, "learned": 10.0}
    controller = ControllerActor(checkpoint=checkpoint, **options)
    lease = await controller.lease(1, [])
    throttled = Report(time.time(), lease.issued, "throttled", False, True, None, 0, False)
    await controller.record([throttled])
    cut = controller.budget.rate
    assert cut < 10
    assert controller._keeping is not None
    await controller._keeping
    assert PartStore(checkpoint).meta() == {"learned_rate": cut}


@pytest.mark.slow
@pytest.mark.ray
async def test_the_last_change_of_the_learned_rate_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change made while the previous one is being written (an object store's PUT takes
    100+ ms) may be the run's last: it is saved all the same (found in review)."""
    from batchpizza.ray import ControllerActor

    checkpoint = str(tmp_path / "ck")
    controller = ControllerActor(
        checkpoint=checkpoint,
        rate=0,
        auto_max=20,
        patience=600,
        retry_after_cap=300,
        timeout=60,
        learned=10.0,
    )
    assert controller._store is not None
    slow_save = controller._store.save_meta

    def slow(**values: Any) -> None:
        time.sleep(0.2)
        slow_save(**values)

    monkeypatch.setattr(controller._store, "save_meta", slow)
    lease = await controller.lease(1, [])
    pushback = Report(time.time(), lease.issued, "throttled", False, True, None, 0, False)
    await controller.record([pushback])  # a cut: saving starts
    await asyncio.sleep(0.01)  # the save is under way (in its thread)
    first = controller.budget.rate
    adaptive = controller.budget.adaptive
    assert adaptive is not None
    adaptive._set(time.time(), first / 2, "test")  # another change meanwhile
    await controller.record([])  # the run's last report: the save in progress makes it skip
    final = controller.budget.rate
    assert final != first
    await asyncio.sleep(0.5)  # every save settled; no more calls come (the run is over)
    assert PartStore(checkpoint).meta() == {"learned_rate": final}


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    # A throwaway local cluster, as the README advises: no token, so that the drivers these
    # tests start in other processes can join it (Ray 2.60 refuses a driver a token cluster
    # without RAY_AUTH_MODE=token, and such a test would pass without having run anything).
    mode = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = mode


@pytest.fixture
def serve(mock_process: Callable[..., MockProcess]) -> Callable[..., MockProcess]:
    """Start the mock server in its own process, with these options (and 10 ms of latency)."""

    def start(*args: str) -> MockProcess:
        return mock_process("--latency", "10", *args)

    return start


def prompts(n: int, blocks: int = 8) -> Any:
    table = pa.table(
        {"id": [f"r{i}" for i in range(n)], "prompt": [f"question {i}" for i in range(n)]}
    )
    step = -(-n // blocks)
    return ray.data.from_arrow([table.slice(i, step) for i in range(0, n, step)])


def collect(ds: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = pa.concat_tables(ray.get(ds.to_arrow_refs())).to_pylist()
    return rows


@pytest.mark.ray
@pytest.mark.slow
def test_the_cluster_keeps_one_rate_for_all_actors(
    cluster: str, serve: Callable[..., MockProcess]
) -> None:
    mock = serve()
    n = 2000  # about 50 s at 40/s: long enough that a drift of the rate would show
    import batchpizza.ray

    out = batchpizza.ray.answer(
        prompts(n), base_url=mock.url, rate=40, concurrency=8, actors=4, batch_size=50
    )
    rows = collect(out)
    assert sorted(r["id"] for r in rows) == sorted(f"r{i}" for i in range(n))
    assert all(r["answer"] == mock_answer(r["prompt"]) for r in rows)
    stats = mock.stats()
    assert stats["requests"] == n
    assert stats["max_in_window_1s"] <= 40
    assert stats["mean_rate"] >= 36


@pytest.mark.ray
@pytest.mark.slow
def test_auto_rate_finds_a_limited_service_and_the_next_run_starts_from_it(
    cluster: str, serve: Callable[..., MockProcess], tmp_path: Path
) -> None:
    mock = serve("--rate-limit", "10")
    import batchpizza.ray

    checkpoint = str(tmp_path / "checkpoint")
    options: dict[str, Any] = {"base_url": mock.url, "rate": "auto", "concurrency": 8}
    options |= {"actors": 4, "batch_size": 10, "checkpoint": checkpoint}
    out = batchpizza.ray.answer(prompts(200), **options)
    rows = collect(out)
    assert all(r["finish_reason"] == "stop" for r in rows)
    stats, status = mock.stats(), dict[str, Any](batchpizza.ray.status(out))
    # Measured: 2 or 3 429s in 200 rows, as on one process (3); before the controller told every
    # actor of a cut or a Retry-After at once, 7 to 14 per 100 rows. The rate over the whole run
    # includes the slow start from 1/s (one process: 8.1/s; the cluster 7.9/s).
    assert stats["by_status"].get("429", 0) <= 6
    assert stats["mean_rate"] >= 7.0
    assert 8.0 <= status["rate"] <= 10.5
    assert PartStore(checkpoint).meta() == {"learned_rate": status["rate"]}

    # The next run (new rows, same checkpoint) starts at the learned rate: no slow start.
    more = ray.data.from_arrow(
        pa.table({"id": [f"s{i}" for i in range(60)], "prompt": [f"more {i}" for i in range(60)]})
    )
    again = batchpizza.ray.answer(more, **options)
    assert all(r["finish_reason"] == "stop" for r in collect(again))
    rates: Any = batchpizza.ray.status(again)["rates"]
    assert not [r for r in rates if r[2] == "slow-start"], rates


@pytest.mark.ray
@pytest.mark.slow
def test_refusals_stop_the_whole_cluster_and_leave_rows_pending(
    cluster: str, serve: Callable[..., MockProcess]
) -> None:
    mock = serve("--misuse-rate", "1")
    import batchpizza.ray

    out = batchpizza.ray.answer(
        prompts(200),
        base_url=mock.url,
        rate=40,
        concurrency=8,
        actors=4,
        batch_size=25,
        patience=0,
        misuse_retries=0,
    )
    rows = collect(out)
    reasons = [r["finish_reason"] for r in rows]
    assert set(reasons) <= {"misuse", "pending"}
    sent = mock.stats()["requests"]
    # The refusals that trip the breaker; what actors held in flight or in a lease may still go.
    assert MIN_TRIP <= sent <= 40  # the breaker's verdict needs that many refusals, no more
    assert reasons.count("pending") >= 200 - sent


@pytest.mark.ray
@pytest.mark.slow
def test_restart_forgets_the_checkpoint(
    cluster: str, serve: Callable[..., MockProcess], tmp_path: Path
) -> None:
    mock = serve()
    import batchpizza.ray

    options: dict[str, Any] = {"base_url": mock.url, "checkpoint": str(tmp_path / "ck"), "rate": 0}
    collect(batchpizza.ray.answer(prompts(16, blocks=4), **options))
    collect(batchpizza.ray.answer(prompts(16, blocks=4), **options))  # all in the checkpoint
    assert mock.stats()["requests"] == 16
    collect(batchpizza.ray.answer(prompts(16, blocks=4), restart=True, **options))
    assert mock.stats()["requests"] == 32


def ray_workers(gcs_address: str) -> dict[int, str]:
    """This cluster's worker processes (the children of its raylet) by process title, e.g.
    "ray::MapWorker(MapBatches(_RayAnswerer))". Read from /proc: Linux only, as CI is."""

    def cmdline(pid: str) -> str:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return ""

    def parent(pid: str) -> int:
        try:
            return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return -1

    pids = [p.name for p in Path("/proc").iterdir() if p.name.isdigit()]
    raylets = {
        int(p) for p in pids if "raylet" in cmdline(p).split(" ")[0] and gcs_address in cmdline(p)
    }
    return {
        int(p): title
        for p in pids
        if (title := cmdline(p)).startswith("ray::") and parent(p) in raylets
    }


@pytest.mark.ray
@pytest.mark.slow
def test_killing_one_actor_mid_run_loses_nothing_and_resends_at_most_what_it_had_in_flight(
    cluster: str, serve: Callable[..., MockProcess], tmp_path: Path
) -> None:
    mock = serve()
    import batchpizza.ray

    n, killed = 400, []

    def kill_one_actor_once_under_way() -> None:
        deadline = time.monotonic() + 60
        while mock.stats()["requests"] < 100:
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)
        workers = [p for p, title in ray_workers(cluster).items() if "MapWorker" in title]
        if workers:
            os.kill(workers[0], signal.SIGKILL)
            killed.append(mock.stats()["requests"])

    killer = threading.Thread(target=kill_one_actor_once_under_way)
    killer.start()
    out = batchpizza.ray.answer(
        prompts(n),
        base_url=mock.url,
        checkpoint=str(tmp_path / "checkpoint"),
        rate=40,
        concurrency=8,
        actors=4,
        batch_size=25,
    )
    try:
        rows = collect(out)
    finally:
        killer.join()
    assert killed, "no actor was found to kill"
    assert killed[0] < n - 50, "killed too near the end to test anything"
    assert sorted(r["id"] for r in rows) == sorted(f"r{i}" for i in range(n))
    assert all(r["answer"] == mock_answer(r["prompt"]) for r in rows)
    answers = mock.stats()["answers"]
    assert len(answers) == n
    # Ray runs the dead actor's batch again on a new actor, which takes what the first one had
    # written to the checkpoint: re-sent at most its share of the concurrency (8 / 4 actors).
    assert sum(count - 1 for count in answers.values()) <= 2


DRIVER = textwrap.dedent(
    """
    import sys, ray, pyarrow as pa, batchpizza.ray
    ray.init(address=sys.argv[1], log_to_driver=False)
    n = int(sys.argv[4])
    table = pa.table({"id": [f"r{i}" for i in range(n)],
                      "prompt": [f"question {i}" for i in range(n)]})
    ds = ray.data.from_arrow([table.slice(i, n // 8) for i in range(0, n, n // 8)])
    out = batchpizza.ray.answer(ds, base_url=sys.argv[2], checkpoint=sys.argv[3], rate=40,
                                concurrency=8, actors=4, batch_size=25)
    ray.get(out.to_arrow_refs())
    """
)


@pytest.mark.ray
@pytest.mark.slow
def test_a_rerun_after_killing_the_driver_resends_at_most_the_concurrency(
    cluster: str, serve: Callable[..., MockProcess], tmp_path: Path
) -> None:
    mock = serve()
    import batchpizza.ray

    n, checkpoint = 240, str(tmp_path / "checkpoint")
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, cluster, mock.url, checkpoint, str(n)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while mock.stats()["requests"] < 100 and driver.poll() is None:
            assert time.monotonic() < deadline, "the driver never got going"
            time.sleep(0.1)
        assert driver.poll() is None, f"the driver ended by itself (exit {driver.returncode})"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    sent_before = mock.stats()["requests"]
    assert 100 <= sent_before < n, "killed too late to test a resume"
    time.sleep(1.0)  # the killed job's actors are torn down by Ray, not by us

    out = batchpizza.ray.answer(
        prompts(n), base_url=mock.url, checkpoint=checkpoint, rate=40, concurrency=8, actors=4
    )
    rows = collect(out)
    assert sorted(r["id"] for r in rows) == sorted(f"r{i}" for i in range(n))
    assert all(r["answer"] == mock_answer(r["prompt"]) for r in rows)
    answers = mock.stats()["answers"]
    assert len(answers) == n
    assert sum(count - 1 for count in answers.values()) <= 8
