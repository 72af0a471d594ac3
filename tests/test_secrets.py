"""Secrets never appear in what batchpizza prints or writes, at any verbosity.

SPEC.md "What the user sees": the user-info part of any URL, and query parameters or headers that
carry credentials, never reach logs, errors, summaries or output. The end-to-end tests give
credentials every way a user can (userinfo and a query token in --base-url, a proxy with a
password on the command line and in the environment), run verbosely against servers that fail and
echo what they were sent, and then search every byte printed and written for each secret.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import write_jsonl

from batchpizza import errors, redact
from batchpizza.cli import cli
from batchpizza.mock.replies import mock_answer

USER, PASSWORD = "alice_u5er", "s3cr3tpass"
TOKEN = "abcd1234secret"
PROXY_USER, PROXY_PASSWORD = "bob_pr0xy", "pr0xyPa55w0rd"
SECRETS = [
    USER,
    PASSWORD,
    TOKEN,
    PROXY_USER,
    PROXY_PASSWORD,
    base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
    base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode(),
]


# -- a raw HTTP server that fails, echoes and garbles on purpose ----------------------------------


@dataclass
class Seen:
    heads: list[bytes] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def _reply(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def _answer(question: str) -> bytes:
    body = f'{{"answer": {{"content": "{mock_answer(question)}"}}}}'.encode()
    return _reply("200 OK", body)


class LeakyServer:
    """Answers any request line (origin or proxy form). What it does depends on the question:

    ok           answers
    fail-once    503 the first time, then answers (a logged retry)
    echo         200 text/plain echoing the request head, credentials included (a bad reply
                 whose snippet lands in the error column and the retry log)
    httpbin      200 JSON of the request's headers and URL, authorization first (no answer)
    bad-status   a broken status line (aiohttp's error names the URL it requested)
    """

    def __init__(self) -> None:
        self.seen = Seen()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

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
            body = await reader.readexactly(length)
            self.seen.heads.append(head)
            question = str(json.loads(body).get("question"))
            n = self.seen.counts[question] = self.seen.counts.get(question, 0) + 1
            writer.write(self._respond(question, n, head))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, AttributeError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _respond(question: str, n: int, head: bytes) -> bytes:
        if question.startswith("fail-once") and n == 1:
            return _reply("503 Service Unavailable", head, "text/plain")
        if question.startswith("echo"):
            lines = head.decode("latin-1").split("\r\n")
            auth = [x for x in lines if x.lower().startswith(("authorization", "proxy-auth"))]
            return _reply("200 OK", "\n".join([*auth, lines[0]]).encode(), "text/plain")
        if question.startswith("httpbin"):  # JSON without an answer: the headers, as httpbin does
            lines = head.decode("latin-1").split("\r\n")
            pairs = [x.split(": ", 1) for x in lines[1:] if ": " in x]
            headers = dict(sorted(pairs, key=lambda kv: "auth" not in kv[0].lower()))
            echo = {"headers": headers, "url": lines[0].split(" ")[1]}
            return _reply("200 OK", json.dumps(echo).encode())
        if question.startswith("bad-status"):
            return b"HTTP/1.1 OOPS\r\n\r\n"
        return _answer(question)

    def __enter__(self) -> LeakyServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def leaky() -> Iterator[LeakyServer]:
    with LeakyServer() as server:
        yield server


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that refuses connections."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def _fresh_known_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no remembered secrets, so one cannot mask another's leak."""
    monkeypatch.setattr(redact, "_known", set())


# -- what was printed and written ----------------------------------------------------------------


QUESTIONS = ["ok", "fail-once", "echo", "httpbin", "bad-status", "ok too"]


def run_cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[Result, Path]:
    src = write_jsonl(tmp_path / "prompts.jsonl", [{"id": q, "prompt": q} for q in QUESTIONS])
    out = tmp_path / "out" / "answers.jsonl"
    out.parent.mkdir(exist_ok=True)
    summary = tmp_path / "out" / "summary.json"
    result = CliRunner().invoke(
        cli,
        [
            "run",
            str(src),
            "-o",
            str(out),
            "--rate",
            "0",
            "--max-retries",
            "1",
            "--timeout",
            "5",
            "--no-progress",
            "-v",
            "--summary-json",
            str(summary),
            *args,
        ],
        env=env,
    )
    return result, out


def everything(result: Result, out: Path) -> dict[str, bytes]:
    """Every text the run printed and every file it left in the output folder, by name."""
    texts = {
        "stdout": result.stdout.encode(),
        "stderr": result.stderr.encode(),
        "output": result.output.encode(),
    }
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        texts["exception"] = repr(result.exception).encode()
    for path in sorted(out.parent.iterdir()):
        if path.is_file():
            texts[path.name] = path.read_bytes()
    return texts


def assert_no_secret(texts: dict[str, bytes]) -> None:
    leaks = [
        (name, secret)
        for name, data in texts.items()
        for secret in SECRETS
        if secret.encode() in data or secret.encode().lower() in data.lower()
    ]
    assert leaks == [], leaks


def assert_ran(result: Result, out: Path) -> None:
    """The run went through (exit 3: some rows failed on purpose), without a traceback."""
    assert result.exit_code == 3, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert out.exists()
    assert (out.parent / "answers.jsonl.checkpoint").exists()
    assert (out.parent / "summary.json").exists()


# -- end to end ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("param", ["token", "key"])
def test_credentials_in_base_url_never_printed_or_written(
    tmp_path: Path, leaky: LeakyServer, param: str
) -> None:
    # ?key= is how Google-style APIs take their key: the user put it there, it is a secret too.
    base = f"http://{USER}:{PASSWORD}@127.0.0.1:{leaky.port}/v1?{param}={TOKEN}"

    result, out = run_cli(tmp_path, "--base-url", base)

    assert_ran(result, out)
    assert "retry" in result.stderr  # -v logged the retries: there was something to leak into
    # The server did receive the credentials, so the echo and errors could have carried them.
    assert any(PASSWORD.encode() in h or b"Authorization" in h for h in leaky.seen.heads)
    assert leaky.seen.counts["fail-once"] == 2
    assert_no_secret(everything(result, out))


def test_credentials_of_proxy_on_command_line_never_printed_or_written(
    tmp_path: Path, leaky: LeakyServer, closed_port: int
) -> None:
    # The leaky server is the proxy: it gets every request, with Proxy-Authorization, and
    # echoes it back; the origin (with its own credentials and token) is never contacted.
    proxy = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{leaky.port}"
    base = f"http://{USER}:{PASSWORD}@127.0.0.1:{closed_port}/v1?token={TOKEN}"

    result, out = run_cli(tmp_path, "--base-url", base, "--proxy", proxy)

    assert_ran(result, out)
    assert any(b"proxy-authorization" in h.lower() for h in leaky.seen.heads)
    assert leaky.seen.counts["ok"] == 1
    assert_no_secret(everything(result, out))


def test_refusing_proxy_with_password_never_printed_or_written(
    tmp_path: Path, closed_port: int, leaky: LeakyServer
) -> None:
    proxy = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{closed_port}"
    base = f"http://{USER}:{PASSWORD}@127.0.0.1:{leaky.port}?token={TOKEN}"

    result, out = run_cli(tmp_path, "--base-url", base, "--proxy", proxy)

    assert_ran(result, out)
    assert leaky.seen.heads == []  # everything went to the (dead) proxy
    assert str(closed_port) in result.stderr  # the errors do say which proxy failed
    assert_no_secret(everything(result, out))


@pytest.mark.slow
@pytest.mark.parametrize("variable", ["BATCHPIZZA_PROXY", "HTTP_PROXY", "http_proxy"])
def test_credentials_of_proxy_in_environment_never_printed_or_written(
    tmp_path: Path, leaky: LeakyServer, variable: str
) -> None:
    proxy = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{leaky.port}"
    base = f"http://{USER}:{PASSWORD}@127.0.0.1:9?token={TOKEN}"

    result, out = run_cli(tmp_path, "--base-url", base, env={variable: proxy})

    assert_ran(result, out)
    assert leaky.seen.counts.get("ok") == 1  # the proxy from the environment was used
    assert_no_secret(everything(result, out))


@pytest.mark.slow
def test_base_url_from_environment_never_printed_or_written(
    tmp_path: Path, leaky: LeakyServer
) -> None:
    base = f"http://{USER}:{PASSWORD}@127.0.0.1:{leaky.port}?api_key={TOKEN}"

    result, out = run_cli(tmp_path, env={"BATCHPIZZA_BASE_URL": base})

    assert_ran(result, out)
    assert_no_secret(everything(result, out))


@pytest.mark.parametrize(
    "args",
    [
        ["--base-url", f"ftp://{USER}:{PASSWORD}@127.0.0.1/?token={TOKEN}"],
        ["--proxy", f"socks5://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:1080"],
        ["--base-url", f"http://{USER}:{PASSWORD}@[::1"],
    ],
    ids=["bad-base-url", "bad-proxy", "unparsable-url"],
)
def test_usage_errors_never_echo_credentials(tmp_path: Path, args: list[str]) -> None:
    src = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "x"}])
    out = tmp_path / "answers.jsonl"

    result = CliRunner().invoke(cli, ["run", str(src), "-o", str(out), "-v", *args])

    assert result.exit_code in (1, 2), result.output
    assert "Traceback" not in result.output
    texts = {"output": result.output.encode(), "stderr": result.stderr.encode()}
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        texts["exception"] = repr(result.exception).encode()
    assert_no_secret(texts)


