"""A hostile or broken server, and a hostile disk: each row ends with a result, the run never crashes.

Every server here is local (127.0.0.1) and written in this file, so that it can misbehave in ways a
well-mannered mock does not: replies too big, mislabelled, misshapen, cut off mid-body, silent, sent
elsewhere, or behind a certificate nobody trusts. The disk can fill up too (RLIMIT_FSIZE in a child
process): then the run exits 1 with a clear message and its checkpoint still holds what was paid for.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import FAST, LIMITED_CLI, read_jsonl, write_jsonl

from batchpizza import arun
from batchpizza.mock.replies import mock_answer
from batchpizza.mock.server import ThreadedMockServer
from batchpizza.providers import http as provider_http

Handler = Callable[[web.Request, str, int], Awaitable[web.StreamResponse]]
MAX_RETRIES = 2
ATTEMPTS = MAX_RETRIES + 1


def answer(question: str) -> web.Response:
    return web.json_response({"answer": {"content": mock_answer(question)}})


class Hostile:
    """An aiohttp server on 127.0.0.1 that answers every path; `handler(request, question, n)`
    decides the reply, `n` being how many times this question has been asked (1-based)."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.seen: dict[str, int] = {}
        self.paths: list[str] = []
        self.base_url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.path)
        body = await request.read()
        try:
            question = json.loads(body)["question"]
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "bad body"}, status=400)
        n = self.seen[question] = self.seen.get(question, 0) + 1
        return await self.handler(request, question, n)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Hostile]:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.1
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        port = runner.addresses[0][1]
        scheme = "https" if self.ssl_context else "http"
        self.base_url = f"{scheme}://127.0.0.1:{port}"
        try:
            yield self
        finally:
            await runner.cleanup()


