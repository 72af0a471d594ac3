"""Reliability regressions at the edges: what a server, a gateway or a slip of the user could do
that the previous version got wrong, each pinned by a test.

Credentials in the base URL beside an API key, `report --html` over the run's own files, an empty
answer taken as one, NaN parameters sent as null, the HTTP status of a failed row lost in the
batch output, a key cut in half before it was masked, and terminal escapes from a server reaching
the terminal. The misbehaving servers are small raw asyncio servers on 127.0.0.1 written here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner, Result
from conftest import FAST, read_jsonl, write_jsonl

import batchpizza
from batchpizza import redact
from batchpizza.cli import cli
from batchpizza.errors import BadReply, HTTPStatusError, MisuseDetected, UsageError, describe
from batchpizza.providers.http import snippet
from batchpizza.providers.openai import OpenAIAPI
from batchpizza.providers.pizzagpt import extract_answer
from batchpizza.records import Prompt

# 55 characters, none of them a word or a common key prefix, so any 12 in a row are the key's.
KEY = "Kq7vT3xLr0aKkWm2Yp9Hc4NdZu8wT6jLr1bQfWm5Yo0Hc3NeQ1w2E3r"
assert len(KEY) == 55
GATEWAY_USER, GATEWAY_PASSWORD = "gwuser", "gw-Pa55w0rd-9"

# What a hostile server puts in its error texts: a window title (OSC 0), a screen clear (CSI 2J),
# a clipboard write (OSC 52), a hyperlink (OSC 8), a C1 CSI, colours, a NUL, a bell.
ESCAPES = (
    "\x1b]0;pwned title\x07 \x1b[2J\x1b[H \x1b]52;c;ZWNobyBwd25lZA==\x07 "
    "\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\ \x9b31m red \x1b[0m nul\x00 end"
)
# None of these may reach a terminal or the page.
CONTROLS = ("\x1b", "\x07", "\x9b", "\x00", "\x9d")


# -- a raw scripted server -----------------------------------------------------------------------


def http(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def completion(content: object, finish_reason: str = "stop", **message: Any) -> bytes:
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": content, **message},
        "finish_reason": finish_reason,
    }
    body = {"id": "chatcmpl-1", "model": "m", "choices": [choice]}
    return http("200 OK", json.dumps(body).encode())


Reply = Callable[[str, int, bytes], bytes]  # (the row's prompt, its nth request, head) -> bytes


class RawServer:
    """A bare HTTP/1.1 server on 127.0.0.1 in a thread of its own (for the command line, which
    runs its own event loop): each request's prompt (Pizzagpt's `question`, or the last chat
    message's content) and how many times it was asked go to `reply`, whose bytes are sent as
    they are; then the connection is closed."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.heads: list[bytes] = []
        self.counts: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            self._loop.run_until_complete(server.wait_closed())
            self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            data = json.loads(await reader.readexactly(length))
            self.heads.append(head)
            asked = data.get("question") or data["messages"][-1]["content"]
            n = self.counts[asked] = self.counts.get(asked, 0) + 1
            writer.write(self.reply(asked, n, head))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, KeyError):
            pass
        finally:
            writer.close()

    def __enter__(self) -> RawServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@contextlib.contextmanager
def raw_server(reply: Reply) -> Iterator[RawServer]:
    with RawServer(reply) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_known_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no remembered secrets, so one cannot mask another's leak."""
    monkeypatch.setattr(redact, "_known", set())


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


def run_openai(server: RawServer, src: Path, out: Path, *extra: str, key: str = KEY) -> Result:
    return invoke(
        "run",
        str(src),
        "-o",
        str(out),
        "--provider",
        "openai",
        "--model",
        "m",
        "--base-url",
        f"{server.url}/v1",
        "--rate",
        "0",
        "--timeout",
        "5",
        "--no-progress",
        *extra,
        env={"OPENAI_API_KEY": key},
    )


