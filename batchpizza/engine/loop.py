"""The event loop a blocking call runs on: uvloop's where installed, asyncio's otherwise."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to its end on a new event loop, as asyncio.run does: uvloop's when it is
    installed (not on Windows) unless BATCHPIZZA_LOOP=asyncio, else asyncio's own. uvloop
    implements the loop and the transports in C, where a sending run spends much of its time
    (benchmarks/RESULTS.md has the figures)."""
    if _uvloop_wanted():
        try:
            import uvloop
        except ImportError:
            pass
        else:
            result: T = uvloop.run(main)
            return result
    return asyncio.run(main)


def new_loop() -> asyncio.AbstractEventLoop:
    """A new event loop of the kind `run_loop` would run on, for a thread that keeps one (a Ray
    actor's)."""
    if _uvloop_wanted():
        try:
            import uvloop
        except ImportError:
            pass
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


def _uvloop_wanted() -> bool:
    return os.environ.get("BATCHPIZZA_LOOP", "").strip().lower() != "asyncio" and _std_fds_open()


def _std_fds_open() -> bool:
    """Standard input, output and error all open. With one closed (cron's `2>&-`), libuv hands
    its number to a descriptor of its own and aborts the process when closing it (an assertion
    in uv__close), so uvloop is not used then."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            return False
    return True
