"""Tests for the mock server (Pizzagpt and OpenAI routes): directives, random faults, stats, and
ways to run it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import click
import pytest

from batchpizza.mock import tokens
from batchpizza.mock.faults import MockConfig
from batchpizza.mock.openai import CHAT_PATH, _go_duration
from batchpizza.mock.pizzagpt import API_PATH
from batchpizza.mock.replies import BOT_CHECK_TEXT, MISUSE_TEXT, mock_answer
from batchpizza.mock.server import MockServer, ThreadedMockServer, make_app
from batchpizza.mock.stats import Stats

HEADERS = {"x-secret": "Marinara"}
SHORT = aiohttp.ClientTimeout(total=0.3)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def server() -> AsyncIterator[MockServer]:
    async with MockServer(MockConfig(seed=1)) as srv:
        yield srv


async def ask(
    session: aiohttp.ClientSession,
    srv: MockServer,
    question: str,
    **kwargs: Any,
) -> tuple[aiohttp.ClientResponse, str]:
    kwargs.setdefault("headers", HEADERS)
    async with session.post(srv.base_url + API_PATH, json={"question": question}, **kwargs) as r:
        return r, await r.text()


async def wait_for(predicate: Any, limit: float = 2.0) -> None:
    """Poll a condition the server reaches asynchronously (e.g. after a client hangs up)."""
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


# --- the normal path and request validation ---------------------------------------------


def test_mock_answer_is_deterministic_and_distinct() -> None:
    assert mock_answer("a") == mock_answer("a")
    assert len({mock_answer(q) for q in ["a", "b", "a ", "ä", ""]}) == 5


async def test_normal_answer(session: aiohttp.ClientSession, server: MockServer) -> None:
    assert server.base_url.startswith("http://127.0.0.1:")
    assert not server.base_url.endswith("/")
    r, body = await ask(session, server, "Margherita?")
    assert r.status == 200
    assert json.loads(body) == {"answer": {"content": mock_answer("Margherita?")}}
    assert server.stats.answers == {"Margherita?": 1}
    assert server.stats.by_status == {200: 1}


@pytest.mark.parametrize("headers", [{}, {"x-secret": "Carbonara"}])
async def test_secret_required(
    session: aiohttp.ClientSession, server: MockServer, headers: dict[str, str]
) -> None:
    r, body = await ask(session, server, "q", headers=headers)
    assert r.status == 401
    assert "error" in json.loads(body)
    assert server.stats.by_status == {401: 1}
    assert server.stats.answers == {}


@pytest.mark.parametrize(
    "data", [b"not json", b"[1, 2]", b'{"prompt": "q"}', b'{"question": 7}', b"\xff"]
)
async def test_bad_body_is_400(
    session: aiohttp.ClientSession, server: MockServer, data: bytes
) -> None:
    async with session.post(server.base_url + API_PATH, data=data, headers=HEADERS) as r:
        assert r.status == 400
        assert "error" in await r.json()


async def test_other_routes(session: aiohttp.ClientSession, server: MockServer) -> None:
    async with session.post(server.base_url + "/api/other", json={"question": "q"}) as r:
        assert r.status == 404
    async with session.get(server.base_url + API_PATH) as r:
        assert r.status == 405
    assert server.stats.requests == 0  # only the API route counts


async def test_unknown_brackets_are_just_text(
    session: aiohttp.ClientSession, server: MockServer
) -> None:
    q = "what is [[pineapple]] on [[pizza:hawaii]]?"
    r, body = await ask(session, server, q)
    assert r.status == 200
    assert json.loads(body)["answer"]["content"] == mock_answer(q)


# --- directives -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry_after"), [(500, None), (404, None), (429, "1"), (503, "1"), (204, None)]
)
async def test_status_directive(
    session: aiohttp.ClientSession, server: MockServer, status: int, retry_after: str | None
) -> None:
    r, body = await ask(session, server, f"row 3 [[status:{status}]]")
    assert r.status == status
    assert r.headers.get("Retry-After") == retry_after
    if status != 204:
        assert "error" in json.loads(body)
    assert server.stats.by_status == {status: 1}


@pytest.mark.parametrize(
    "bad", ["[[status:abc]]", "[[status:99]]", "[[fail-first:x]]", "[[big:-1]]"]
)
async def test_bad_directive_argument(
    session: aiohttp.ClientSession, server: MockServer, bad: str
) -> None:
    r, _ = await ask(session, server, bad)
    assert r.status == 400


async def test_misuse_and_botcheck(session: aiohttp.ClientSession, server: MockServer) -> None:
    r, body = await ask(session, server, "q [[misuse]]")
    assert r.status == 200
    assert json.loads(body) == {"answer": {"content": MISUSE_TEXT}}
    r, body = await ask(session, server, "q [[botcheck]]")
    assert r.status == 200
    assert r.content_type == "text/html"
    assert body == BOT_CHECK_TEXT
    assert server.stats.answers == {}  # neither carried the real answer


async def test_garbage_and_empty(session: aiohttp.ClientSession, server: MockServer) -> None:
    r, body = await ask(session, server, "[[garbage]]")
    assert r.status == 200
    with pytest.raises(ValueError):
        json.loads(body)
    r, body = await ask(session, server, "[[empty]]")
    assert json.loads(body) == {"answer": {"content": ""}}


async def test_drop_directive(session: aiohttp.ClientSession, server: MockServer) -> None:
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await ask(session, server, "[[drop]]")
    assert server.stats.by_status == {0: 1}
    # The connection pool must recover: the next request gets a fresh connection.
    r, _ = await ask(session, server, "after the drop")
    assert r.status == 200


async def test_hang_directive(session: aiohttp.ClientSession, server: MockServer) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await ask(session, server, "[[hang]]", timeout=SHORT)
    assert server.stats.by_status == {0: 1}
    # The client hung up, so the handler is cancelled instead of lingering for an hour.
    await wait_for(lambda: server.stats.in_flight == 0)


async def test_fail_first(session: aiohttp.ClientSession, server: MockServer) -> None:
    q = "row 7 [[fail-first:2]]"
    for _ in range(2):
        r, _ = await ask(session, server, q)
        assert r.status == 503
        assert r.headers["Retry-After"] == "0"
    r, body = await ask(session, server, q)
    assert r.status == 200
    assert json.loads(body)["answer"]["content"] == mock_answer(q)
    # Counting is per exact question.
    r, _ = await ask(session, server, q + " ")
    assert r.status == 503
    # /__reset forgets the counters.
    async with session.post(server.base_url + "/__reset") as resp:
        assert resp.status == 200
    r, _ = await ask(session, server, q)
    assert r.status == 503
    assert server.stats.requests == 1


async def test_retry_after_passed_verbatim(
    session: aiohttp.ClientSession, server: MockServer
) -> None:
    date = "Wed, 21 Oct 2037 07:28:00 GMT"
    q = f"[[retry-after:{date}]]"
    r, _ = await ask(session, server, q)
    assert r.status == 429
    assert r.headers["Retry-After"] == date
    r, body = await ask(session, server, q)
    assert r.status == 200
    assert json.loads(body)["answer"]["content"] == mock_answer(q)


async def test_shapes(session: aiohttp.ClientSession, server: MockServer) -> None:
    q = "[[shape:content]]"
    _, body = await ask(session, server, q)
    assert json.loads(body) == {"content": mock_answer(q)}
    r, body = await ask(session, server, "[[shape:wrong]]")
    assert r.status == 200
    assert json.loads(body) == {"answer": ["not", "an", "object"]}
    assert server.stats.answers == {q: 1}


async def test_redirect(session: aiohttp.ClientSession, server: MockServer) -> None:
    q = f"[[redirect:{API_PATH}?r=1]]"
    r, _ = await ask(session, server, q, allow_redirects=False)
    assert r.status == 307
    assert r.headers["Location"] == f"{API_PATH}?r=1"
    r, body = await ask(session, server, q)  # aiohttp re-POSTs the body on 307
    assert r.status == 200
    assert [h.status for h in r.history] == [307]
    assert json.loads(body)["answer"]["content"] == mock_answer(q)


async def test_big(session: aiohttp.ClientSession, server: MockServer) -> None:
    _, body = await ask(session, server, "[[big:300000]]")
    assert len(json.loads(body)["answer"]["content"].encode()) == 300_000


async def test_slow_combines_with_shape(session: aiohttp.ClientSession, server: MockServer) -> None:
    q = "[[slow:80]] [[shape:content]]"
    start = time.monotonic()
    _, body = await ask(session, server, q)
    assert time.monotonic() - start >= 0.08
    assert json.loads(body) == {"content": mock_answer(q)}


async def test_directives_beat_random_faults(session: aiohttp.ClientSession) -> None:
    async with MockServer(MockConfig(error_rate=1.0, rate_limit=1)) as srv:
        for _ in range(3):
            r, _ = await ask(session, srv, "[[shape:content]]")
            assert r.status == 200


# --- random faults ----------------------------------------------------------------------


def classify(status: int, body: str) -> str:
    """Which kind of reply a status and body are, in the terms of MockConfig's fault rates."""
    if status in (500, 502, 503, 504):
        return "error"
    assert status == 200, status
    try:
        reply = json.loads(body)
    except ValueError:
        return "garbage"
    return {MISUSE_TEXT: "misuse", "": "empty"}.get(reply["answer"]["content"], "answer")


