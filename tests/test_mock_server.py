"""Tests for the mock Pizzagpt server: directives, random faults, stats, and ways to run it."""

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
import pytest

from batchpizza.mock_server import (
    API_PATH,
    BOT_CHECK_TEXT,
    MISUSE_TEXT,
    MockConfig,
    MockServer,
    Stats,
    ThreadedMockServer,
    make_app,
    mock_answer,
)

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
        assert remote == json.loads(json.dumps(stats.to_dict()))
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
    code = "from batchpizza.mock_server import serve, MockConfig; serve(MockConfig(), port=0)"
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