def test_base_url_query_is_kept_and_endpoint_goes_in_the_path(
    tmp_path: Path, leaky: LeakyServer
) -> None:
    # A gateway that wants ?token=... on every request: the endpoint belongs in the path, the
    # token in the query, not "/?token=abcd/api/chatx-completion".
    base = f"http://127.0.0.1:{leaky.port}/gw?token={TOKEN}"
    src = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "ok"}])

    result = CliRunner().invoke(
        cli, ["run", str(src), "-o", str(tmp_path / "a.jsonl"), "--base-url", base, "-q"]
    )

    assert result.exit_code == 0, result.output
    request_line = leaky.seen.heads[0].split(b"\r\n")[0].decode()
    assert request_line == f"POST /gw/api/chatx-completion?token={TOKEN} HTTP/1.1"


# -- redact, unit by unit ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "gone", "kept"),
    [
        ("http://alice:s3cr3t@example.com/x", ["alice", "s3cr3t"], ["example.com/x"]),
        ("https://alice:s3cr3t@example.com:8443/", ["alice", "s3cr3t"], ["example.com:8443"]),
        ("http://tokenonly@example.com/", ["tokenonly"], ["example.com"]),
        (
            "Cannot connect to proxy http://bob:hunter22@10.0.0.1:3128 [refused]",
            ["bob", "hunter22"],
            ["10.0.0.1:3128", "Cannot connect"],
        ),
        ("url='http://u:p4ssw0rd@h/a?b=1'", ["p4ssw0rd"], ["h/a?b=1"]),
        ('"socks5://carol:pw123456@proxy.local:1080"', ["pw123456", "carol"], ["proxy.local"]),
        ("two http://a1:b1b1b1@h1 and https://a2:b2b2b2@h2", ["b1b1b1", "b2b2b2"], ["h1", "h2"]),
    ],
)
def test_redact_removes_url_userinfo(text: str, gone: list[str], kept: list[str]) -> None:
    clean = redact.redact(text)
    for secret in gone:
        assert secret not in clean
    for part in kept:
        assert part in clean
    assert redact.MASK in clean


