"""--via batch against Batch APIs that misbehave the ways real ones do (tests/batchapi_raw.py, not
the bundled mock): whatever the server does, no answered line is lost, none is answered twice or
given to the wrong row, the error names what the server did, and a rerun picks up."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from aiohttp import web

from batchpizza.batchapi.lost import Lost
from batchpizza.checkpoint.batches import BatchFile
from batchpizza.mock.server import ThreadedMockServer
from tests.batchapi_raw import KEY, RawServer, answer_of, answering, batch_run, completion
from tests.batchapi_shared import LIMITS, rows
from tests.conftest import Spawn, read_jsonl, write_jsonl

# Each test runs batchpizza as a process of its own against the raw server (about 0.5-1 s): with
# CI's slow tests, so that the quick suite stays under a minute.
pytestmark = pytest.mark.slow

N = 6


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("BATCHPIZZA_BATCH_LIMITS", LIMITS)


def answered_right(out: Path, n: int = N) -> None:
    """Every row answered, each with its own prompt's answer."""
    found = {r["id"]: r for r in read_jsonl(out)}
    assert {k: (r["finish_reason"], r["answer"]) for k, r in found.items()} == {
        f"q{i}": ("stop", answer_of(f"question {i}")) for i in range(n)
    }


def answered_once(out: Path, raw: RawServer) -> None:
    """Every row answered right, its line submitted once, in the one batch the server made."""
    answered_right(out)
    assert sorted(raw.submitted.values()) == [1] * N and len(raw.batches) == 1


def go(tmp_path: Path, raw: RawServer, *extra: str, n: int = N) -> tuple[Any, Path]:
    inp = tmp_path / "in.jsonl"
    if not inp.exists():
        write_jsonl(inp, rows(n))
    out = tmp_path / "out.jsonl"
    return batch_run(inp, out, raw.base_url, *extra), out


# -- the output file ------------------------------------------------------------------------


def _dup(lines: list[bytes]) -> bytes:
    return b"".join(lines + lines[:2])


def _foreign(lines: list[bytes]) -> bytes:
    # A line of another batch (a custom_id of ours, another request key), and one not ours.
    first = json.loads(lines[0])
    pos = first["custom_id"].split("-")[0]
    other = {**first, "custom_id": f"{pos}-{'0' * 32}"}
    other["response"]["body"]["choices"][0]["message"]["content"] = "not this row's"
    stranger = {**first, "custom_id": "someone-else"}
    extra = [json.dumps(other).encode() + b"\n", json.dumps(stranger).encode() + b"\n"]
    return b"".join(extra + lines)


BENDS: dict[str, Callable[[list[bytes]], bytes]] = {
    "reversed": lambda lines: b"".join(lines[::-1]),
    "duplicated": _dup,
    "foreign": _foreign,
    "crlf": lambda lines: b"".join(line.rstrip(b"\n") + b"\r\n" for line in lines),
    "bom": lambda lines: b"\xef\xbb\xbf" + b"".join(lines),
    "no final newline": lambda lines: b"".join(lines).rstrip(b"\n"),
    "blank lines": lambda lines: b"\n\n".join(lines),
}


@pytest.mark.parametrize("bend", list(BENDS))
def test_an_odd_output_file_answers_every_row_once_and_right(tmp_path: Path, bend: str) -> None:
    with RawServer() as raw:
        raw.output = BENDS[bend]
        done, out = go(tmp_path, raw)

    assert done.returncode == 0, done.stderr
    answered_right(out)
    assert sorted(raw.submitted.values()) == [1] * N  # nothing submitted twice


def test_a_truncated_last_line_has_only_its_row_submitted_again(tmp_path: Path) -> None:
    with RawServer() as raw:
        cut: list[str] = []

        def truncated(lines: list[bytes]) -> bytes:
            if cut:
                return b"".join(lines)
            cut.append(json.loads(lines[-1])["custom_id"])
            return b"".join(lines)[:-40]

        raw.output = truncated
        done, out = go(tmp_path, raw)

    assert done.returncode == 0, done.stderr
    answered_right(out)
    assert {c: n for c, n in raw.submitted.items() if n != 1} == {cut[0]: 2}


def test_a_completed_batch_missing_lines_without_error_lines_resubmits_just_those(
    tmp_path: Path,
) -> None:
    with RawServer() as raw:
        raw.output = lambda lines: b"" if len(raw.batches) == 1 else b"".join(lines)
        done, out = go(tmp_path, raw)

    assert done.returncode == 0, done.stderr
    answered_right(out)
    assert sorted(raw.submitted.values()) == [2] * N and len(raw.batches) == 2


@pytest.mark.parametrize(
    ("response", "said"),
    [
        ({"status_code": 200, "body": None}, "reply"),
        ({"status_code": 200, "body": "upstream timed out"}, "upstream timed out"),
        ({"status_code": 200, "body": {"error": {"message": "backend overloaded"}}},
         "backend overloaded"),
        ({"status_code": 503, "body": {"error": {"message": "no capacity"}}}, "no capacity"),
    ],
)  # fmt: skip
def test_a_line_without_an_answer_is_resubmitted_then_a_failed_row_naming_it(
    tmp_path: Path, response: dict[str, Any], said: str
) -> None:
    with RawServer(lambda cid, body: {"response": response}) as raw:
        done, out = go(tmp_path, raw, "--max-retries", "1")

    assert done.returncode == 3, done.stderr
    found = read_jsonl(out)
    assert {r["finish_reason"] for r in found} == {"error"}
    assert all(said in r["error"] and r["attempts"] == 2 for r in found), found[0]["error"]
    assert sorted(raw.submitted.values()) == [2] * N


