"""What a server sends that no store can hold (a lone surrogate, a count beyond 64 bits) is made
storable where the reply is read, whole runs against small local servers finish with every row,
and the checkpoint never lets one row's values fail a group commit for the others."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from chat_servers import start_chat_server
from conftest import FAST, read_jsonl, write_jsonl

import batchpizza
from batchpizza import storable
from batchpizza.checkpoint import Checkpoint
from batchpizza.checkpoint.reading import read_only
from batchpizza.providers.pizzagpt import extract_answer
from batchpizza.records import Attempt, Result
from batchpizza.rows import prompt_digest

Reply = Callable[[str], Awaitable[web.StreamResponse]]


def chat_reply(content: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "m-1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5},
    }
    body.update(extra)
    return body


def json_response(body: dict[str, Any], status: int = 200) -> web.Response:
    # json.dumps writes a lone surrogate as the escape "\udXXX", as a server that cut an emoji
    # in half at max_tokens does.
    return web.Response(
        status=status, body=json.dumps(body).encode(), content_type="application/json"
    )


class Server:
    """A chat completions server on 127.0.0.1 replying per prompt, counting requests."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.requests = 0
        self.base_url = ""

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.json()
        return await self.reply(body["messages"][-1]["content"])


@contextlib.asynccontextmanager
async def serving(reply: Reply) -> AsyncIterator[Server]:
    server = Server(reply)
    runner, server.base_url = await start_chat_server(server._chat)
    try:
        yield server
    finally:
        await runner.cleanup()


async def run_openai(inp: Path, out: Path, base_url: str) -> batchpizza.Summary:
    return await batchpizza.arun(
        inp, out, provider="openai", base_url=base_url, model="m", concurrency=4, **FAST
    )


def by_id(out: Path) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in read_jsonl(out)}


# -- the rules ------------------------------------------------------------------------------------


def test_lone_surrogates_become_replacement_characters_and_the_rest_is_kept() -> None:
    assert storable.text("ciao \ud83d") == "ciao \ufffd"
    assert storable.text("\udcff\ud800x") == "\ufffd\ufffdx"
    assert storable.text("città 🍕") == "città 🍕"  # a whole emoji is not a surrogate in Python
    assert storable.json_value({"k\ud800": ["a\udfff", 1, None]}) == {
        "k\ufffd": ["a\ufffd", 1, None]
    }


@pytest.mark.parametrize(
    ("value", "kept"),
    [(0, 0), (2**63 - 1, 2**63 - 1), (2**63, None), (-1, None), (True, None), (10.0, 10),
     (0.0, 0), (-0.0, 0), (10.5, None), (-1.0, None), ("10", None), (2.0**63, None),
     (math.inf, None), (math.nan, None)],
)  # fmt: skip
def test_a_count_is_a_whole_number_within_64_bits(value: object, kept: int | None) -> None:
    # A whole float (`"prompt_tokens": 10.0`) was read as no count at all.
    assert storable.count(value) == kept


def test_a_pizzagpt_answer_with_a_lone_surrogate_is_storable() -> None:
    assert extract_answer(b'{"answer": {"content": "ciao \\ud83d"}}') == "ciao \ufffd"


# -- whole runs against servers that send them ---------------------------------------------------


async def test_lone_surrogates_in_answers_models_and_finish_reasons_are_stored_and_the_run_completes(
    tmp_path: Path,
) -> None:
    async def reply(prompt: str) -> web.StreamResponse:
        if prompt == "cut":  # an emoji cut in half at max_tokens
            body = chat_reply("pizza \ud83c", model="m\udc80")
            body["choices"][0]["finish_reason"] = "length"
            return json_response(body)
        if prompt == "odd":
            body = chat_reply("ok")
            body["choices"][0]["finish_reason"] = "stop\ud800"
            return json_response(body)
        return json_response(chat_reply(f"answer to {prompt}"))

    rows = [{"id": str(i), "prompt": p} for i, p in enumerate(["a", "cut", "odd", "b", "c"])]
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    async with serving(reply) as server:
        summary = await run_openai(inp, out, server.base_url)
        assert summary["exit_code"] == 0
        assert server.requests == 5
        got = by_id(out)
        assert got["1"]["answer"] == "pizza \ufffd"
        assert got["1"]["finish_reason"] == "length"
        assert got["1"]["model"] == "m\ufffd"
        assert got["2"]["finish_reason"] == "stop\ufffd"
        assert got["0"]["answer"] == "answer to a"
        assert [got[str(i)]["error"] for i in range(5)] == [None] * 5

        again = await run_openai(inp, out, server.base_url)
        assert again["exit_code"] == 0
        assert server.requests == 5  # the rerun sends nothing: every answer was kept


