"""Local stand-in for the Pizzagpt web API and an OpenAI-compatible chat completions API, with
scripted and random fault injection.

Routes:

    POST /api/chatx-completion   Pizzagpt, like the real service (``x-secret`` header,
                                 ``{"question": ...}`` body, ``{"answer": {"content": ...}}`` reply)
    POST /v1/chat/completions    OpenAI chat completions (``Authorization: Bearer KEY`` when
                                 ``api_key`` is set; the model echoed, or 404 model_not_found
                                 when ``models`` is set and lacks it; ``max_tokens`` cuts the
                                 answer to that many words, finish_reason "length"; usage counts
                                 words; x-request-id; x-ratelimit-*-requests with ``rate_limit``)
    GET  /v1/models              the models served
    GET  /__stats                the counters; ``POST /__reset`` clears them and the
                                 per-question counters

Both APIs misbehave in every way the real Pizzagpt has been seen to: 5xx, 429 with Retry-After
(the OpenAI route adds retry-after-ms), the misuse refusal, a plain-text bot check, garbage bodies,
dropped connections and hangs. ``misuse_after`` makes the Pizzagpt route refuse every request
after that many, as a service that turns to refusing. Used for the offline demo, as the test
suite's fault injector and by the benchmark.

Faults come from two sources. Directives embedded in a question (or in a chat's messages, read
as their formatted prompt) script that row deterministically and switch random faults (and the
rate limit) off for it; otherwise ``MockConfig`` rates drive a seeded RNG. Directives, applied in
this order:

    [[slow:MS]]          sleep MS ms first, then carry on with the rest
    [[status:NNN]]       reply NNN with an error body (429/503 add Retry-After: 1)
    [[redirect:URL]]     307 to URL, unless the request's query has r=1
    [[retry-after:S]]    first request for this question: 429 with Retry-After: S verbatim
    [[fail-first:N]]     first N requests for this question: 503 with Retry-After: 0
    [[misuse]] [[botcheck]] [[garbage]] [[empty]] [[drop]] [[hang]]   that fault, always
    [[shape:wrong]]      200 {"answer": ["not", "an", "object"]} (chat: {"choices": []})
    [[big:N]]            answer content of exactly N bytes
    [[shape:content]]    answer as top-level {"content": ...} (chat: as content parts)

On the chat route "empty" is a null content and "garbage" a truncated chat.completion.
A bad argument (e.g. ``[[status:abc]]``) gets a 400; unknown ``[[names]]`` are plain text.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from batchpizza.rows import format_prompt

API_PATH = "/api/chatx-completion"
CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
DEFAULT_MOCK_MODEL = "batchpizza-mock"
MISUSE_TEXT = (
    "Misuse detected. Please get in touch, we can come up with a solution for your use case."
)
BOT_CHECK_TEXT = "du musst das kästchen anklicken!"

# Connections waiting to be accepted. aiohttp's default, 128, is below what a client at
# --concurrency 256 opens at once: on uvloop, whose connects leave together, the kernel dropped
# up to 19 SYNs a run and those connections waited for TCP's one-second retry (the latency
# benchmark read 88-95 % instead of 96 %; asyncio's loop staggers its connects and dropped none).
# Servers the mock stands in for accept more: uvicorn (vLLM) 2048, Go's net/http (Ollama) the
# system's limit.
BACKLOG = 2048
_DIRECTIVE = re.compile(r"\[\[([a-z-]+)(?::([^\]]*))?\]\]")
_TERMINAL_FAULTS = ("misuse", "botcheck", "garbage", "empty", "drop", "hang")
_KNOWN = frozenset(
    (*_TERMINAL_FAULTS, "status", "fail-first", "retry-after", "shape", "redirect", "big", "slow")
)
_ERROR_STATUSES = (500, 502, 503, 504)
# Truncated JSON labelled as JSON: exercises the client's decode path, not its content-type check.
_GARBAGE = '{"answer": {"content": "the oven caught fi'
_CHAT_GARBAGE = '{"id": "chatcmpl-0", "object": "chat.completion", "choices": [{"message": {"content": "the oven caught fi'
_HANG_SECONDS = 3600.0
# Hung or slow handlers must not hold up stop(); a mock owes nobody a graceful drain.
_SHUTDOWN_TIMEOUT = 0.25


@dataclass(frozen=True, kw_only=True)
class MockConfig:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    error_rate: float = 0.0
    rate_limit: float = 0.0
    retry_after: str = "1"
    misuse_rate: float = 0.0
    garbage_rate: float = 0.0
    drop_rate: float = 0.0
    hang_rate: float = 0.0
    empty_rate: float = 0.0
    seed: int | None = None
    secret: str = "Marinara"
    # Pizzagpt route: every request after this many (counted from start, reset or a new config)
    # is refused as misuse, as a service that has had enough of us.
    misuse_after: int | None = None
    # Chat route: the Bearer key required (None: none), and the models served (empty: any).
    api_key: str | None = None
    models: tuple[str, ...] = ()


def mock_answer(question: str) -> str:
    """The deterministic answer the server gives to `question`."""
    digest = hashlib.sha256(question.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"pizza-{digest} ({len(question)} chars)"


@dataclass
class Stats:
    """What the server has served since start or the last reset()."""

    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    in_flight: int = 0
    peak_in_flight: int = 0
    answers: dict[str, int] = field(default_factory=dict, repr=False)
    timestamps: list[float] = field(default_factory=list, repr=False)

    def max_in_window(self, window: float = 1.0) -> int:
        """Most arrivals in any half-open window (t - window, t], as the rate limiter counts."""
        ts, best, lo = self.timestamps, 0, 0
        for hi, t in enumerate(ts):
            while ts[lo] <= t - window:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    def mean_rate(self) -> float:
        ts = self.timestamps
        if len(ts) < 2 or ts[-1] <= ts[0]:
            return 0.0
        return (len(ts) - 1) / (ts[-1] - ts[0])

    def to_dict(self, *, answers: bool = True) -> dict[str, Any]:
        snapshot: dict[str, Any] = {
            "requests": self.requests,
            # String keys so the in-process snapshot equals what /__stats returns.
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "answered": sum(self.answers.values()),
            "max_in_window_1s": self.max_in_window(),
            "mean_rate": self.mean_rate(),
        }
        if answers:
            snapshot["answers"] = dict(self.answers)
        return snapshot

    def reset(self) -> None:
        # Rebind rather than clear so a reader in another thread never sees a half-cleared dict;
        # in_flight is a gauge, so it survives and the peak restarts from it.
        self.requests = 0
        self.by_status = {}
        self.answers = {}
        self.timestamps = []
        self.peak_in_flight = self.in_flight

    def _count(self, status: int) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1


class _Live:
    """All state derived from one config, swapped as a unit so handlers see a consistent view."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        # Separate stream so enabling jitter doesn't change which requests get which fault.
        self.jitter_rng = random.Random(config.seed)
        self.window: deque[float] = deque()
        bounds: list[tuple[float, str]] = []
        total = 0.0
        for kind, rate in (
            ("error", config.error_rate),
            ("misuse", config.misuse_rate),
            ("garbage", config.garbage_rate),
            ("drop", config.drop_rate),
            ("hang", config.hang_rate),
            ("empty", config.empty_rate),
        ):
            total += rate
            bounds.append((total, kind))
        self.bounds = tuple(bounds) if total > 0 else ()
        self.pizza_arrivals = 0  # for misuse_after

    def arrive(self, now: float) -> bool:
        """Record an arrival; True if it exceeds the rate limit."""
        limit = self.config.rate_limit
        if limit <= 0:
            return False
        window = self.window
        window.append(now)
        while window[0] <= now - 1.0:
            window.popleft()
        return len(window) > limit

    def rate_headers(self, now: float) -> dict[str, str]:
        """OpenAI's x-ratelimit-*-requests for the window as it stands: the limit per second, what
        is left of it, and when the window is empty again (Go duration text, as OpenAI sends)."""
        limit = self.config.rate_limit
        if limit <= 0:
            return {}
        window = self.window
        while window and window[0] <= now - 1.0:
            window.popleft()
        reset = max(0.0, window[-1] + 1.0 - now) if window else 0.0
        return {
            "x-ratelimit-limit-requests": f"{limit:g}",
            "x-ratelimit-remaining-requests": str(max(0, int(limit) - len(window))),
            "x-ratelimit-reset-requests": _go_duration(reset),
        }


