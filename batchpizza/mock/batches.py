"""The mock's Batch API, as OpenAI documents it: ``POST /v1/files`` (multipart, purpose
``batch``), ``GET /v1/files`` (``?purpose=``, ``after``, ``limit``), ``GET /v1/files/{id}/content``,
``DELETE /v1/files/{id}``, ``POST /v1/batches``, ``GET /v1/batches`` (newest first, ``after``,
``limit``), ``GET /v1/batches/{id}`` and ``POST /v1/batches/{id}/cancel``.

A batch goes validating -> in_progress -> finalizing -> completed over `BatchMock.seconds`
(time scaled, so tests are fast); its lines are answered as the chat route answers them (the
same answer to the same prompt), when it completes. Faults, each configurable: the first
`expire` batches expire with half their lines done; every `fail_every`-th line of a first
submission fails (a 500 in the error file); every `poll_error_every`-th poll answers 503; the
first `upload_fail` uploads fail halfway (the body read in part, then a 500); `fail_batches`
batches fail as a whole at validation. `submitted` counts every line ever submitted, by
custom_id: the server's own count, for "never submitted twice".
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from batchpizza.mock.openai import (
    DEFAULT_MOCK_MODEL,
    _authorized,
    _Chat,
    _chat_prompt,
    media_usage,
)
from batchpizza.mock.replies import STATE, mock_answer

TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass
class BatchMock:
    """The Batch API's behaviour and its record (mutable: a test changes it between runs)."""

    seconds: float = 1.0  # from creation to completed
    expire: int = 0  # the first N batches expire with half their lines done
    fail_every: int = 0  # every Nth line of a first submission fails (a 500 in the error file)
    poll_error_every: int = 0  # every Nth GET of a batch answers 503
    upload_fail: int = 0  # the first N uploads fail halfway
    fail_batches: int = 0  # the first N batches fail as a whole (validation)
    # Seconds an upload (once stored) and a download wait before they answer: a client killed
    # meanwhile has not heard the file's id, or has not got the results.
    upload_delay: float = 0.0
    create_delay: float = 0.0  # the same for a batch's creation (made, then the reply waits)
    create_error: int = 0  # the first N batches are made, then answered with a 502
    create_refused: int = 0  # the first N creates are refused (a 400), nothing made
    refused: int = 0  # creates refused so far
    download_delay: float = 0.0
    submitted: dict[str, int] = field(default_factory=dict)  # custom_id -> lines submitted
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    contents: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    uploads: int = 0
    polls: int = 0
    downloads: int = 0
    made: int = 0  # batches created
    file_ids: int = 0  # files made (uploaded, or a batch's output and error files)

    def new_file_id(self) -> str:
        """Never one a deleted file had: a client holding that id would read another file."""
        self.file_ids += 1
        return f"file-{self.file_ids:06d}"

    def twice(self) -> dict[str, int]:
        """custom_ids submitted more than once."""
        return {cid: n for cid, n in self.submitted.items() if n > 1}


BATCH_MOCK = web.AppKey("batchpizza_mock_batches", BatchMock)


def _error(status: int, message: str) -> web.Response:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    return web.json_response({"error": error}, status=status)


def _file_object(file_id: str, name: str, size: int, purpose: str) -> dict[str, Any]:
    return {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": int(time.time()),
        "filename": name,
        "purpose": purpose,
        "status": "processed",
    }


async def upload_file(request: web.Request) -> web.Response:
    mock = request.app[BATCH_MOCK]
    mock.uploads += 1
    if mock.uploads <= mock.upload_fail:
        await request.content.read(64)  # the upload broke off halfway
        return _error(500, "the upload failed")
    form = await request.post()
    upload = form.get("file")
    purpose = form.get("purpose")
    if not isinstance(upload, web.FileField) or not isinstance(purpose, str):
        return _error(400, "expected a multipart form with 'purpose' and 'file'")
    with upload.file:
        content = upload.file.read()
    file_id = mock.new_file_id()
    mock.files[file_id] = _file_object(file_id, upload.filename, len(content), purpose)
    mock.contents[file_id] = content
    if mock.upload_delay:
        await asyncio.sleep(mock.upload_delay)
    return web.json_response(mock.files[file_id])