async def test_an_error_message_with_a_lone_surrogate_fails_its_row_only(tmp_path: Path) -> None:
    async def reply(prompt: str) -> web.StreamResponse:
        if prompt == "bad":
            return json_response({"error": {"message": "no \udcff here", "type": "x"}}, 400)
        return json_response(chat_reply(f"answer to {prompt}"))

    rows = [{"id": str(i), "prompt": p} for i, p in enumerate(["a", "bad", "b"])]
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    async with serving(reply) as server:
        summary = await run_openai(inp, out, server.base_url)
        assert summary["exit_code"] == 3  # finished, one row failed
        got = by_id(out)
        assert got["1"]["finish_reason"] == "error"
        assert "no \ufffd here" in got["1"]["error"]
        assert got["0"]["answer"] == "answer to a" and got["2"]["answer"] == "answer to b"

        await run_openai(inp, out, server.base_url)
        assert server.requests == 4  # only the failed row is sent again


async def test_usage_counts_beyond_64_bits_are_stored_as_null(tmp_path: Path) -> None:
    async def reply(prompt: str) -> web.StreamResponse:
        if prompt == "huge":
            usage = {"prompt_tokens": 2**64, "completion_tokens": 10**30}
            return json_response(chat_reply("fine", usage=usage))
        return json_response(chat_reply(f"answer to {prompt}"))

    rows = [{"id": str(i), "prompt": p} for i, p in enumerate(["a", "huge", "b"])]
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    async with serving(reply) as server:
        summary = await run_openai(inp, out, server.base_url)
        assert summary["exit_code"] == 0
        got = by_id(out)
        assert got["1"]["answer"] == "fine"
        assert (got["1"]["prompt_tokens"], got["1"]["completion_tokens"]) == (None, None)
        assert (got["0"]["prompt_tokens"], got["0"]["completion_tokens"]) == (3, 5)

        again = await run_openai(inp, out, server.base_url)
        assert again["exit_code"] == 0
        assert server.requests == 3


@contextlib.asynccontextmanager
async def raw_http(head: bytes, body: bytes) -> AsyncIterator[str]:
    """A server writing a reply's head byte for byte: header bytes that are not UTF-8."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            request = await reader.readuntil(b"\r\n\r\n")
            for line in request.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    await reader.readexactly(int(line.split(b":")[1]))
            writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    finally:
        server.close()
        await server.wait_closed()


async def test_header_bytes_that_are_not_utf8_are_stored_as_replacement_characters(
    tmp_path: Path,
) -> None:
    # aiohttp decodes them as lone surrogates (surrogateescape): the request id is one such text.
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-request-id: req_\xff\xfe\r\n"
    body = json.dumps(chat_reply("ciao")).encode()
    rows = [{"id": "0", "prompt": "a"}]
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    async with raw_http(head, body) as base_url:
        summary = await batchpizza.arun(
            inp, out, provider="openai", base_url=base_url, model="m", format="openai-batch", **FAST
        )
    assert summary["exit_code"] == 0
    [line] = read_jsonl(out)
    assert line["response"]["request_id"] == "req_\ufffd\ufffd"
    assert line["response"]["body"]["choices"][0]["message"]["content"] == "ciao"


# -- the checkpoint's own guard --------------------------------------------------------------------


def result(row_id: str, **values: Any) -> Result:
    digest = prompt_digest(row_id)  # a request of its own (results are kept per request)
    return Result(row_id, digest, "stop", "fine", None, 1, 1.0, "m")._replace(**values)


def test_a_row_the_checkpoint_cannot_bind_never_fails_the_group(tmp_path: Path) -> None:
    store = Checkpoint.open(tmp_path / "out.checkpoint")
    try:
        store.write(
            [
                result("good"),
                result("cut", answer="half \ud83d", request_id="req_\udcff"),
                result("huge", prompt_tokens=2**70, completion_tokens=-(2**70)),
                result("weird", model=["not", "a", "text"]),  # type: ignore[arg-type]
                result("after"),
            ],
            [
                Attempt("cut", 1.0, 2.0, "http", 2**70, "HTTP 500: \ud800"),
                Attempt("good", 1.0, 2.0, "answered"),
            ],
        )
        found = {
            row[0]: row[1:]
            for row in read_only(store.path).execute(
                "SELECT id, finish_reason, answer, error, prompt_tokens, completion_tokens, "
                "request_id FROM results"
            )
        }
        attempts = list(store._conn.execute("SELECT row_id, status, error FROM attempts"))
    finally:
        store.close()
    assert found["good"] == ("stop", "fine", None, None, None, None)
    assert found["after"] == ("stop", "fine", None, None, None, None)
    assert found["cut"] == ("stop", "half \ufffd", None, None, None, "req_\ufffd")
    assert found["huge"] == ("stop", "fine", None, None, None, None)
    reason, answer, error = found["weird"][:3]
    assert (reason, answer) == ("error", None)  # sent again by the next run
    assert "could not be stored in the checkpoint" in error
    assert sorted(attempts) == [("cut", None, "HTTP 500: \ufffd"), ("good", None, None)]
