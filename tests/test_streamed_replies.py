"""An OpenAI-compatible server that streams its replies (server-sent events) though no stream was
asked for, as some gateways always do: each such reply is a generated, billed answer, read whole."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from chat_servers import chat_servers
from conftest import FAST

import batchpizza
from batchpizza.errors import BadReply
from batchpizza.providers.openai import OpenAIAPI
from batchpizza.records import Prompt


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    """One chat.completion.chunk as OpenAI streams it."""
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {"id": "chatcmpl-s1", "object": "chat.completion.chunk", "created": 1,
            "model": "m-2024", "choices": [choice], **extra}  # fmt: skip


def events(*chunks: dict[str, Any] | str) -> bytes:
    lines = (c if isinstance(c, str) else json.dumps(c) for c in chunks)
    return b"".join(f"data: {line}\n\n".encode() for line in lines)


def answer_stream(text: str) -> bytes:
    """What OpenAI streams for `text` with stream_options.include_usage: a role chunk, content
    in pieces, the finish reason, the usage in a chunk without choices, then [DONE]."""
    pieces = [chunk({"role": "assistant", "content": ""})]
    pieces += [chunk({"content": text[i : i + 4]}) for i in range(0, len(text), 4)]
    pieces += [chunk({}, "stop")]
    usage = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    pieces += [{"id": "chatcmpl-s1", "object": "chat.completion.chunk", "model": "m-2024",
                "choices": [], "usage": usage}]  # fmt: skip
    return events(*pieces, "[DONE]")


@pytest.fixture
async def streaming() -> AsyncIterator[Callable[[Callable[[str], bytes]], Any]]:
    """streaming(reply): a server whose every reply is `reply(prompt)` as text/event-stream;
    yields (base URL, the number of requests it got) once started."""
    seen: list[int] = []

    async def start(reply: Callable[[str], bytes]) -> tuple[str, list[int]]:
        async def chat(request: web.Request) -> web.Response:
            body = await request.json()
            seen.append(1)
            content = reply(body["messages"][-1]["content"])
            return web.Response(body=content, content_type="text/event-stream")

        return await serve(chat), seen

    async with chat_servers() as serve:
        yield start


async def ask(base_url: str, text: str = "q", **options: Any) -> Any:
    provider = OpenAIAPI(base_url, model="m", timeout=5.0, **options)
    async with aiohttp.ClientSession() as session:
        return await provider.ask(session, Prompt("r1", text, ({"role": "user", "content": text},)))


async def test_a_reply_streamed_unasked_is_read_as_its_answer(streaming: Any) -> None:
    url, _ = await streaming(lambda p: answer_stream("The capital is Rome."))

    answer = await ask(url, keep_bodies=True)

    assert (answer.text, answer.finish_reason, answer.model) == (
        "The capital is Rome.",
        "stop",
        "m-2024",
    )
    assert (answer.prompt_tokens, answer.completion_tokens) == (7, 5)
    assert answer.response_id == "chatcmpl-s1"
    kept = json.loads(answer.body)  # --format openai-batch's body: one completion, not chunks
    assert kept["choices"][0]["message"]["content"] == "The capital is Rome."


async def test_a_streamed_refusal_and_a_length_cut_are_kept_as_such(streaming: Any) -> None:
    refused = events(chunk({"role": "assistant", "refusal": "I can't"}), chunk({}, "stop"))
    url, _ = await streaming(
        lambda p: refused if p == "no" else events(chunk({"content": "ab"}, "length"))
    )

    assert (await ask(url, "no")).text == "I can't"
    assert (await ask(url, "no")).finish_reason == "refusal"
    cut = await ask(url, "cut")
    assert (cut.text, cut.finish_reason) == ("ab", "length")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (events(chunk({"content": "half an ans"})), "cut off before its end"),
        (
            events(chunk({"content": "x"}), {"error": {"message": "upstream fell over"}}),
            "upstream fell over",
        ),
        (b"data: {not json\n\n", "not JSON"),
        (events(chunk({"content": ""}, "stop"), "[DONE]"), "without answer text"),
    ],
    ids=["cut-off", "error-event", "bad-chunk", "empty"],
)
async def test_a_stream_without_a_whole_answer_is_a_retryable_bad_reply(
    streaming: Any, body: bytes, match: str
) -> None:
    url, _ = await streaming(lambda p: body)

    with pytest.raises(BadReply, match=match) as info:
        await ask(url)
    assert info.value.retryable


async def test_a_server_that_always_streams_answers_each_row_with_one_request(
    streaming: Any,
) -> None:
    # Read as "not JSON", each reply was retried until the retries ran out: 6 generated, billed
    # answers per row, then the row failed, and every later run sent it again.
    url, seen = await streaming(lambda p: answer_stream(f"answer to {p}"))
    rows = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(5)]

    out = await batchpizza.aanswer(rows, provider="openai", base_url=url, model="m", **FAST)

    assert [r["answer"] for r in out] == [f"answer to question {i}" for i in range(5)]
    assert {r["finish_reason"] for r in out} == {"stop"}
    assert [r["attempts"] for r in out] == [1] * 5
    assert len(seen) == 5
