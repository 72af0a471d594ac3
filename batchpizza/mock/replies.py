"""How a request to the mock becomes a reply, on either route: the deterministic answer and the
refusal texts, the `Dialect` in which each API words its replies, the scripted and random faults
served through a dialect, and `handle`, which counts every request, paces it against the rate
limit and carries out a dropped or hung connection. The routes (pizzagpt.py, openai.py) only read
their request and pick a dialect, so a fault behaves the same whichever API it is served on.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from batchpizza.mock.faults import TERMINAL_FAULTS, Live, MockConfig
from batchpizza.mock.stats import Stats
from batchpizza.mock.structured import structured_answer

MISUSE_TEXT = (
    "Misuse detected. Please get in touch, we can come up with a solution for your use case."
)
BOT_CHECK_TEXT = "du musst das kästchen anklicken!"

_ERROR_STATUSES = (500, 502, 503, 504)
_HANG_SECONDS = 3600.0


def mock_answer(question: str) -> str:
    """The deterministic answer the server gives to `question`."""
    digest = hashlib.sha256(question.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"pizza-{digest} ({len(question)} chars)"


class State:
    def __init__(self, config: MockConfig, stats: Stats) -> None:
        self.live = Live(config)
        self.stats = stats
        self.seen: dict[str, int] = {}  # question -> requests, for fail-first / retry-after
        self.tasks: set[asyncio.Task[Any]] = set()

    def reset(self) -> None:
        self.stats.reset()
        self.seen.clear()
        self.live.window.clear()
        self.live.pizza_arrivals = 0
        self.live.tokens = Live(self.live.config).tokens


STATE = web.AppKey("batchpizza_mock_state", State)


class Dialect(Protocol):
    """How one API words its replies, so that directives and random faults serve both."""

    def error(self, status: int, message: str, retry_after: str | None = None) -> web.Response: ...

    def answer(self, content: str, shape: str | None = None) -> web.Response:
        """The answer; shape "content" is the API's other way of carrying it."""
        ...

    def fault(self, kind: str) -> web.Response:
        """A 200 that is no answer: misuse, botcheck, garbage, empty or wrong (the shape)."""
        ...


def fault(kind: str, question: str, state: State, dialect: Dialect) -> web.StreamResponse | str:
    """The reply for one fault kind; "drop" and "hang" come back as strings for handle to act on."""
    if kind == "answer":
        answers = state.stats.answers
        answers[question] = answers.get(question, 0) + 1
        structured = structured_answer(question, state.live.config.structured_valid)
        return dialect.answer(structured or mock_answer(question))
    if kind == "error":
        status = state.live.rng.choice(_ERROR_STATUSES)
        return dialect.error(status, "the oven is on fire")
    if kind in ("misuse", "botcheck", "garbage", "empty"):
        return dialect.fault(kind)
    return kind


async def scripted(
    request: web.Request,
    state: State,
    question: str,
    d: dict[str, str],
    dialect: Dialect,
) -> web.StreamResponse | str:
    """The reply that the directives `d` found in `question` script (see faults.py)."""
    try:
        if "slow" in d:
            await asyncio.sleep(float(d["slow"]) / 1000)
        if "status" in d:
            status = int(d["status"])
            if not 200 <= status <= 599:
                raise ValueError(status)
            retry = "1" if status in (429, 503) else None
            return dialect.error(status, f"scripted status {status}", retry)
        if "redirect" in d and request.query.get("r") != "1":
            return web.Response(status=307, headers={"Location": d["redirect"] or "/"})
        if "retry-after" in d or "fail-first" in d:
            n = state.seen[question] = state.seen.get(question, 0) + 1
            if "retry-after" in d and n == 1:
                return dialect.error(429, "scripted rate limit", d["retry-after"] or "1")
            if "fail-first" in d and n <= int(d["fail-first"]):
                return dialect.error(503, f"scripted failure {n}", "0")
        size = int(d["big"]) if "big" in d else None
        if size is not None and size < 0:
            raise ValueError(size)
    except ValueError:
        return dialect.error(400, "bad directive argument")
    for kind in TERMINAL_FAULTS:
        if kind in d:
            return fault(kind, question, state, dialect)
    shape = d.get("shape")
    if shape == "wrong":
        return dialect.fault("wrong")
    content = mock_answer(question)
    if size is not None:
        content = ((content + " ") * (size // (len(content) + 1) + 1))[:size]
    else:
        answers = state.stats.answers
        answers[question] = answers.get(question, 0) + 1
    return dialect.answer(content, shape)


Responder = Callable[[bool], Awaitable["web.StreamResponse | str"]]


async def handle(request: web.Request, respond: Responder) -> web.StreamResponse:
    """Count the request, pace it against the rate limit, and serve what `respond` decides:
    a response, or "drop" / "hang"."""
    state = request.app[STATE]
    live, stats = state.live, state.stats
    now = time.monotonic()
    stats.requests += 1
    stats.timestamps.append(now)
    stats.in_flight += 1
    stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
    over_limit = live.arrive(now)
    task = asyncio.current_task()
    if task is not None:
        state.tasks.add(task)
    try:
        resp = await respond(over_limit)
        if isinstance(resp, web.StreamResponse):
            stats.count_status(resp.status)
            return resp
        stats.count_status(0)
        if resp == "hang":
            await asyncio.sleep(_HANG_SECONDS)
        if request.transport is not None:
            request.transport.close()
        # aiohttp's write of this then fails quietly on the closed transport: the client
        # sees a disconnect with no status line.
        return web.Response()
    finally:
        stats.in_flight -= 1
        if task is not None:
            state.tasks.discard(task)