@pytest.mark.parametrize(
    ("config", "kind"),
    [
        (MockConfig(error_rate=1.0), "error"),
        (MockConfig(misuse_rate=1.0), "misuse"),
        (MockConfig(garbage_rate=1.0), "garbage"),
        (MockConfig(empty_rate=1.0), "empty"),
    ],
)
async def test_random_fault_at_rate_one(
    session: aiohttp.ClientSession, config: MockConfig, kind: str
) -> None:
    async with MockServer(config) as srv:
        for i in range(5):
            r, body = await ask(session, srv, f"q{i}")
            assert classify(r.status, body) == kind
        assert srv.stats.answers == {}


async def test_random_drop_and_hang(session: aiohttp.ClientSession) -> None:
    async with MockServer(MockConfig(drop_rate=1.0)) as srv:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await ask(session, srv, "q")
    async with MockServer(MockConfig(hang_rate=1.0)) as srv:
        with pytest.raises(asyncio.TimeoutError):
            await ask(session, srv, "q", timeout=SHORT)
        assert srv.stats.by_status == {0: 1}


async def test_seeded_faults_are_reproducible(session: aiohttp.ClientSession) -> None:
    config = MockConfig(seed=42, error_rate=0.3, misuse_rate=0.2, empty_rate=0.2)
    runs: list[list[str]] = [[], []]
    for run in runs:
        async with MockServer(config) as srv:
            for i in range(60):
                r, body = await ask(session, srv, f"q{i}")
                run.append(classify(r.status, body))
    assert runs[0] == runs[1]
    assert set(runs[0]) == {"answer", "error", "misuse", "empty"}


