"""--via batch against the mock's Batch API (mock/batches.py): the flow, its faults, cron runs,
kills at every stage, and a raw server for what the mock does not do."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchpizza.checkpoint import Checkpoint
from batchpizza.mock.replies import mock_answer
from batchpizza.mock.server import ThreadedMockServer
from tests.batchapi_raw import RawServer
from tests.batchapi_shared import KEY, LIMITS, Job, ModelAOut, args, rows, run
from tests.conftest import Spawn, read_jsonl, write_jsonl

# Small files and fast polls: LINES,BYTES,POLL,POLL_CAP.


def answers(out: Path) -> dict[str, tuple[Any, ...]]:
    return {
        r["id"]: (r["answer"], r["finish_reason"], r["model"], r["prompt_tokens"],
                  r["completion_tokens"])
        for r in read_jsonl(out)
    }  # fmt: skip


def expected(n: int) -> dict[str, str]:
    return {f"q{i}": mock_answer(f"question {i}") for i in range(n)}


def batch_rows(checkpoint: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{checkpoint}?mode=ro", uri=True) as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.slow
def test_rows_go_through_batches_within_the_line_limit_and_answer_as_online(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", rows(100))
    out, online = tmp_path / "out.jsonl", tmp_path / "online.jsonl"

    done = run(*args(inp, out, server.base_url, "--via", "batch", "--wait", "-v"))
    assert done.returncode == 0, done.stderr
    assert KEY not in done.stderr
    assert run(*args(inp, online, server.base_url, "--rate", "0")).returncode == 0

    assert answers(out) == answers(online)
    assert {k: v[0] for k, v in answers(out).items()} == expected(100)
    assert sorted(server.batches.submitted.values()) == [1] * 100
    # 100 lines, 40 a file: three files, three batches.
    assert len(server.batches.batches) == 3
    files = batch_rows(Path(f"{out}.checkpoint"), "SELECT lines, state, done FROM batch_files")
    assert files == [(40, "completed", 1), (40, "completed", 1), (20, "completed", 1)]
    # Each result is marked as answered through the Batch API.
    marked = batch_rows(Path(f"{out}.checkpoint"), "SELECT count(*) FROM batch_lines WHERE "
                        "outcome = 'answered' AND line IS NULL")  # fmt: skip
    assert marked == [(100,)]
    store = Checkpoint.open(Path(f"{out}.checkpoint"), create=False, readonly=True)
    try:
        assert store.batch_answered() == 100
        # The usage the mock reported on each result line, summed: the output's token columns.
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        used = (
            sum(line["prompt_tokens"] for line in lines),
            sum(line["completion_tokens"] for line in lines),
        )
        assert store.batch_tokens() == used and used[0] > 0 and used[1] > 0
    finally:
        store.close()
    assert KEY not in Path(f"{out}.checkpoint").read_bytes().decode("latin-1")


@pytest.mark.slow
def test_the_byte_limit_splits_files_too(
    server: ThreadedMockServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHPIZZA_BATCH_LIMITS", "1000,1000,0.05,0.2")
    job = Job.of(server, tmp_path, 30)

    assert job.run("--via", "batch", "--wait").returncode == 0

    sizes = [len(c) for c in server.batches.contents.values() if b'"custom_id"' in c[:20]]
    inputs = [f for f in server.batches.files.values() if f["purpose"] == "batch"]
    assert len(inputs) > 1 and all(f["bytes"] <= 1000 for f in inputs), sizes


@pytest.mark.slow
def test_from_cron_each_run_collects_what_is_ready_and_exits_4_until_done(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    server.batches.seconds = 1.0
    inp = write_jsonl(tmp_path / "in.jsonl", rows(60))
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    codes = []
    for _ in range(200):
        done = run(*args(inp, out, server.base_url, "--via", "batch", "--deadline", "0.5s",
                         "--summary-json", str(summary)))  # fmt: skip
        codes.append(done.returncode)
        if done.returncode != 4:
            break
        said = json.loads(summary.read_text())
        assert said["stopped"] == "batches", said
        assert said["pending"] > 0
        pending = [r for r in read_jsonl(out) if r["finish_reason"] == "pending"]
        assert pending  # the output is written each time, the rest pending
    assert codes[-1] == 0 and codes[:-1] and set(codes[:-1]) == {4}, codes
    assert {k: v[0] for k, v in answers(out).items()} == expected(60)
    assert sorted(server.batches.submitted.values()) == [1] * 60
    assert len(server.batches.batches) == 2


@pytest.mark.slow
def test_a_restart_while_batches_are_out_collects_them_and_submits_no_request_twice(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    # --restart dropped the record of the batches still out: every row in them was submitted
    # again (paid twice), and the first batches, billed all the same, were never collected.
    server.batches.seconds = 1.0
    job = Job.of(server, tmp_path, 30)
    answered = job.run("--via", "batch", "--wait", "--limit", "10")
    assert answered.returncode == 0, answered.stderr
    out_now = job.run("--via", "batch")
    assert out_now.returncode == 4, out_now.stderr  # 20 rows in batches still out
    dry = job.run("--via", "batch", "--restart", "--dry-run")
    assert "batches    1 out (20 requests)" in dry.stdout, dry.stdout

    again = job.run("--via", "batch", "--restart", "--wait")

    assert again.returncode == 0, again.stderr
    assert {k: v[0] for k, v in answers(job.out).items()} == expected(30)
    # The 10 answered before the restart are asked again (forgotten); the 20 out, never.
    assert sorted(server.batches.submitted.values()) == [1] * 20 + [2] * 10


@pytest.mark.slow
def test_wait_is_bounded_by_the_deadline(server: ThreadedMockServer, tmp_path: Path) -> None:
    server.batches.seconds = 60.0
    inp = write_jsonl(tmp_path / "in.jsonl", rows(10))
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"

    done = run(*args(inp, out, server.base_url, "--via", "batch", "--wait", "--deadline", "1s",
                     "--summary-json", str(summary)))  # fmt: skip

    assert done.returncode == 4, done.stderr
    assert json.loads(summary.read_text())["stopped"] == "batches"
    assert {r["finish_reason"] for r in read_jsonl(out)} == {"pending"}


@pytest.mark.slow
def test_an_expired_batch_has_only_its_unanswered_half_resubmitted(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    server.batches.expire = 1
    job = Job.of(server, tmp_path, 40)

    done = job.run("--via", "batch", "--wait")

    assert done.returncode == 0, done.stderr
    assert {k: v[0] for k, v in answers(job.out).items()} == expected(40)
    counts = sorted(server.batches.submitted.values())
    assert counts == [1] * 20 + [2] * 20
    second = list(server.batches.batches.values())[1]
    assert second["request_counts"]["total"] == 20


@pytest.mark.slow
def test_failed_lines_are_resubmitted_and_answered_lines_never(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    server.batches.fail_every = 4
    job = Job.of(server, tmp_path, 40)

    done = job.run("--via", "batch", "--wait")

    assert done.returncode == 0, done.stderr
    assert {k: v[0] for k, v in answers(job.out).items()} == expected(40)
    assert sorted(server.batches.submitted.values()) == [1] * 30 + [2] * 10
    resubmitted = [r for r in read_jsonl(job.out) if r["attempts"] == 2]
    assert len(resubmitted) == 10


@pytest.mark.slow
def test_a_batch_submitted_while_waiting_is_polled_at_the_first_poll_delay(
    server: ThreadedMockServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The poll backoff went on growing over a resubmitted tail batch: a 4-line batch done in
    # 2 s was next polled after up to 60 s (past the deadline: exit 4).
    from click.testing import CliRunner

    from batchpizza.batchapi.flow import BatchFlow
    from batchpizza.cli import cli
    from batchpizza.controls.stop import Stop

    events: list[str | float] = []  # "submit" for each file, each pause's delay
    sleep, send_file = Stop.sleep, BatchFlow._send_file

    async def pause(self: Stop, delay: float) -> None:
        events.append(delay)
        await sleep(self, delay)

    async def submit(self: BatchFlow, *a: Any, **kw: Any) -> None:
        events.append("submit")
        await send_file(self, *a, **kw)

    monkeypatch.setattr(Stop, "sleep", pause)
    monkeypatch.setattr(BatchFlow, "_send_file", submit)
    server.batches.fail_every = 4  # a tail of 4 lines, resubmitted once the first batch ends
    server.batches.seconds = 0.5  # long enough for the backoff to grow past its first delay
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows(16)), tmp_path / "out.jsonl"

    done = CliRunner().invoke(cli, args(inp, out, server.base_url, "--via", "batch", "--wait"))

    assert done.exit_code == 0, done.output
    assert sorted(server.batches.submitted.values()) == [1] * 12 + [2] * 4
    tail = events.index("submit", 1)
    assert events[0] == "submit", events
    assert isinstance(events[tail - 1], float) and events[tail - 1] > 0.05, events  # it grew
    assert events[tail + 1] == 0.05, events  # POLL of LIMITS


@pytest.mark.slow
def test_failed_lines_past_their_budget_are_failed_rows(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    server.batches.fail_every = 2
    job = Job.of(server, tmp_path, 10)

    done = job.run("--via", "batch", "--wait", "--max-retries", "0")

    assert done.returncode == 3, done.stderr
    failed = [r for r in read_jsonl(job.out) if r["finish_reason"] == "error"]
    assert len(failed) == 5
    assert all("HTTP 500" in r["error"] and "Batch API" in r["error"] for r in failed)
    assert sorted(server.batches.submitted.values()) == [1] * 10


@pytest.mark.slow
def test_5xx_while_polling_and_an_upload_failing_halfway_are_tried_again(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    server.batches.poll_error_every = 2
    server.batches.upload_fail = 1
    job = Job.of(server, tmp_path, 50)

    done = job.run("--via", "batch", "--wait")

    assert done.returncode == 0, done.stderr
    assert {k: v[0] for k, v in answers(job.out).items()} == expected(50)
    assert sorted(server.batches.submitted.values()) == [1] * 50
    assert server.batches.uploads == 3  # two files, one tried twice


@pytest.mark.slow
def test_a_waiting_run_warns_once_of_a_batch_its_polls_keep_failing_on(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    # Said at every failed poll: every minute for a day, the same line.
    server.batches.poll_error_every = 2  # every other poll a 503; no retry of the client's
    server.batches.seconds = 1.5
    inp = write_jsonl(tmp_path / "in.jsonl", rows(30))
    out = tmp_path / "out.jsonl"

    done = run(*args(inp, out, server.base_url, "--via", "batch", "--wait", "--max-retries", "0"))

    assert done.returncode == 0, done.stderr
    assert server.batches.polls >= 6  # three failed, at least
    said = "polling batch batch_000001: HTTP 503 Service Unavailable: the oven is busy"
    assert done.stderr.count(said) == 1, done.stderr
    assert f"{said}; polled again later" in done.stderr
    assert {k: v[0] for k, v in answers(out).items()} == expected(30)


@pytest.mark.slow
def test_a_batch_failing_as_a_whole_exits_2_with_the_servers_errors(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    server.batches.fail_batches = 1
    job = Job.of(server, tmp_path, 10)

    done = job.run("--via", "batch", "--wait")

    assert done.returncode == 2, done.stderr
    assert "the file is wrong" in done.stderr and "line 1" in done.stderr
    again = job.run("--via", "batch", "--wait")
    assert again.returncode == 0, again.stderr
    assert {k: v[0] for k, v in answers(job.out).items()} == expected(10)


def test_batch_requires_the_openai_provider(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from batchpizza.cli import cli

    inp = write_jsonl(tmp_path / "in.jsonl", rows(1))
    done = CliRunner().invoke(
        cli, ["run", str(inp), "-o", str(tmp_path / "o.jsonl"), "--via", "batch"]
    )
    assert done.exit_code == 2
    assert "--provider openai" in done.stderr


# -- kills ------------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], proc: Any) -> None:
    for _ in range(6000):
        if predicate():
            return
        if proc.popen.poll() is not None:
            raise AssertionError(f"the run ended first: {proc.stderr}")
        time.sleep(0.01)
    raise AssertionError("the moment to kill never came")


def kill_at(spawn: Spawn, argv: list[str], predicate: Callable[[], bool]) -> None:
    proc = spawn([sys.executable, "-m", "batchpizza", *argv])
    wait_for(predicate, proc)
    proc.signal(signal.SIGKILL)
    proc.wait(30)


def killed_three_times(server: ThreadedMockServer, spawn: Spawn, tmp_path: Path, n: int) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", rows(n))
    out, online = tmp_path / "out.jsonl", tmp_path / "online.jsonl"
    argv = args(inp, out, server.base_url, "--via", "batch", "--wait")
    mock = server.batches
    # During an upload: the server has stored the file, the client has not heard its id.
    mock.upload_delay = 0.5
    kill_at(spawn, argv, lambda: mock.uploads >= 3 and len(mock.files) >= 3)
    mock.upload_delay = 0.0
    assert len(mock.batches) == 2
    # During a batch's creation: made on the server, its id not heard.
    mock.create_delay = 0.5
    kill_at(spawn, argv, lambda: len(mock.batches) >= 4)
    mock.create_delay = 0.0
    # During polling: every file uploaded and made a batch of, none done.
    mock.seconds = 3600.0
    kill_at(spawn, argv, lambda: mock.polls >= 3)
    for batch in mock.batches.values():
        batch["_started"] -= 3600.0  # they complete now
    # During a download.
    mock.download_delay = 0.5
    kill_at(spawn, argv, lambda: mock.downloads >= 2)
    mock.download_delay = 0.0

    done = run(*argv)
    assert done.returncode == 0, done.stderr
    assert run(*args(inp, online, server.base_url, "--rate", "0")).returncode == 0
    assert answers(out) == answers(online)
    assert {k: v[0] for k, v in answers(out).items()} == expected(n)
    # Never a line submitted twice, by the server's own count; each row answered once.
    assert sorted(mock.submitted.values()) == [1] * n
    assert len(read_jsonl(out)) == n
    checkpoint = Path(f"{out}.checkpoint")
    assert batch_rows(checkpoint, "SELECT count(*) FROM batch_files WHERE done = 0") == [(0,)]
    uploaded = [f for f in mock.files.values() if f["purpose"] == "batch"]
    assert len(uploaded) == len({f["filename"] for f in uploaded}) == len(mock.batches)


@pytest.mark.slow
def test_kills_during_upload_create_polling_and_download_never_submit_twice(
    server: ThreadedMockServer, spawn: Spawn, tmp_path: Path
) -> None:
    killed_three_times(server, spawn, tmp_path, 200)


@pytest.mark.slow
def test_10000_rows_killed_during_upload_polling_and_download(
    server: ThreadedMockServer, spawn: Spawn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHPIZZA_BATCH_LIMITS", "1000,,0.05,0.2")
    killed_three_times(server, spawn, tmp_path, 10_000)


@pytest.mark.slow
def test_status_and_dry_run_show_each_batch_its_state_and_counts(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    server.batches.seconds = 3600.0
    job = Job.of(server, tmp_path, 50)
    assert job.run("--via", "batch").returncode == 4

    shown = run("status", str(job.out))
    assert shown.returncode == 0, shown.stderr
    assert "batches    2 out (50 requests), 0 collected" in shown.stdout
    # The rows a rerun would send are in those batches: said, so nobody pays for them twice.
    assert (
        "50 of these requests are in batches still out, which --via batch collects" in shown.stdout
    )
    assert "batch_000001  validating" in shown.stdout and "0/40 done" in shown.stdout
    info = json.loads(run("status", str(job.out), "--json").stdout)["batches"]
    assert [b["batch_id"] for b in info["out"]] == ["batch_000001", "batch_000002"]
    assert info["lines_out"] == 50

    dry = job.run("--via", "batch", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "batches    2 out (50 requests)" in dry.stdout
    assert "batch_000002" in dry.stdout and "0/10 done" in dry.stdout


def test_a_dry_run_through_the_batch_api_says_its_window_not_a_rate(tmp_path: Path) -> None:
    # It said "about 0:00:00 at 20/s (the rate)" and showed online requests: through the Batch
    # API the rows wait up to the provider's 24 h window, each request a line of a file.
    from click.testing import CliRunner

    from batchpizza.cli import cli

    out = tmp_path / "out.jsonl"
    base = ["run", "samples/prompts.jsonl", "-o", str(out), "--mock", "--provider", "openai",
            "--model", "batchpizza-mock", "--dry-run"]  # fmt: skip
    said = {via: CliRunner().invoke(cli, [*base, "--via", via]) for via in ("batch", "auto")}
    for via, result in said.items():
        assert result.exit_code == 0, result.output
        assert "through the Batch API, within its 24 h window" in result.output, via
        assert "request 1 (a line of a Batch API file): POST" in result.output, via
    assert "at 20/s (the rate)" not in said["batch"].output
    assert "goes online: about 0:00:00 at 20/s (the rate)" in said["auto"].output
    online = CliRunner().invoke(cli, base).output
    assert "time        about 0:00:00 at 20/s (the rate)" in online
    assert "request 1: POST" in online


# -- a raw server (tests/batchapi_raw.py), for what the mock does not do ----------------------


def reversed_output(lines: list[bytes]) -> bytes:
    """A raw server's output file in reverse order: lines are matched by custom_id."""
    return b"".join(lines[::-1])