# -- the download ---------------------------------------------------------------------------


async def _once_500(request: web.Request, n: int) -> web.StreamResponse | None:
    return web.json_response({"error": {"message": "oops"}}, status=500) if n == 0 else None


async def _once_cut(request: web.Request, n: int) -> web.StreamResponse | None:
    if n:
        return None
    # A body announced longer than what is sent, then the connection closed.
    resp = web.StreamResponse(headers={"Content-Length": "100000"})
    await resp.prepare(request)
    await resp.write(b'{"id": "resp-0", "custom_id": "0-')
    assert request.transport is not None
    request.transport.close()
    return resp


@pytest.mark.parametrize("hook", [_once_500, _once_cut], ids=["500", "cut"])
def test_a_download_failing_once_is_tried_again_and_nothing_resubmitted(
    tmp_path: Path, hook: Any
) -> None:
    with RawServer() as raw:
        raw.hooks["content"] = hook
        done, out = go(tmp_path, raw)

    assert done.returncode == 0, done.stderr
    answered_right(out)
    assert sorted(raw.submitted.values()) == [1] * N and raw.calls["content"] == 2


def test_a_download_shorter_than_its_content_length_is_tried_again(tmp_path: Path) -> None:
    async def short(request: web.Request, n: int) -> web.StreamResponse | None:
        if n:
            return None
        body = raw.contents[request.match_info["id"]]
        resp = web.StreamResponse(headers={"Content-Length": str(len(body) + 50)})
        await resp.prepare(request)
        await resp.write(body)
        assert request.transport is not None
        request.transport.close()
        return resp

    with RawServer() as raw:
        raw.hooks["content"] = short
        done, out = go(tmp_path, raw)

    assert done.returncode == 0, done.stderr
    answered_right(out)
    assert sorted(raw.submitted.values()) == [1] * N


def test_an_announced_output_file_the_server_does_not_have_resubmits_its_lines(
    tmp_path: Path,
) -> None:
    # Was: exit 2 on every run, for good, its rows never answered.
    async def missing(request: web.Request, n: int) -> web.StreamResponse | None:
        if request.match_info["id"] != "file-out-batch-0":
            return None
        return web.json_response({"error": {"message": "No such File object"}}, status=404)

    with RawServer() as raw:
        raw.hooks["content"] = missing
        done, out = go(tmp_path, raw)

    assert done.returncode == 0, done.stderr
    assert "file-out-batch-0" in done.stderr and "404" in done.stderr
    answered_right(out)
    assert sorted(raw.submitted.values()) == [2] * N and len(raw.batches) == 2


async def _late_file(request: web.Request, n: int) -> web.StreamResponse | None:
    """The first download answers 404: a file the server knows a moment late."""
    if n == 0:
        return web.json_response({"error": {"message": "No such File object"}}, status=404)
    return None


def test_an_announced_output_file_the_server_knows_late_is_collected_not_resubmitted(
    tmp_path: Path,
) -> None:
    # A 404 for the output file at the first try only (a replica that learns of it late): the
    # batch is collected at the next poll; resubmitting at once would run and bill it twice.
    with RawServer() as raw:
        raw.hooks["content"] = _late_file
        done, out = go(tmp_path, raw)

    assert done.returncode == 0, done.stderr
    assert "collected later" in done.stderr
    answered_once(out, raw)


def test_an_output_file_known_late_is_not_resubmitted_for_its_batch_s_age(
    tmp_path: Path,
) -> None:
    # A batch submitted by an earlier (cron) run more than 10 minutes ago, its output file
    # answering 404 only to the first download after it completed: the file is new, only not
    # known yet; its age counts from the batch's end, not from the submission (every real batch
    # runs longer than 10 minutes, so that rule resubmitted, and billed, all its lines at once).
    inp = write_jsonl(tmp_path / "in.jsonl", rows(N))
    out = tmp_path / "out.jsonl"
    argv = [sys.executable, "-m", "batchpizza", "run", str(inp), "-o", str(out), "--provider",
            "openai", "--no-progress", "--via", "batch"]  # fmt: skip
    with RawServer() as raw:
        raw.hooks["content"] = _late_file
        raw.statuses = ["in_progress"]
        cron = subprocess.run([*argv, "--base-url", f"{raw.base_url}/v1"],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert cron.returncode == 4, cron.stderr
        with sqlite3.connect(f"{out}.checkpoint") as conn:  # submitted 11 minutes ago
            conn.execute("UPDATE batch_files SET created = created - 660")
        done, out = go(tmp_path, raw)

    assert done.returncode == 0, done.stderr
    assert "collected later" in done.stderr
    answered_once(out, raw)


def test_a_download_failing_past_its_tries_is_collected_later_not_the_run_ended(
    tmp_path: Path,
) -> None:
    # Was: exit 1 at once, the other batches left uncollected.
    async def down(request: web.Request, n: int) -> web.StreamResponse | None:
        return (
            web.json_response({"error": {"message": "storage down"}}, status=503) if n < 3 else None
        )

    with RawServer() as raw:
        raw.hooks["content"] = down
        done, out = go(tmp_path, raw, "--max-retries", "1")

    assert done.returncode == 0, done.stderr
    assert "storage down" in done.stderr and "collected later" in done.stderr
    answered_right(out)
    assert sorted(raw.submitted.values()) == [1] * N


# -- the batch object -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "statuses",
    [
        ["in_progress", "finalizing", "finalizing"],
        ["cancelling", "cancelling"],
        ["queued", "weird"],
    ],
)
def test_statuses_on_the_way_to_completed_are_waited_through(
    tmp_path: Path, statuses: list[str]
) -> None:
    with RawServer() as raw:
        raw.statuses = statuses
        done, out = go(tmp_path, raw)

    assert done.returncode == 0, done.stderr
    answered_right(out)
    assert sorted(raw.submitted.values()) == [1] * N