async def test_rate_limit(session: aiohttp.ClientSession) -> None:
    async with MockServer(MockConfig(rate_limit=5, retry_after="7")) as srv:
        statuses = []
        for i in range(8):
            r, _ = await ask(session, srv, f"q{i}")
            statuses.append(r.status)
            if r.status == 429:
                assert r.headers["Retry-After"] == "7"
        assert statuses == [200] * 5 + [429] * 3
        assert srv.stats.max_in_window() == 8


async def test_latency_and_jitter(session: aiohttp.ClientSession) -> None:
    async with MockServer(MockConfig(latency_ms=60, jitter_ms=20)) as srv:
        start = time.monotonic()
        r, _ = await ask(session, srv, "q")
        assert r.status == 200
        assert time.monotonic() - start >= 0.04


# --- stats ------------------------------------------------------------------------------


async def test_stats_under_concurrency(session: aiohttp.ClientSession) -> None:
    async with MockServer(MockConfig(latency_ms=100)) as srv:
        results = await asyncio.gather(
            *(ask(session, srv, f"q{i % 4}") for i in range(10)),
            ask(session, srv, "[[status:502]]"),
        )
        assert sorted(r.status for r, _ in results) == [200] * 10 + [502]
        stats = srv.stats
        assert stats.requests == 11
        assert stats.by_status == {200: 10, 502: 1}
        assert stats.peak_in_flight == 11
        assert stats.in_flight == 0
        assert stats.answers == {"q0": 3, "q1": 3, "q2": 2, "q3": 2}
        assert stats.max_in_window() == 11
        assert stats.mean_rate() > 0

        async with session.get(srv.base_url + "/__stats") as resp:
            remote = await resp.json()
        # The counters, and the tokens the chat route counted beside them (none here).
        assert remote == json.loads(json.dumps({**stats.to_dict(), **srv.tokens.to_dict()}))
        assert remote["by_status"] == {"200": 10, "502": 1}
        assert remote["answered"] == 10

        async with session.post(srv.base_url + "/__reset") as resp:
            assert resp.status == 200
        assert stats.requests == 0
        assert stats.by_status == {}
        assert stats.timestamps == []
        assert stats.peak_in_flight == 0


