"""An online run (no --via) collects the finished Batch API batches its checkpoint has out at its
server, at its start (batchapi/collecting.py): another model's under that model, as a --via batch
run does; its own model's as its answers, their rows not sent online. A dry run says what it
would collect and changes nothing."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from batchpizza.config import RunConfig
from batchpizza.job import Job
from batchpizza.mock.server import ThreadedMockServer
from batchpizza.pricing import Price, cost
from batchpizza.progress import Progress
from batchpizza.runlog import Snapshot
from tests.batchapi_shared import ModelAOut, rows, run
from tests.conftest import Spawn, read_jsonl, write_jsonl
from tests.test_batchapi import batch_rows, expected, kill_at, wait_for
from tests.test_batchapi_others import kept, models, spend, usage_of

PRICED = ("--price", "1,2", "--param", "max_tokens=20")  # priced, answers of 20 tokens at most


def priced_and_ended(
    server: ThreadedMockServer, model_a_out: Callable[..., ModelAOut], *, expire_first: bool = False
) -> tuple[ModelAOut, float]:
    """Model a's 50 rows, priced (PRICED), in batches that ended with their output made (read
    once here, as a poll would), the first of them (40 lines) expired with `expire_first`, 20
    of its lines left to send online: the job, and what the answers in them cost."""
    job = model_a_out(50, *PRICED)
    if expire_first:
        first, _ = sorted(job.theirs)  # 40 lines, then 10
        server.batches.batches[first]["_expire"] = True
    for batch_id in job.theirs:  # ended, their output made: what they cost is known
        urllib.request.urlopen(f"{server.base_url}/v1/batches/{batch_id}", timeout=10).read()
    return job, cost(Price(1.0, 2.0), *usage_of(server, job.theirs), batch=True)


@pytest.mark.slow
def test_an_online_run_collects_another_models_finished_batches_under_that_model(
    server: ThreadedMockServer, model_a_out: Callable[..., ModelAOut]
) -> None:
    job = model_a_out(50)

    b = job.run("--model", "b", "--rate", "0", "--summary-json", str(job.summary))

    assert b.returncode == 0, b.stderr
    assert models(job.out) == {f"q{i}": ("b", "stop") for i in range(50)}
    assert "collected 50 results (50 answers) from 2 finished Batch API batches" in b.stderr
    assert json.loads(job.summary.read_text())["batches"]["others"] == 50
    assert kept(job.checkpoint, "a") == {k: ("stop", v) for k, v in expected(50).items()}
    assert batch_rows(job.checkpoint, "SELECT count(*) FROM batch_files WHERE done = 0") == [(0,)]
    chats = server.stats.requests

    a = job.run("--model", "a", "--rate", "0")

    assert a.returncode == 0, a.stderr
    assert server.stats.requests == chats  # a's answers were there already
    assert models(job.out) == {f"q{i}": ("a", "stop") for i in range(50)}


@pytest.mark.slow
def test_an_online_run_collects_its_own_finished_batches_and_sends_only_what_they_left(
    server: ThreadedMockServer, model_a_out: Callable[..., ModelAOut]
) -> None:
    # Its rows were all sent online again (paid twice), the batches left to expire unread.
    job = model_a_out(50)
    first, _ = sorted(job.theirs)  # 40 lines, then 10
    server.batches.batches[first]["_expire"] = True  # ends with half its lines run

    a = job.run("--model", "a", "--rate", "0", "--summary-json", str(job.summary))

    assert a.returncode == 0, a.stderr
    assert {r["id"]: r["answer"] for r in read_jsonl(job.out)} == expected(50)
    assert server.stats.requests == 20  # online: only the 20 lines the expired batch did not run
    said_collected = "collected 2 finished Batch API batches of this model and parameters: 30 "
    assert said_collected + "answers (not sent online), 0 failed rows and 20 lines" in a.stderr
    said = json.loads(job.summary.read_text())
    assert said["requests"] == 20 and said["batches"]["collected"] == 30
    batches = len(server.batches.batches)

    # Those 20 were sent online, not left to be resubmitted: a --via batch run sends nothing.
    again = job.run("--via", "batch", "--wait", "--model", "a")

    assert again.returncode == 0, again.stderr
    assert len(server.batches.batches) == batches
    assert sorted(server.batches.submitted.values()) == [1] * 50


@pytest.mark.slow
def test_an_online_runs_collection_says_its_failed_rows_apart_from_its_answers(
    server: ThreadedMockServer, model_a_out: Callable[..., ModelAOut]
) -> None:
    # The log said "collected 50 results ...: their rows answered are not sent online", the 10
    # failed rows among them, which this run then sent online.
    job = model_a_out(50)
    server.batches.fail_every = 5  # one line in 5 fails; past --max-retries 0: a failed row

    a = job.run("--model", "a", "--rate", "0", "--max-retries", "0")

    assert a.returncode == 0, a.stderr
    assert (
        "collected 2 finished Batch API batches of this model and parameters: 40 answers (not "
        "sent online), 10 failed rows and 0 lines to run again (sent online)"
    ) in a.stderr
    assert server.stats.requests == 10
    assert {r["id"]: r["answer"] for r in read_jsonl(job.out)} == expected(50)


@pytest.mark.slow
def test_an_online_run_warns_once_of_a_batch_it_cannot_poll_and_closes_one_lost_for_good(
    server: ThreadedMockServer, model_a_out: Callable[..., ModelAOut]
) -> None:
    # Said at info only (a cron run never heard of it), and a batch the server lost was polled
    # by every run for ever, left to a --via batch run that may never come.
    job = model_a_out(50)
    first, second = sorted(job.theirs)
    server.batches.batches.pop(first)  # the server no longer knows it
    server.batches.batches[second]["_started"] += 7200.0  # still running
    with sqlite3.connect(job.checkpoint) as conn:  # told of last an hour ago: lost for good
        conn.execute("UPDATE batch_files SET created = created - 3600, updated = updated - 3600")
    conn.close()

    a = job.run("--model", "a", "--rate", "0")

    assert a.returncode == 0, a.stderr
    assert a.stderr.count(f"polling batch {first}: HTTP 404") == 1
    assert "taken for lost: its rows are sent online" in a.stderr
    assert server.stats.requests == 50  # its 40 rows, and the 10 still out (paid twice, said)
    polls = server.batches.polls
    assert job.run("--model", "a", "--rate", "0").returncode == 0
    assert server.batches.polls == polls + 1  # the running one only: the lost one is closed
    assert batch_rows(job.checkpoint, "SELECT state, done FROM batch_files ORDER BY seq") == [
        ("lost", 1),
        ("validating", 0),
    ]


@pytest.mark.slow
def test_a_dry_run_says_which_batches_its_run_would_collect_and_changes_nothing(
    server: ThreadedMockServer, model_a_out: Callable[..., ModelAOut]
) -> None:
    job = model_a_out(50)
    before, polls = job.checkpoint.read_bytes(), server.batches.polls

    other = job.run("--model", "b", "--dry-run")
    own = job.run("--model", "a", "--dry-run")
    batch = job.run("--model", "b", "--via", "batch", "--dry-run")

    for dry in (other, own, batch):
        assert dry.returncode == 0, dry.stderr
    said = "collect     2 Batch API batches of {} out at this server (50 requests): those that "
    assert said.format("other models or parameters") in other.stdout
    assert said.format("other models or parameters") in batch.stdout
    assert said.format("this model and parameters") in own.stdout
    assert "their answers not sent online" in own.stdout
    assert job.checkpoint.read_bytes() == before and server.batches.polls == polls


@pytest.mark.slow
def test_a_kill_during_an_online_runs_collection_loses_nothing_and_counts_nothing_twice(
    server: ThreadedMockServer, spawn: Spawn, model_a_out: Callable[..., ModelAOut]
) -> None:
    job = model_a_out(100, "--price", "1,2")
    assert len(job.theirs) == 3  # 40 + 40 + 20 lines
    argv = job.argv("--model", "b", "--rate", "0")

    # Killed while downloading the second of a's batches: the first is kept, nothing sent.
    server.batches.download_delay = 0.5
    kill_at(spawn, argv, lambda: server.batches.downloads >= 2)
    server.batches.download_delay = 0.0
    assert len(kept(job.checkpoint, "a")) == 40 and not kept(job.checkpoint, "b")
    assert server.stats.requests == 0

    done = run(*argv)

    assert done.returncode == 0, done.stderr
    assert "collected 60 results" in done.stderr
    assert models(job.out) == {f"q{i}": ("b", "stop") for i in range(100)}
    assert kept(job.checkpoint, "a") == {k: ("stop", v) for k, v in expected(100).items()}
    # a's tokens counted once, by the server's own count; the cut output fetched again.
    prompt, completion = usage_of(server, job.theirs)
    foreign = [row for row in spend(job.checkpoint) if row[0] == 1 and row[1] == 1]
    assert sum(r[4] for r in foreign) == prompt and sum(r[5] for r in foreign) == completion
    assert server.batches.downloads == 2 + 1 + 1
    assert server.stats.requests == 100  # b's rows, once each


@pytest.mark.slow
def test_a_waiting_run_collects_another_models_batch_that_ends_while_it_waits(
    server: ThreadedMockServer, spawn: Spawn, model_a_out: Callable[..., ModelAOut]
) -> None:
    # Collected only at the run's start, it waited for the next run.
    job = model_a_out(10)
    (theirs,) = job.theirs
    server.batches.batches[theirs]["_started"] += 7200.0  # running at the run's start
    server.batches.seconds = 2.0  # b's own batch keeps the run waiting a while
    proc = spawn([sys.executable, "-m", "batchpizza",
                  *job.argv("--via", "batch", "--wait", "--model", "b")])  # fmt: skip
    wait_for(lambda: len(server.batches.batches) > 1, proc)  # b's batch made: a's still out
    server.batches.batches[theirs]["_started"] -= 7200.0  # now it ends

    assert proc.wait(60) == 0, proc.stderr
    assert "collected 10 results (10 answers) from 1 finished Batch API batch" in proc.stderr
    assert kept(job.checkpoint, "a") == {k: ("stop", v) for k, v in expected(10).items()}
    assert models(job.out) == {f"q{i}": ("b", "stop") for i in range(10)}


@pytest.mark.slow
def test_what_an_online_run_collects_of_its_own_counts_against_max_cost(
    server: ThreadedMockServer, model_a_out: Callable[..., ModelAOut]
) -> None:
    job, spent = priced_and_ended(server, model_a_out, expire_first=True)

    # A cap the 30 answers collected all but fill: no row sent online fits beside them.
    a = job.run("--model", "a", "--rate", "0", *PRICED, "--max-cost", f"{spent + 1e-5:.9f}",
                "--summary-json", str(job.summary))  # fmt: skip

    assert a.returncode == 4, a.stderr
    said = json.loads(job.summary.read_text())
    assert said["stopped"] == "budget" and said["batches"]["collected"] == 30
    assert server.stats.requests == 0
    assert said["cost"]["total"] == pytest.approx(spent)


@pytest.mark.slow
def test_answers_collected_after_the_input_changed_leave_only_their_own_rows_to_do(
    server: ThreadedMockServer, model_a_out: Callable[..., ModelAOut]
) -> None:
    # A line names its row's position when its file was made. Told answered there, the rows now
    # at those positions (10 new ones, in front) left the kept to-do set unanswered: the next
    # run said "0 to send; 60 answered before" and exited 0, the 10 pending for good.
    job, spent = priced_and_ended(server, model_a_out)
    new = [{"id": f"x{i}", "prompt": f"new question {i}"} for i in range(10)]
    write_jsonl(job.inp, new + rows(50))

    # Collected, then the cap they fill stops the run before the new rows are sent.
    a = job.run("--model", "a", "--rate", "0", *PRICED, "--max-cost", f"{spent + 1e-5:.9f}")
    assert a.returncode == 4, a.stderr
    assert server.stats.requests == 0

    again = job.run("--model", "a", "--rate", "0", *PRICED)

    assert again.returncode == 0, again.stderr
    assert server.stats.requests == 10
    assert {r["id"]: r["finish_reason"] for r in read_jsonl(job.out)} == {
        r["id"]: "stop" for r in new + rows(50)
    }


class Shown(Progress):
    """What a run showed: its start line (`start_info`) and where the bar stood at its end."""

    end: Snapshot | None = None

    def start(self, total: int, done: int, counters: Any, control: Any = None) -> None:
        self._begin(total, done, counters, control)

    def close(self) -> None:
        self.end = self.snapshot()


@pytest.mark.slow
def test_an_online_runs_start_line_says_what_it_sends_after_its_collection_counting_rows_once(
    server: ThreadedMockServer, model_a_out: Callable[..., ModelAOut]
) -> None:
    # The start line said "50 to send" (its plan was made before the collection), and the 10
    # rows of the refused batch were counted twice: failed as collected, then answered online.
    job = model_a_out(50)
    first, second = sorted(job.theirs)  # 40 lines, then 10
    server.batches.batches[first]["_expire"] = True  # 20 of its lines left to send online
    server.batches.batches[second]["_fail"] = True  # refused as a whole: its rows sent online
    shown = Shown()
    config = RunConfig.from_options(
        str(job.inp), str(job.out), provider="openai", base_url=f"{server.base_url}/v1",
        model="a", rate="0", quiet=True,
    )  # fmt: skip

    summary = asyncio.run(Job(config, progress=shown).run())

    assert summary.exit_code == 0 and summary.answered == 50
    assert server.stats.requests == 30
    assert shown.start_info is not None and shown.end is not None
    assert (shown.start_info.to_send, shown.start_info.answered) == (30, 20)
    assert shown.start_info.why == "30 to send: 20 new rows, 10 failed before"
    assert (shown.end.done, shown.end.answered, shown.end.failed) == (50, 50, 0)
    assert shown.end.finished_this_run == 50
