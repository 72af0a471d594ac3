"""Reliability regressions: what the previous version got wrong, each pinned by a test.

Paid answers survive a truncated or empty input; a checkpoint deleted under a run, a failing
sync and a reply that inflates without end stop the run or the row plainly; hostile input bytes
are bad rows found before anything is sent; a refusal is told from an answer that mentions one;
an interrupt during a long Parquet write leaves no noise. Misbehaving servers are small raw
asyncio servers on 127.0.0.1 written here; waiting on anything is bounded polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from conftest import FAST, read_jsonl, write_jsonl

import batchpizza
import batchpizza.checkpoint.store as checkpoint_store
from batchpizza.checkpoint.reading import read_only
from batchpizza.checkpoint.store import Checkpoint
from batchpizza.cli import cli
from batchpizza.errors import BadReply, BatchpizzaError, OutputError
from batchpizza.mock.faults import MockConfig
from batchpizza.mock.replies import MISUSE_TEXT, mock_answer
from batchpizza.mock.server import ThreadedMockServer
from batchpizza.providers import http as provider_http
from batchpizza.providers.pizzagpt import ask
from batchpizza.records import TOKEN_COLUMNS

RESULT_COLUMNS = (
    *("answer", "finish_reason", "misuse", "error", "attempts", "latency_ms", "model"),
    "reused_from",
)
BIG = 123456789012345678901234567890  # beyond 64 bits


# -- helpers -----------------------------------------------------------------------------------


def run_cli(server_url: str, inp: Path | str, out: Path | str, *extra: str) -> Result:
    args = ["run", str(inp), "-o", str(out), "--base-url", server_url, "--rate", "0"]
    return CliRunner().invoke(cli, [*args, "--no-progress", *extra])


def no_traceback(result: Result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


def rows(n: int, label: str = "r") -> list[dict[str, Any]]:
    return [{"id": f"{label}{i}", "prompt": f"{label} question {i}", "n": i} for i in range(n)]


def output_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()  # type: ignore[no-any-return]
    return read_jsonl(path)


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def committed(ck: Path) -> int:
    """Rows committed to the checkpoint so far (0 while it is not there yet)."""
    if not ck.exists():
        return 0
    try:
        conn = read_only(ck)  # results staged by the run included
    except (sqlite3.Error, BatchpizzaError):
        return 0
    try:
        return int(conn.execute("SELECT count(*) FROM results").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def http_response(body: bytes, *, headers: tuple[str, ...] = (), length: bool = True) -> bytes:
    """A 200 reply; without `length`, the body ends where the connection closes."""
    head = ["HTTP/1.1 200 OK", "Connection: close", *headers]
    if length:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@contextlib.asynccontextmanager
async def raw_server(reply: Callable[[bytes], bytes]) -> AsyncIterator[str]:
    """A bare HTTP/1.1 server on 127.0.0.1: `reply(request body)` is the whole response, sent
    as is, then the connection is closed. Yields the base URL."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            writer.write(reply(await reader.readexactly(length)))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


# -- 1. a truncated or empty input never deletes paid answers ------------------------------------