def test_stats_windows() -> None:
    stats = Stats(timestamps=[0.0, 0.1, 0.5, 1.0, 1.05, 3.0])
    # Windows are half-open like the rate limiter's: (0.0, 1.0] holds 3, (0.05, 1.05] holds 4.
    assert stats.max_in_window(1.0) == 4
    assert stats.max_in_window(0.2) == 2
    assert stats.mean_rate() == pytest.approx(5 / 3.0)
    assert Stats().max_in_window() == 0
    assert Stats(timestamps=[1.0]).mean_rate() == 0.0


async def test_make_app_uses_given_stats(session: aiohttp.ClientSession) -> None:
    from aiohttp import web

    stats = Stats()
    runner = web.AppRunner(make_app(MockConfig(), stats), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        async with session.post(
            f"http://127.0.0.1:{port}{API_PATH}", json={"question": "q"}, headers=HEADERS
        ) as r:
            assert r.status == 200
        assert stats.answers == {"q": 1}
    finally:
        await runner.cleanup()


async def test_stop_does_not_wait_for_hung_requests(session: aiohttp.ClientSession) -> None:
    srv = MockServer(MockConfig(hang_rate=1.0))
    await srv.start()
    pending = asyncio.ensure_future(ask(session, srv, "q"))
    await wait_for(lambda: srv.stats.by_status.get(0) == 1)
    start = time.monotonic()
    await srv.stop()
    assert time.monotonic() - start < 1.0
    with pytest.raises(aiohttp.ClientError):
        await pending


# --- threaded and subprocess servers ----------------------------------------------------

# No proxies: the environment may define one, and these requests must stay on 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post_sync(base_url: str, question: str) -> tuple[int, str]:
    request = urllib.request.Request(
        base_url + API_PATH,
        data=json.dumps({"question": question}).encode(),
        headers={**HEADERS, "Content-Type": "application/json"},
    )
    try:
        with _OPENER.open(request, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode()


def test_threaded_server_and_config_swap() -> None:
    with ThreadedMockServer(MockConfig()) as srv:
        assert srv.base_url.startswith("http://127.0.0.1:")
        assert post_sync(srv.base_url, "q") == (
            200,
            json.dumps({"answer": {"content": mock_answer("q")}}),
        )
        assert srv.stats.answers == {"q": 1}

        srv.config = MockConfig(error_rate=1.0)
        assert srv.config.error_rate == 1.0
        status, _ = post_sync(srv.base_url, "q")
        assert status in (500, 502, 503, 504)

        srv.stats.reset()
        srv.config = MockConfig(secret="Funghi")
        assert post_sync(srv.base_url, "q")[0] == 401
        assert srv.stats.requests == 1
        assert srv.stats.by_status == {401: 1}


def test_serve_subprocess() -> None:
    code = "from batchpizza.mock.faults import MockConfig; from batchpizza.mock.server import serve; serve(MockConfig(), port=0)"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    with subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().rstrip("\n")
            prefix = "batchpizza mock server listening on http://127.0.0.1:"
            assert line.startswith(prefix), line
            assert int(line.removeprefix(prefix)) > 0
            base_url = line.removeprefix("batchpizza mock server listening on ")
            assert post_sync(base_url, "q")[0] == 200
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=5)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0
    last = err.strip().splitlines()[-1]
    assert json.loads(last)["requests"] == 1


# --- the OpenAI chat completions route --------------------------------------------------

KEY = "sk-mock-0123456789abcdef"


async def chat(
    session: aiohttp.ClientSession,
    srv: MockServer,
    content: str | list[dict[str, str]],
    *,
    headers: dict[str, str] | None = None,
    **body: Any,
) -> tuple[aiohttp.ClientResponse, Any]:
    messages = [{"role": "user", "content": content}] if isinstance(content, str) else content
    async with session.post(
        srv.base_url + CHAT_PATH, json={"messages": messages, **body}, headers=headers
    ) as r:
        text = await r.text()
    try:
        return r, json.loads(text)
    except ValueError:
        return r, text


async def test_chat_completion_answers_like_openai(
    session: aiohttp.ClientSession, server: MockServer
) -> None:
    r, body = await chat(session, server, "Margherita?", model="gpt-4o-mini")
    assert r.status == 200
    assert r.headers["x-request-id"] == "req_mock_1"
    assert "x-ratelimit-limit-requests" not in r.headers  # no limit, none announced
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "gpt-4o-mini"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": mock_answer("Margherita?"),
                "refusal": None,
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    # "Margherita?": Margher + ita + ? = 3, and 3 a message and 3 for the reply.
    answer_tokens = tokens.count(mock_answer("Margherita?"))
    assert body["usage"] == {
        "prompt_tokens": 9,
        "completion_tokens": answer_tokens,
        "total_tokens": 9 + answer_tokens,
    }
    assert server.stats.answers == {"Margherita?": 1}
    assert server.stats.by_status == {200: 1}


async def test_chat_answers_the_formatted_prompt_of_several_messages(
    session: aiohttp.ClientSession, server: MockServer
) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},  # content parts
    ]
    _, body = await chat(session, server, messages)
    prompt = "System: Be brief.\nUser: Hi\nAssistant:"
    assert body["choices"][0]["message"]["content"] == mock_answer(prompt)
    assert body["model"] == "batchpizza-mock"  # no model asked for: the default
    # Each message's own text counts, not the roles of the formatted prompt.
    assert body["usage"]["prompt_tokens"] == tokens.count("Be brief.") + tokens.count("Hi") + 9