def no_traceback(result: Result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


def prompts(tmp_path: Path, *questions: str) -> Path:
    return write_jsonl(tmp_path / "prompts.jsonl", [{"id": q, "prompt": q} for q in questions])


def answered(question: str, n: int, head: bytes) -> bytes:
    return completion(f"answer to {question}")


# -- 3. credentials in --base-url beside an API key ------------------------------------------------


def test_credentials_in_the_base_url_beside_an_api_key_are_refused_before_sending(
    tmp_path: Path,
) -> None:
    src = prompts(tmp_path, "q1")
    with raw_server(answered) as server:
        url = f"http://{GATEWAY_USER}:{GATEWAY_PASSWORD}@127.0.0.1:{server.port}/v1"
        result = invoke(
            "run",
            str(src),
            "-o",
            str(tmp_path / "out.jsonl"),
            "--provider",
            "openai",
            "--base-url",
            url,
            "--no-progress",
            env={"OPENAI_API_KEY": KEY},
        )
        assert server.heads == []
    no_traceback(result)
    assert result.exit_code == 2, result.output
    assert "API key" in result.output and "--base-url" in result.output
    assert GATEWAY_PASSWORD not in result.output and KEY not in result.output
    assert not (tmp_path / "out.jsonl").exists()


def test_credentials_in_the_base_url_beside_an_api_key_are_refused_by_the_python_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    src = prompts(tmp_path, "q1")
    with raw_server(answered) as server:
        url = f"http://{GATEWAY_USER}:{GATEWAY_PASSWORD}@127.0.0.1:{server.port}/v1"
        with pytest.raises(UsageError) as caught:
            batchpizza.run(src, tmp_path / "out.jsonl", provider="openai", base_url=url, **FAST)
        assert server.heads == []
    assert GATEWAY_PASSWORD not in str(caught.value)


def test_credentials_in_the_base_url_alone_go_as_basic_auth(tmp_path: Path) -> None:
    src = prompts(tmp_path, "q1")
    out = tmp_path / "out.jsonl"
    with raw_server(answered) as server:
        url = f"http://{GATEWAY_USER}:{GATEWAY_PASSWORD}@127.0.0.1:{server.port}/v1"
        result = invoke(
            "run", str(src), "-o", str(out), "--provider", "openai", "--base-url", url,
            "--no-progress", env={"OPENAI_API_KEY": ""},
        )  # fmt: skip
        heads = b"".join(server.heads).lower()
    assert result.exit_code == 0, result.output
    assert b"authorization: basic " in heads
    assert read_jsonl(out)[0]["answer"] == "answer to q1"


# -- 4. report --html never writes over the run's own files ----------------------------------------


@pytest.fixture
def finished_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A finished --mock run made with relative paths from tmp_path (the checkpoint records the
    input as given)."""
    monkeypatch.chdir(tmp_path)
    prompts(tmp_path, "q1", "q2")
    result = invoke("run", "prompts.jsonl", "-o", "out.jsonl", "--mock", "--rate", "0", "-q")
    assert result.exit_code == 0, result.output
    files = {
        "input": tmp_path / "prompts.jsonl",
        "output": tmp_path / "out.jsonl",
        "checkpoint": tmp_path / "out.jsonl.mock-checkpoint",
    }
    assert all(path.exists() for path in files.values())
    return files


@pytest.mark.parametrize("target", ["input", "output", "checkpoint"])
@pytest.mark.parametrize("name_the_output", [True, False])
def test_report_html_refuses_to_write_over_the_runs_own_files(
    finished_run: dict[str, Path], target: str, name_the_output: bool
) -> None:
    before = {what: path.read_bytes() for what, path in finished_run.items()}
    where = ["out.jsonl"] if name_the_output else ["--checkpoint", str(finished_run["checkpoint"])]
    result = invoke("report", *where, "--html", str(finished_run[target]))
    no_traceback(result)
    assert result.exit_code == 2, result.output
    assert f"the {target}" in result.output
    assert {what: path.read_bytes() for what, path in finished_run.items()} == before
    rerun = invoke("run", "prompts.jsonl", "-o", "out.jsonl", "--mock", "--rate", "0", "-q")
    assert rerun.exit_code == 0, rerun.output


def test_report_html_refuses_the_checkpoints_log_files(finished_run: dict[str, Path]) -> None:
    wal = Path(f"{finished_run['checkpoint']}-wal")
    result = invoke("report", "out.jsonl", "--html", str(wal))
    assert result.exit_code == 2, result.output
    assert not wal.exists()


def test_report_html_writes_a_page_elsewhere(finished_run: dict[str, Path]) -> None:
    result = invoke("report", "out.jsonl", "--html", "page.html")
    assert result.exit_code == 0, result.output
    assert Path("page.html").read_text("utf-8").startswith("<!doctype html>")


# -- 10. an empty answer is a failed attempt, retried ----------------------------------------------


def _one_prompt() -> Prompt:
    return Prompt("r1", "q", ({"role": "user", "content": "q"},))


async def _ask(server: RawServer) -> Any:
    async with aiohttp.ClientSession() as session:
        return await OpenAIAPI(f"{server.url}/v1", model="m").ask(session, _one_prompt())


@pytest.mark.parametrize("content", ["", "   \n\t "])
async def test_an_empty_or_blank_answer_is_a_retryable_bad_reply(content: str) -> None:
    # With "length" or "content_filter" it is the answer (tests/test_ended_empty.py).
    with (
        raw_server(lambda q, n, h: completion(content, "stop")) as server,
        pytest.raises(BadReply) as caught,
    ):
        await _ask(server)
    assert caught.value.retryable
    assert "empty" in caught.value.message and "stop" in caught.value.message


async def test_tool_calls_with_empty_content_are_still_the_answer() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    with raw_server(lambda q, n, h: completion("", "tool_calls", tool_calls=calls)) as server:
        answer = await _ask(server)
    assert answer.finish_reason == "tool_calls" and json.loads(answer.text) == calls


@pytest.mark.slow
def test_an_empty_answer_is_retried_then_answered(tmp_path: Path) -> None:
    def reply(question: str, n: int, head: bytes) -> bytes:
        return completion("" if n == 1 else "ciao")

    src, out = prompts(tmp_path, "q1"), tmp_path / "out.jsonl"
    with raw_server(reply) as server:
        result = run_openai(server, src, out, "--max-retries", "2")
    assert result.exit_code == 0, result.output
    row = read_jsonl(out)[0]
    assert (row["answer"], row["finish_reason"], row["attempts"]) == ("ciao", "stop", 2)


# -- 11. non-finite numbers in --param --------------------------------------------------------------


@pytest.mark.parametrize("value", ["NaN", "1e400", "Infinity", "-Infinity", "[1, NaN]"])
def test_a_non_finite_param_is_a_usage_error_before_sending(tmp_path: Path, value: str) -> None:
    src, out = prompts(tmp_path, "q1"), tmp_path / "out.jsonl"
    with raw_server(answered) as server:
        result = run_openai(server, src, out, "--param", f"temperature={value}")
        assert server.heads == []
    no_traceback(result)
    assert result.exit_code == 2, result.output
    assert "temperature" in result.output and "finite" in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": math.nan},
        {"temperature": math.inf},
        {"logit_bias": {"50256": -math.inf}},
        {"stop": ["a", math.nan]},
    ],
)
def test_a_non_finite_param_is_refused_by_the_python_api(
    tmp_path: Path, params: dict[str, Any]
) -> None:
    src = prompts(tmp_path, "q1")
    with raw_server(answered) as server:
        with pytest.raises(UsageError, match=next(iter(params))):
            batchpizza.run(
                src, tmp_path / "out.jsonl", provider="openai", base_url=f"{server.url}/v1",
                params=params, **FAST,
            )  # fmt: skip
        with pytest.raises(UsageError, match=next(iter(params))):
            batchpizza.answer(
                [{"prompt": "q1"}], provider="openai", base_url=f"{server.url}/v1",
                params=params, **FAST,
            )  # fmt: skip
        assert server.heads == []


# -- 13. a failed row's status in OpenAI batch output -----------------------------------------------


def test_openai_batch_output_keeps_the_status_of_a_failed_row(tmp_path: Path) -> None:
    error = {"message": "max_tokens is too large", "type": "invalid_request_error",
             "param": "max_tokens", "code": None}  # fmt: skip

    def reply(question: str, n: int, head: bytes) -> bytes:
        if question == "bad":
            return http("400 Bad Request", json.dumps({"error": error}).encode())
        if question == "busy":
            return http("503 Service Unavailable", b"try later", "text/plain")
        if question == "garbled":
            return http("200 OK", b"<html>not json</html>", "text/html")
        return completion("fine")

    src, out = prompts(tmp_path, "ok", "bad", "busy", "garbled"), tmp_path / "out.jsonl"
    with raw_server(reply) as server:
        result = run_openai(
            server, src, out, "--format", "openai-batch", "--max-retries", "1",
            "--summary-json", str(tmp_path / "summary.json"),
        )  # fmt: skip
    assert result.exit_code == 3, result.output
    lines = {line["custom_id"]: line for line in read_jsonl(out)}
    assert lines["ok"]["response"]["status_code"] == 200 and lines["ok"]["error"] is None
    # As in OpenAI's batch error files: the status and the server's error body as it came, and
    # `error` null (it is for requests that got no HTTP reply).
    bad = lines["bad"]
    assert bad["response"]["status_code"] == 400
    assert bad["response"]["body"] == {"error": error}
    assert bad["error"] is None
    busy = lines["busy"]
    assert busy["response"]["status_code"] == 503 and busy["error"] is None
    assert "503" in busy["response"]["body"]["error"]["message"]  # no JSON body: one rebuilt
    # A 200 without an answer is no HTTP failure: a status 200 would read as success.
    assert lines["garbled"]["response"] is None
    assert lines["garbled"]["error"]["code"] == "request_failed"


def test_openai_batch_output_keeps_the_servers_reply_body_as_it_came(tmp_path: Path) -> None:
    body = {
        "id": "chatcmpl-A1Efhv97EZNQeHKSLPnTmZex20gf2",
        "object": "chat.completion",
        "created": 1724858089,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "2 + 2 equals 4.", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 24, "completion_tokens": 8, "total_tokens": 32,
                  "prompt_tokens_details": {"cached_tokens": 0}},
        "system_fingerprint": "fp_f33667828e",
        "service_tier": "default",
    }  # fmt: skip

    def reply(question: str, n: int, head: bytes) -> bytes:
        return http("200 OK", json.dumps(body).encode())

    src, out = prompts(tmp_path, "2+2?"), tmp_path / "out.jsonl"
    with raw_server(reply) as server:
        result = run_openai(server, src, out, "--format", "openai-batch")
        assert result.exit_code == 0, result.output
        # Written again from the checkpoint alone (nothing to send): the same body.
        again = run_openai(server, src, tmp_path / "again.jsonl", "--format", "openai-batch",
                           "--checkpoint", str(out) + ".checkpoint")  # fmt: skip
    assert again.exit_code == 0, again.output
    for path in (out, tmp_path / "again.jsonl"):
        (line,) = read_jsonl(path)
        assert line["response"]["status_code"] == 200
        assert line["response"]["body"] == body
        assert line["error"] is None


# -- 14. a key echoed by the server is masked before any cut ----------------------------------------


def leaked(text: str) -> list[str]:
    """The pieces of KEY (12 characters or more) found in `text`."""
    return [KEY[i : i + 12] for i in range(len(KEY) - 11) if KEY[i : i + 12] in text]


# Every cut a server text meets: the snippet of a body (200), an error message (300, 297 with its
# "..."), a refusal (400), and 8 characters around each, so the cut falls at every part of the key.
CUTS = (200, 297, 300, 400)
OFFSETS = sorted({c - d for c in CUTS for d in range(1, len(KEY), 6)})


def _echoing(offset: int, shape: str) -> bytes:
    said = "." * offset + KEY + " and the rest of the message"
    if shape == "json":
        return http("400 Bad Request", json.dumps({"error": {"message": said}}).encode())
    if shape == "text":
        return http("400 Bad Request", said.encode(), "text/plain")
    return http("200 OK", f'{{"choices": "{said}"'.encode())  # a 200 that is not JSON


@pytest.mark.parametrize("shape", ["json", "text", "garbled"])
async def test_an_echoed_key_is_masked_before_the_message_is_cut(shape: str) -> None:
    with raw_server(lambda q, n, h: _echoing(int(q), shape)) as server:
        async with aiohttp.ClientSession() as session:
            provider = OpenAIAPI(f"{server.url}/v1", model="m", api_key=KEY)
            for offset in OFFSETS:
                asked = Prompt("r1", str(offset), ({"role": "user", "content": str(offset)},))
                with pytest.raises((HTTPStatusError, BadReply)) as caught:
                    await provider.ask(session, asked)
                assert leaked(describe(caught.value)) == [], (offset, describe(caught.value))


def test_snippet_and_refusals_mask_remembered_secrets_before_cutting() -> None:
    redact.remember_secret(KEY)
    for offset in OFFSETS:
        said = "x" * offset + KEY + " rest"
        assert leaked(snippet(said.encode())) == [], offset
        with pytest.raises(BadReply) as bad:
            extract_answer(json.dumps({"other": said}).encode())
        assert leaked(bad.value.message) == [], offset
        with pytest.raises(MisuseDetected) as refused:
            extract_answer(f"Misuse detected. {said}".encode())
        assert leaked(refused.value.message + refused.value.text) == [], offset
    # Whitespace that collapses to nothing before the key must not move it out of what is masked.
    padded = " \n" * 100_000 + "." * 190 + KEY
    assert leaked(snippet(padded.encode())) == [] and snippet(padded.encode()).startswith(".")


def test_an_echoed_key_is_nowhere_in_output_checkpoint_or_log(tmp_path: Path) -> None:
    offsets = [c - 20 for c in CUTS]
    questions = [f"q{offset}" for offset in offsets]

    def reply(question: str, n: int, head: bytes) -> bytes:
        offset = int(question[1:])
        if n == 1:  # a retried 503 first: its message reaches the -v log
            said = "." * offset + KEY + " busy"
            return http("503 Service Unavailable", json.dumps({"error": said}).encode())
        return _echoing(offset, "json")

    src, out = prompts(tmp_path, *questions), tmp_path / "out.jsonl"
    with raw_server(reply) as server:
        result = run_openai(server, src, out, "-v", "--max-retries", "1")
    assert result.exit_code == 3, result.output
    conn = sqlite3.connect(f"{out}.checkpoint")
    stored = [str(v) for row in conn.execute("SELECT error FROM results") for v in row]
    stored += [str(v) for row in conn.execute("SELECT error FROM attempts") for v in row]
    conn.close()
    assert "retry q" in result.output  # the log line is there, and it is clean
    for name, text in {
        "log": result.output,
        "output": out.read_text("utf-8"),
        "checkpoint": "\n".join(stored),
    }.items():
        assert leaked(text) == [], name


# -- 15. terminal escapes from a server never reach the terminal or the page ------------------------


@pytest.mark.slow
def test_escapes_in_server_texts_reach_neither_terminal_nor_page(tmp_path: Path) -> None:
    def reply(question: str, n: int, head: bytes) -> bytes:
        said = f"overloaded {ESCAPES}"
        if question == "json":
            return http("503 Service Unavailable", json.dumps({"error": said}).encode())
        return http("503 Service Unavailable", said.encode(), "text/plain")

    src, out = prompts(tmp_path, "json", "text"), tmp_path / "out.jsonl"
    with raw_server(reply) as server:
        result = run_openai(server, src, out, "-v", "--max-retries", "1")
    assert result.exit_code == 3, result.output
    assert "retry json" in result.output and "overloaded" in result.output
    assert "\x1b" in read_jsonl(out)[0]["error"]  # the data keeps what the server said
    report = invoke("report", str(out), "--html", str(tmp_path / "page.html"))
    assert report.exit_code == 0, report.output
    assert "overloaded" in report.output
    page = (tmp_path / "page.html").read_text("utf-8")
    for name, text in {"run": result.output, "report": report.output, "page": page}.items():
        found = [c for c in CONTROLS if c in text]
        assert found == [], (name, found)


def test_escapes_in_a_fatal_error_never_reach_the_terminal(tmp_path: Path) -> None:
    def reply(question: str, n: int, head: bytes) -> bytes:
        return http("401 Unauthorized", json.dumps({"error": {"message": ESCAPES}}).encode())

    src, out = prompts(tmp_path, "q1"), tmp_path / "out.jsonl"
    with raw_server(reply) as server:
        result = run_openai(server, src, out)
    assert result.exit_code == 2, result.output
    assert "401" in result.output
    assert [c for c in CONTROLS if c in result.output] == []


# -- 9. a fatal stop's summary counts the rows the checkpoint holds ------------------------------


def three_answers_then_401() -> Reply:
    """Answers the first 3 requests, then refuses the key (a fatal reply) for good."""
    asked = 0

    def reply(question: str, n: int, head: bytes) -> bytes:
        nonlocal asked
        asked += 1
        if asked <= 3:
            return completion(f"answer to {question}")
        return http("401 Unauthorized", json.dumps({"error": {"message": "bad key"}}).encode())

    return reply


def test_a_fatal_stop_summary_counts_the_answers_kept_in_the_checkpoint(tmp_path: Path) -> None:
    src = prompts(tmp_path, *(f"q{i}" for i in range(30)))
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    with raw_server(three_answers_then_401()) as server:
        result = run_openai(server, src, out, "--concurrency", "1", "--summary-json", str(summary))
    assert result.exit_code == 2, result.output
    no_traceback(result)
    assert "kept in the checkpoint" in result.output
    report = json.loads(summary.read_text())
    assert report["exit_code"] == 2
    # The row refused with 401 is kept as failed (a rerun sends it again); the rest wait.
    assert (report["rows"], report["answered"], report["failed"]) == (30, 3, 1)
    assert report["pending"] == 26
    assert "failed: 30 rows: 3 answered, 1 failed" in result.output


def test_answer_without_a_checkpoint_says_a_fatal_stop_kept_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    questions = [f"q{i}" for i in range(30)]
    with raw_server(three_answers_then_401()) as server, pytest.raises(UsageError) as raised:
        batchpizza.answer(
            questions,
            provider="openai",
            model="m",
            base_url=f"{server.url}/v1",
            rate=0,
            concurrency=1,
            timeout=5,
            progress=False,
            quiet=True,
        )
    message = raised.value.message
    assert "401" in message
    assert "not kept" in message
    assert "kept in the checkpoint" not in message