def _go_duration(seconds: float) -> str:
    if seconds < 1.0:
        return f"{round(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60.0)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


class _State:
    def __init__(self, config: MockConfig, stats: Stats) -> None:
        self.live = _Live(config)
        self.stats = stats
        self.seen: dict[str, int] = {}  # question -> requests, for fail-first / retry-after
        self.tasks: set[asyncio.Task[Any]] = set()

    def reset(self) -> None:
        self.stats.reset()
        self.seen.clear()
        self.live.window.clear()
        self.live.pizza_arrivals = 0


_STATE = web.AppKey("batchpizza_mock_state", _State)


def _error(status: int, message: str, retry_after: str | None = None) -> web.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    if status in (204, 304):  # these may not carry a body
        return web.Response(status=status, headers=headers)
    return web.json_response({"error": message}, status=status, headers=headers)


class _Dialect(Protocol):
    """How one API words its replies, so that directives and random faults serve both."""

    def error(self, status: int, message: str, retry_after: str | None = None) -> web.Response: ...

    def answer(self, content: str, shape: str | None = None) -> web.Response:
        """The answer; shape "content" is the API's other way of carrying it."""
        ...

    def fault(self, kind: str) -> web.Response:
        """A 200 that is no answer: misuse, botcheck, garbage, empty or wrong (the shape)."""
        ...


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


