"""The mock's Pizzagpt route, ``POST /api/chatx-completion``, as the real service speaks it: an
``x-secret`` header, a ``{"question": ...}`` body, a ``{"answer": {"content": ...}}`` reply and
errors as ``{"error": "..."}``. It misbehaves in every way the real Pizzagpt has been seen to (the
faults are in faults.py and replies.py); ``misuse_after`` makes it refuse every request after that
many, as a service that turns to refusing.
"""

from __future__ import annotations

import json

from aiohttp import web

from batchpizza.mock.faults import Live, delay, directives, draw
from batchpizza.mock.replies import (
    BOT_CHECK_TEXT,
    MISUSE_TEXT,
    STATE,
    State,
    fault,
    handle,
    scripted,
)

API_PATH = "/api/chatx-completion"
# Truncated JSON labelled as JSON: exercises the client's decode path, not its content-type check.
_GARBAGE = '{"answer": {"content": "the oven caught fi'


def _error(status: int, message: str, retry_after: str | None = None) -> web.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    if status in (204, 304):  # these may not carry a body
        return web.Response(status=status, headers=headers)
    return web.json_response({"error": message}, status=status, headers=headers)


class _Pizza:
    """Pizzagpt's wording: {"answer": {"content": ...}}, errors as {"error": "..."}."""

    error = staticmethod(_error)

    @staticmethod
    def answer(content: str, shape: str | None = None) -> web.Response:
        if shape == "content":
            return web.json_response({"content": content})
        return web.json_response({"answer": {"content": content}})

    @staticmethod
    def fault(kind: str) -> web.Response:
        if kind == "misuse":
            return web.json_response({"answer": {"content": MISUSE_TEXT}})
        if kind == "botcheck":
            return web.Response(text=BOT_CHECK_TEXT, content_type="text/html")
        if kind == "garbage":
            return web.Response(text=_GARBAGE, content_type="application/json")
        if kind == "empty":
            return web.json_response({"answer": {"content": ""}})
        if kind == "wrong":
            return web.json_response({"answer": ["not", "an", "object"]})
        raise AssertionError(kind)


_PIZZA = _Pizza()


async def _respond(
    request: web.Request, state: State, live: Live, over_limit: bool, refuse: bool
) -> web.StreamResponse | str:
    cfg = live.config
    await delay(live)
    if request.headers.get("x-secret") != cfg.secret:
        return _error(401, "missing or wrong x-secret")
    if refuse:
        return _PIZZA.fault("misuse")
    try:
        body = json.loads(await request.read())
    except ValueError:
        body = None
    question = body.get("question") if isinstance(body, dict) else None
    if not isinstance(question, str):
        return _error(400, 'body must be a JSON object with a string "question"')
    scripts = directives(question)
    if scripts:
        return await scripted(request, state, question, scripts, _PIZZA)
    if over_limit:
        return _error(429, "rate limit exceeded", cfg.retry_after)
    return fault(draw(live), question, state, _PIZZA)


async def pizzagpt_route(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    live = state.live
    # Counted on arrival, in arrival order, before any latency can reorder requests.
    live.pizza_arrivals += 1
    limit = live.config.misuse_after
    refuse = limit is not None and live.pizza_arrivals > limit

    async def respond(over_limit: bool) -> web.StreamResponse | str:
        return await _respond(request, state, live, over_limit, refuse)

    return await handle(request, respond)