@pytest.mark.parametrize(
    "param",
    [
        "token",
        "access_token",
        "api_key",
        "apikey",
        "api-key",
        "password",
        "passwd",
        "secret",
        "client_secret",
        "signature",
        "TOKEN",
        "Api_Key",
    ],
)
def test_redact_removes_credential_query_parameters(param: str) -> None:
    text = f"GET https://h.example/v1/chat?model=m&{param}=S3CRETVALUE99&page=2#frag"
    clean = redact.redact(text)
    assert "S3CRETVALUE99" not in clean
    assert "model=m" in clean and "h.example/v1/chat" in clean


@pytest.mark.parametrize("param", ["key", "auth", "sig"])
def test_redact_removes_common_short_credential_parameters(param: str) -> None:
    # ?key= (Google APIs), ?auth= (Firebase), ?sig= (Azure SAS): credentials by another name.
    clean = redact.redact(f"https://h.example/api?{param}=S3CRETVALUE99")
    assert "S3CRETVALUE99" not in clean


def test_redact_keeps_ordinary_parameters_and_words() -> None:
    text = "HTTP 503 after 6 attempts; tokenize the input; page=2 and ?q=pizza&lang=it"
    assert redact.redact(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer sk-SECRETSECRET123",
        "authorization: Basic YWxpY2U6czNjcjN0cGFzcw==",
        "Proxy-Authorization: Basic YWxpY2U6czNjcjN0cGFzcw==",
        "{'Authorization': 'Bearer sk-SECRETSECRET123', 'accept': 'application/json'}",
        '{"authorization": "Bearer sk-SECRETSECRET123"}',
        "x-api-key: sk-SECRETSECRET123",
        "X-API-Key=sk-SECRETSECRET123",
        "Cookie: session=sk-SECRETSECRET123",
    ],
)
def test_redact_removes_credential_headers(text: str) -> None:
    clean = redact.redact(text)
    assert "SECRETSECRET123" not in clean
    assert "YWxpY2U6czNjcjN0cGFzcw" not in clean
    assert redact.MASK in clean