def _fault(
    kind: str, question: str, state: _State, dialect: _Dialect = _PIZZA
) -> web.StreamResponse | str:
    """The reply for one fault kind; "drop" and "hang" come back as strings for _api to act on."""
    if kind == "answer":
        answers = state.stats.answers
        answers[question] = answers.get(question, 0) + 1
        return dialect.answer(mock_answer(question))
    if kind == "error":
        status = state.live.rng.choice(_ERROR_STATUSES)
        return dialect.error(status, "the oven is on fire")
    if kind in ("misuse", "botcheck", "garbage", "empty"):
        return dialect.fault(kind)
    return kind


async def _scripted(
    request: web.Request,
    state: _State,
    question: str,
    d: dict[str, str],
    dialect: _Dialect = _PIZZA,
) -> web.StreamResponse | str:
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
    for kind in _TERMINAL_FAULTS:
        if kind in d:
            return _fault(kind, question, state, dialect)
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


async def _delay(live: _Live) -> None:
    cfg = live.config
    if cfg.latency_ms or cfg.jitter_ms:
        delay = cfg.latency_ms + live.jitter_rng.uniform(-cfg.jitter_ms, cfg.jitter_ms)
        if delay > 0:
            await asyncio.sleep(delay / 1000)


def _directives(question: str) -> dict[str, str]:
    if "[[" not in question:
        return {}
    return {m[1]: m[2] or "" for m in _DIRECTIVE.finditer(question) if m[1] in _KNOWN}


def _draw(live: _Live) -> str:
    """Which random fault (or "answer") this request gets."""
    if not live.bounds:
        return "answer"
    draw = live.rng.random()
    return next((k for bound, k in live.bounds if draw < bound), "answer")


async def _respond(
    request: web.Request, state: _State, live: _Live, over_limit: bool, refuse: bool
) -> web.StreamResponse | str:
    cfg = live.config
    await _delay(live)
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
    directives = _directives(question)
    if directives:
        return await _scripted(request, state, question, directives)
    if over_limit:
        return _error(429, "rate limit exceeded", cfg.retry_after)
    return _fault(_draw(live), question, state)


Responder = Callable[[bool], Awaitable["web.StreamResponse | str"]]


async def _handle(request: web.Request, respond: Responder) -> web.StreamResponse:
    """Count the request, pace it against the rate limit, and serve what `respond` decides:
    a response, or "drop" / "hang"."""
    state = request.app[_STATE]
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
            stats._count(resp.status)
            return resp
        stats._count(0)
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


