"""A bare Batch API (/v1/files, /v1/batches) in a thread, not the bundled mock: each test bends
one part of it the way a real server (OpenAI on a bad day, vLLM, LiteLLM, a gateway) does, and
counts what the client did (lines submitted, uploads, creates) at the server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.batchapi_shared import KEY

Reply = Callable[[str, dict[str, Any]], dict[str, Any] | None]
Hook = Callable[[web.Request, int], Awaitable[web.StreamResponse | None]]


def completion(text: str, prompt_tokens: int = 10, completion_tokens: int = 5) -> dict[str, Any]:
    return {
        "id": "chatcmpl-raw",
        "object": "chat.completion",
        "model": "raw-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def answer_of(prompt: str) -> str:
    return f"answer to {prompt}"


def answering(cid: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """Every line answered, 200, its prompt echoed."""
    text = answer_of(body["messages"][-1]["content"])
    return {"response": {"status_code": 200, "request_id": f"req-{cid}", "body": completion(text)}}


class RawServer:
    """Completes a batch after `polls` polls (statuses from `statuses` meanwhile), each line
    answered by `reply` (None: no line), the output file's bytes bent by `output`, the batch
    object by `view`; `hooks[name]` (upload, create, get, content, files, batches) may answer a
    call instead (its arguments: the request and how many such calls came before)."""

    def __init__(self, reply: Reply = answering) -> None:
        self.reply = reply
        self.output: Callable[[list[bytes]], bytes] = lambda lines: b"".join(lines)
        self.view: Callable[[dict[str, Any]], dict[str, Any]] = lambda batch: batch
        self.statuses: list[str] = []  # the statuses a batch goes through before it completes
        self.hooks: dict[str, Hook] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self.contents: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.polls: dict[str, int] = {}
        self.submitted: dict[str, int] = {}  # custom_id -> times in a created batch
        self.calls: dict[str, int] = {}
        self.auth_seen: set[str] = set()
        self.uploaded: tuple[str, bytes] = ("", b"")
        self.creating: dict[str, Any] = {}
        self.online: dict[str, int] = {}  # prompt -> times asked at /chat/completions (--via auto)
        self.base_url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    # -- the endpoints ----------------------------------------------------------------------

    async def _hooked(self, name: str, request: web.Request) -> web.StreamResponse | None:
        self.auth_seen.add(request.headers.get("Authorization", ""))
        n = self.calls.get(name, 0)
        self.calls[name] = n + 1
        hook = self.hooks.get(name)
        return await hook(request, n) if hook is not None else None

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        upload = form["file"]
        assert isinstance(upload, web.FileField)
        with upload.file:
            self.uploaded = (upload.filename, upload.file.read())
        if (hooked := await self._hooked("upload", request)) is not None:
            return hooked
        return web.json_response(self.store())

    def store(self) -> dict[str, Any]:
        """The file last uploaded, kept: its file object."""
        name, content = self.uploaded
        file_id = f"file-{len(self.contents)}"
        self.contents[file_id] = content
        item = {"id": file_id, "object": "file", "purpose": "batch", "filename": name,
                "bytes": len(content), "created_at": int(time.time())}  # fmt: skip
        self.files[file_id] = item
        return item

    async def _list_files(self, request: web.Request) -> web.StreamResponse:
        if (hooked := await self._hooked("files", request)) is not None:
            return hooked
        return web.json_response({"object": "list", "data": list(self.files.values())[::-1]})

    async def _create(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.creating = body
        if (hooked := await self._hooked("create", request)) is not None:
            return hooked
        return web.json_response(self.make())

    def make(self) -> dict[str, Any]:
        """The batch last asked for, made: its batch object."""
        body = self.creating
        batch_id = f"batch-{len(self.batches)}"
        for raw in self.contents[body["input_file_id"]].splitlines():
            cid = json.loads(raw)["custom_id"]
            self.submitted[cid] = self.submitted.get(cid, 0) + 1
        batch = {"id": batch_id, "object": "batch", "status": "validating",
                 "input_file_id": body["input_file_id"], "metadata": body.get("metadata"),
                 "created_at": int(time.time()), "output_file_id": None, "error_file_id": None,
                 "request_counts": {"total": 0, "completed": 0, "failed": 0}}  # fmt: skip
        self.batches[batch_id] = batch
        self.polls[batch_id] = 0
        return self.view(dict(batch))

    def stall(self, name: str) -> threading.Event:
        """Call `name` (upload, create, content) does its work on the server (a file kept, a
        batch made), then never answers, until the server stops; the event is set when one
        came (the moment to kill the client)."""
        reached = threading.Event()

        async def hook(request: web.Request, n: int) -> web.StreamResponse | None:
            if name == "upload":
                self.store()
            elif name == "create":
                self.make()
            reached.set()
            await self._released.wait()
            return web.Response(status=503)

        self.hooks[name] = hook
        return reached

    def _complete(self, batch: dict[str, Any]) -> None:
        lines = []
        for raw in self.contents[batch["input_file_id"]].splitlines():
            line = json.loads(raw)
            response = self.reply(line["custom_id"], line["body"])
            if response is not None:
                result = {"id": f"resp-{line['custom_id']}", "custom_id": line["custom_id"],
                          "error": None, **response}  # fmt: skip
                lines.append(json.dumps(result).encode() + b"\n")
        out_id = f"file-out-{batch['id']}"
        self.contents[out_id] = self.output(lines)
        n = len(lines)
        batch.update(status="completed", output_file_id=out_id, completed_at=int(time.time()),
                     request_counts={"total": n, "completed": n, "failed": 0})  # fmt: skip

    async def _get(self, request: web.Request) -> web.StreamResponse:
        if (hooked := await self._hooked("get", request)) is not None:
            return hooked
        batch_id = request.match_info["id"]
        batch = self.batches.get(batch_id)
        if batch is None:
            return web.json_response({"error": {"message": "No such batch"}}, status=404)
        n = self.polls[batch_id]
        self.polls[batch_id] = n + 1
        if batch["status"] != "completed":
            if n < len(self.statuses):
                batch["status"] = self.statuses[n]
            else:
                self._complete(batch)
        return web.json_response(self.view(dict(batch)))

    async def _list_batches(self, request: web.Request) -> web.StreamResponse:
        if (hooked := await self._hooked("batches", request)) is not None:
            return hooked
        data = [self.view(dict(b)) for b in self.batches.values()][::-1]
        return web.json_response({"object": "list", "data": data, "has_more": False})

    async def _content(self, request: web.Request) -> web.StreamResponse:
        if (hooked := await self._hooked("content", request)) is not None:
            return hooked
        content = self.contents.get(request.match_info["id"])
        if content is None:
            return web.json_response({"error": {"message": "No such file"}}, status=404)
        return web.Response(body=content, content_type="application/octet-stream")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        prompt = (await request.json())["messages"][-1]["content"]
        self.online[prompt] = self.online.get(prompt, 0) + 1
        return web.json_response(completion(answer_of(prompt)))

    # -- running ----------------------------------------------------------------------------

    async def _start(self) -> web.AppRunner:
        self._released = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files", self._list_files)
        app.router.add_get("/v1/files/{id}/content", self._content)
        app.router.add_post("/v1/batches", self._create)
        app.router.add_get("/v1/batches", self._list_batches)
        app.router.add_get("/v1/batches/{id}", self._get)
        app.router.add_post("/v1/chat/completions", self._chat)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return runner

    def __enter__(self) -> RawServer:
        self._thread.start()
        self._runner = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._released.set)
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def batch_run(inp: Path, out: Path, base_url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """`batchpizza run ... --via batch --wait` against `base_url` (the key and the small limits
    come from the environment, set by the test)."""
    argv = ["run", str(inp), "-o", str(out), "--provider", "openai", "--base-url",
            f"{base_url}/v1", "--no-progress", "--via", "batch", "--wait", *extra]  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "batchpizza", *argv], capture_output=True, text=True, timeout=120
    )


__all__ = ["KEY", "RawServer", "answer_of", "answering", "batch_run", "completion"]
