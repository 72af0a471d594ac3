"""The provider against the local mock API (and a few tiny purpose-built servers) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from batchpizza import FinishReason, MisuseDetected, Pizzagpt, format_prompt
from batchpizza.errors import (
    BadReply,
    HTTPStatusError,
    ProviderError,
    RedirectRefused,
    RequestTimeout,
    TransportError,
)
from batchpizza.mock.replies import MISUSE_TEXT, mock_answer
from batchpizza.mock.server import MockServer
from batchpizza.providers import http as provider_http
from batchpizza.providers import pizzagpt as provider
from batchpizza.providers.pizzagpt import ask, extract_answer, parse_retry_after, refusal_in

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def srv() -> AsyncIterator[MockServer]:
    async with MockServer() as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


class Recorder:
    """A one-route server on 127.0.0.1 that records every request it gets."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.base_url = ""
        self.port = 0
        self._handler = handler
        self._runner: web.AppRunner | None = None

    async def _any(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append((request.method, request.path_qs, dict(request.headers), body))
        if self._handler is not None:
            return await self._handler(request)
        return web.json_response({"answer": {"content": "recorded"}})

    async def __aenter__(self) -> Recorder:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


# --- format_prompt ----------------------------------------------------------------------------


def test_format_prompt_one_message_is_its_content() -> None:
    assert format_prompt([{"role": "user", "content": "Quanto costa una pizza?"}]) == (
        "Quanto costa una pizza?"
    )


def test_format_prompt_one_system_message_is_still_just_its_content() -> None:
    assert format_prompt([{"role": "system", "content": "Be brief."}]) == "Be brief."


def test_format_prompt_several_messages_are_role_lines_then_assistant() -> None:
    messages = [
        {"role": "SYSTEM", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Ciao!"},
        {"role": "uSeR", "content": "Margherita or marinara?"},
    ]
    assert format_prompt(messages) == (
        "System: Be brief.\nUser: Hi\nAssistant: Ciao!\nUser: Margherita or marinara?\nAssistant:"
    )


def test_format_prompt_keeps_multiline_content_as_is() -> None:
    messages = [{"role": "user", "content": "line one\nline two"}, {"role": "user", "content": ""}]
    assert format_prompt(messages) == "User: line one\nline two\nUser: \nAssistant:"


# --- replies ----------------------------------------------------------------------------------


async def test_answer_content_is_the_answer(srv: MockServer, session: aiohttp.ClientSession):
    assert await ask(session, "Una margherita?", base_url=srv.base_url) == mock_answer(
        "Una margherita?"
    )


async def test_top_level_content_is_the_answer(srv: MockServer, session: aiohttp.ClientSession):
    q = "shape [[shape:content]]"
    assert await ask(session, q, base_url=srv.base_url) == mock_answer(q)


@pytest.mark.parametrize(
    "question", ["[[shape:wrong]]", "[[empty]]", "[[garbage]]"], ids=["wrong", "empty", "garbage"]
)
async def test_a_2xx_reply_without_text_is_a_retryable_bad_reply(
    srv: MockServer, session: aiohttp.ClientSession, question: str
) -> None:
    with pytest.raises(BadReply) as caught:
        await ask(session, question, base_url=srv.base_url)
    assert caught.value.retryable
    assert caught.value.status == 200


@pytest.mark.parametrize(
    "body",
    [
        b'{"answer": {"content": null}}',
        b'{"answer": {"content": 42}}',
        b'{"answer": {"text": "hello"}}',
        b'{"answer": "hello"}',
        b'{"content": ""}',
        b'{"content": "   \\n "}',
        b"[]",
        b'"just a string"',
        b"",
        b"<html>oops</html>",
    ],
)
def test_extract_answer_rejects_every_reply_without_text(body: bytes) -> None:
    with pytest.raises(BadReply):
        extract_answer(body)


def test_extract_answer_prefers_answer_content_over_top_level_content() -> None:
    body = json.dumps({"answer": {"content": "inner"}, "content": "outer"}).encode()
    assert extract_answer(body) == "inner"


def test_extract_answer_keeps_unicode_text_exactly() -> None:
    text = "Pizza 🍕 «margherita» — 10 €\n"
    assert extract_answer(json.dumps({"answer": {"content": text}}).encode()) == text


async def test_http_404_is_not_retryable(srv: MockServer, session: aiohttp.ClientSession):
    with pytest.raises(HTTPStatusError) as caught:
        await ask(session, "[[status:404]]", base_url=srv.base_url)
    assert caught.value.status == 404
    assert not caught.value.retryable
    assert caught.value.retry_after is None


@pytest.mark.parametrize("status", [429, 503])
async def test_429_and_503_are_retryable_with_retry_after(
    srv: MockServer, session: aiohttp.ClientSession, status: int
) -> None:
    with pytest.raises(HTTPStatusError) as caught:
        await ask(session, f"[[status:{status}]]", base_url=srv.base_url)
    assert caught.value.status == status
    assert caught.value.retryable
    assert caught.value.retry_after == 1.0


@pytest.mark.parametrize("status", [408, 425, 500, 502, 504])
async def test_other_passing_statuses_are_retryable(
    srv: MockServer, session: aiohttp.ClientSession, status: int
) -> None:
    with pytest.raises(HTTPStatusError) as caught:
        await ask(session, f"[[status:{status}]]", base_url=srv.base_url)
    assert caught.value.status == status
    assert caught.value.retryable


@pytest.mark.parametrize("status", [400, 401, 403, 410, 422])
async def test_other_client_errors_are_not_retryable(
    srv: MockServer, session: aiohttp.ClientSession, status: int
) -> None:
    with pytest.raises(HTTPStatusError) as caught:
        await ask(session, f"[[status:{status}]]", base_url=srv.base_url)
    assert caught.value.status == status
    assert not caught.value.retryable


async def test_retry_after_in_seconds_is_parsed(srv: MockServer, session: aiohttp.ClientSession):
    with pytest.raises(HTTPStatusError) as caught:
        await ask(session, "[[retry-after:7]]", base_url=srv.base_url)
    assert caught.value.status == 429
    assert caught.value.retry_after == 7.0
    # The directive fires once: the same question is then answered.
    assert await ask(session, "[[retry-after:7]]", base_url=srv.base_url)


async def test_retry_after_as_http_date_is_parsed(srv: MockServer, session: aiohttp.ClientSession):
    date = email.utils.formatdate(time.time() + 120, usegmt=True)
    with pytest.raises(HTTPStatusError) as caught:
        await ask(session, f"[[retry-after:{date}]]", base_url=srv.base_url)
    assert caught.value.retry_after is not None
    assert 110 <= caught.value.retry_after <= 121


def test_parse_retry_after_forms() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("30", now) == 30.0
    assert parse_retry_after(" 2.5 ", now) == 2.5
    assert parse_retry_after("0", now) == 0.0  # the server's own "now"
    assert parse_retry_after(email.utils.formatdate(now + 90, usegmt=True), now) == 90.0
    # A date already past (a server's clock behind ours) or a negative number tells no wait:
    # the retry backs off as without the header, rather than go out at once.
    assert parse_retry_after("-5", now) is None
    assert parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now) is None
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("", now) is None
    assert parse_retry_after("soon", now) is None


async def test_a_dropped_connection_is_a_transport_error(
    srv: MockServer, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(TransportError) as caught:
        await ask(session, "[[drop]]", base_url=srv.base_url)
    assert not isinstance(caught.value, RequestTimeout)
    assert caught.value.retryable


async def test_a_refused_connection_is_a_transport_error(session: aiohttp.ClientSession):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransportError) as caught:
        await ask(session, "hi", base_url=f"http://127.0.0.1:{port}", timeout=5)
    assert caught.value.retryable


async def test_a_hang_is_a_request_timeout(srv: MockServer, session: aiohttp.ClientSession):
    started = time.monotonic()
    with pytest.raises(RequestTimeout) as caught:
        await ask(session, "[[hang]]", base_url=srv.base_url, timeout=0.3)
    assert time.monotonic() - started < 5
    assert isinstance(caught.value, TransportError)
    assert caught.value.retryable


async def test_a_timeout_while_the_body_trickles_in_is_a_request_timeout(
    session: aiohttp.ClientSession,
) -> None:
    async def trickle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "application/json"})
        await resp.prepare(request)
        await resp.write(b'{"answer": {"content": "a')
        await asyncio.sleep(3600)
        return resp

    async with Recorder(trickle) as rec:
        with pytest.raises(RequestTimeout):
            await ask(session, "hi", base_url=rec.base_url, timeout=0.3)


