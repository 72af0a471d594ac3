"""--schema through an OpenAI-compatible server that is not ours: the LiteLLM proxy (offline, its
cost map the bundled one) in front of a raw 127.0.0.1 server that answers like the mock (70 %
valid JSON, 15 % wrapped, 15 % not fitting) and records each body as it arrives after the proxy.
Slow: the proxy takes seconds to start."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow.parquet as pq
import pytest
from aiohttp import web

import batchpizza
from batchpizza.mock.structured import bound_prompt, structured_answer
from batchpizza.rows import format_prompt
from tests.conftest import litellm_command

pytestmark = [pytest.mark.slow, pytest.mark.litellm, pytest.mark.timeout(300)]

SCHEMA: dict[str, Any] = {
    "title": "Verdict",
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["yes", "no"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["label", "confidence"],
    "additionalProperties": False,
}
KEY = "sk-batchpizza-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[int, list[dict[str, Any]]]]:
    """The raw server behind the proxy: (its port, the bodies it received)."""
    bodies: list[dict[str, Any]] = []

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        bodies.append(body)
        messages = [{"role": m["role"], "content": m["content"]} for m in body["messages"]]
        question = bound_prompt(format_prompt(messages), body.get("response_format"))
        content = structured_answer(question) or "no schema was asked for"
        message = {"role": "assistant", "content": content}
        return web.json_response(
            {"id": "c", "object": "chat.completion", "created": 1, "model": body["model"],
             "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        )  # fmt: skip

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port, bodies
    finally:
        await runner.cleanup()


@pytest.fixture
async def proxy(tmp_path: Path, upstream: tuple[int, Any]) -> AsyncIterator[str]:
    """The LiteLLM proxy serving model `x` from the raw server; yields its base URL."""
    config = tmp_path / "litellm.yaml"
    config.write_text(
        "model_list:\n  - model_name: x\n    litellm_params:\n      model: openai/x\n"
        f"      api_base: http://127.0.0.1:{upstream[0]}/v1\n      api_key: upstream-key\n"
        f"general_settings:\n  master_key: {KEY}\n"
    )
    port = free_port()
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}  # no fetch from the internet
    litellm = litellm_command()
    assert litellm is not None  # conftest deselects this test without one
    process = await asyncio.create_subprocess_exec(
        *(litellm, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            while True:  # until it listens (the test's timeout bounds the wait)
                assert process.returncode is None, "the LiteLLM proxy exited"
                try:
                    async with session.get(f"{url}/health/liveliness") as reply:
                        if reply.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.5)
        yield url
    finally:
        process.terminate()
        await process.wait()


async def test_through_the_litellm_proxy_99_percent_end_valid_and_the_format_arrives(
    proxy: str,
    upstream: tuple[int, list[dict[str, Any]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = 200
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        "".join(json.dumps({"id": str(i), "prompt": f"is {i} even?"}) + "\n" for i in range(rows))
    )
    out = tmp_path / "out.parquet"
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    summary = await batchpizza.arun(
        inp, out, provider="openai", base_url=proxy, model="x", schema=SCHEMA, rate=0,
        concurrency=8, progress=False, quiet=True,
    )  # fmt: skip
    bodies = upstream[1]
    assert bodies and all(
        body["response_format"]
        == {
            "type": "json_schema",
            "json_schema": {"name": "Verdict", "schema": SCHEMA, "strict": True},
        }
        for body in bodies
    )
    assert summary["requests"] == len(bodies) > rows  # some answers were re-asked
    table = pq.read_table(out)
    finish = table.column("finish_reason").to_pylist()
    assert finish.count("stop") >= 0.99 * rows
    import duckdb

    labels = dict(duckdb.sql(f"SELECT parsed.label, count(*) FROM '{out}' GROUP BY 1").fetchall())
    assert set(labels) <= {"yes", "no", None} and labels.get("yes", 0) + labels.get(
        "no", 0
    ) == finish.count("stop")