async def run_rows(
    tmp_path: Path, base_url: str, questions: list[str], **options: Any
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Run one row per question (id = question) and return (summary, output rows by id)."""
    src = write_jsonl(tmp_path / "prompts.jsonl", [{"id": q, "prompt": q} for q in questions])
    out = tmp_path / "out.jsonl"
    settings = {**FAST, "max_retries": MAX_RETRIES, "base_url": base_url, **options}
    summary = await arun(src, out, **settings)
    rows = {r["id"]: r for r in read_jsonl(out)}
    assert list(rows) == questions
    return summary, rows


def assert_answered(row: dict[str, Any], attempts: int = 1) -> None:
    assert row["finish_reason"] == "stop", row
    assert row["answer"] == mock_answer(row["id"])
    assert row["error"] is None
    assert row["attempts"] == attempts


def assert_failed(row: dict[str, Any], attempts: int, *words: str) -> None:
    assert row["finish_reason"] == "error", row
    assert row["answer"] is None
    assert row["misuse"] is False
    assert row["attempts"] == attempts, row
    for word in words:
        assert word.lower() in row["error"].lower(), (word, row["error"])


# -- replies too big ---------------------------------------------------------------------------


async def test_oversized_reply_is_a_row_error_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(provider_http, "MAX_BODY_BYTES", 1000)
    big = json.dumps({"answer": {"content": "x" * 5000}}).encode()

    async def handler(request: web.Request, question: str, n: int) -> web.StreamResponse:
        if question == "huge-with-length":
            return web.Response(body=big, content_type="application/json")
        if question == "huge-chunked":
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i in range(0, len(big), 500):
                await resp.write(big[i : i + 500])
            await resp.write_eof()
            return resp
        return answer(question)

    async with Hostile(handler).running() as server:
        summary, rows = await run_rows(
            tmp_path, server.base_url, ["huge-with-length", "fine", "huge-chunked"]
        )

    assert_failed(rows["huge-with-length"], ATTEMPTS, "large")
    assert_failed(rows["huge-chunked"], ATTEMPTS, "larger than 1000 bytes")
    assert_answered(rows["fine"])
    assert summary["exit_code"] == 3
    assert summary["failed"] == 2 and summary["answered"] == 1


# -- mislabelled and misshapen replies ---------------------------------------------------------


async def test_content_type_does_not_decide_what_is_an_answer(tmp_path: Path) -> None:
    async def handler(request: web.Request, question: str, n: int) -> web.StreamResponse:
        if question == "json-as-text-plain":
            body = json.dumps({"answer": {"content": mock_answer(question)}})
            return web.Response(text=body, content_type="text/plain")
        if question == "json-as-octet-stream":
            body = json.dumps({"answer": {"content": mock_answer(question)}})
            return web.Response(body=body.encode(), content_type="application/octet-stream")
        if question == "html-page":
            page = "<html><head><title>502</title></head><body>Bad gateway</body></html>"
            return web.Response(text=page, content_type="text/html")
        if question == "html-as-json":
            return web.Response(text="<html>oops</html>", content_type="application/json")
        return answer(question)

    questions = ["json-as-text-plain", "json-as-octet-stream", "html-page", "html-as-json"]
    async with Hostile(handler).running() as server:
        summary, rows = await run_rows(tmp_path, server.base_url, questions)
        seen = dict(server.seen)

    assert_answered(rows["json-as-text-plain"])
    assert_answered(rows["json-as-octet-stream"])
    assert_failed(rows["html-page"], ATTEMPTS, "not JSON")
    assert_failed(rows["html-as-json"], ATTEMPTS, "not JSON")
    assert seen["html-page"] == ATTEMPTS  # retried, as a 2xx reply without text is
    assert summary["retries"] == 2 * MAX_RETRIES


async def test_a_reply_opening_with_a_byte_order_mark_is_read_as_its_json(tmp_path: Path) -> None:
    # A gateway that writes UTF-8 with a BOM (as .NET's encoders do): every row failed "reply is
    # not JSON" after all its attempts, each a reply the server had answered (and billed).
    async def handler(request: web.Request, question: str, n: int) -> web.StreamResponse:
        body = json.dumps({"answer": {"content": mock_answer(question)}}).encode()
        return web.Response(body=b"\xef\xbb\xbf" + body, content_type="application/json")

    async with Hostile(handler).running() as server:
        summary, rows = await run_rows(tmp_path, server.base_url, ["with-bom"])

    assert_answered(rows["with-bom"])
    assert summary["exit_code"] == 0


WRONG_SHAPES: dict[str, Any] = {
    "answer-is-list": {"answer": ["not", "an", "object"]},
    "answer-is-string": {"answer": "a bare string"},
    "content-is-number": {"answer": {"content": 5}},
    "content-is-null": {"answer": {"content": None}},
    "content-is-empty": {"answer": {"content": ""}},
    "content-is-blank": {"answer": {"content": "  \n "}},
    "answer-without-content": {"answer": {"text": "elsewhere"}},
    "top-level-list": [1, 2, 3],
    "top-level-null": None,
    "top-level-string": "just a string",
    "top-level-number": 42,
    "unrelated-object": {"result": "x"},
    "top-level-content-number": {"content": 7},
}


async def test_json_of_the_wrong_shape_is_retried_then_a_row_error(tmp_path: Path) -> None:
    async def handler(request: web.Request, question: str, n: int) -> web.StreamResponse:
        if question == "top-level-content":
            return web.json_response({"content": mock_answer(question)})
        return web.json_response(WRONG_SHAPES[question])

    questions = [*WRONG_SHAPES, "top-level-content"]
    async with Hostile(handler).running() as server:
        summary, rows = await run_rows(tmp_path, server.base_url, questions, concurrency=4)
        seen = dict(server.seen)

    for name in WRONG_SHAPES:
        assert_failed(rows[name], ATTEMPTS)
        assert seen[name] == ATTEMPTS
    assert "empty" in rows["content-is-empty"]["error"]
    assert "without answer text" in rows["answer-is-list"]["error"]
    assert_answered(rows["top-level-content"])  # SPEC: reply["content"] where answer is absent
    assert summary["exit_code"] == 3


# -- redirects ---------------------------------------------------------------------------------


async def test_redirect_to_another_host_is_a_row_error_after_one_attempt(tmp_path: Path) -> None:
    async def handler(request: web.Request, question: str, n: int) -> web.StreamResponse:
        if question == "away" and request.path != "/landing":
            target = "http://evil.example:8081/api/chatx-completion?token=hush"
            return web.Response(status=307, headers={"Location": target})
        if question == "away-localhost":
            port = request.url.port
            target = f"http://localhost:{port}/api/chatx-completion"
            return web.Response(status=302, headers={"Location": target})
        if question == "same-host" and request.path != "/landing":
            return web.Response(status=308, headers={"Location": "/landing"})
        if question == "loop":
            return web.Response(status=307, headers={"Location": request.path + "x"})
        return answer(question)

    questions = ["away", "same-host", "away-localhost", "loop"]
    async with Hostile(handler).running() as server:
        summary, rows = await run_rows(tmp_path, server.base_url, questions)
        seen = dict(server.seen)

    assert_failed(rows["away"], 1, "evil.example", "redirect")
    assert "hush" not in rows["away"]["error"]
    assert seen["away"] == 1  # refused, not retried, and the other host never contacted
    assert_failed(rows["away-localhost"], 1, "localhost")
    assert_answered(rows["same-host"])  # followed: the same host
    assert seen["same-host"] == 2  # the redirect, then the landing, in one attempt
    assert rows["loop"]["finish_reason"] == "error"
    assert "redirect" in rows["loop"]["error"]
    assert summary["exit_code"] == 3


# -- broken connections ------------------------------------------------------------------------


async def _half_body_then_close(request: web.Request) -> web.StreamResponse:
    body = json.dumps({"answer": {"content": "cut " * 200}}).encode()
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = len(body)
    await resp.prepare(request)
    await resp.write(body[: len(body) // 2])
    assert request.transport is not None
    request.transport.abort()  # a reset: no more bytes, no orderly end
    raise asyncio.CancelledError  # nothing left to send on this connection


async def test_connection_reset_mid_body_is_retried(tmp_path: Path) -> None:
    async def handler(request: web.Request, question: str, n: int) -> web.StreamResponse:
        if question == "reset-twice" and n <= 2:
            return await _half_body_then_close(request)
        if question == "reset-always":
            return await _half_body_then_close(request)
        return answer(question)

    async with Hostile(handler).running() as server:
        summary, rows = await run_rows(tmp_path, server.base_url, ["reset-twice", "reset-always"])
        seen = dict(server.seen)

    assert_answered(rows["reset-twice"], attempts=3)
    assert_failed(rows["reset-always"], ATTEMPTS)
    assert seen == {"reset-twice": 3, "reset-always": ATTEMPTS}
    assert summary["retries"] == 2 + MAX_RETRIES


@asynccontextmanager
async def raw_server(reply: bytes) -> AsyncIterator[str]:
    """A TCP server that reads a request head and answers `reply` verbatim, then closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(reply)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "reply",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"answer":',
        b"HTTP/1.1 999 Whatever\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nnot hex\r\n",
        b"",
    ],
    ids=["not-http", "short-body", "odd-status", "negative-length", "bad-chunks", "silent-close"],
)
async def test_garbage_on_the_wire_is_a_row_error(tmp_path: Path, reply: bytes) -> None:
    async with raw_server(reply) as base_url:
        summary, rows = await run_rows(tmp_path, base_url, ["q"])

    row = rows["q"]
    assert row["finish_reason"] == "error"
    assert row["answer"] is None
    assert row["attempts"] >= 1
    assert row["error"]
    assert summary["exit_code"] == 3