def _empty(path: Path, data: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    path.write_bytes(b"")
    return [], []


def _truncated(path: Path, data: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    write_jsonl(path, data[:7])
    return [], [r["id"] for r in data[:7]]


def _every_row_invalid(path: Path, data: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    write_jsonl(path, [{"id": r["id"], "prompt": 5} for r in data])
    return ["--skip-bad-rows"], [r["id"] for r in data]


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
@pytest.mark.parametrize("damage", [_empty, _truncated, _every_row_invalid])
def test_a_truncated_empty_or_all_invalid_input_never_deletes_paid_answers(
    mock_api: ThreadedMockServer, tmp_path: Path, suffix: str, damage: Any
) -> None:
    data = rows(50)
    source = write_jsonl(tmp_path / "in.jsonl", data)
    out = tmp_path / f"out{suffix}"
    assert run_cli(mock_api.base_url, source, out, "-q").exit_code == 0
    assert mock_api.stats.requests == 50

    # One night the input arrives damaged: the same command.
    extra, ids = damage(source, data)
    mock_api.reset()
    result = run_cli(mock_api.base_url, source, out, "-q", *extra)

    assert result.exit_code == (3 if extra else 0), result.output
    assert mock_api.stats.requests == 0
    assert [r["id"] for r in output_rows(out)] == ids
    if suffix == ".parquet":
        assert set(RESULT_COLUMNS) <= set(pq.read_schema(out).names)
    elif not ids:
        assert out.read_bytes() == b""

    # The next night the whole input is back: nothing is paid for twice.
    write_jsonl(source, data)
    result = run_cli(mock_api.base_url, source, out, "-q")

    assert result.exit_code == 0, result.output
    assert mock_api.stats.requests == 0
    written = output_rows(out)
    assert [r["id"] for r in written] == [r["id"] for r in data]
    assert [r["answer"] for r in written] == [mock_answer(r["prompt"]) for r in data]


def test_an_empty_input_gives_an_empty_parquet_output_with_every_result_column(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n\n")
    out = tmp_path / "out.parquet"

    result = run_cli(mock_api.base_url, source, out, "-q")

    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.num_rows == 0
    assert ["id", *RESULT_COLUMNS, *TOKEN_COLUMNS] == table.schema.names


# -- 4. a checkpoint deleted under a run -------------------------------------------------------


def test_deleting_the_checkpoint_mid_run_fails_the_run_with_exit_1(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    mock_api.config = MockConfig(seed=1, latency_ms=20)
    source = write_jsonl(tmp_path / "in.jsonl", rows(300))
    out = tmp_path / "out.jsonl"
    ck = Path(f"{out}.checkpoint")
    deleted = threading.Event()

    def delete_once_running() -> None:
        if wait_until(lambda: committed(ck) >= 5, 30):
            for suffix in ("", "-wal", "-shm"):
                Path(f"{ck}{suffix}").unlink(missing_ok=True)
            deleted.set()

    thread = threading.Thread(target=delete_once_running, daemon=True)
    thread.start()
    result = run_cli(mock_api.base_url, source, out, "--concurrency", "2")
    thread.join(30)

    assert deleted.is_set()
    assert result.exit_code == 1, result.output
    no_traceback(result)
    assert "deleted or replaced" in result.stderr
    assert mock_api.stats.requests < 300  # it stopped rather than carry on into nowhere


# -- 5. hostile input bytes ----------------------------------------------------------------------


CESU = b"\xed\xa0\x80"  # a UTF-16 surrogate encoded as if it were a character: not UTF-8
HOSTILE_LINES = {
    "cesu8-prompt": b'{"id": "x", "prompt": "a' + CESU + b'b"}',
    "cesu8-carried": b'{"id": "x", "prompt": "fine", "note": "a' + CESU + b'b"}',
    "cesu8-id": b'{"id": "x' + CESU + b'", "prompt": "fine"}',
    "nested-2000": b'{"id": "x", "prompt": "fine", "deep": ' + b"[" * 2000 + b"]" * 2000 + b"}",
    "nan": b'{"id": "x", "prompt": "fine", "score": NaN}',
    "infinity": b'{"id": "x", "prompt": "fine", "score": Infinity}',
    "minus-infinity": b'{"id": "x", "prompt": "fine", "score": -Infinity}',
    "1e400": b'{"id": "x", "prompt": "fine", "score": 1e400}',
}


def hostile_input(path: Path, line: bytes) -> Path:
    """`line` as line 2, between two good rows."""
    first = json.dumps({"id": "a", "prompt": "one"}).encode()
    last = json.dumps({"id": "b", "prompt": "two"}).encode()
    path.write_bytes(first + b"\n" + line + b"\n" + last + b"\n")
    return path


@pytest.mark.parametrize("kind", list(HOSTILE_LINES))
def test_hostile_bytes_are_a_bad_row_found_before_sending(
    mock_api: ThreadedMockServer, tmp_path: Path, kind: str
) -> None:
    source = hostile_input(tmp_path / "in.jsonl", HOSTILE_LINES[kind])

    result = run_cli(mock_api.base_url, source, tmp_path / "out.jsonl")

    assert result.exit_code == 2, result.output
    no_traceback(result)
    assert f"{source}:2" in result.stderr
    assert "1 bad row" in result.stderr
    assert mock_api.stats.requests == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


@pytest.mark.parametrize("kind", list(HOSTILE_LINES))
def test_hostile_bytes_are_an_invalid_row_under_skip_bad_rows(
    mock_api: ThreadedMockServer, tmp_path: Path, kind: str
) -> None:
    source = hostile_input(tmp_path / "in.jsonl", HOSTILE_LINES[kind])
    out = tmp_path / "out.jsonl"

    result = run_cli(mock_api.base_url, source, out, "--skip-bad-rows")

    assert result.exit_code == 3, result.output
    no_traceback(result)
    written = read_jsonl(out)
    assert [r["finish_reason"] for r in written] == ["stop", "invalid", "stop"]
    assert written[1]["attempts"] == 0
    assert written[1]["answer"] is None
    assert written[1]["error"]
    assert mock_api.stats.requests == 2


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be"])
def test_a_utf16_file_is_refused_plainly(
    mock_api: ThreadedMockServer, tmp_path: Path, codec: str
) -> None:
    # "utf-16" writes a byte order mark; the -le and -be forms do not.
    text = "".join(json.dumps(r) + "\n" for r in rows(3))
    source = tmp_path / "in.jsonl"
    source.write_bytes(text.encode(codec))

    result = run_cli(mock_api.base_url, source, tmp_path / "out.jsonl")

    assert result.exit_code == 2, result.output
    no_traceback(result)
    assert "in.jsonl" in result.stderr
    assert mock_api.stats.requests == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_a_utf16_file_with_a_byte_order_mark_is_named_as_such(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes("".join(json.dumps(r) + "\n" for r in rows(3)).encode("utf-16"))

    result = run_cli(mock_api.base_url, source, tmp_path / "out.jsonl", "--skip-bad-rows")

    assert result.exit_code == 2, result.output
    no_traceback(result)
    assert "UTF-16" in result.stderr


def test_an_integer_beyond_64_bits_in_a_carried_field_is_written_exactly(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    data = [
        {"id": "a", "prompt": "p1", "big": BIG, "small": 1},
        {"id": "b", "prompt": "p2", "big": 7, "small": 2},
        {"id": "c", "prompt": "p3", "big": 8, "small": 3},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", data)

    jsonl, parquet = tmp_path / "out.jsonl", tmp_path / "out.parquet"
    assert run_cli(mock_api.base_url, source, jsonl, "-q").exit_code == 0
    assert run_cli(mock_api.base_url, source, parquet, "-q").exit_code == 0

    raw = jsonl.read_bytes().split(b"\n")[0]
    assert str(BIG).encode() in raw
    assert b"e+29" not in raw and b"1.2345" not in raw
    assert [r["big"] for r in read_jsonl(jsonl)] == [BIG, 7, 8]

    schema = pq.read_schema(parquet)
    assert schema.field("small").type == pa.int64()
    assert not pa.types.is_floating(schema.field("big").type)
    big = pq.read_table(parquet).column("big").to_pylist()
    assert [str(v) for v in big] == [str(BIG), "7", "8"]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_an_id_beyond_64_bits_becomes_its_decimal_string(
    mock_api: ThreadedMockServer, tmp_path: Path, suffix: str
) -> None:
    source = write_jsonl(
        tmp_path / "in.jsonl", [{"id": BIG, "prompt": "p1"}, {"id": 5, "prompt": "p2"}]
    )
    out = tmp_path / f"out{suffix}"

    result = run_cli(mock_api.base_url, source, out, "-q")

    assert result.exit_code == 0, result.output
    assert [r["id"] for r in output_rows(out)] == [str(BIG), "5"]


def test_a_torn_last_line_waits_for_the_next_run_which_sends_just_it(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    data = rows(4)
    source = write_jsonl(tmp_path / "in.jsonl", data[:3])
    line = json.dumps(data[3]).encode()
    with source.open("ab") as handle:
        handle.write(line[:20])  # an appender was cut off mid-line
    out = tmp_path / "out.jsonl"

    result = run_cli(mock_api.base_url, source, out)

    assert result.exit_code == 0, result.output
    assert "left for the next run" in result.stderr
    assert f"{source}:4" in result.stderr
    assert [r["id"] for r in read_jsonl(out)] == ["r0", "r1", "r2"]
    assert mock_api.stats.requests == 3

    with source.open("ab") as handle:
        handle.write(line[20:] + b"\n")
    mock_api.reset()
    result = run_cli(mock_api.base_url, source, out)

    assert result.exit_code == 0, result.output
    assert "left for the next run" not in result.stderr
    assert mock_api.stats.requests == 1
    assert set(mock_api.stats.answers) == {data[3]["prompt"]}
    written = read_jsonl(out)
    assert [r["id"] for r in written] == ["r0", "r1", "r2", "r3"]
    assert [r["answer"] for r in written] == [mock_answer(r["prompt"]) for r in data]


def test_a_utf8_byte_order_mark_is_not_a_bad_row(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows(2)).encode())

    result = run_cli(mock_api.base_url, source, tmp_path / "out.jsonl", "-q")

    assert result.exit_code == 0, result.output
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["r0", "r1"]


def test_a_complete_last_line_without_a_newline_is_a_row(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    data = rows(3)
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in data))  # no newline at the end

    result = run_cli(mock_api.base_url, source, tmp_path / "out.jsonl")

    assert result.exit_code == 0, result.output
    assert "left for the next run" not in result.stderr
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["r0", "r1", "r2"]
    assert mock_api.stats.requests == 3


# -- 6. a failing sync does not hang -----------------------------------------------------------


@pytest.fixture
def failing_sync(monkeypatch: pytest.MonkeyPatch, mock_api: ThreadedMockServer) -> None:
    """Every commit is followed by a sync, and every sync takes 0.3 s and then finds the disk
    full, while the rows in flight keep finishing."""

    def sync(self: Checkpoint) -> None:
        time.sleep(0.3)
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Checkpoint, "sync", sync)
    monkeypatch.setattr(Checkpoint, "sync_due", lambda self: True)
    mock_api.config = MockConfig(seed=1, latency_ms=5)


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_failing_sync_ends_the_run_instead_of_hanging(
    failing_sync: None, mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", rows(200))
    options = {**FAST, "base_url": mock_api.base_url, "concurrency": 8}

    with pytest.raises((OutputError, sqlite3.Error), match="disk is full"):
        await asyncio.wait_for(batchpizza.arun(source, tmp_path / "out.jsonl", **options), 30)


SYNC_UNWRAPPED = (
    "a sqlite3 error from Checkpoint.sync escapes the runner raw instead of as an OutputError "
    "(the CLI shows a traceback)"
)


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_failing_sync_raises_an_output_error(
    failing_sync: None, mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", rows(200))
    options = {**FAST, "base_url": mock_api.base_url, "concurrency": 8}

    with pytest.raises(OutputError, match="disk is full"):
        await asyncio.wait_for(batchpizza.arun(source, tmp_path / "out.jsonl", **options), 30)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_failing_sync_exits_1_with_a_clear_message(
    failing_sync: None, mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", rows(200))

    result = run_cli(mock_api.base_url, source, tmp_path / "out.jsonl", "--concurrency", "8")

    assert result.exit_code == 1, result.output
    no_traceback(result)
    assert "disk is full" in result.stderr


def test_a_disk_full_at_the_fold_still_says_what_the_run_answered(
    monkeypatch: pytest.MonkeyPatch, mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # The answers are committed (staged); folding them before the output finds the disk full.
    # The summary must count them where they are, not say 0 answered.
    real_fold = checkpoint_store.fold

    def fold(conn: sqlite3.Connection) -> None:
        if conn.execute("SELECT 1 FROM staged LIMIT 1").fetchone() is not None:
            raise sqlite3.OperationalError("database or disk is full")
        real_fold(conn)

    monkeypatch.setattr(checkpoint_store, "fold", fold)
    source, out = write_jsonl(tmp_path / "in.jsonl", rows(30)), tmp_path / "out.jsonl"

    result = run_cli(mock_api.base_url, source, out, "--summary-json", str(tmp_path / "s.json"))

    assert result.exit_code == 1, result.output
    no_traceback(result)
    assert "disk is full" in result.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert (summary["rows"], summary["answered"], summary["pending"]) == (30, 30, 0)
    monkeypatch.undo()  # the disk has room again: the rerun writes the output, sending nothing
    rerun = run_cli(mock_api.base_url, source, out)
    assert rerun.exit_code == 0, rerun.output
    assert mock_api.stats.requests == 30
    assert [r["answer"] for r in read_jsonl(out)] == [mock_answer(r["prompt"]) for r in rows(30)]


# -- 7. a reply that inflates beyond the cap ---------------------------------------------------


def gzip_bomb(size: int, encoding: str = "gzip") -> bytes:
    """A valid Pizzagpt reply of `size` bytes once inflated, a few KB on the wire."""
    body = b'{"answer": {"content": "' + b"0" * size + b'"}}'
    if encoding == "deflate":
        return zlib.compress(body, 9)
    return gzip.compress(body, compresslevel=9)


@pytest.mark.parametrize(
    ("encoding", "framing"),
    [("gzip", "content-length"), ("gzip", "until-close"), ("deflate", "content-length")],
)
async def test_a_compressed_reply_inflating_beyond_the_cap_is_a_bad_reply(
    monkeypatch: pytest.MonkeyPatch, encoding: str, framing: str
) -> None:
    monkeypatch.setattr(provider_http, "MAX_BODY_BYTES", 1024 * 1024)
    bomb = gzip_bomb(10 * 1024 * 1024, encoding)
    assert len(bomb) < 64 * 1024
    headers = ("Content-Type: application/json", f"Content-Encoding: {encoding}")
    response = http_response(bomb, headers=headers, length=framing == "content-length")

    async with raw_server(lambda _body: response) as url, aiohttp.ClientSession() as session:
        with pytest.raises(BadReply, match="larger than"):
            await ask(session, "hello", base_url=url, timeout=10)


async def test_a_gzip_bomb_at_the_default_cap_is_a_failed_row_never_a_huge_answer(
    tmp_path: Path,
) -> None:
    bomb = gzip_bomb(10 * 1024 * 1024)  # over the default cap of 8 MB
    response = http_response(
        bomb, headers=("Content-Type: application/json", "Content-Encoding: gzip")
    )
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "q", "prompt": "hello"}])
    out = tmp_path / "out.jsonl"

    async with raw_server(lambda _body: response) as url:
        summary = await batchpizza.arun(source, out, **{**FAST, "base_url": url, "max_retries": 1})

    assert summary["failed"] == 1
    assert out.stat().st_size < 10_000
    (row,) = read_jsonl(out)
    assert row["finish_reason"] == "error"
    assert row["answer"] is None
    assert row["attempts"] == 2
    assert "larger than" in row["error"]


# -- 10. refusals are told from answers that mention them --------------------------------------


LONG_ANSWER = (
    "Some sites show the words misuse detected when a script sends too many requests. "
    "That is a rate limit, not a judgement of your question. For the dough itself: use 00 "
    "flour, water at 65% hydration, 2% salt and a pinch of yeast; let it rise for a day in "
    "the fridge, stretch it by hand and bake it as hot as your oven goes."
)


REPLIES = {
    # question: (the server's reply text, the finish_reason it must get)
    "mention": (LONG_ANSWER, "stop"),
    "live-refusal": (MISUSE_TEXT, "misuse"),
    "refusal-shouted": (
        "  MISUSE   DETECTED.\n Please get in touch, we can come up with a solution.",
        "misuse",
    ),
    "refusal-bare": ("Misuse detected", "misuse"),
    "bot-check": ("Du musst das Kästchen anklicken!", "misuse"),
    "bot-check-mentioned": (
        "German sites sometimes show 'du musst das kästchen anklicken', which means you must "
        "tick the box. It is a bot check in front of a form; ticking it proves a person is "
        "there. Our pizza form has none, so order your margherita as usual and enjoy it hot.",
        "stop",
    ),
}


async def test_a_reply_is_misuse_only_when_it_is_the_refusal_not_when_it_mentions_one(
    tmp_path: Path,
) -> None:
    asked: list[str] = []

    def reply(body: bytes) -> bytes:
        question = json.loads(body)["question"]
        asked.append(question)
        content = json.dumps({"answer": {"content": REPLIES[question][0]}}).encode()
        return http_response(content, headers=("Content-Type: application/json",))

    source = write_jsonl(tmp_path / "in.jsonl", [{"id": q, "prompt": q} for q in REPLIES])
    out = tmp_path / "out.jsonl"
    async with raw_server(reply) as url:
        # One attempt per refusal: four refusals stay under the breaker's trip (five), which
        # would otherwise hold this small run for its 60 s wait; classification is the point.
        await batchpizza.arun(source, out, **{**FAST, "base_url": url, "misuse_retries": 0})

    written = {r["id"]: r for r in read_jsonl(out)}
    for question, (text, reason) in REPLIES.items():
        row = written[question]
        assert row["finish_reason"] == reason, (question, row)
        if reason == "stop":
            assert row["answer"] == text
            assert row["misuse"] is False
            assert row["attempts"] == 1
            assert asked.count(question) == 1
        else:
            assert row["misuse"] is True
            assert row["answer"] is None
            assert row["error"]


# -- 11. SIGINT during a long Parquet write ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_a_signal_during_a_long_parquet_write_exits_without_exception_noise(
    tmp_path: Path, signum: int, code: int
) -> None:
    # Rows without a prompt under --skip-bad-rows: nothing to send, the run goes straight to
    # writing 60,000 rows, which takes long enough to be interrupted.
    source = tmp_path / "in.jsonl"
    with source.open("w") as handle:
        for i in range(60_000):
            handle.write(json.dumps({"id": f"r{i}", "text": "x" * 300, "k": i}) + "\n")
    out = tmp_path / "out.parquet"
    command = [sys.executable, "-m", "batchpizza", "run", str(source), "-o", str(out)]
    command += ["--skip-bad-rows", "--no-progress", "--base-url", "http://127.0.0.1:9"]
    proc = subprocess.Popen(
        command,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        writing = wait_until(lambda: any(tmp_path.glob(".out.parquet.*.partial")), 30)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    stderr = err.decode("utf-8", "replace")

    assert writing, stderr
    assert proc.returncode == code, stderr
    assert "Exception ignored" not in stderr
    assert "Traceback" not in stderr
    assert "resume" in stderr.lower() or "rerun" in stderr.lower()
    assert not out.exists()
    # At rest: the input and the checkpoint, nothing half written, no log or lock files.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.parquet.checkpoint"]