@pytest.mark.slow
def test_a_completed_batch_whose_lines_all_failed_is_failed_rows_never_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("BATCHPIZZA_BATCH_LIMITS", LIMITS)
    error = {"error": {"message": "max_tokens is too large", "type": "invalid_request_error"}}
    inp = write_jsonl(tmp_path / "in.jsonl", rows(8))
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    with RawServer(lambda cid, body: {"response": {"status_code": 400, "body": error}}) as raw:
        raw.output = reversed_output
        done = run(*args(inp, out, raw.base_url, "--via", "batch", "--wait",
                         "--summary-json", str(summary)))  # fmt: skip

    assert done.returncode == 3, done.stderr
    said = json.loads(summary.read_text())
    assert (said["answered"], said["failed"]) == (0, 8)
    found = read_jsonl(out)
    assert {r["finish_reason"] for r in found} == {"error"}
    assert all("HTTP 400" in r["error"] and "max_tokens is too large" in r["error"] for r in found)
    assert len(raw.batches) == 1  # a 400 is not resubmitted


@pytest.mark.slow
def test_odd_result_lines_unordered_missing_or_unknown_are_matched_by_custom_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("BATCHPIZZA_BATCH_LIMITS", LIMITS)
    seen: dict[str, int] = {}

    def reply(cid: str, body: dict[str, Any]) -> dict[str, Any] | None:
        seen[cid] = seen.get(cid, 0) + 1
        if cid.startswith("3-") and seen[cid] == 1:
            return None  # left out of the output the first time: resubmitted
        if cid.startswith("5-"):
            return {"response": None, "error": {"code": "batch_expired", "message": "late"}}
        text = f"answer to {body['messages'][0]['content']}"
        completion = {
            "id": "c",
            "model": "m",
            "choices": [
                {"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
        }
        return {"response": {"status_code": 200, "request_id": "r", "body": completion}}

    inp = write_jsonl(tmp_path / "in.jsonl", rows(6))
    out = tmp_path / "out.jsonl"
    with RawServer(reply) as raw:
        raw.output = reversed_output
        done = run(*args(inp, out, raw.base_url, "--via", "batch", "--wait", "--max-retries", "2"))

    assert done.returncode == 3, done.stderr
    found = {r["id"]: r for r in read_jsonl(out)}
    assert found["q0"]["answer"] == "answer to question 0"
    assert found["q3"]["answer"] == "answer to question 3" and found["q3"]["attempts"] == 2
    assert found["q5"]["finish_reason"] == "error" and "batch_expired" in found["q5"]["error"]
    assert found["q5"]["attempts"] == 3  # its first submission and two resubmissions
    assert seen == {**{k: 1 for k in seen if not k.startswith(("3-", "5-"))},
                    **{k: 2 for k in seen if k.startswith("3-")},
                    **{k: 3 for k in seen if k.startswith("5-")}}  # fmt: skip


@pytest.mark.slow
def test_auto_sends_the_rows_still_out_near_the_deadline_online_and_says_how_many(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    server.batches.seconds = 3600.0
    inp = write_jsonl(tmp_path / "in.jsonl", rows(30))
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"

    done = run(*args(inp, out, server.base_url, "--via", "auto", "--deadline", "6s",
                     "--rate", "0", "--summary-json", str(summary)))  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert {k: v[0] for k, v in answers(out).items()} == expected(30)
    said = json.loads(summary.read_text())
    assert said["batches"] == {"submitted": 30, "resubmitted": 0, "collected": 0, "out": 0,
                               "waiting": 0, "online": 30, "others": 0}  # fmt: skip
    assert "30 rows still out near the deadline are sent online" in done.stderr
    assert {b["status"] for b in server.batches.batches.values()} == {"cancelling"}
    assert server.stats.requests == 30  # the chat route's: each row once online
    # The next run finds nothing to do, and no batch to wait for.
    again = run(*args(inp, out, server.base_url, "--via", "auto", "--deadline", "6s"))
    assert again.returncode == 0 and len(server.batches.batches) == 1


@pytest.mark.slow
def test_a_batch_the_server_no_longer_knows_has_its_lines_submitted_again(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    server.batches.seconds = 3600.0
    job = Job.of(server, tmp_path, 10)
    assert job.run("--via", "batch").returncode == 4
    server.batches.batches.clear()
    server.batches.seconds = 0.1

    done = job.run("--via", "batch", "--wait")

    assert done.returncode == 0, done.stderr
    assert "No such Batch object; its requests are submitted again" in done.stderr
    assert {k: v[0] for k, v in answers(job.out).items()} == expected(10)


@pytest.mark.slow
def test_the_offline_demo_runs_through_batches_too(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", rows(5))
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "BATCHPIZZA_BATCH_LIMITS": LIMITS}
    done = subprocess.run(
        [sys.executable, "-m", "batchpizza", "run", str(inp), "-o", str(out), "--mock",
         "--provider", "openai", "--via", "batch"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert {k: v[0] for k, v in answers(out).items()} == expected(5)


def test_a_schema_4_checkpoint_gains_the_batch_tables_on_open_and_reads_without_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ck"
    Checkpoint.open(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE batch_files")
        conn.execute("DROP TABLE batch_lines")
        conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema'")
    conn.close()

    readonly = Checkpoint.open(path, create=False, readonly=True)
    assert (readonly.batch_files(), readonly.out_keys(), readonly.open_files()) == ([], set(), [])
    readonly.close()
    store = Checkpoint.open(path)
    store.intend_file([("0-ab", "q0", 0, b"k", 1, b"{}\n")])
    assert [f.name.endswith("-000001.jsonl") for f in store.open_files()] == [True]
    store.close()
    assert batch_rows(path, "SELECT value FROM meta WHERE key = 'schema'") == [("5",)]


@pytest.mark.slow
def test_a_batch_made_by_a_create_that_failed_is_found_not_made_again(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    server.batches.create_error = 1
    job = Job.of(server, tmp_path, 50)

    done = job.run("--via", "batch", "--wait")

    assert done.returncode == 0, done.stderr
    assert {k: v[0] for k, v in answers(job.out).items()} == expected(50)
    assert sorted(server.batches.submitted.values()) == [1] * 50
    assert len(server.batches.batches) == 2


@pytest.mark.slow
def test_the_mock_server_commands_batch_options(
    mock_process: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHPIZZA_BATCH_LIMITS", LIMITS)
    served = mock_process("--batch-seconds", "0.1", "--batch-expire", "1")
    inp = write_jsonl(tmp_path / "in.jsonl", rows(20))
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"

    done = run(*args(inp, out, served.url, "--via", "batch", "--wait",
                     "--summary-json", str(summary)))  # fmt: skip

    assert done.returncode == 0, done.stderr
    said = json.loads(summary.read_text())["batches"]
    assert (said["submitted"], said["resubmitted"], said["collected"]) == (30, 10, 20)


def test_ray_refuses_the_batch_api() -> None:
    from batchpizza.distributed.command import run as run_on_ray
    from batchpizza.errors import UsageError

    with pytest.raises(UsageError, match="--via batch: not with --ray"):
        run_on_ray("in.parquet", "out", via="batch", provider="openai")


@pytest.mark.parametrize("via", ["batch", "auto"])
def test_the_batch_api_refuses_a_schema_it_would_not_check(via: str) -> None:
    from batchpizza.config import RunConfig
    from batchpizza.errors import UsageError

    schema = {"type": "object", "properties": {"label": {"type": "string"}}}
    with pytest.raises(UsageError, match=f"--via {via} with --schema"):
        RunConfig.from_options("in.jsonl", "out.parquet", via=via, provider="openai", schema=schema)
    RunConfig.from_options("in.jsonl", "out.parquet", provider="openai", schema=schema)


def test_answer_from_python_waits_for_its_batches_without_a_checkpoint_file(
    server: ThreadedMockServer,
) -> None:
    import batchpizza

    found = batchpizza.answer(
        ["question 1", "question 2"], provider="openai", base_url=f"{server.base_url}/v1",
        via="batch", quiet=True,
    )  # fmt: skip
    assert [r["answer"] for r in found] == [mock_answer("question 1"), mock_answer("question 2")]


@pytest.mark.slow
def test_lines_refused_for_an_unknown_model_stop_the_run_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("BATCHPIZZA_BATCH_LIMITS", LIMITS)
    error = {"error": {"message": "The model `nope` does not exist", "code": "model_not_found"}}
    inp = write_jsonl(tmp_path / "in.jsonl", rows(3))
    out = tmp_path / "out.jsonl"
    with RawServer(lambda cid, body: {"response": {"status_code": 404, "body": error}}) as raw:
        raw.output = reversed_output
        done = run(*args(inp, out, raw.base_url, "--via", "batch", "--wait", "--model", "nope"))

    assert done.returncode == 2, done.stderr
    assert "does not serve model 'nope'" in done.stderr and "rerun" in done.stderr


@pytest.mark.slow
def test_a_batch_collected_but_not_closed_by_a_killed_run_is_closed_by_the_next(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    job = Job.of(server, tmp_path, 10)
    assert job.run("--via", "batch", "--wait").returncode == 0
    checkpoint = job.checkpoint
    with sqlite3.connect(checkpoint) as conn:  # as a kill between the commit and the close
        conn.execute("UPDATE batch_files SET done = 0, state = 'in_progress'")
        conn.execute("UPDATE batch_lines SET outcome = NULL")
    conn.close()

    done = job.run("--via", "batch")

    assert done.returncode == 0, done.stderr
    assert batch_rows(checkpoint, "SELECT state, done FROM batch_files") == [("completed", 1)]
    assert sorted(server.batches.submitted.values()) == [1] * 10


@pytest.mark.slow
def test_a_refused_batch_never_replaces_the_answers_its_rows_got_online_meanwhile(
    server: ThreadedMockServer, model_a_out: Callable[..., ModelAOut]
) -> None:
    # The rows of a batch still out answered online (paid twice, said); the batch is then
    # refused as a whole: its error rows replaced those answers in the checkpoint, and the
    # next run sent every row again.
    from tests.test_batchapi_others import kept, refused_after_answered_online

    job, answered = refused_after_answered_online(model_a_out)
    checkpoint = job.checkpoint

    refused = job.run("--via", "batch", "--wait", "--model", "a")

    assert "the file is wrong" in refused.stderr  # the server's refusal is still said
    # and true of what was recorded: nothing failed (it said "Its rows are recorded as failed").
    assert "Its rows all have an answer already (got online meanwhile)" in refused.stderr
    assert "recorded as failed" not in refused.stderr
    assert kept(checkpoint, "a") == answered
    chats = server.stats.requests
    again = job.run("--model", "a")
    assert again.returncode == 0, again.stderr
    assert server.stats.requests == chats