async def _api(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    live = state.live
    # Counted on arrival, in arrival order, before any latency can reorder requests.
    live.pizza_arrivals += 1
    limit = live.config.misuse_after
    refuse = limit is not None and live.pizza_arrivals > limit

    async def respond(over_limit: bool) -> web.StreamResponse | str:
        return await _respond(request, state, live, over_limit, refuse)

    return await _handle(request, respond)


# --- the OpenAI chat completions route ---------------------------------------------------

_CHAT_ERROR_TYPES = {
    401: "invalid_request_error",
    403: "permission_denied",
    404: "invalid_request_error",
    429: "rate_limit_exceeded",
}


class _Chat:
    """OpenAI's wording for one request: its model, prompt, max_tokens and request id."""

    def __init__(
        self, request_id: str, model: str = "", prompt: str = "", max_tokens: int | None = None
    ) -> None:
        self.request_id = request_id
        self.model = model
        self.prompt = prompt
        self.max_tokens = max_tokens

    def _headers(self, retry_after: str | None = None) -> dict[str, str]:
        headers = {"x-request-id": self.request_id}
        if retry_after is not None:
            headers["retry-after"] = retry_after
            with contextlib.suppress(ValueError):  # an HTTP date has no millisecond twin
                headers["retry-after-ms"] = f"{float(retry_after) * 1000:g}"
        return headers

    def error(
        self,
        status: int,
        message: str,
        retry_after: str | None = None,
        *,
        code: str | None = None,
        param: str | None = None,
    ) -> web.Response:
        headers = self._headers(retry_after)
        if status in (204, 304):  # these may not carry a body
            return web.Response(status=status, headers=headers)
        kind = _CHAT_ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request")
        error = {"message": message, "type": kind, "param": param, "code": code}
        return web.json_response({"error": error}, status=status, headers=headers)

    def _completion(self, content: object, finish: str, choices: bool = True) -> web.Response:
        words = len(content.split()) if isinstance(content, str) else 0
        digest = hashlib.sha256(self.prompt.encode("utf-8", "surrogatepass")).hexdigest()
        message = {"role": "assistant", "content": content, "refusal": None}
        prompt_tokens = len(self.prompt.split())
        body = {
            "id": f"chatcmpl-{digest[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]
            if choices
            else [],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": words,
                "total_tokens": prompt_tokens + words,
            },
        }
        return web.json_response(body, headers=self._headers())

    def answer(self, content: str, shape: str | None = None) -> web.Response:
        finish = "stop"
        words = content.split()
        if self.max_tokens is not None and len(words) > self.max_tokens:
            content, finish = " ".join(words[: self.max_tokens]), "length"
        if shape == "content":
            return self._completion([{"type": "text", "text": content}], finish)
        return self._completion(content, finish)

    def fault(self, kind: str) -> web.Response:
        if kind == "misuse":
            return self.answer(MISUSE_TEXT)
        if kind == "botcheck":
            return web.Response(text=BOT_CHECK_TEXT, content_type="text/html")
        if kind == "garbage":
            return web.Response(text=_CHAT_GARBAGE, content_type="application/json")
        if kind == "empty":
            return self._completion(None, "stop")
        if kind == "wrong":
            return self._completion(None, "stop", choices=False)
        raise AssertionError(kind)


def _chat_prompt(messages: object) -> str | None:
    """The formatted prompt of a chat's messages (text parts joined, as rows.py reads them), or
    None when they are not a list of {role, content}."""
    if not isinstance(messages, list) or not messages:
        return None
    clean: list[dict[str, str]] = []
    for item in messages:
        if not isinstance(item, dict) or not isinstance(item.get("role"), str):
            return None
        content = item.get("content")
        if isinstance(content, list):
            parts = [p.get("text") for p in content if isinstance(p, dict)]
            content = "\n".join(p for p in parts if isinstance(p, str))
        if not isinstance(content, str):
            return None
        clean.append({"role": item["role"], "content": content})
    return format_prompt(clean)


def _authorized(request: web.Request, config: MockConfig) -> bool:
    return config.api_key is None or (
        request.headers.get("Authorization") == f"Bearer {config.api_key}"
    )


def _unauthorized(chat: _Chat, request: web.Request) -> web.Response:
    given = "Authorization" in request.headers
    # Like OpenAI's, the message never repeats the key it was given.
    message = "Incorrect API key provided." if given else "You didn't provide an API key."
    return chat.error(401, message, code="invalid_api_key")


async def _chat_respond(
    request: web.Request, state: _State, live: _Live, over_limit: bool, request_id: str
) -> web.StreamResponse | str:
    cfg = live.config
    await _delay(live)
    bare = _Chat(request_id)  # for what is refused before the body is read
    if not _authorized(request, cfg):
        return _unauthorized(bare, request)
    try:
        body = json.loads(await request.read())
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return bare.error(400, "the body must be a JSON object")
    prompt = _chat_prompt(body.get("messages"))
    if prompt is None:
        message = "'messages' must be a non-empty list of {role, content} objects"
        return bare.error(400, message, param="messages")
    model = body.get("model", cfg.models[0] if cfg.models else DEFAULT_MOCK_MODEL)
    if not isinstance(model, str):
        return bare.error(400, "'model' must be a string", param="model")
    if cfg.models and model not in cfg.models:
        message = f"The model `{model}` does not exist or you do not have access to it."
        return bare.error(404, message, code="model_not_found")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        return bare.error(400, "max_tokens must be a positive integer", param="max_tokens")
    chat = _Chat(request_id, model, prompt, max_tokens)
    directives = _directives(prompt)
    if directives:
        return await _scripted(request, state, prompt, directives, chat)
    if over_limit:
        message = f"Rate limit reached for requests: limit {cfg.rate_limit:g} per second."
        return chat.error(429, message, cfg.retry_after, code="rate_limit_exceeded")
    return _fault(_draw(live), prompt, state, chat)


