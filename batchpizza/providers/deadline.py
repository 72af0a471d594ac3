"""The time limit of every request in flight, kept by one timer.

aiohttp's own `timeout=` arms and cancels a timer per request and threads a timer context through
every read of the reply: about 3 % of a request's CPU. Every request of a provider has the same
limit, so their deadlines fall in the order the requests began: one queue, oldest first, and one
timer at the oldest live deadline cover them all. A request past its deadline is cancelled the
way aiohttp and `asyncio.timeout` cancel one, and the cancellation becomes a `TimeoutError` when
it was the limit's own, so a stop (the run's cancel) still goes through as a cancel.
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from types import TracebackType
from typing import Any

# How early a deadline may be taken as come. uvloop (the default loop) counts time in whole
# milliseconds and fires its timers on them, up to half of one before the deadline asked: taken
# strictly, the timer was re-armed for that same moment every turn of the loop (hundreds) until
# its clock reached the next millisecond.
_EARLY = 0.001


class Deadlines:
    """`with deadlines.limit():` bounds what runs inside it to `seconds` from its start; one
    instance per limit, used from any number of tasks of one event loop at a time."""

    __slots__ = ("_loop", "_queue", "_timer", "seconds")

    def __init__(self, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError("seconds must be > 0")
        self.seconds = seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: deque[Limit] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def limit(self) -> Limit:
        """The limit of one request, from now; enter it in the task that makes the request."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a provider reused by a later run's loop starts afresh
            self._loop, self._queue, self._timer = loop, deque(), None
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("a request's limit is entered inside a task")
        entry = Limit(self, task, loop.time() + self.seconds)
        self._queue.append(entry)
        if self._timer is None:
            self._timer = loop.call_at(entry.when, self._expire)
        return entry

    def _expire(self) -> None:
        loop = self._loop
        assert loop is not None
        self._timer = None
        queue = self._queue
        now = loop.time() + _EARLY
        while queue and (queue[0].state != LIVE or queue[0].when <= now):
            entry = queue.popleft()
            if entry.state == LIVE:
                entry.state = EXPIRED
                entry.task.cancel()
        if queue:  # re-armed only while some request is out
            self._timer = loop.call_at(queue[0].when, self._expire)

    def _left(self) -> None:
        # Requests mostly end in the order they began: dropping ended ones from the front keeps
        # the queue as long as the requests out of order, not as long as those of the last
        # `seconds`.
        queue = self._queue
        while queue and queue[0].state != LIVE:
            queue.popleft()


LIVE, ENDED, EXPIRED = 0, 1, 2


class Limit:
    """One request's deadline, a context manager entered once."""

    __slots__ = ("_cancelling", "_owner", "state", "task", "when")

    def __init__(self, owner: Deadlines, task: asyncio.Task[Any], when: float) -> None:
        self._owner = owner
        self.task = task
        self.when = when
        self.state = LIVE
        # Cancels asked of the task before this limit: one of them is not this limit's to undo.
        self._cancelling = 0
        if sys.version_info >= (3, 11):
            self._cancelling = task.cancelling()

    def __enter__(self) -> Limit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.state == LIVE:
            self.state = ENDED
            self._owner._left()
            return
        # Expired: the cancel was this limit's. Taken back, it is a TimeoutError unless another
        # cancel (the run stopping) came too, which then goes on as asked. (Python 3.10 cannot
        # tell them apart: there, as with aiohttp's own limit, it is a TimeoutError.)
        if sys.version_info >= (3, 11) and self.task.uncancel() > self._cancelling:
            return
        if exc_type is asyncio.CancelledError:
            # asyncio's, which callers catch: before 3.11 the builtin one is another class.
            raise asyncio.TimeoutError from exc
