"""The runner against a scripted provider (no HTTP): results committed before a row's slot is
freed, a stop leaving rows to the next run with their attempts kept, a fatal reply stopping the
run, a failing commit failing every worker instead of hanging."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from batchpizza.checkpoint import Checkpoint
from batchpizza.controls.gate import Gatekeeper
from batchpizza.controls.retrying import RetryPolicy
from batchpizza.controls.stop import Stop
from batchpizza.engine.runner import Runner
from batchpizza.errors import HTTPStatusError, OutputError
from batchpizza.records import Answer, Prompt

POLICY = RetryPolicy(
    max_retries=1,
    misuse_retries=0,
    misuse_backoff=0.0,
    backoff_base=0.0,
    backoff_cap=0.0,
    retry_after_cap=0.0,
)


class Scripted:
    """A provider whose answer to a prompt is decided by the test."""

    name = "scripted"
    model: str | None = "scripted-1"
    extra_columns: tuple[str, ...] = ()
    fatal_statuses = frozenset({401})
    detects_refusals = False

    def __init__(self, fail: dict[str, int] | None = None, delay: float = 0.0) -> None:
        self.fail = fail or {}
        self.delay = delay
        self.sent: list[str] = []

    async def ask(self, session: aiohttp.ClientSession, prompt: Prompt) -> Answer:
        self.sent.append(prompt.id)
        await asyncio.sleep(self.delay)
        status = self.fail.get(prompt.text)
        if status is not None:
            raise HTTPStatusError(status, f"HTTP {status}")
        return Answer(f"answer to {prompt.text}", "stop", "scripted-1")

    def preview(self, prompt: Prompt) -> tuple[str, dict[str, str], bytes]:
        return "scripted://", {}, prompt.text.encode()


def rows(n: int, prefix: str = "q") -> Iterator[tuple[int, Prompt]]:
    for i in range(n):
        text = f"{prefix}{i}"
        yield i, Prompt(f"id{i}", text, ({"role": "user", "content": text},))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Checkpoint]:
    checkpoint = Checkpoint.open(tmp_path / "out.checkpoint")
    yield checkpoint
    checkpoint.close()


def answered(store: Checkpoint) -> int:
    return int(store.status()["answers_kept"])  # type: ignore[call-overload]


async def test_every_row_is_sent_once_and_committed(store: Checkpoint) -> None:
    provider = Scripted()
    runner = Runner(provider, store, POLICY, Gatekeeper(), concurrency=4, stop=Stop())
    await runner.run(rows(50))
    assert sorted(provider.sent) == sorted(f"id{i}" for i in range(50))
    assert answered(store) == 50
    assert runner.counters.answered == 50 and runner.counters.requests == 50


async def test_a_stop_leaves_unfinished_rows_to_the_next_run_and_keeps_their_attempts(
    store: Checkpoint,
) -> None:
    stop = Stop()
    provider = Scripted(delay=0.01)
    runner = Runner(provider, store, POLICY, Gatekeeper(), concurrency=2, stop=stop)
    asyncio.get_running_loop().call_later(0.05, stop.stop_sending, "deadline")
    await runner.run(rows(1000))
    done = answered(store)
    assert 0 < done < 1000
    # Every attempt sent is recorded, whether its row finished or not.
    assert len(list(store.attempts())) == runner.counters.requests
    assert runner.counters.requests - done <= 2  # at most the rows in flight went unfinished


async def test_a_fatal_reply_stops_the_run_at_once(store: Checkpoint) -> None:
    provider = Scripted(fail={"q3": 401}, delay=0.001)
    runner = Runner(provider, store, POLICY, Gatekeeper(), concurrency=1, stop=Stop())
    await runner.run(rows(100))
    assert runner.fatal is not None and runner.fatal.status == 401
    assert len(provider.sent) == 4  # q0..q2 answered, q3 refused the key: nothing more sent


async def test_a_failing_commit_fails_every_waiting_worker_instead_of_hanging(
    store: Checkpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "write", broken)
    runner = Runner(Scripted(), store, POLICY, Gatekeeper(), concurrency=8, stop=Stop())
    with pytest.raises(OutputError, match="disk is full"):
        await asyncio.wait_for(runner.run(rows(100)), timeout=10)


async def test_a_bug_in_a_provider_goes_up_as_it_is(store: Checkpoint) -> None:
    # A provider's unexpected exception (a request no codec could encode) was hidden behind an
    # UnboundLocalError of the runner's own bookkeeping.
    class Broken(Scripted):
        async def ask(self, session: aiohttp.ClientSession, prompt: Prompt) -> Answer:
            raise UnicodeEncodeError("utf-8", "\ud83d", 0, 1, "surrogates not allowed")

    runner = Runner(Broken(), store, POLICY, Gatekeeper(), concurrency=1, stop=Stop())
    with pytest.raises(UnicodeEncodeError):
        await asyncio.wait_for(runner.run(rows(1)), timeout=10)


class Held(Scripted):
    """Answers at once, except the prompts in `held`, which wait until `release` is set."""

    def __init__(self, held: set[str]) -> None:
        super().__init__()
        self.held = held
        self.release = asyncio.Event()

    async def ask(self, session: aiohttp.ClientSession, prompt: Prompt) -> Answer:
        if prompt.text in self.held:
            await self.release.wait()
        return await super().ask(session, prompt)


def recording(store: Checkpoint, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The store's commits and syncs, in the order they happen."""
    calls: list[str] = []
    write, sync = store.write, store.sync

    def recorded_write(*args: Any, **kwargs: Any) -> None:
        write(*args, **kwargs)
        calls.append("write")

    def recorded_sync() -> None:
        sync()
        calls.append("sync")

    monkeypatch.setattr(store, "write", recorded_write)
    monkeypatch.setattr(store, "sync", recorded_sync)
    return calls


@pytest.mark.slow
async def test_commits_are_synced_on_a_timer_while_only_slow_rows_are_left(
    store: Checkpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = recording(store, monkeypatch)
    provider = Held({"q3"})
    done: list[int] = []
    runner = Runner(
        provider,
        store,
        POLICY,
        Gatekeeper(),
        concurrency=2,
        stop=Stop(),
        on_result=lambda pos, _result: done.append(pos),
    )
    store.sync()  # the last sync just now: the commits below are not due one
    calls.clear()
    task = asyncio.create_task(runner.run(rows(4)))
    try:
        for _ in range(1000):  # the three fast rows committed; q3 still on its slot
            if len(done) == 3:
                break
            await asyncio.sleep(0.01)
        assert sorted(done) == [0, 1, 2]
        assert "sync" not in calls  # not due at those commits: the timer must do it
        for _ in range(1000):  # SYNC_INTERVAL (1 s) after the last sync; 10 s is generous
            if "sync" in calls:
                break
            await asyncio.sleep(0.01)
        assert "sync" in calls, "no sync while the only row left was slow"
        assert not task.done() and len(done) == 3  # synced while no commit came
    finally:
        provider.release.set()
        await task
    assert answered(store) == 4


async def test_the_last_commits_are_synced_before_the_runner_returns(
    store: Checkpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = recording(store, monkeypatch)
    store.sync()
    calls.clear()
    runner = Runner(Scripted(), store, POLICY, Gatekeeper(), concurrency=4, stop=Stop())
    await runner.run(rows(20))
    # The output is written next: what it is made of is durable first.
    assert calls[-1] == "sync"
    assert calls.count("sync") <= 2  # one at the end (and at most one due on the way)