def _page(items: list[dict[str, Any]], request: web.Request, default: int) -> web.Response:
    after = request.query.get("after")
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    limit = int(request.query.get("limit", default))
    page = items[:limit]
    return web.json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )


async def list_files(request: web.Request) -> web.Response:
    mock = request.app[BATCH_MOCK]
    purpose = request.query.get("purpose")
    files = [f for f in mock.files.values() if purpose is None or f["purpose"] == purpose]
    return _page(files, request, 10000)


async def file_content(request: web.Request) -> web.Response:
    mock = request.app[BATCH_MOCK]
    mock.downloads += 1
    if mock.download_delay:
        await asyncio.sleep(mock.download_delay)
    content = mock.contents.get(request.match_info["file_id"])
    if content is None:
        return _error(404, "No such File object")
    return web.Response(body=content, content_type="application/octet-stream")


async def delete_file(request: web.Request) -> web.Response:
    mock = request.app[BATCH_MOCK]
    file_id = request.match_info["file_id"]
    if mock.files.pop(file_id, None) is None:
        return _error(404, "No such File object")
    mock.contents.pop(file_id, None)
    return web.json_response({"id": file_id, "object": "file", "deleted": True})


async def create_batch(request: web.Request) -> web.Response:
    mock = request.app[BATCH_MOCK]
    try:
        body = json.loads(await request.read())
    except ValueError:
        return _error(400, "the body must be JSON")
    file_id = body.get("input_file_id")
    if file_id not in mock.contents:
        return _error(400, f"no such file: {file_id}")
    if body.get("endpoint") != "/v1/chat/completions" or body.get("completion_window") != "24h":
        return _error(400, "endpoint must be /v1/chat/completions, completion_window 24h")
    if mock.refused < mock.create_refused:
        mock.refused += 1
        return _error(400, "no more batches today")
    mock.made += 1
    batch_id = f"batch_{mock.made:06d}"
    lines = [json.loads(raw) for raw in mock.contents[file_id].splitlines() if raw.strip()]
    for line in lines:
        cid = line.get("custom_id")
        mock.submitted[cid] = mock.submitted.get(cid, 0) + 1
    now = time.time()
    batch = {
        "id": batch_id,
        "object": "batch",
        "endpoint": body["endpoint"],
        "errors": None,
        "input_file_id": file_id,
        "completion_window": "24h",
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": int(now),
        "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
        "metadata": body.get("metadata"),
        "_started": now,
        "_expire": mock.made <= mock.expire,
        "_fail": mock.made <= mock.fail_batches,
        "_lines": lines,
    }
    mock.batches[batch_id] = batch
    if mock.create_delay:
        await asyncio.sleep(mock.create_delay)
    if mock.made <= mock.create_error:
        return _error(502, "bad gateway")
    return web.json_response(_shown(batch))