async def _chat(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    live = state.live

    async def respond(over_limit: bool) -> web.StreamResponse | str:
        # Read at arrival (this runs before the first await): what is left of this second.
        rate = live.rate_headers(time.monotonic())
        resp = await _chat_respond(
            request, state, live, over_limit, f"req_mock_{state.stats.requests}"
        )
        if isinstance(resp, web.Response):
            resp.headers.update(rate)
        return resp

    return await _handle(request, respond)


async def _models(request: web.Request) -> web.Response:
    config = request.app[_STATE].live.config
    if not _authorized(request, config):
        return _unauthorized(_Chat("req_mock_models"), request)
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "batchpizza"}
        for name in config.models or (DEFAULT_MOCK_MODEL,)
    ]
    return web.json_response({"object": "list", "data": data})


async def _get_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[_STATE].stats.to_dict())


async def _post_reset(request: web.Request) -> web.Response:
    request.app[_STATE].reset()
    return web.json_response({"ok": True})


def make_app(config: MockConfig, stats: Stats | None = None) -> web.Application:
    app = web.Application()
    app[_STATE] = _State(config, stats if stats is not None else Stats())
    app.router.add_post(API_PATH, _api)
    app.router.add_post(CHAT_PATH, _chat)
    app.router.add_get(MODELS_PATH, _models)
    app.router.add_get("/__stats", _get_stats)
    app.router.add_post("/__reset", _post_reset)
    return app


class MockServer:
    """In-process server: `async with MockServer(config) as srv:` then srv.base_url, srv.stats."""

    def __init__(
        self, config: MockConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.stats = Stats()
        self._app = make_app(config or MockConfig(), self.stats)
        self._state = self._app[_STATE]
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    @property
    def config(self) -> MockConfig:
        return self._state.live.config

    @config.setter
    def config(self, config: MockConfig) -> None:
        self._state.live = _Live(config)  # fresh RNG and rate window

    def reset(self) -> None:
        """Clear stats, per-question directive counters and the rate-limit window."""
        self._state.reset()

    async def start(self) -> None:
        runner = web.AppRunner(
            self._app,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=_SHUTDOWN_TIMEOUT,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port, backlog=BACKLOG).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port = runner.addresses[0][1]
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.base_url = f"http://{host}:{port}"

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for task in list(self._state.tasks):
            task.cancel()
        await runner.cleanup()

    async def __aenter__(self) -> MockServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class ThreadedMockServer:
    """MockServer on its own loop in a daemon thread, for sync code: `with ThreadedMockServer()`."""

    def __init__(
        self, config: MockConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._server = MockServer(config, host=host, port=port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return self._server.base_url

    @property
    def stats(self) -> Stats:
        return self._server.stats

    @property
    def config(self) -> MockConfig:
        return self._server.config

    @config.setter
    def config(self, config: MockConfig) -> None:
        self._server.config = config

    def reset(self) -> None:
        self._server.reset()

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=self._run, args=(loop,), daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._server.start(), loop).result(timeout=10)
        except BaseException:
            self.stop()  # don't leave the loop thread behind, e.g. when the port is taken
            raise

    def stop(self) -> None:
        loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._server.stop(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            # Finish off stragglers here, on their own thread, so nothing is destroyed pending.
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def __enter__(self) -> ThreadedMockServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(config: MockConfig, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run until SIGINT/SIGTERM. Stdout line 1 gives the URL; stderr gets stats JSON on exit."""
    # Windows has no loop signal handlers, so there Ctrl+C arrives as KeyboardInterrupt.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(config, host, port))


async def _serve(config: MockConfig, host: str, port: int) -> None:
    server = MockServer(config, host=host, port=port)
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopping.set)
    # Only now announce: a caller that signals us right after reading this line must be handled.
    print(f"batchpizza mock server listening on {server.base_url}", flush=True)
    try:
        await stopping.wait()
    finally:
        await server.stop()
        print(json.dumps(server.stats.to_dict(answers=False)), file=sys.stderr, flush=True)
