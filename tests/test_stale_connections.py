"""A server that closes a kept-alive connection soon after a reply (gunicorn after 2 s, some
proxies after 50 ms): a POST sent on such a pooled connection fails before any reply, unread.
aiohttp resends only idempotent methods; batchpizza resends it at once, and counts it as a
request, not as a failed attempt. Measured against one closing 50 ms after each reply: 200 rows
took 391 requests, 191 retries and 12.4 s at 50/s before, 4.7 s and no retries after."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST

import batchpizza
from batchpizza.engine.session import new_session
from batchpizza.errors import TransportError
from batchpizza.providers.openai import OpenAIAPI
from batchpizza.records import Prompt
from batchpizza.reporting import build_report

BODY = json.dumps(
    {
        "id": "c1",
        "model": "m",
        "choices": [{"index": 0, "message": {"content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
).encode()
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)
CUT = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{"id'


class OneAnswerEach:
    """Answers the first request on each connection and keeps it open; on its next request the
    connection is closed unanswered (`later`: or answered with that, a reply cut short), as a
    server that closed it idle in the meantime (`pause`: after working on it that long).
    `first=None`: every request goes unanswered."""

    def __init__(
        self, later: bytes = b"", first: bytes | None = ANSWER, pause: float = 0.0
    ) -> None:
        self.later, self.first, self.pause = later, first, pause
        self.requests = self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            for reply in (self.first, self.later):
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":")[1]))
                if not reply:
                    await asyncio.sleep(self.pause)  # worked on it, then closed unanswered
                    break
                writer.write(reply)
                await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def serving(server: OneAnswerEach) -> AsyncIterator[str]:
    listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}/v1"
    finally:
        listening.close()
        await listening.wait_closed()


def prompt(n: int) -> Prompt:
    return Prompt(f"r{n}", "q", ({"role": "user", "content": "q"},))


async def test_a_post_failing_on_a_stale_pooled_connection_is_sent_again_at_once() -> None:
    server = OneAnswerEach()
    async with serving(server) as url, new_session(1) as session:
        provider = OpenAIAPI(url, model="m", timeout=5.0)
        answers = [await provider.ask(session, prompt(n)) for n in range(3)]

    assert [a.text for a in answers] == ["ok"] * 3
    assert (server.requests, server.connections) == (5, 3)  # two unread, on stale connections


@pytest.mark.slow
async def test_a_run_answers_every_row_with_no_retries_and_counts_the_resends(
    tmp_path: Path,
) -> None:
    server = OneAnswerEach()
    rows = [{"id": f"r{n}", "prompt": f"question {n}"} for n in range(3)]
    options: dict[str, Any] = dict(FAST, max_retries=0, concurrency=1)
    options["checkpoint"] = checkpoint = tmp_path / "ck"
    summary = tmp_path / "summary.json"
    async with serving(server) as url:
        out = await batchpizza.aanswer(
            rows,
            provider="openai",
            base_url=url,
            model="m",
            summary_json=str(summary),
            **options,
        )

    assert [(r["answer"], r["finish_reason"]) for r in out] == [("ok", "stop")] * 3
    assert [r["attempts"] for r in out] == [1, 2, 2]  # the unread send is a request of its row
    said = json.loads(summary.read_text())
    assert (said["requests"], said["retries"]) == (5, 0)
    _, numbers, _ = build_report(checkpoint, html=False)  # the attempts log
    assert (numbers["requests"]["total"], numbers["requests"]["answered"]) == (5, 3)
    assert "on a reused connection; sent again" in numbers["errors"][0]["example"]


async def test_a_post_failing_on_a_new_connection_is_not_sent_again() -> None:
    server = OneAnswerEach(first=None)  # closes every connection unanswered
    async with serving(server) as url, new_session(1) as session:
        with pytest.raises(TransportError, match="ServerDisconnected"):
            await OpenAIAPI(url, model="m", timeout=5.0).ask(session, prompt(0))

    assert server.requests == 1


async def test_a_reply_cut_short_on_a_pooled_connection_is_not_sent_again() -> None:
    server = OneAnswerEach(later=CUT)  # the server read it and began to answer
    async with serving(server) as url, new_session(1) as session:
        provider = OpenAIAPI(url, model="m", timeout=5.0)
        await provider.ask(session, prompt(0))
        with pytest.raises(TransportError, match="cut off"):
            await provider.ask(session, prompt(1))

    assert server.requests == 2


async def test_a_pooled_connection_closed_after_the_server_worked_on_it_is_not_sent_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A proxy ending a long request closes the connection as an idle one does, but the request
    # was read and worked on (and may be billed): sent again at once, it could be paid for
    # nine times with no backoff. Past a round trip (here 50 ms), a failure is a failed attempt.
    monkeypatch.setattr("batchpizza.providers.pooled._STALE_WITHIN", 0.05)
    server = OneAnswerEach(pause=0.3)
    async with serving(server) as url, new_session(1) as session:
        provider = OpenAIAPI(url, model="m", timeout=5.0)
        await provider.ask(session, prompt(0))
        with pytest.raises(TransportError, match="ServerDisconnected"):
            await provider.ask(session, prompt(1))

    assert server.requests == 2