async def test_a_reply_bigger_than_max_body_bytes_is_a_bad_reply(
    srv: MockServer, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(provider_http, "MAX_BODY_BYTES", 1000)
    assert len(await ask(session, "[[big:500]]", base_url=srv.base_url)) == 500
    with pytest.raises(BadReply, match="large"):
        await ask(session, "[[big:5000]]", base_url=srv.base_url)


async def test_a_chunked_reply_bigger_than_max_body_bytes_is_a_bad_reply(
    session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b'{"answer": {"content": "')
        for _ in range(100):
            await resp.write(b"x" * 512)
        await resp.write(b'"}}')
        await resp.write_eof()
        return resp

    monkeypatch.setattr(provider_http, "MAX_BODY_BYTES", 4096)
    async with Recorder(endless) as rec:
        with pytest.raises(BadReply):
            await ask(session, "hi", base_url=rec.base_url)


# --- misuse -----------------------------------------------------------------------------------


async def test_misuse_reply_raises_misuse_detected_keeping_the_text(
    srv: MockServer, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(MisuseDetected) as caught:
        await ask(session, "[[misuse]]", base_url=srv.base_url)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, ProviderError)
    assert caught.value.text == MISUSE_TEXT


async def test_plain_text_bot_check_is_misuse(srv: MockServer, session: aiohttp.ClientSession):
    with pytest.raises(MisuseDetected) as caught:
        await ask(session, "[[botcheck]]", base_url=srv.base_url)
    assert "kästchen" in caught.value.text


async def test_misuse_text_on_an_error_status_is_misuse(session: aiohttp.ClientSession):
    async def refuse(request: web.Request) -> web.StreamResponse:
        return web.Response(status=403, text=MISUSE_TEXT)

    async with Recorder(refuse) as rec:
        with pytest.raises(MisuseDetected):
            await ask(session, "hi", base_url=rec.base_url)


@pytest.mark.parametrize(
    "text",
    [
        "Misuse detected. Please get in touch, we can come up with a solution for your use case.",
        "MISUSE   detected.\n please",
        "misuse\tDETECTED",
        "  Sorry:\n\nMisuse\n   Detected!  ",
        "Du musst das Kästchen anklicken!",
        "DU MUSST DAS KÄSTCHEN\n ANKLICKEN",
        "du  musst das kästchen anklicken",
    ],
)
def test_misuse_variants_are_detected_in_json_and_in_plain_text(text: str) -> None:
    assert refusal_in(text)
    with pytest.raises(MisuseDetected) as caught:
        extract_answer(json.dumps({"answer": {"content": text}}).encode())
    assert caught.value.text == text
    with pytest.raises(MisuseDetected):
        extract_answer(text.encode())
    with pytest.raises(MisuseDetected):
        extract_answer(json.dumps({"content": text}).encode())


@pytest.mark.parametrize(
    "text",
    ["Misuse of antibiotics is common.", "Nothing was detected.", "Il kästchen è una scatola."],
)
def test_answers_that_merely_mention_the_words_are_answers(text: str) -> None:
    assert not refusal_in(text)
    assert extract_answer(json.dumps({"answer": {"content": text}}).encode()) == text


# --- what is sent -----------------------------------------------------------------------------


async def test_request_is_a_post_with_the_sites_headers_and_question_body(
    session: aiohttp.ClientSession,
) -> None:
    async with Recorder() as rec:
        assert await ask(session, "Quanto costa?", base_url=rec.base_url) == "recorded"
    [(method, path, headers, body)] = rec.requests
    h = {k.lower(): v for k, v in headers.items()}
    assert method == "POST"
    assert path == "/api/chatx-completion"
    assert json.loads(body) == {"question": "Quanto costa?"}
    assert h["x-secret"] == "Marinara"
    assert h["accept"] == "application/json"
    assert h["content-type"].split(";")[0] == "application/json"
    assert h["origin"] == rec.base_url
    assert h["referer"] == rec.base_url + "/en"
    assert h["user-agent"].startswith("Mozilla/5.0 (")
    assert any(b in h["user-agent"] for b in ("Chrome/", "Firefox/", "Safari/"))


async def test_a_trailing_slash_on_base_url_changes_nothing(session: aiohttp.ClientSession):
    async with Recorder() as rec:
        await ask(session, "hi", base_url=rec.base_url + "/")
    [(_, path, headers, _)] = rec.requests
    h = {k.lower(): v for k, v in headers.items()}
    assert path == "/api/chatx-completion"
    assert h["origin"] == rec.base_url
    assert h["referer"] == rec.base_url + "/en"


async def test_non_ascii_prompt_arrives_intact(srv: MockServer, session: aiohttp.ClientSession):
    q = 'Qual è la pizza più buona? 🍕 \u2028 "quoted" \\ back'
    assert await ask(session, q, base_url=srv.base_url) == mock_answer(q)


# --- redirects --------------------------------------------------------------------------------


async def test_same_host_redirect_is_followed(srv: MockServer, session: aiohttp.ClientSession):
    q = "[[redirect:/api/chatx-completion?r=1]]"
    assert await ask(session, q, base_url=srv.base_url) == mock_answer(q)
    assert srv.stats.by_status == {307: 1, 200: 1}


async def test_redirect_to_another_host_is_refused_and_nothing_is_sent_there(
    srv: MockServer, session: aiohttp.ClientSession
) -> None:
    async with Recorder() as elsewhere:
        # Same machine, but another host name: the x-secret must not follow the redirect.
        target = f"http://localhost:{elsewhere.port}/api/chatx-completion"
        with pytest.raises(RedirectRefused) as caught:
            await ask(session, f"[[redirect:{target}]]", base_url=srv.base_url)
        assert target in str(caught.value)
        assert not caught.value.retryable
        assert elsewhere.requests == []
    assert srv.stats.by_status == {307: 1}


async def test_redirect_to_an_unreachable_other_host_names_the_target(
    srv: MockServer, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(RedirectRefused, match=r"http://127\.0\.0\.2:9/steal"):
        await ask(session, "[[redirect:http://127.0.0.2:9/steal]]", base_url=srv.base_url)


async def test_endless_same_host_redirects_end_in_an_error(session: aiohttp.ClientSession):
    async def loop(request: web.Request) -> web.StreamResponse:
        return web.Response(status=307, headers={"Location": "/api/chatx-completion"})

    async with Recorder(loop) as rec:
        with pytest.raises(ProviderError):
            await ask(session, "hi", base_url=rec.base_url)
    assert 1 < len(rec.requests) <= 20


@pytest.mark.slow
async def test_the_timeout_bounds_the_request_with_its_redirects(
    session: aiohttp.ClientSession,
) -> None:
    # Each hop is quick enough alone; together they are past --timeout, which is the time to a
    # whole reply ("no complete reply within"), not to each hop's.
    async def slow_hop(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.1)
        hop = int(request.query.get("hop", "0"))
        if hop < 3:
            return web.Response(status=307, headers={"Location": f"?hop={hop + 1}"})
        return web.json_response({"answer": {"content": "late"}})

    async with Recorder(slow_hop) as rec:
        assert await ask(session, "hi", base_url=rec.base_url, timeout=5) == "late"
        with pytest.raises(RequestTimeout, match=r"within 0\.25s"):
            await ask(session, "hi", base_url=rec.base_url, timeout=0.25)


async def test_ask_from_threads_each_with_its_loop_keeps_each_timeout() -> None:
    # ask() may be called from several threads, each running its own event loop at once: every
    # call's --timeout must hold on its own loop (a limit shared across loops lost track).
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(1.5)
        return web.json_response({"answer": {"content": "too late"}})

    async with Recorder(slow) as rec:

        def in_own_loop() -> str:
            async def go() -> str:
                async with aiohttp.ClientSession() as own:
                    try:
                        return await ask(own, "hi", base_url=rec.base_url, timeout=0.3)
                    except RequestTimeout:
                        return "timed out"

            return asyncio.run(go())

        got = await asyncio.gather(*(asyncio.to_thread(in_own_loop) for _ in range(3)))
    assert got == ["timed out"] * 3


# --- the seed's interface ---------------------------------------------------------------------


async def test_seed_example_prints_exactly_the_answer(
    srv: MockServer, capsys: pytest.CaptureFixture[str]
) -> None:
    question = "Qual è la capitale d'Italia?"
    gen = await Pizzagpt.create_async_generator(
        model="gpt-4o-mini", messages=user(question), base_url=srv.base_url
    )
    async for content in gen:
        print(content, end="")
    assert capsys.readouterr().out == mock_answer(question)


async def test_async_for_yields_the_text_then_finish_reason_stop(srv: MockServer):
    items = [
        x
        async for x in Pizzagpt.create_async_generator(
            "gpt-4o-mini", user("ciao"), base_url=srv.base_url
        )
    ]
    assert items == [mock_answer("ciao"), FinishReason("stop")]
    assert isinstance(items[1], FinishReason)


async def test_several_messages_are_sent_as_the_formatted_prompt(srv: MockServer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    items = [
        x
        async for x in Pizzagpt.create_async_generator(
            "gpt-4o-mini", messages, base_url=srv.base_url
        )
    ]
    assert items[0] == mock_answer("System: Be brief.\nUser: Hi\nAssistant:")


async def test_the_generator_raises_misuse_detected(srv: MockServer):
    with pytest.raises(ValueError, match="Misuse detected") as caught:
        async for _ in Pizzagpt.create_async_generator(
            "gpt-4o-mini", user("[[misuse]]"), base_url=srv.base_url
        ):
            pass
    assert isinstance(caught.value, MisuseDetected)


async def test_the_generator_raises_typed_errors_carrying_the_status(srv: MockServer):
    with pytest.raises(HTTPStatusError) as caught:
        async for _ in Pizzagpt.create_async_generator(
            "gpt-4o-mini", user("[[status:502]]"), base_url=srv.base_url
        ):
            pass
    assert caught.value.status == 502


async def test_the_generator_accepts_timeout_and_ignores_g4f_extras(srv: MockServer):
    with pytest.raises(RequestTimeout):
        async for _ in Pizzagpt.create_async_generator(
            "gpt-4o-mini", user("[[hang]]"), base_url=srv.base_url, timeout=0.3, stream=False
        ):
            pass


def test_finish_reason_prints_as_nothing() -> None:
    stop = FinishReason("stop")
    assert stop.reason == "stop"
    assert str(stop) == ""
    assert f"{stop}" == ""


def test_class_attributes_of_the_seed() -> None:
    assert Pizzagpt.url == "https://www.pizzagpt.it"
    assert Pizzagpt.api_endpoint == "/api/chatx-completion"
    assert Pizzagpt.working is True
    assert Pizzagpt.default_model == "gpt-4o-mini"
    assert Pizzagpt.default_model in Pizzagpt.models
    assert list(Pizzagpt.models) == ["gpt-4o-mini"]


# --- sessions ---------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_given_session_is_reused_and_its_connection_limit_holds(srv: MockServer):
    questions = [f"question {i} [[slow:100]]" for i in range(10)]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2)) as shared:

        async def one(q: str) -> list[object]:
            return [
                x
                async for x in Pizzagpt.create_async_generator(
                    "gpt-4o-mini", user(q), base_url=srv.base_url, session=shared
                )
            ]

        results = await asyncio.gather(*(one(q) for q in questions))
        assert not shared.closed  # the caller's session is the caller's to close
    assert [r[0] for r in results] == [mock_answer(q) for q in questions]
    assert srv.stats.requests == 10
    assert srv.stats.peak_in_flight == 2


async def test_without_a_session_one_is_opened_and_closed(
    srv: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[aiohttp.ClientSession] = []
    real = aiohttp.ClientSession

    def tracking(*args: Any, **kwargs: Any) -> aiohttp.ClientSession:
        s = real(*args, **kwargs)
        made.append(s)
        return s

    monkeypatch.setattr(provider.aiohttp, "ClientSession", tracking)
    items = [
        x
        async for x in Pizzagpt.create_async_generator(
            "gpt-4o-mini", user("ciao"), base_url=srv.base_url
        )
    ]
    assert items[0] == mock_answer("ciao")
    assert len(made) == 1
    assert made[0].closed
    with pytest.raises(MisuseDetected):
        async for _ in Pizzagpt.create_async_generator(
            "gpt-4o-mini", user("[[misuse]]"), base_url=srv.base_url
        ):
            pass
    assert len(made) == 2
    assert made[1].closed


# --- proxy ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """proxy.py (a real forward proxy) in a subprocess, requiring basic auth user:pass.

    A subprocess rather than `proxy.Proxy` in-process: the latter forks, installs signal
    handlers and reconfigures the root logger of the test process."""
    where = tmp_path_factory.mktemp("proxy")
    port_file = where / "port"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["HOME"] = str(where)
    cmd = [
        sys.executable,
        "-m",
        "proxy",
        "--hostname",
        "127.0.0.1",
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--num-workers",
        "1",
        "--num-acceptors",
        "1",
        "--basic-auth",
        "user:pass",
        "--log-level",
        "ERROR",
        "--data-dir",
        str(where / "data"),
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=where
    )
    try:
        deadline = time.monotonic() + 15
        while not _read_port(port_file):
            if proc.poll() is not None or time.monotonic() > deadline:
                _, err = proc.communicate(timeout=5)
                pytest.fail(f"proxy.py did not start: {err.decode(errors='replace')}")
            time.sleep(0.02)
        yield _read_port(port_file)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def _read_port(path: Path) -> int:
    # IndexError: the file made, its port not yet written (seen under load).
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(path.read_text().split()[0])
    return 0


async def test_requests_go_through_the_proxy(
    http_proxy: int, srv: MockServer, session: aiohttp.ClientSession
) -> None:
    good = f"http://user:pass@127.0.0.1:{http_proxy}"
    bad = f"http://user:wrong@127.0.0.1:{http_proxy}"
    # The proxy turns the wrong password away: so the request really goes via the proxy.
    with pytest.raises(HTTPStatusError) as caught:
        await ask(session, "ciao", base_url=srv.base_url, proxy=bad, timeout=10)
    assert caught.value.status == 407
    assert not caught.value.retryable
    assert srv.stats.requests == 0
    assert await ask(session, "ciao", base_url=srv.base_url, proxy=good, timeout=10) == (
        mock_answer("ciao")
    )
    assert srv.stats.requests == 1


async def test_the_generator_passes_proxy_through(http_proxy: int, srv: MockServer):
    with pytest.raises(HTTPStatusError) as caught:
        async for _ in Pizzagpt.create_async_generator(
            "gpt-4o-mini",
            user("ciao"),
            proxy=f"http://127.0.0.1:{http_proxy}",  # no credentials
            base_url=srv.base_url,
            timeout=10,
        ):
            pass
    assert caught.value.status == 407
    items = [
        x
        async for x in Pizzagpt.create_async_generator(
            "gpt-4o-mini",
            user("ciao"),
            proxy=f"http://user:pass@127.0.0.1:{http_proxy}",
            base_url=srv.base_url,
            timeout=10,
        )
    ]
    assert items == [mock_answer("ciao"), FinishReason("stop")]


# --- cancellation -----------------------------------------------------------------------------


async def test_cancelling_ask_raises_cancelled_error_not_a_typed_error(
    session: aiohttp.ClientSession,
) -> None:
    arrived = asyncio.Event()

    async def hang(request: web.Request) -> web.StreamResponse:
        arrived.set()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async with Recorder(hang) as rec:
        task = asyncio.create_task(ask(session, "hi", base_url=rec.base_url, timeout=60))
        await asyncio.wait_for(arrived.wait(), timeout=10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()


async def test_cancelling_ask_against_a_hanging_mock_raises_cancelled_error(srv: MockServer):
    sent = asyncio.Event()

    async def on_sent(*_: object) -> None:
        sent.set()

    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(on_sent)
    async with aiohttp.ClientSession(trace_configs=[trace]) as traced:
        task = asyncio.create_task(ask(traced, "[[hang]]", base_url=srv.base_url, timeout=60))
        await asyncio.wait_for(sent.wait(), timeout=10)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("start", "target", "followed"),
    [
        ("http://127.0.0.1:8080/api", "http://127.0.0.1:8080/other", True),
        ("https://www.pizzagpt.it/api", "https://WWW.pizzagpt.it/x", True),
        ("http://www.pizzagpt.it/api", "https://www.pizzagpt.it/api", True),  # safe upgrade
        ("http://127.0.0.1:8080/api", "http://127.0.0.1:9090/api", False),  # another server
        ("https://www.pizzagpt.it/api", "http://www.pizzagpt.it/api", False),  # downgrade
        ("https://www.pizzagpt.it/api", "https://pizzagpt.it/api", False),  # another host
    ],
)
def test_redirects_are_followed_only_within_the_same_origin(
    start: str, target: str, followed: bool
) -> None:
    from yarl import URL

    from batchpizza.providers.http import same_origin as _same_origin

    assert _same_origin(URL(start), URL(target)) is followed


@pytest.mark.slow
async def test_a_redirect_loop_is_refused_without_retrying() -> None:
    async def loop_handler(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/api/chatx-completion")

    app = web.Application()
    app.router.add_post("/api/chatx-completion", loop_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(RedirectRefused) as caught:
                await ask(session, "hi", base_url=f"http://127.0.0.1:{port}", timeout=2)
        assert not caught.value.retryable
    finally:
        await runner.cleanup()