async def test_chat_max_tokens_cuts_the_answer_to_tokens(
    session: aiohttp.ClientSession, server: MockServer
) -> None:
    for field in ("max_tokens", "max_completion_tokens"):
        _, body = await chat(session, server, "q", **{field: 1})
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["choices"][0]["message"]["content"] == "pizza"  # its first token
        assert body["usage"]["completion_tokens"] == 1
    _, body = await chat(session, server, "q", max_tokens=100)
    assert body["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": KEY}]
)
async def test_chat_requires_the_key_when_set(
    session: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    async with MockServer(MockConfig(api_key=KEY)) as srv:
        r, body = await chat(session, srv, "q", headers=headers)
        assert r.status == 401
        assert body["error"]["code"] == "invalid_api_key"
        assert body["error"]["type"] == "invalid_request_error"
        assert "sk-wrong" not in json.dumps(body)
        r, _ = await chat(session, srv, "q", headers={"Authorization": f"Bearer {KEY}"})
        assert r.status == 200
        async with session.get(srv.base_url + "/v1/models", headers=headers) as resp:
            assert resp.status == 401


async def test_chat_serves_only_its_models_when_given(session: aiohttp.ClientSession) -> None:
    async with MockServer(MockConfig(models=("llama-3-8b", "qwen"))) as srv:
        r, body = await chat(session, srv, "q", model="gpt-5")
        assert r.status == 404
        assert body["error"]["code"] == "model_not_found"
        assert "`gpt-5` does not exist" in body["error"]["message"]
        _, body = await chat(session, srv, "q", model="qwen")
        assert body["model"] == "qwen"
        _, body = await chat(session, srv, "q")
        assert body["model"] == "llama-3-8b"  # the first is the default
        async with session.get(srv.base_url + "/v1/models") as resp:
            listed = await resp.json()
        assert [m["id"] for m in listed["data"]] == ["llama-3-8b", "qwen"]
        assert srv.stats.requests == 3  # the models list is not an API request


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[1, 2]",
        b'{"prompt": "q"}',
        b'{"messages": []}',
        b'{"messages": [{"role": "user"}]}',
        b'{"messages": [{"content": "q"}]}',
        b'{"messages": [{"role": "user", "content": "q"}], "model": 7}',
        b'{"messages": [{"role": "user", "content": "q"}], "max_tokens": 0}',
        b'{"messages": [{"role": "user", "content": "q"}], "max_tokens": "5"}',
    ],
)
async def test_chat_bad_body_is_an_openai_style_400(
    session: aiohttp.ClientSession, server: MockServer, data: bytes
) -> None:
    async with session.post(server.base_url + CHAT_PATH, data=data) as r:
        assert r.status == 400
        body = await r.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}