@pytest.mark.parametrize(
    "reply",
    [
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n190\r\n{"answer": {"content": "hel',
        b'HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n{"answer": {"content": "hel',
    ],
    ids=["chunked", "content-length"],
)
async def test_a_reply_cut_off_mid_body_says_so_not_a_status(tmp_path: Path, reply: bytes) -> None:
    # aiohttp's own words carry its parser's code 400 ("<TransferEncodingError: 400, ...>"),
    # which reads as an HTTP 400 the server never sent.
    async with raw_server(reply) as base_url:
        _summary, rows = await run_rows(tmp_path, base_url, ["q"])

    assert_failed(rows["q"], ATTEMPTS, "reply was cut off", "not enough data")
    assert "400" not in rows["q"]["error"]


async def test_a_reply_whose_encoding_cannot_be_decoded_says_so_not_a_status(
    tmp_path: Path,
) -> None:
    # Said "ClientPayloadError: 400, message:\n  Can not decode content-encoding: gzip": on two
    # lines, with aiohttp's parser code read as an HTTP 400 the server never sent.
    reply = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 9\r\n\r\nnot gzip!"
    async with raw_server(reply) as base_url:
        _summary, rows = await run_rows(tmp_path, base_url, ["q"])

    assert_failed(rows["q"], ATTEMPTS, "could not be decoded", "gzip")
    assert "400" not in rows["q"]["error"] and "\n" not in rows["q"]["error"]


async def test_transport_error_is_told_in_one_line(tmp_path: Path) -> None:
    # errors.describe promises "a one-line account": the error column and the -v retry log
    # must not carry a parser's multi-line caret diagram of the server's bytes.
    async with raw_server(b"SSH-2.0-OpenSSH_9.6\r\n") as base_url:
        _summary, rows = await run_rows(tmp_path, base_url, ["q"])

    assert rows["q"]["finish_reason"] == "error"
    assert "\n" not in rows["q"]["error"]


@pytest.mark.slow
async def test_server_that_never_answers_ends_each_attempt_at_the_timeout(tmp_path: Path) -> None:
    async def handler(request: web.Request, question: str, n: int) -> web.StreamResponse:
        if question == "silent":
            await asyncio.Event().wait()
        if question == "headers-then-silence":
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.content_length = 1000
            await resp.prepare(request)
            await resp.write(b'{"answer": ')
            await asyncio.Event().wait()
        return answer(question)

    started = time.monotonic()
    async with Hostile(handler).running() as server:
        summary, rows = await asyncio.wait_for(
            run_rows(
                tmp_path,
                server.base_url,
                ["silent", "headers-then-silence", "prompt"],
                timeout=0.3,
                max_retries=1,
            ),
            timeout=30,
        )
        seen = dict(server.seen)
    elapsed = time.monotonic() - started

    assert_failed(rows["silent"], 2, "0.3s")
    assert_failed(rows["headers-then-silence"], 2, "0.3s")
    assert_answered(rows["prompt"])
    assert seen["silent"] == 2
    assert summary["exit_code"] == 3
    assert elapsed < 20  # bounded by attempts x timeout, not by the server


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (cert.pem, key.pem)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("neither the cryptography package nor openssl is available")  # pragma: no cover
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


async def test_untrusted_certificate_is_a_row_error_not_a_crash(
    tmp_path: Path, self_signed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*self_signed)

    async def handler(request: web.Request, question: str, n: int) -> web.StreamResponse:
        return answer(question)

    async with Hostile(handler, ssl_context=context).running() as server:
        summary, rows = await run_rows(tmp_path, server.base_url, ["over tls", "again"])
        seen = dict(server.seen)

    for row in rows.values():
        assert row["finish_reason"] == "error"
        assert row["answer"] is None
        assert "tls" in row["error"].lower() or "certificate" in row["error"].lower()
        assert row["attempts"] == 1  # a certificate does not fix itself between attempts
    assert seen == {}  # no request got through
    assert summary["exit_code"] == 3


# -- a hostile disk ----------------------------------------------------------------------------


def _cli(*args: str, limit: int | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "batchpizza", "run", *args]
    if limit is not None:
        command = [sys.executable, "-c", LIMITED_CLI, str(limit), "run", *args]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
    )


@pytest.mark.slow
def test_disk_full_while_writing_output_exits_1_and_keeps_checkpoint(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # 20 rows each carrying 200 KB: the output (~4 MB) cannot fit under a 1 MB file size limit,
    # while the checkpoint (20 short answers) fits easily.
    pad = "p" * 200_000
    rows = [{"id": f"r{i}", "prompt": f"question {i}", "pad": pad} for i in range(20)]
    src = write_jsonl(tmp_path / "prompts.jsonl", rows)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "answers.jsonl"
    args = [str(src), "-o", str(out), "--base-url", mock_api.base_url, "--rate", "0", "-q"]

    full = _cli(*args, limit=1_000_000)

    assert full.returncode == 1, (full.returncode, full.stderr)
    assert "Traceback" not in full.stderr
    assert full.stderr.startswith("batchpizza:")
    assert "answers.jsonl" in full.stderr
    assert "too large" in full.stderr.lower() or "no space" in full.stderr.lower()
    assert not out.exists()
    assert not [p for p in out_dir.iterdir() if p.name.endswith(".partial")]
    assert mock_api.stats.requests == 20
    checkpoint = Path(f"{out}.checkpoint")
    with sqlite3.connect(f"file:{checkpoint}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        answered = conn.execute("SELECT count(*) FROM results WHERE finish_reason = 'stop'")
        assert answered.fetchone() == (20,)
    mock_api.reset()

    again = _cli(*args)

    assert again.returncode == 0, again.stderr
    assert mock_api.stats.requests == 0  # nothing paid for twice
    written = read_jsonl(out)
    assert [r["id"] for r in written] == [r["id"] for r in rows]
    assert all(r["answer"] == mock_answer(r["prompt"]) for r in written)
    assert all(len(r["pad"]) == len(pad) for r in written)


@pytest.mark.slow
def test_unwritable_output_folder_exits_1_before_sending(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    src = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "x"}])
    if os.geteuid() == 0:
        # root writes through chmod 555: use a "folder" that is a regular file instead.
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("in the way\n")
        out = blocker / "answers.jsonl"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        out = locked / "answers.jsonl"
    args = [str(src), "-o", str(out), "--base-url", mock_api.base_url, "--rate", "0", "-q"]

    try:
        result = _cli(*args)
    finally:
        if (tmp_path / "locked").exists():
            (tmp_path / "locked").chmod(0o755)

    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("batchpizza:")
    assert str(out.parent) in result.stderr
    assert mock_api.stats.requests == 0
