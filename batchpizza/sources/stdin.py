"""Standard input as a source: copied to a file first, so that it can be validated whole before
anything is sent, and read again for the later passes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from batchpizza.controls.stop import Stop
from batchpizza.errors import Interrupted
from batchpizza.sources import spool_stdin


async def spool_stdin_aside(stream: IO[bytes] | None, dest: Path, stop: Stop) -> Path:
    """Standard input (or `stream`) to `dest`, in a daemon thread: a read blocked on a silent
    pipe cannot be interrupted, so on a signal the thread is abandoned instead."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()
    read = _stdin_reader(stream)

    def settle(error: BaseException | None) -> None:
        if not done.done():
            done.set_exception(error) if error else done.set_result(None)

    def copy() -> None:
        error: BaseException | None = None
        try:
            spool_stdin(read, dest, stop.interrupted)
        except BaseException as exc:
            error = exc
        # An interrupted run does not wait for this thread: its loop may be closed by now (the
        # thread started late on a busy machine), and then no one is left to tell.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=copy, name="batchpizza-stdin", daemon=True).start()
    stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([done, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not done.done() or stop.interrupted.is_set():
        _discard(dest)
        raise Interrupted("interrupted while reading standard input", 0)
    try:
        done.result()
    except BaseException:
        _discard(dest)
        raise
    return dest


def _stdin_reader(stream: IO[bytes] | None) -> Callable[[int], bytes]:
    if stream is not None:
        return stream.read
    try:
        return functools.partial(os.read, sys.stdin.fileno())
    except (AttributeError, OSError, ValueError):  # replaced by a test runner or a notebook
        return sys.stdin.buffer.read


def _discard(path: Path) -> None:
    path.unlink(missing_ok=True)
