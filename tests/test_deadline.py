"""Deadlines: one timer bounding every request in flight (batchpizza.providers.deadline)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys

import aiohttp
import pytest
from yarl import URL

from batchpizza.errors import RequestTimeout
from batchpizza.providers.deadline import Deadlines
from batchpizza.providers.http import post_json

needs_uncancel = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="Task.uncancel() tells a stop from a limit (3.11+)"
)


async def limited(deadlines: Deadlines, seconds: float) -> str:
    with deadlines.limit():
        await asyncio.sleep(seconds)
    return "done"


async def times_out(port: int, seconds: float) -> None:
    """A POST to 127.0.0.1:`port` ends in RequestTimeout within `seconds`."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(RequestTimeout):
            await post_json(
                session,
                URL(f"http://127.0.0.1:{port}/"),
                b"{}",
                headers={},
                timeout=Deadlines(seconds),
            )


async def test_a_request_past_its_limit_is_a_timeout_error_and_the_task_goes_on() -> None:
    deadlines = Deadlines(0.05)
    with pytest.raises(asyncio.TimeoutError):
        await limited(deadlines, 10)
    # The limit's cancel was taken back: the task is not left cancelling, and its next request
    # (and an await outside any limit) runs as usual.
    task = asyncio.current_task()
    assert task is not None
    if sys.version_info >= (3, 11):
        assert task.cancelling() == 0
    await asyncio.sleep(0.06)
    assert await limited(deadlines, 0) == "done"


async def test_only_the_requests_past_their_limit_time_out() -> None:
    deadlines = Deadlines(0.2)
    quick = [asyncio.create_task(limited(deadlines, 0.01 * k)) for k in range(5)]
    slow = [asyncio.create_task(limited(deadlines, 5)) for _ in range(3)]
    outcomes = await asyncio.gather(*quick, *slow, return_exceptions=True)
    assert outcomes[:5] == ["done"] * 5
    assert all(isinstance(o, asyncio.TimeoutError) for o in outcomes[5:])


async def test_a_request_begun_after_the_others_ended_still_has_its_limit() -> None:
    # The timer was armed for the first request's deadline; the queue emptied before it fired.
    deadlines = Deadlines(0.1)
    assert await limited(deadlines, 0) == "done"
    await asyncio.sleep(0.05)
    with pytest.raises(asyncio.TimeoutError):
        await limited(deadlines, 10)


async def test_the_queue_holds_only_requests_ended_out_of_order() -> None:
    deadlines = Deadlines(60)
    for _ in range(1000):
        await limited(deadlines, 0)
    assert len(deadlines._queue) == 0
    hanging = asyncio.create_task(limited(deadlines, 10))
    await asyncio.sleep(0)
    for _ in range(100):  # ended while an older request is still out: kept until it ends
        await limited(deadlines, 0)
    assert len(deadlines._queue) == 101
    hanging.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hanging
    await limited(deadlines, 0)
    assert len(deadlines._queue) == 0


async def test_a_cancel_from_outside_stays_a_cancel() -> None:
    deadlines = Deadlines(10)
    task = asyncio.create_task(limited(deadlines, 10))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@needs_uncancel
async def test_a_stop_that_comes_with_the_limit_stays_a_cancel() -> None:
    # The run's stop cancels a worker in the same loop turn the request's limit expires: the
    # stop must go through (a TimeoutError would be retried), and both cancels are counted.
    deadlines = Deadlines(0.05)
    task = asyncio.create_task(limited(deadlines, 10))
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    entry = deadlines._queue[0]
    loop.call_at(entry.when, task.cancel)  # scheduled after the limit's own timer, same time
    with pytest.raises(asyncio.CancelledError):
        await task
    assert entry.state == 2  # the limit did expire: the cancel was not its alone


@needs_uncancel
async def test_a_limit_in_a_task_that_swallowed_a_cancel_still_times_out() -> None:
    # A cancel asked before the limit began (swallowed, as a worker finishing up does) still
    # counts on the task: the limit's own expiry is told apart from it and is a TimeoutError.
    deadlines = Deadlines(0.05)

    async def finishing() -> str:
        with contextlib.suppress(asyncio.CancelledError):  # still counted: cancelling() == 1
            await asyncio.sleep(10)
        try:
            return await limited(deadlines, 10)
        except asyncio.TimeoutError:
            return "timed out"

    task = asyncio.create_task(finishing())
    await asyncio.sleep(0.01)
    task.cancel()
    assert await task == "timed out"


def test_one_deadlines_serves_one_loop_after_another() -> None:
    # A provider outlives an answer() call's loop; the next call's loop arms its own timer.
    deadlines = Deadlines(0.05)
    for _ in range(2):
        with pytest.raises(asyncio.TimeoutError):
            asyncio.run(limited(deadlines, 10))
        assert asyncio.run(limited(deadlines, 0)) == "done"


def test_a_limit_is_more_than_nothing() -> None:
    with pytest.raises(ValueError):
        Deadlines(0)


async def test_a_limit_past_is_the_timeout_error_asyncio_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before Python 3.11 asyncio.TimeoutError is a class apart from the builtin TimeoutError (an
    # OSError there), and post_json catches asyncio's: a builtin one went up as a bug's exception
    # and ended the run at its first timeout. 3.10 simulated: asyncio given a class of its own.
    class TimeoutErrorBefore311(Exception):
        pass

    monkeypatch.setattr(asyncio, "TimeoutError", TimeoutErrorBefore311)

    held: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # never answered; closed at the end

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await times_out(port, 0.05)
    finally:
        for writer in held:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        server.close()
        await server.wait_closed()


@pytest.mark.slow
def test_expired_limits_are_taken_in_one_turn_on_uvloop_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # uvloop (the default loop) keeps time in whole milliseconds: its timer fires at the
    # millisecond, when loop.time() may still be a hair short of the deadline. Re-armed for that
    # same instant, the timer ran again every turn of the loop until the next millisecond came
    # (hundreds of turns: a busy core) instead of expiring the limits at once.
    import uvloop

    calls = 0
    expire = Deadlines._expire

    def counted(self: Deadlines) -> None:
        nonlocal calls
        calls += 1
        expire(self)

    monkeypatch.setattr(Deadlines, "_expire", counted)

    async def past_its_limit(seconds: float) -> None:
        with pytest.raises(asyncio.TimeoutError):
            await limited(Deadlines(seconds), 10)

    # One request, one deadline: one expiry, whatever fraction of a millisecond it falls on.
    for seconds in [0.0001, 0.0013, 0.0507] * 10:
        calls = 0
        uvloop.run(past_its_limit(seconds))
        assert calls == 1, seconds


async def test_a_server_that_never_accepts_is_a_timeout_at_the_limit() -> None:
    # A listening socket whose backlog is full: the connection is never made, or never taken
    # up. aiohttp's own connect timeout is off, so only the request's limit ends the wait.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        await times_out(port, 0.1)
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