def _shown(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def _advance(mock: BatchMock, batch: dict[str, Any]) -> None:
    """The batch's state at this moment; its files made when it ends."""
    if batch["status"] in TERMINAL:
        return
    elapsed = time.time() - batch["_started"]
    if batch["status"] == "cancelling":
        _finish(mock, batch, "cancelled", len(batch["_lines"]) // 2)
    elif batch["_fail"]:
        batch["status"] = "failed"
        batch["errors"] = {
            "object": "list",
            "data": [{"code": "invalid_request", "message": "the file is wrong", "line": 1}],
        }
    elif elapsed >= mock.seconds:
        if batch["_expire"]:
            _finish(mock, batch, "expired", len(batch["_lines"]) // 2)
        else:
            _finish(mock, batch, "completed", len(batch["_lines"]))
    elif elapsed >= mock.seconds * 0.8:
        batch["status"] = "finalizing"
    elif elapsed >= mock.seconds * 0.1:
        batch["status"] = "in_progress"


def _finish(mock: BatchMock, batch: dict[str, Any], status: str, done: int) -> None:
    out: list[bytes] = []
    errors: list[bytes] = []
    for n, line in enumerate(batch["_lines"][:done]):
        cid = line.get("custom_id")
        request_id = f"req_batch_{batch['id']}_{n}"
        first = mock.submitted.get(cid, 0) <= 1
        if mock.fail_every and first and (n + 1) % mock.fail_every == 0:
            error = {"error": {"message": "the oven is on fire", "type": "server_error"}}
            reply = {"status_code": 500, "request_id": request_id, "body": error}
            errors.append(_result_line(n, cid, reply))
            continue
        out.append(_result_line(n, cid, _answer(line.get("body") or {}, request_id)))
    batch["status"] = status
    batch["request_counts"] = {"total": len(batch["_lines"]), "completed": len(out),
                               "failed": len(errors)}  # fmt: skip
    for kind, lines in (("output_file_id", out), ("error_file_id", errors)):
        if lines:
            file_id = mock.new_file_id()
            content = b"".join(lines)
            name = f"{batch['id']}_{kind.split('_')[0]}.jsonl"
            mock.files[file_id] = _file_object(file_id, name, len(content), "batch_output")
            mock.contents[file_id] = content
            batch[kind] = file_id


def _result_line(n: int, cid: object, response: dict[str, Any]) -> bytes:
    line = {"id": f"batch_req_{n}", "custom_id": cid, "response": response, "error": None}
    return json.dumps(line).encode() + b"\n"


def _answer(body: dict[str, Any], request_id: str) -> dict[str, Any]:
    """The chat route's reply to the same request."""
    prompt = _chat_prompt(body.get("messages")) or ""
    model = body.get("model", DEFAULT_MOCK_MODEL)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    chat = _Chat(request_id, model, prompt, max_tokens)
    messages = body.get("messages")
    if isinstance(messages, list):
        chat.media = media_usage(messages)
    reply = chat.answer(mock_answer(prompt))
    assert isinstance(reply.body, bytes)
    return {"status_code": 200, "request_id": request_id, "body": json.loads(reply.body)}


async def get_batch(request: web.Request) -> web.Response:
    mock = request.app[BATCH_MOCK]
    mock.polls += 1
    if mock.poll_error_every and mock.polls % mock.poll_error_every == 0:
        busy = {"error": {"message": "the oven is busy", "type": "server_error"}}
        return web.json_response(busy, status=503, headers={"retry-after": "0"})
    batch = mock.batches.get(request.match_info["batch_id"])
    if batch is None:
        return _error(404, "No such Batch object")
    _advance(mock, batch)
    return web.json_response(_shown(batch))


async def list_batches(request: web.Request) -> web.Response:
    mock = request.app[BATCH_MOCK]
    batches = [_shown(b) for b in reversed(mock.batches.values())]
    return _page(batches, request, 20)


async def cancel_batch(request: web.Request) -> web.Response:
    mock = request.app[BATCH_MOCK]
    batch = mock.batches.get(request.match_info["batch_id"])
    if batch is None:
        return _error(404, "No such Batch object")
    if batch["status"] not in TERMINAL:
        batch["status"] = "cancelling"
    return web.json_response(_shown(batch))


@web.middleware
async def _keyed(request: web.Request, handler: Any) -> web.StreamResponse:
    """The chat route's key, required on the Batch API's routes too."""
    if request.path.startswith(("/v1/files", "/v1/batches")) and not _authorized(
        request, request.app[STATE].live.config
    ):
        return _error(401, "Incorrect API key provided.")
    response: web.StreamResponse = await handler(request)
    return response


def install(app: web.Application, mock: BatchMock | None = None) -> None:
    """The Batch API's routes on the mock's app, behaving as `mock` says."""
    app[BATCH_MOCK] = mock or BatchMock()
    app.middlewares.append(_keyed)
    app.router.add_post("/v1/files", upload_file)
    app.router.add_get("/v1/files", list_files)
    app.router.add_get("/v1/files/{file_id}/content", file_content)
    app.router.add_delete("/v1/files/{file_id}", delete_file)
    app.router.add_post("/v1/batches", create_batch)
    app.router.add_get("/v1/batches", list_batches)
    app.router.add_get("/v1/batches/{batch_id}", get_batch)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel_batch)