async def test_chat_rate_limit_headers_and_429_with_retry_after_ms(
    session: aiohttp.ClientSession,
) -> None:
    async with MockServer(MockConfig(rate_limit=3, retry_after="2")) as srv:
        seen = []
        for i in range(4):
            r, body = await chat(session, srv, f"q{i}")
            seen.append((r.status, r.headers["x-ratelimit-remaining-requests"]))
            assert r.headers["x-ratelimit-limit-requests"] == "3"
            assert r.headers["x-ratelimit-reset-requests"].endswith("ms")
        assert seen == [(200, "2"), (200, "1"), (200, "0"), (429, "0")]
        assert r.headers["retry-after"] == "2"
        assert r.headers["retry-after-ms"] == "2000"
        assert body["error"]["code"] == "rate_limit_exceeded"


async def test_chat_directives_work_in_message_content(
    session: aiohttp.ClientSession, server: MockServer
) -> None:
    r, body = await chat(session, server, "[[status:503]]")
    assert (r.status, r.headers["retry-after"], r.headers["retry-after-ms"]) == (503, "1", "1000")
    assert body["error"]["type"] == "server_error"
    messages = [{"role": "system", "content": "x"}, {"role": "user", "content": "[[fail-first:1]]"}]
    r, _ = await chat(session, server, messages)
    assert r.status == 503
    r, body = await chat(session, server, messages)
    assert body["choices"][0]["message"]["content"] == mock_answer(
        "System: x\nUser: [[fail-first:1]]\nAssistant:"
    )
    start = time.monotonic()
    r, _ = await chat(session, server, "[[slow:60]]")
    assert r.status == 200 and time.monotonic() - start >= 0.06
    r, _ = await chat(session, server, "[[retry-after:Wed, 21 Oct 2037 07:28:00 GMT]]")
    assert r.status == 429 and "retry-after-ms" not in r.headers  # a date has no ms twin


async def test_chat_faults_are_shaped_like_chat_completions(
    session: aiohttp.ClientSession, server: MockServer
) -> None:
    _, body = await chat(session, server, "[[misuse]]")
    assert body["choices"][0]["message"]["content"] == MISUSE_TEXT
    _, body = await chat(session, server, "[[empty]]")
    assert body["choices"][0]["message"]["content"] is None
    _, body = await chat(session, server, "[[shape:wrong]]")
    assert body["choices"] == []
    _, body = await chat(session, server, "[[shape:content]]")
    assert body["choices"][0]["message"]["content"] == [
        {"type": "text", "text": mock_answer("[[shape:content]]")}
    ]
    r, body = await chat(session, server, "[[garbage]]")
    assert r.status == 200 and isinstance(body, str)  # not JSON
    _, body = await chat(session, server, "[[big:1000]]")
    assert len(body["choices"][0]["message"]["content"]) == 1000
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await chat(session, server, "[[drop]]")


