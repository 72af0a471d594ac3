"""A quota that is gone stops the run (providers/quota.py): here a limit of zero in the
x-ratelimit headers. LiteLLM's proxy refuses every request of a key, team or model whose
tpm_limit or rpm_limit is 0 and sends no header for a limit not set, so a 429 announcing a zero
limit is a quota of zero: retrying every row against it only collected 429s. In an answer a
zero cannot be a limit (the request passed): it is read as none announced, and said once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner
from conftest import FAST, write_jsonl
from test_metering import chat_server

import batchpizza
from batchpizza.cli import cli
from batchpizza.providers.quota import ZERO_LIMIT_TRIES, quota_spent, zero_unsure

ROWS = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(20)]
ANSWER = {"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 10, "completion_tokens": 2}}  # fmt: skip


def zero(kind: str) -> dict[str, str]:
    return {f"x-ratelimit-limit-{kind}": "0", f"x-ratelimit-remaining-{kind}": "0"}


async def run_against(chat: Any, tmp_path: Path, **options: Any) -> dict[str, Any]:
    """`arun` of ROWS against `chat` served on 127.0.0.1, with the OpenAI provider; the summary."""
    runner, port = await chat_server(chat)
    options = {**FAST, "provider": "openai", "base_url": f"http://127.0.0.1:{port}/v1", **options}
    try:
        return await batchpizza.arun(
            write_jsonl(tmp_path / "in.jsonl", ROWS), tmp_path / "out.jsonl", **options
        )
    finally:
        await runner.cleanup()


def test_a_429_announcing_a_zero_limit_is_a_spent_quota() -> None:
    said = quota_spent(429, {}, "Rate limit reached", zero("tokens"))
    assert said is not None and "x-ratelimit-limit-tokens: 0" in said
    said = quota_spent(429, {}, "Rate limit reached", zero("requests"))
    assert said is not None and "x-ratelimit-limit-requests: 0" in said
    # A limit of its own, used up for now: a rate limit, retried after its reset.
    spent = {"x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "0"}
    assert quota_spent(429, {}, "Rate limit reached", spent) is None
    assert quota_spent(503, {}, "busy", zero("tokens")) is None


def test_a_zero_limit_beside_a_reset_or_without_a_remaining_of_0_is_not_sure_to_be_a_quota() -> (
    None
):
    # Some servers send 0 for "no limit configured": only a zero with nothing remaining and no
    # window to refill says for sure that the key may send nothing.
    with_reset = {**zero("tokens"), "x-ratelimit-reset-tokens": "1s"}
    bare = {"x-ratelimit-limit-requests": "0"}
    for headers, kind in ((with_reset, "tokens"), (bare, "requests")):
        assert quota_spent(429, {}, "Rate limit reached", headers) is None
        assert zero_unsure(429, headers) == kind
    assert zero_unsure(429, zero("tokens"), placeholders={"tokens"}) is None
    assert zero_unsure(200, bare) is None
    # The body's code decides whatever the headers say.
    code = {"code": "insufficient_quota"}
    assert quota_spent(429, code, "You exceeded your current quota", with_reset) is not None


SLOW_DOWN = {"error": {"message": "Rate limit reached", "type": "requests"}}  # a 429's body


class Refusing:
    """A raw server refusing every request with a 429 that announces a zero limit."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = {**headers, "retry-after": "1"}
        self.requests = 0

    async def chat(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.json_response(SLOW_DOWN, status=429, headers=self.headers)


class Throttling:
    """A raw server answering every request (ANSWER) but those `refused` picks by their number
    (from 1), which get a 429 asking to slow down; every reply with `headers`."""

    def __init__(self, headers: dict[str, str], refused: Callable[[int], bool]) -> None:
        self.headers = headers
        self.refused = refused
        self.requests = 0

    async def chat(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.refused(self.requests):
            return web.json_response(SLOW_DOWN, status=429, headers=self.headers)
        return web.json_response(ANSWER, headers=self.headers)


@pytest.mark.parametrize(
    ("kind", "pacing"),
    [
        ("tokens", {"tpm": "auto"}),
        ("tokens", {}),
        ("requests", {"rate": "auto"}),
        ("requests", {}),
    ],
)
async def test_a_429_announcing_a_zero_limit_stops_the_run_at_once(
    kind: str, pacing: dict[str, Any], tmp_path: Path
) -> None:
    server = Refusing(zero(kind))
    concurrency = 4
    summary = await run_against(
        server.chat, tmp_path, concurrency=concurrency, max_retries=5, **pacing
    )
    assert (summary["exit_code"], summary["stopped"]) == (4, "quota")
    assert summary["pending"] == len(ROWS) and summary["failed"] == 0
    assert 1 <= server.requests <= concurrency  # those in flight at the first refusal


@contextlib.contextmanager
def served_in_a_thread(chat: Any) -> Iterator[int]:
    """`chat` served on 127.0.0.1 from a loop of its own (the command line wants the main
    thread's); its port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner, port = asyncio.run_coroutine_threadsafe(chat_server(chat), loop).result()
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def test_the_command_line_says_why_it_stopped(tmp_path: Path) -> None:
    server = Refusing(zero("tokens"))
    with served_in_a_thread(server.chat) as port:
        args = ["run", str(write_jsonl(tmp_path / "in.jsonl", ROWS[:3])), "-o",
                str(tmp_path / "out.jsonl"), "--provider", "openai", "--model", "m",
                "--base-url", f"http://127.0.0.1:{port}/v1", "--rate", "0", "--tpm", "auto",
                "--no-progress"]  # fmt: skip
        result = CliRunner().invoke(cli, args)
    assert result.exit_code == 4, result.output
    assert "x-ratelimit-limit-tokens: 0" in result.output
    assert "read as no limit" not in result.output  # said of answers, and there were none


async def test_answers_announcing_a_zero_limit_are_read_as_none_and_it_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    answered = 0

    async def chat(request: web.Request) -> web.Response:
        nonlocal answered
        answered += 1
        headers = {**zero("tokens"), **zero("requests"), "x-ratelimit-reset-requests": "1s"}
        return web.json_response(ANSWER, headers=headers)

    with caplog.at_level(logging.WARNING, logger="batchpizza"):
        summary = await run_against(chat, tmp_path, tpm="auto", quiet=False)
    assert (summary["exit_code"], summary["answered"], answered) == (0, len(ROWS), len(ROWS))
    said = [r.getMessage() for r in caplog.records if "limit of 0" in r.getMessage()]
    assert len(said) == 1 and "not paced by tokens" in said[0]


async def test_a_zero_limit_a_server_announced_in_answers_is_no_quota_in_its_429s(
    tmp_path: Path,
) -> None:
    # A server whose every reply carries x-ratelimit-limit-tokens: 0 (a placeholder: it answers)
    # and which now and then asks to slow down with a 429 carrying the same headers: a rate
    # limit, retried; the run stopped "quota" at its first 429 with every row left pending.
    headers = {**zero("tokens"), "x-ratelimit-limit-requests": "100",
               "x-ratelimit-remaining-requests": "50", "retry-after-ms": "1"}  # fmt: skip
    server = Throttling(headers, refused=lambda n: n % 3 == 0)

    summary = await run_against(server.chat, tmp_path, concurrency=1, max_retries=3)
    assert (summary["exit_code"], summary["stopped"]) == (0, None)
    assert summary["answered"] == len(ROWS) and server.requests > len(ROWS)


async def test_a_placeholder_zero_limit_in_the_first_reply_a_429_is_retried_not_a_spent_quota(
    tmp_path: Path,
) -> None:
    # A server that sends x-ratelimit-limit-tokens: 0 for "no limit configured", beside a reset,
    # and whose very first reply is a 429: before any answer taught that the 0 is a placeholder,
    # that 429 stopped the run as a spent quota, every row pending.
    headers = {**zero("tokens"), "x-ratelimit-reset-tokens": "1s", "retry-after-ms": "1"}
    server = Throttling(headers, refused=lambda n: n == 1)

    summary = await run_against(server.chat, tmp_path, concurrency=1, max_retries=3)
    assert (summary["exit_code"], summary["stopped"]) == (0, None)
    assert summary["answered"] == len(ROWS) and server.requests == len(ROWS) + 1


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_a_zero_limit_that_may_be_a_placeholder_stops_the_run_after_a_few_429s_in_a_row(
    concurrency: int, tmp_path: Path
) -> None:
    # Never an answer, every reply a 429 announcing a zero limit beside a reset: retried a
    # bounded number of times, then a spent quota (exit 4, rows pending), not --max-retries
    # 429s for every row.
    server = Refusing({**zero("tokens"), "x-ratelimit-reset-tokens": "1s"})
    server.headers.pop("retry-after")
    summary = await run_against(server.chat, tmp_path, concurrency=concurrency, max_retries=8)
    assert (summary["exit_code"], summary["stopped"]) == (4, "quota")
    assert summary["pending"] == len(ROWS) and summary["failed"] == 0
    # Each row in flight tried at most ZERO_LIMIT_TRIES times.
    assert ZERO_LIMIT_TRIES <= server.requests <= concurrency * ZERO_LIMIT_TRIES


@pytest.mark.parametrize("max_retries", [0, 1])
async def test_a_zero_limit_that_may_be_a_placeholder_stops_the_run_under_a_max_retries_below_it(
    max_retries: int, tmp_path: Path
) -> None:
    # Fewer tries than ZERO_LIMIT_TRIES: each row failed as rate limited after its tries, and
    # the next was sent, every row of the run tried against the quota of zero (exit 3).
    server = Refusing({**zero("tokens"), "x-ratelimit-reset-tokens": "1s"})
    server.headers.pop("retry-after")
    summary = await run_against(server.chat, tmp_path, concurrency=1, max_retries=max_retries)
    assert (summary["exit_code"], summary["stopped"]) == (4, "quota")
    assert summary["pending"] == len(ROWS) and summary["failed"] == 0
    assert server.requests == max_retries + 1  # the first row's tries, and nothing after
