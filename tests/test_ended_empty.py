"""An OpenAI-compatible server's empty answer whose finish reason says it would answer the same
again (`length`: a reasoning model spent its token cap reasoning; `content_filter`): the row's
answer, empty and billed, not a failed attempt. Retried, each such row cost about six billed
requests a run, and every later run sent it again."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from chat_servers import chat_servers
from conftest import FAST

import batchpizza
from batchpizza.batchapi.files import ResultLine
from batchpizza.batchapi.results import Judge
from batchpizza.checkpoint.batches import BatchLine
from batchpizza.errors import BadReply
from batchpizza.providers.openai import OpenAIAPI
from batchpizza.records import Prompt

USAGE = {"prompt_tokens": 12, "completion_tokens": 64, "total_tokens": 76}
SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}


def completion(content: object, finish: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": content, "refusal": None}
    return {
        "id": "chatcmpl-e1",
        "object": "chat.completion",
        "model": "o-mini",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": USAGE,
    }


Start = Callable[[dict[str, Any]], Any]


@pytest.fixture
async def server() -> AsyncIterator[Start]:
    """server(reply): a chat completions server answering every request with `reply`; yields
    (base URL, the requests it got)."""

    async def start(reply: dict[str, Any]) -> tuple[str, list[Any]]:
        seen: list[Any] = []

        async def chat(request: web.Request) -> web.Response:
            seen.append(await request.json())
            return web.json_response(reply)

        return await serve(chat), seen

    async with chat_servers() as serve:
        yield start


async def ask(base_url: str) -> Any:
    provider = OpenAIAPI(base_url, model="m", timeout=5.0)
    async with aiohttp.ClientSession() as session:
        return await provider.ask(session, Prompt("r1", "q", ({"role": "user", "content": "q"},)))


@pytest.mark.parametrize("content", ["", None, []], ids=["empty", "null", "no-parts"])
@pytest.mark.parametrize("finish", ["length", "content_filter"])
async def test_an_empty_answer_the_server_would_repeat_is_the_answer(
    server: Start, content: object, finish: str
) -> None:
    url, _ = await server(completion(content, finish))

    answer = await ask(url)

    assert (answer.text, answer.finish_reason) == ("", finish)
    assert (answer.prompt_tokens, answer.completion_tokens) == (12, 64)


async def test_blank_text_cut_by_length_is_kept_as_it_came(server: Start) -> None:
    url, _ = await server(completion("\n\n", "length"))

    assert (await ask(url)).text == "\n\n"


@pytest.mark.parametrize("content", ["", None], ids=["empty", "null"])
async def test_an_empty_answer_with_stop_is_still_a_retryable_bad_reply(
    server: Start, content: object
) -> None:
    url, _ = await server(completion(content, "stop"))

    with pytest.raises(BadReply, match="without answer text") as info:
        await ask(url)
    assert info.value.retryable


@pytest.mark.parametrize("finish", ["length", "content_filter"])
async def test_a_run_sends_such_a_row_once_and_a_rerun_not_again(
    server: Start, tmp_path: Path, finish: str
) -> None:
    url, seen = await server(completion(None, finish))
    rows = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(3)]
    options: dict[str, Any] = dict(FAST, provider="openai", base_url=url, model="m")
    options["checkpoint"] = str(tmp_path / "ck.sqlite")

    out = await batchpizza.aanswer(rows, **options)
    await batchpizza.aanswer(rows, **options)  # a cron's next run

    assert [(r["answer"], r["finish_reason"], r["attempts"]) for r in out] == [("", finish, 1)] * 3
    assert [(r["prompt_tokens"], r["completion_tokens"]) for r in out] == [(12, 64)] * 3
    assert {r["error"] for r in out} == {None}
    assert len(seen) == 3


@pytest.mark.slow
@pytest.mark.parametrize("content", ["", "\n\n"], ids=["empty", "blank"])
async def test_a_schema_run_does_not_re_ask_an_empty_answer_cut_by_length(
    server: Start, tmp_path: Path, content: str
) -> None:
    # A blank one too, kept as it came: it was re-asked (each billed) and ended invalid_output.
    url, seen = await server(completion(content, "length"))
    rows = [{"id": "r1", "prompt": "classify"}]
    summary = tmp_path / "summary.json"

    out = await batchpizza.aanswer(
        rows,
        provider="openai",
        base_url=url,
        model="m",
        schema=SCHEMA,
        summary_json=str(summary),
        checkpoint=str(tmp_path / "ck.sqlite"),
        **FAST,
    )

    answered = (out[0]["answer"], out[0]["finish_reason"], out[0]["attempts"])
    assert answered == (content, "length", 1)
    assert out[0]["parsed"] is None
    assert len(seen) == 1
    counted = json.loads(summary.read_text())["structured"]
    assert (counted["valid"], counted["invalid"], counted["not_validated"]) == (0, 0, 1)


@pytest.mark.slow
async def test_a_schema_run_still_re_asks_an_empty_answer_with_stop(server: Start) -> None:
    url, seen = await server(completion("", "stop"))

    out = await batchpizza.aanswer(
        [{"id": "r1", "prompt": "classify"}],
        provider="openai",
        base_url=url,
        model="m",
        schema=SCHEMA,
        max_retries=1,
        **FAST,
    )

    assert out[0]["finish_reason"] == "error"
    assert len(seen) == 2


@pytest.mark.parametrize("finish", ["length", "content_filter"])
def test_a_batch_api_result_line_reads_such_a_reply_as_its_answer(finish: str) -> None:
    judge = Judge(OpenAIAPI("http://127.0.0.1:9/v1", model="m"), max_retries=5)
    line = BatchLine(1, "c1", "r1", 0, b"k" * 16, 1, None)
    body = json.dumps(completion(None, finish)).encode()

    verdict = judge.judge(line, ResultLine("c1", 200, body, "req_1", None))

    assert verdict.outcome == "answered" and verdict.result is not None
    result = verdict.result
    assert (result.answer, result.finish_reason, result.error) == ("", finish, None)
    assert (result.prompt_tokens, result.completion_tokens) == (12, 64)