async def test_chat_random_faults_follow_the_config(session: aiohttp.ClientSession) -> None:
    async with MockServer(MockConfig(error_rate=1.0)) as srv:
        r, body = await chat(session, srv, "q")
        assert r.status in (500, 502, 503, 504)
        assert body["error"]["message"] == "the oven is on fire"
    async with MockServer(MockConfig(empty_rate=1.0)) as srv:
        _, body = await chat(session, srv, "q")
        assert body["choices"][0]["message"]["content"] is None


# --- misuse_after -----------------------------------------------------------------------


async def test_misuse_after_refuses_every_request_after_n(session: aiohttp.ClientSession) -> None:
    async with MockServer(MockConfig(misuse_after=2)) as srv:
        replies = [json.loads((await ask(session, srv, f"q{i}"))[1]) for i in range(5)]
        assert replies[:2] == [{"answer": {"content": mock_answer(f"q{i}")}} for i in range(2)]
        assert replies[2:] == [{"answer": {"content": MISUSE_TEXT}}] * 3
        # Scripted rows are refused too, and the chat route is not affected.
        _, body = await ask(session, srv, "[[status:503]]")
        assert json.loads(body) == {"answer": {"content": MISUSE_TEXT}}
        r, _ = await chat(session, srv, "q")
        assert r.status == 200
        # A reset (or a new config) starts counting again.
        srv.reset()
        _, body = await ask(session, srv, "q")
        assert json.loads(body)["answer"]["content"] == mock_answer("q")
        assert srv.stats.answers == {"q": 1}


async def test_misuse_after_zero_refuses_from_the_first(session: aiohttp.ClientSession) -> None:
    async with MockServer(MockConfig(misuse_after=0)) as srv:
        _, body = await ask(session, srv, "q")
        assert json.loads(body) == {"answer": {"content": MISUSE_TEXT}}
        r, _ = await ask(session, srv, "q", headers={})
        assert r.status == 401  # a wrong secret is still a wrong secret


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0ms"),
        (0.0204, "20ms"),
        (0.9994, "999ms"),
        (1.5, "1.5s"),
        (360.0, "6m0s"),
        (61.25, "1m1.25s"),
    ],
)
def test_go_durations_as_openai_writes_them(seconds: float, text: str) -> None:
    assert _go_duration(seconds) == text


# --- the command ------------------------------------------------------------------------


def test_every_mock_server_option_says_what_it_does() -> None:
    from batchpizza.commands.mock_server import mock_server

    missing = [p.name for p in mock_server.params if isinstance(p, click.Option) and not p.help]
    assert missing == []
    assert CHAT_PATH in (mock_server.help or "")


def test_mock_server_options_reach_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from batchpizza import cli
    from batchpizza.mock import server as mock_server

    seen: list[tuple[MockConfig, str, int]] = []
    monkeypatch.setattr(
        mock_server, "serve", lambda c, host, port, batches: seen.append((c, host, port))
    )
    args = ["mock-server", "--port", "0", "--misuse-after", "3", "--api-key", KEY]
    result = CliRunner().invoke(cli.cli, [*args, "--models", "a, b,", "--seed", "4"])
    assert result.exit_code == 0, result.output
    config, _, port = seen[0]
    assert (config.misuse_after, config.api_key, config.models, config.seed) == (
        3,
        KEY,
        ("a", "b"),
        4,
    )
    assert port == 0
    result = CliRunner().invoke(cli.cli, ["mock-server", "--models", " , "])
    assert result.exit_code == 2
    assert "--models" in result.output