def test_redact_keeps_other_headers() -> None:
    text = "{'accept': 'application/json', 'x-secret': 'Marinara'}"
    assert "application/json" in redact.redact(text)


def test_remembered_url_secrets_are_masked_anywhere() -> None:
    redact.remember_url("http://dave:p%40ss%2Fw0rd@proxy.local:3128")
    text = "proxy said: user dave, password p@ss/w0rd (p%40ss%2Fw0rd)"
    clean = redact.redact(text)
    assert "p@ss/w0rd" not in clean
    assert "p%40ss%2Fw0rd" not in clean
    assert "dave" not in clean


def test_remember_url_ignores_urls_without_credentials() -> None:
    redact.remember_url("http://127.0.0.1:8080/path")
    redact.remember_url(None)
    redact.remember_url("not a url at all")
    text = "connected to 127.0.0.1:8080/path"
    assert redact.redact(text) == text


def test_errors_redact_their_messages() -> None:
    exc = errors.TransportError("Cannot connect to http://alice:s3cr3tpass@h:1/?token=abc12345")
    assert "s3cr3tpass" not in exc.message
    assert "abc12345" not in exc.message
    assert "alice" not in str(exc)


def test_describe_redacts_foreign_exceptions() -> None:
    foreign = ValueError("bad url http://alice:s3cr3tpass@h:1/x?api_key=abc12345")
    text = errors.describe(foreign)
    assert text.startswith("ValueError")
    assert "s3cr3tpass" not in text and "abc12345" not in text


def test_logging_filter_redacts_arguments_and_tracebacks() -> None:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep()
    handler.addFilter(redact.RedactingFilter())
    logger = logging.getLogger("batchpizza.test_secrets")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.warning("retry via %s", f"http://{USER}:{PASSWORD}@h:1/?token={TOKEN}")
        try:
            raise RuntimeError(f"proxy http://{PROXY_USER}:{PROXY_PASSWORD}@p:3128 failed")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    joined = "\n".join(records)
    assert "retry via" in joined and "failed" in joined
    for secret in (USER, PASSWORD, TOKEN, PROXY_USER, PROXY_PASSWORD):
        assert secret not in joined


def test_redaction_leaves_ordinary_words_and_short_values_alone() -> None:
    from batchpizza import redact as redaction

    assert redaction.redact("field 'api_key': must be a string") == (
        "field 'api_key': must be a string"
    )
    known = set(redaction._known)
    try:
        redaction.remember_url("https://gw.example/?lang=eng&token=q7z")
        text = redaction.redact("the length of the reply; token q7z")
    finally:
        redaction._known.clear()
        redaction._known.update(known)  # the registry is process-wide: leave it as found
    assert "length" in text  # "eng" (lang=eng) is not a secret and is not masked inside words
    assert "q7z" not in text  # token= is a credential whatever its length