def test_a_status_the_batch_api_does_not_give_is_said_once_and_waited_through(
    tmp_path: Path,
) -> None:
    with RawServer() as raw:
        raw.statuses = ["in_progress", "queued", "queued", "queued"]
        done, out = go(tmp_path, raw)

    assert done.returncode == 0, done.stderr
    answered_right(out)
    said = [line for line in done.stderr.splitlines() if "not one the Batch API gives" in line]
    assert len(said) == 1 and "'queued'" in said[0], done.stderr
    assert "in_progress" not in done.stderr


VIEWS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "no request_counts": lambda b: {k: v for k, v in b.items() if k != "request_counts"},
    "odd request_counts": lambda b: {**b, "request_counts": {"total": "6", "completed": None}},
    "request_counts a list": lambda b: {**b, "request_counts": [1, 2]},
    "errors a list": lambda b: {**b, "errors": [{"code": "x", "message": "y"}]},
    "errors a string": lambda b: {**b, "errors": "something"},
    "created_at text": lambda b: {**b, "created_at": "yesterday"},
}


@pytest.mark.parametrize("view", list(VIEWS))
def test_odd_batch_objects_still_complete_and_status_reads_them(tmp_path: Path, view: str) -> None:
    with RawServer() as raw:
        raw.view = VIEWS[view]
        done, out = go(tmp_path, raw)

    assert done.returncode == 0, done.stderr
    answered_right(out)
    shown = subprocess.run([sys.executable, "-m", "batchpizza", "status", str(out)],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert shown.returncode == 0, shown.stderr


def test_completed_without_an_output_file_resubmits_its_lines(tmp_path: Path) -> None:
    with RawServer() as raw:

        def view(b: dict[str, Any]) -> dict[str, Any]:
            if b["id"] == "batch-0" and b["status"] == "completed":
                return {**b, "output_file_id": None}
            return b

        raw.view = view
        done, out = go(tmp_path, raw)

    assert done.returncode == 0, done.stderr
    answered_right(out)
    assert sorted(raw.submitted.values()) == [2] * N


def test_an_expired_batch_with_a_partial_output_resubmits_only_the_rest(tmp_path: Path) -> None:
    with RawServer() as raw:

        def view(b: dict[str, Any]) -> dict[str, Any]:
            return {**b, "status": "expired"} if b["id"] == "batch-0" else b

        raw.view = view
        raw.output = lambda lines: b"".join(lines[:2]) if len(raw.batches) == 1 else b"".join(lines)
        done, out = go(tmp_path, raw)

    assert done.returncode == 0, done.stderr
    answered_right(out)
    assert sorted(raw.submitted.values()) == [1, 1, 2, 2, 2, 2]


QUOTA = {
    "object": "list",
    "data": [{"code": "token_limit_exceeded", "line": None, "param": None,
              "message": "Enqueued token limit reached for gpt-4o-mini in organization org-x. "
              "Please try again once some in_progress batches have been completed."}],
}  # fmt: skip


def test_a_batch_failed_for_the_enqueued_token_limit_is_resubmitted_once_room_is_made(
    tmp_path: Path,
) -> None:
    # OpenAI fails a batch whose tokens would pass the organization's enqueued limit while
    # others run. Was: its rows failed and the run ended with exit 2, as for a file it refused.
    over: set[str] = set()

    async def create(request: web.Request, n: int) -> web.StreamResponse | None:
        made = raw.make()
        others = [b for b in raw.batches.values() if b["id"] != made["id"] and b["id"] not in over]
        if any(b["status"] != "completed" for b in others):
            over.add(made["id"])
        return web.json_response(made)

    def view(b: dict[str, Any]) -> dict[str, Any]:
        if b["id"] in over and b["status"] != "validating":
            return {**b, "status": "failed", "errors": QUOTA, "output_file_id": None}
        return b

    with RawServer() as raw:
        raw.hooks["create"] = create
        raw.view = view
        raw.statuses = ["in_progress"] * 4  # the first batch holds the quota a while
        done, out = go(tmp_path, raw, "--max-retries", "1", n=50)  # files of 40 and 10 lines

    assert done.returncode == 0, done.stderr
    assert "batch batch-1 failed for the enqueued-token limit (token_limit_exceeded)" in done.stderr
    answered_right(out, 50)
    assert over == {"batch-1"} and len(raw.batches) == 3
    # The second file's lines, in the failed batch (never run) and once more.
    assert sorted(raw.submitted.values()) == [1] * 40 + [2] * 10


def failing_for_the_quota(batch_id: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A raw server's view: batch `batch_id` fails for the enqueued-token limit once validated."""

    def view(b: dict[str, Any]) -> dict[str, Any]:
        if b["id"] == batch_id and b["status"] != "validating":
            return {**b, "status": "failed", "errors": QUOTA, "output_file_id": None}
        return b

    return view


def test_lines_over_the_enqueued_token_limit_wait_for_room_across_cron_runs(
    tmp_path: Path,
) -> None:
    # From cron (no --wait): the run after the one that collected the failed batch must hold its
    # lines too while the first batch is out; resubmitting them would fail alike and spend their
    # one retry, and the rows would end failed.
    inp = write_jsonl(tmp_path / "in.jsonl", rows(50))  # files of 40 and 10 lines
    out = tmp_path / "out.jsonl"
    argv = [sys.executable, "-m", "batchpizza", "run", str(inp), "-o", str(out), "--provider",
            "openai", "--no-progress", "--via", "batch", "--max-retries", "1"]  # fmt: skip
    with RawServer() as raw:
        raw.view = failing_for_the_quota("batch-1")
        raw.statuses = ["in_progress"] * 8  # batch-0 holds the quota through several cron runs
        base = ["--base-url", f"{raw.base_url}/v1"]
        cron = [subprocess.run([*argv, *base], capture_output=True, text=True, timeout=60)
                for _ in range(4)]  # fmt: skip
        assert [c.returncode for c in cron] == [4] * 4, cron[-1].stderr
        assert len(raw.batches) == 2  # batch-1's lines held while batch-0 is out
        done = batch_run(inp, out, raw.base_url, "--max-retries", "1")

    assert done.returncode == 0, done.stderr
    answered_right(out, 50)
    assert sorted(raw.submitted.values()) == [1] * 40 + [2] * 10


def test_via_auto_sends_lines_held_for_the_enqueued_token_limit_online_at_the_deadline(
    tmp_path: Path,
) -> None:
    # --via auto: near the deadline the rows still out go online; so must the lines of a batch
    # failed for the enqueued-token limit, held for room while the other batch is out (they
    # were left unanswered, the run ending as if done).
    inp = write_jsonl(tmp_path / "in.jsonl", rows(50))  # files of 40 and 10 lines
    out = tmp_path / "out.jsonl"
    with RawServer() as raw:
        raw.view = failing_for_the_quota("batch-1")
        raw.statuses = ["in_progress"] * 10_000  # batch-0 never ends
        argv = [sys.executable, "-m", "batchpizza", "run", str(inp), "-o", str(out),
                "--provider", "openai", "--base-url", f"{raw.base_url}/v1", "--no-progress",
                "--via", "auto", "--deadline", "6s", "--rate", "0"]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    answered_right(out, 50)
    assert sorted(raw.online.values()) == [1] * 50
    assert sorted(raw.submitted.values()) == [1] * 50


# -- the upload -----------------------------------------------------------------------------


def test_a_413_for_a_file_within_our_limits_names_the_setting(tmp_path: Path) -> None:
    async def too_large(request: web.Request, n: int) -> web.StreamResponse | None:
        return web.json_response({"error": {"message": "File too large"}}, status=413)

    with RawServer() as raw:
        raw.hooks["upload"] = too_large
        done, _ = go(tmp_path, raw)

    assert done.returncode == 2, done.stderr
    assert "BATCHPIZZA_BATCH_LIMITS" in done.stderr and "File too large" in done.stderr
    assert raw.calls["upload"] == 1 and not raw.batches


def test_lines_whose_upload_never_succeeded_are_not_counted_as_requests(tmp_path: Path) -> None:
    # A gateway without its files set up (LiteLLM's "files_settings is not set") answered
    # every upload 500: the run ended saying "this run: 6 requests", none of which went out.
    async def unset(request: web.Request, n: int) -> web.StreamResponse | None:
        return web.json_response({"error": {"message": "files_settings is not set"}}, status=500)

    summary = tmp_path / "summary.json"
    with RawServer() as raw:
        raw.hooks["upload"] = unset
        done, _ = go(tmp_path, raw, "--max-retries", "1", "--summary-json", str(summary))

    assert done.returncode == 1, done.stderr
    assert "files_settings is not set" in done.stderr and not raw.batches
    said = json.loads(summary.read_text())
    assert (said["requests"], said["retries"], said["pending"]) == (0, 0, N)
    assert said["batches"]["submitted"] == 0
    assert "this run: 0 requests" in done.stderr


@pytest.mark.parametrize("stored", [False, True], ids=["lost", "stored"])
def test_an_upload_that_5xxs_is_found_or_made_again_never_twice(
    tmp_path: Path, stored: bool
) -> None:
    async def fails_once(request: web.Request, n: int) -> web.StreamResponse | None:
        if n:
            return None
        if stored:  # the server kept the file all the same
            raw.store()
        return web.json_response({"error": {"message": "gateway"}}, status=502)

    with RawServer() as raw:
        raw.hooks["upload"] = fails_once
        done, out = go(tmp_path, raw)

    assert done.returncode == 0, done.stderr
    answered_right(out)
    assert sorted(raw.submitted.values()) == [1] * N
    assert len(raw.files) == 1 and len(raw.batches) == 1


def test_an_upload_reply_without_an_id_is_found_by_its_name(tmp_path: Path) -> None:
    async def no_id(request: web.Request, n: int) -> web.StreamResponse | None:
        item = raw.store()
        return web.json_response({k: v for k, v in item.items() if k != "id"} if n == 0 else item)

    with RawServer() as raw:
        raw.hooks["upload"] = no_id
        done, out = go(tmp_path, raw)

    assert done.returncode == 0, done.stderr
    answered_right(out)
    assert len(raw.files) == 1 and sorted(raw.submitted.values()) == [1] * N


async def _no_listing(request: web.Request, n: int) -> web.StreamResponse | None:
    return web.json_response({"detail": "Method Not Allowed"}, status=405)


def test_a_server_that_cannot_list_files_has_a_failed_upload_made_again(tmp_path: Path) -> None:
    # Some gateways take uploads at /v1/files but list none: an upload that failed
    # is uploaded again (an upload bills nothing; only a batch does).
    async def fails_once(request: web.Request, n: int) -> web.StreamResponse | None:
        return web.json_response({"error": {"message": "gateway"}}, status=502) if n == 0 else None

    with RawServer() as raw:
        raw.hooks["upload"] = fails_once
        raw.hooks["files"] = _no_listing
        done, out = go(tmp_path, raw)

    assert done.returncode == 0, done.stderr
    answered_once(out, raw)


def test_a_create_whose_reply_was_lost_is_found_not_made_twice(tmp_path: Path) -> None:
    async def lost_reply(request: web.Request, n: int) -> web.StreamResponse | None:
        if n:
            return None
        raw.make()
        return web.json_response({"error": {"message": "upstream reset"}}, status=502)

    with RawServer() as raw:
        raw.hooks["create"] = lost_reply
        done, out = go(tmp_path, raw)

    assert done.returncode == 0, done.stderr
    answered_once(out, raw)


# -- secrets --------------------------------------------------------------------------------


def test_the_key_echoed_by_the_server_never_reaches_logs_checkpoint_or_output(
    tmp_path: Path,
) -> None:
    said = f"Bearer {KEY} is not allowed here"

    def echo(cid: str, body: dict[str, Any]) -> dict[str, Any] | None:
        if cid.startswith("0-"):
            return {"response": {"status_code": 400, "body": {"error": {"message": said}}}}
        if cid.startswith("1-"):
            return {"response": None, "error": {"code": "x", "message": said}}
        return answering(cid, body)

    def view(b: dict[str, Any]) -> dict[str, Any]:
        if b["id"] == "batch-1":  # the second batch fails as a whole, naming the key
            errors = {"object": "list", "data": [{"code": "bad", "message": said, "line": 1}]}
            return {**b, "status": "failed", "errors": errors}
        return b

    with RawServer(echo) as raw:
        raw.view = view
        done, out = go(tmp_path, raw, "-vv", "--max-retries", "1")

        failed = Path(f"{out}.checkpoint").read_bytes().decode("latin-1")
        raw.view = lambda b: b
        again, _ = go(tmp_path, raw, "-vv", "--max-retries", "1")

    assert raw.auth_seen == {f"Bearer {KEY}"}
    assert done.returncode == 2, done.stderr
    assert again.returncode == 3, again.stderr
    assert "is not allowed here" in done.stderr and "is not allowed here" in out.read_text()
    for text in (done.stderr, again.stderr, done.stdout, out.read_text(), failed,
                 Path(f"{out}.checkpoint").read_bytes().decode("latin-1")):  # fmt: skip
        assert KEY not in text


# -- kills ----------------------------------------------------------------------------------


def killed_when(spawn: Spawn, argv: list[str], reached: Callable[[], bool]) -> None:
    proc = spawn([sys.executable, "-m", "batchpizza", *argv])
    for _ in range(3000):
        if reached():
            break
        assert proc.popen.poll() is None, f"the run ended first: {proc.stderr}"
        threading.Event().wait(0.01)
    else:
        raise AssertionError("the moment to kill never came")
    proc.signal(signal.SIGKILL)
    proc.wait(30)


def test_killed_at_each_step_on_a_server_that_lists_no_files_submits_each_line_once(
    spawn: Spawn, tmp_path: Path
) -> None:
    n = 50  # two files of the 40 lines a file
    inp = write_jsonl(tmp_path / "in.jsonl", rows(n))
    out = tmp_path / "out.jsonl"
    with RawServer() as raw:
        raw.hooks["files"] = _no_listing
        argv = ["run", str(inp), "-o", str(out), "--provider", "openai", "--base-url",
                f"{raw.base_url}/v1", "--no-progress", "--via", "batch", "--wait"]  # fmt: skip
        # During the upload: the server kept the file, the run never heard its id.
        killed_when(spawn, argv, raw.stall("upload").is_set)
        del raw.hooks["upload"]
        # During the creation of a batch: made on the server, its id never heard.
        killed_when(spawn, argv, raw.stall("create").is_set)
        del raw.hooks["create"]
        # While polling: the batches are out.
        raw.statuses = ["in_progress"] * 10_000
        killed_when(spawn, argv, lambda: sum(raw.polls.values()) >= 3)
        raw.statuses = []
        # During a download.
        killed_when(spawn, argv, raw.stall("content").is_set)
        del raw.hooks["content"]
        done = batch_run(inp, out, raw.base_url)

    assert done.returncode == 0, done.stderr
    answered_right(out, n)
    # Never a line in two batches, by the server's count; a file kept by a killed upload was
    # uploaded again (the server lists none), never made a batch of twice.
    assert sorted(raw.submitted.values()) == [1] * n
    assert len(raw.batches) == 2 and len(raw.files) == 3


class Killed(NamedTuple):
    raw: RawServer
    inp: Path
    out: Path
    argv: list[str]  # the command without --via batch --wait


@contextlib.contextmanager
def killed_during(spawn: Spawn, tmp_path: Path, step: str, n: int) -> Iterator[Killed]:
    """A `--via batch --wait` run of `n` rows killed during `step` (upload, create) against a
    server that lists neither files nor batches; the server serves on inside the block."""
    inp = write_jsonl(tmp_path / "in.jsonl", rows(n))
    out = tmp_path / "out.jsonl"
    with RawServer() as raw:
        raw.hooks["files"] = raw.hooks["batches"] = _no_listing
        argv = ["run", str(inp), "-o", str(out), "--provider", "openai", "--base-url",
                f"{raw.base_url}/v1", "--no-progress"]  # fmt: skip
        killed_when(spawn, [*argv, "--via", "batch", "--wait"], raw.stall(step).is_set)
        del raw.hooks[step]
        yield Killed(raw, inp, out, argv)


def killed_during_then_rerun(
    spawn: Spawn, tmp_path: Path, step: str, n: int
) -> tuple[RawServer, subprocess.CompletedProcess[str], Path]:
    """killed_during, then rerun: the server, the rerun and the output."""
    with killed_during(spawn, tmp_path, step, n) as killed:
        rerun = batch_run(killed.inp, killed.out, killed.raw.base_url)
    return killed.raw, rerun, killed.out


def test_a_server_that_lists_no_batches_makes_a_batch_a_killed_run_never_asked_for(
    spawn: Spawn, tmp_path: Path
) -> None:
    # Killed during an upload the server kept: the rerun cannot look for a batch (none are
    # listed), but it never sent a create for that file, so it makes the batch at once.
    raw, done, out = killed_during_then_rerun(spawn, tmp_path, "upload", 30)

    assert done.returncode == 0, done.stderr
    answered_right(out, 30)
    assert sorted(raw.submitted.values()) == [1] * 30 and len(raw.batches) == 1


def test_a_server_that_lists_no_batches_stops_a_rerun_that_could_submit_twice(
    spawn: Spawn, tmp_path: Path
) -> None:
    # Killed while the create was on its way: only the server knows whether it made the batch,
    # and it lists none. Exit 2 saying so and what to do, and nothing submitted again.
    raw, again, _ = killed_during_then_rerun(spawn, tmp_path, "create", 30)

    assert again.returncode == 2, again.stderr
    assert "lists no batches to tell whether it made one" in again.stderr
    assert "Rerun without --via to send them online" in again.stderr
    assert sorted(raw.submitted.values()) == [1] * 30 and len(raw.batches) == 1


def test_a_file_an_earlier_version_left_uploaded_is_not_created_again_unseen(
    spawn: Spawn, tmp_path: Path
) -> None:
    # A batchpizza from before the `creating` mark left a file `uploaded` whether or not its
    # create was sent (killed during it, here): on a server that lists no batches, the rerun
    # cannot tell either, so it must not make the batch again (every line submitted twice).
    n = 30
    with killed_during(spawn, tmp_path, "create", n) as (raw, inp, out, _):
        with sqlite3.connect(f"{out}.checkpoint") as conn:  # as the earlier version left it
            conn.execute("UPDATE batch_files SET state = 'uploaded'")
        again = batch_run(inp, out, raw.base_url)

    assert again.returncode == 2, again.stderr
    assert "lists no batches to tell whether it made one" in again.stderr
    assert sorted(raw.submitted.values()) == [1] * n and len(raw.batches) == 1


def test_a_create_refused_with_429_on_a_server_that_lists_no_batches_is_sent_again(
    tmp_path: Path,
) -> None:
    # A 429 (or another 4xx) is the server saying it made nothing: the file's `creating` mark is
    # taken back, so the retry sends the create again instead of ending the run (and every
    # rerun) with exit 2 for a batch that cannot exist.
    async def busy(request: web.Request, n: int) -> web.StreamResponse | None:
        if n == 0:
            return web.json_response({"error": {"message": "Too many requests"}}, status=429)
        return None

    with RawServer() as raw:
        raw.hooks["files"] = raw.hooks["batches"] = _no_listing
        raw.hooks["create"] = busy
        done, out = go(tmp_path, raw)

    assert done.returncode == 0, done.stderr
    answered_once(out, raw)


# -- money ----------------------------------------------------------------------------------


def test_max_cost_holds_by_the_servers_own_bill_through_resubmissions(tmp_path: Path) -> None:
    price = (10.0, 20.0)  # --price, per million; the Batch API bills half
    billed: list[float] = []
    tries: dict[str, int] = {}

    def reply(cid: str, body: dict[str, Any]) -> dict[str, Any] | None:
        tries[cid] = tries.get(cid, 0) + 1
        if int(cid.split("-")[0]) % 3 == 0 and tries[cid] == 1:
            return None  # not run the first time: resubmitted, billed nothing
        cap = body.get("max_tokens") or body.get("max_completion_tokens")
        assert cap == 50, body
        billed.append((12 * price[0] + cap * price[1]) / 1e6 / 2)  # the worst case, used whole
        text = answer_of(body["messages"][-1]["content"])
        return {"response": {"status_code": 200, "body": completion(text, 12, cap)}}

    summary = tmp_path / "s.json"
    with RawServer(reply) as raw:
        done, out = go(tmp_path, raw, "--param", "max_tokens=50", "--price", "10,20",
                       "--max-cost", "0.01", "--summary-json", str(summary), n=60)  # fmt: skip
        said = json.loads(summary.read_text())
        first = sum(billed)
        # A larger cap: the rest, and nothing answered again.
        again, _ = go(tmp_path, raw, "--param", "max_tokens=50", "--price", "10,20",
                      "--max-cost", "1", "--summary-json", str(summary))  # fmt: skip

    assert done.returncode == 4, done.stderr
    assert said["stopped"] == "budget" and 0 < said["answered"] < 60
    assert first <= 0.01 and said["cost"]["run"] == pytest.approx(first)
    assert again.returncode == 0, again.stderr
    answered_right(out, 60)
    assert len(billed) == 60 and json.loads(summary.read_text())["cost"]["total"] == pytest.approx(
        sum(billed)
    )


def test_a_lost_create_is_found_on_a_server_listing_its_batches_oldest_first(
    tmp_path: Path,
) -> None:
    # Was: the listing's first batch, two hours old, ended the search: the batch made again,
    # every line submitted twice.
    async def lost_reply(request: web.Request, n: int) -> web.StreamResponse | None:
        if n:
            return None
        raw.make()
        return web.json_response({"error": {"message": "upstream reset"}}, status=502)

    async def oldest_first(request: web.Request, n: int) -> web.StreamResponse | None:
        data = [raw.view(dict(b)) for b in raw.batches.values()]
        return web.json_response({"object": "list", "data": data, "has_more": False})

    with RawServer() as raw:
        old = {"id": "batch-old", "status": "completed", "input_file_id": "file-x",
               "created_at": int(time.time()) - 7200, "metadata": None}  # fmt: skip
        raw.batches["batch-old"] = old
        raw.hooks["create"] = lost_reply
        raw.hooks["batches"] = oldest_first
        done, out = go(tmp_path, raw)

    assert done.returncode == 0, done.stderr
    answered_right(out)
    assert sorted(raw.submitted.values()) == [1] * N and len(raw.batches) == 2


def test_a_file_listing_that_ignores_after_and_always_has_more_ends(tmp_path: Path) -> None:
    # Was: the same page asked for again and again, for ever.
    async def same_page(request: web.Request, n: int) -> web.StreamResponse | None:
        data = [*raw.files.values(), {"id": "file-other", "filename": "x.jsonl"}]
        return web.json_response({"object": "list", "data": data, "has_more": True})

    async def lost(request: web.Request, n: int) -> web.StreamResponse | None:
        if n:
            return None
        raw.store()
        return web.json_response({"error": {"message": "upstream reset"}}, status=502)

    with RawServer() as raw:
        raw.hooks["files"] = same_page
        raw.hooks["upload"] = lost
        done, out = go(tmp_path, raw)

    assert done.returncode == 0, done.stderr
    answered_right(out)
    assert raw.calls["files"] == 2 and len(raw.files) == 1 and len(raw.batches) == 1


def test_a_batch_unknown_for_a_moment_after_its_creation_is_not_submitted_again(
    tmp_path: Path,
) -> None:
    # A server whose replicas learn of a new batch a little late: its first polls answer 404.
    async def not_yet(request: web.Request, n: int) -> web.StreamResponse | None:
        if n < 2:
            return web.json_response({"error": {"message": "No such batch"}}, status=404)
        return None

    with RawServer() as raw:
        raw.hooks["get"] = not_yet
        done, out = go(tmp_path, raw)

    assert done.returncode == 0, done.stderr
    answered_once(out, raw)


def test_a_batch_made_late_of_a_file_recorded_long_ago_is_not_lost_at_its_first_404(
    spawn: Spawn, tmp_path: Path
) -> None:
    # Killed during the upload, rerun from cron a quarter of an hour later: the batch is made
    # now, of a file recorded then; a server that knows it late answers 404 to the first poll.
    # Its age counts from its making, not the file's record: lost at once, it ran twice.
    async def not_yet(request: web.Request, n: int) -> web.StreamResponse | None:
        if n == 0:
            return web.json_response({"error": {"message": "No such batch"}}, status=404)
        return None

    inp = write_jsonl(tmp_path / "in.jsonl", rows(N))
    out = tmp_path / "out.jsonl"
    with RawServer() as raw:
        argv = ["run", str(inp), "-o", str(out), "--provider", "openai", "--base-url",
                f"{raw.base_url}/v1", "--no-progress", "--via", "batch", "--wait"]  # fmt: skip
        killed_when(spawn, argv, raw.stall("upload").is_set)
        del raw.hooks["upload"]
        with sqlite3.connect(f"{out}.checkpoint") as conn:  # recorded 15 minutes ago
            conn.execute("UPDATE batch_files SET created = created - 900, updated = updated - 900")
        raw.hooks["get"] = not_yet
        done, out = go(tmp_path, raw)

    assert done.returncode == 0, done.stderr
    answered_once(out, raw)


def test_a_404_is_lost_for_good_after_three_polls_in_a_row_or_at_once_for_an_old_batch() -> None:
    def file(seq: int, age: float) -> BatchFile:
        return BatchFile(seq, f"f{seq}", 1, 1, "file", "batch", "in_progress", {}, None, None,
                         None, time.time() - age, False)  # fmt: skip

    lost, new, old = Lost(), file(1, 5.0), file(2, 3600.0)
    assert [lost.gone(new), lost.gone(new)] == [False, False]
    lost.known(new)  # polled fine in between: counted from zero again
    assert [lost.gone(new), lost.gone(new), lost.gone(new)] == [False, False, True]
    assert lost.gone(old)  # a cron run polls it once: recorded long ago, lost now


def test_a_line_repeated_failed_then_answered_counts_as_answered(tmp_path: Path) -> None:
    # A gateway that writes each of its own tries: the failure first, then the answer. Was: the
    # first counted, every line resubmitted and billed until --max-retries, then failed rows.
    def tried_twice(lines: list[bytes]) -> bytes:
        failed = []
        for line in lines:
            data = json.loads(line)
            data["response"] = {"status_code": 500, "body": {"error": {"message": "transient"}}}
            failed.append(json.dumps(data).encode() + b"\n")
        return b"".join(failed + lines)

    with RawServer() as raw:
        raw.output = tried_twice
        done, out = go(tmp_path, raw)

    assert done.returncode == 0, done.stderr
    answered_right(out)
    assert sorted(raw.submitted.values()) == [1] * N


def test_a_status_code_given_as_text_is_read_as_the_number(tmp_path: Path) -> None:
    # Was: "no reply", every line resubmitted and billed until --max-retries, then failed rows.
    def text_status(cid: str, body: dict[str, Any]) -> dict[str, Any] | None:
        line = answering(cid, body)
        assert line is not None
        return {"response": {**line["response"], "status_code": "200"}}

    with RawServer(text_status) as raw:
        done, out = go(tmp_path, raw)

    assert done.returncode == 0, done.stderr
    answered_right(out)
    assert sorted(raw.submitted.values()) == [1] * N


def test_a_body_without_a_status_code_is_judged_as_the_reply_it_is(tmp_path: Path) -> None:
    # Was: "no reply", every line resubmitted and billed until --max-retries, then failed rows.
    def no_status(cid: str, body: dict[str, Any]) -> dict[str, Any] | None:
        line = answering(cid, body)
        assert line is not None
        if cid.startswith("0-"):
            return {"response": {"body": {"error": {"message": "context too long"}}}}
        return {"response": {k: v for k, v in line["response"].items() if k != "status_code"}}

    with RawServer(no_status) as raw:
        done, out = go(tmp_path, raw, "--max-retries", "1")

    assert done.returncode == 3, done.stderr
    found = {r["id"]: r for r in read_jsonl(out)}
    assert found["q0"]["finish_reason"] == "error" and "context too long" in found["q0"]["error"]
    assert all(found[f"q{i}"]["answer"] == answer_of(f"question {i}") for i in range(1, N))
    assert sorted(raw.submitted.values()) == [1] * (N - 1) + [2]


def test_a_create_reply_without_an_id_is_found_by_its_metadata(tmp_path: Path) -> None:
    async def no_id(request: web.Request, n: int) -> web.StreamResponse | None:
        made = raw.make()
        return web.json_response({k: v for k, v in made.items() if k != "id"} if n == 0 else made)

    with RawServer() as raw:
        raw.hooks["create"] = no_id
        done, out = go(tmp_path, raw)

    assert done.returncode == 0, done.stderr
    answered_right(out)
    assert len(raw.batches) == 1 and sorted(raw.submitted.values()) == [1] * N


def test_a_key_refused_while_polling_exits_2_and_the_rerun_collects(tmp_path: Path) -> None:
    async def refused(request: web.Request, n: int) -> web.StreamResponse | None:
        message = {"error": {"message": f"Incorrect API key provided: {KEY}"}}
        return web.json_response(message, status=401)

    with RawServer() as raw:
        raw.hooks["get"] = refused
        done, out = go(tmp_path, raw)
        del raw.hooks["get"]
        again, _ = go(tmp_path, raw)

    assert done.returncode == 2, done.stderr
    assert "HTTP 401" in done.stderr and "the API key is wrong" in done.stderr
    assert KEY not in done.stderr
    assert again.returncode == 0, again.stderr
    answered_right(out)
    assert len(raw.batches) == 1 and sorted(raw.submitted.values()) == [1] * N


def test_rows_sent_online_as_advised_end_the_stop_over_their_batch_that_may_exist(
    spawn: Spawn, tmp_path: Path
) -> None:
    # Killed while the create was on its way, on a server that lists no batches: the rerun
    # stops (exit 2) and says to rerun without --via, which answers every row online. A later
    # --via batch run then stopped again, and every one after it, for a file whose every row
    # is answered (its batch, if the server made it, can only answer them again).
    n = 30
    with killed_during(spawn, tmp_path, "create", n) as (raw, inp, out, argv):
        stopped = batch_run(inp, out, raw.base_url)
        assert stopped.returncode == 2, stopped.stderr
        online = subprocess.run(
            [sys.executable, "-m", "batchpizza", *argv, "--rate", "0"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert online.returncode == 0, online.stderr
        later = batch_run(inp, out, raw.base_url)
        status = subprocess.run(
            [sys.executable, "-m", "batchpizza", "status", str(out), "--json"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    assert later.returncode == 0, later.stderr
    answered_right(out, n)
    assert sorted(raw.submitted.values()) == [1] * n and len(raw.batches) == 1
    assert sorted(raw.online.values()) == [1] * n
    assert json.loads(status.stdout)["batches"]["out"] == []


# The run's own process, killed (SIGKILL) as it marks a collected batch file done: after its
# results were handed to the checkpoint, before the file was known collected.
_KILLED_MARKING_DONE = """
import os, runpy, signal, sys
from batchpizza.checkpoint.batches import BatchRecords

mark = BatchRecords._finish_lines

def killed(self, seq, outcomes, state):
    if state == "completed":
        os.kill(os.getpid(), signal.SIGKILL)
    mark(self, seq, outcomes, state)

BatchRecords._finish_lines = killed
sys.argv = ["batchpizza", *sys.argv[1:]]
runpy.run_module("batchpizza", run_name="__main__")
"""


def test_a_kill_as_a_collected_file_is_marked_done_counts_its_tokens_once(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    # The results and the file's done mark were two commits: a kill between them had the next
    # run collect the file again, and its tokens were spent twice on the checkpoint (what
    # --max-cost reads). Now one commit keeps both or neither.
    from tests.test_batchapi import args, batch_rows, expected, run
    from tests.test_batchapi_others import usage_of

    inp = write_jsonl(tmp_path / "in.jsonl", rows(30))
    out = tmp_path / "out.jsonl"
    argv = args(inp, out, server.base_url, "--via", "batch", "--price", "1,2")
    server.batches.seconds = 3600.0
    assert run(*argv).returncode == 4  # submitted, out
    for batch in server.batches.batches.values():
        batch["_started"] -= 3600.0  # done at the next poll
    server.batches.seconds = 0.2

    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_MARKING_DONE, *argv, "--wait"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = run(*argv, "--wait")

    assert done.returncode == 0, done.stderr
    assert {r["id"]: r["answer"] for r in read_jsonl(out)} == expected(30)
    spent = batch_rows(
        Path(f"{out}.checkpoint"),
        "SELECT sum(prompt_tokens), sum(completion_tokens) FROM spend WHERE batch = 1",
    )
    assert spent == [usage_of(server, set(server.batches.batches))]
