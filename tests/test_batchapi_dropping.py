"""A file an earlier run recorded but did not submit, whose requests the input no longer asks
(batchapi/dropping.py): dropped, never submitted, its upload deleted at the server; the rows
of it still asked go in new files. A file whose batch a killed run may have made stands."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from aiohttp import web
from click.testing import CliRunner

from batchpizza.cli import cli
from batchpizza.mock.replies import mock_answer
from batchpizza.mock.server import ThreadedMockServer
from tests.batchapi_raw import KEY as RAW_KEY
from tests.batchapi_raw import RawServer, batch_run
from tests.batchapi_shared import Job, args, rows, run
from tests.conftest import Spawn, read_jsonl, write_jsonl
from tests.test_batchapi import batch_rows, kill_at

pytestmark = pytest.mark.slow  # runs of the command against the mock, a second or more each


def changed(n: int, first: int) -> list[dict[str, str]]:
    """rows(n), the first `first` of them asking another prompt than before."""
    return [
        {"id": r["id"], "prompt": f"{r['prompt']}, again" if i < first else r["prompt"]}
        for i, r in enumerate(rows(n))
    ]


def answered(job: Job) -> dict[str, str | None]:
    return {r["id"]: r["answer"] for r in read_jsonl(job.out)}


def submitted_prompts(server: ThreadedMockServer) -> list[str]:
    """The prompt of every line the server was given, in every file it made a batch of."""
    said = []
    for batch in server.batches.batches.values():
        for line in batch["_lines"]:
            said.append(line["body"]["messages"][-1]["content"])
    return said


def uploaded_not_made(server: ThreadedMockServer, tmp_path: Path) -> tuple[Job, str]:
    """A --via batch run of 40 rows whose file was uploaded and its batch refused (exit 2): the
    job and the uploaded file's id."""
    job = Job(server, write_jsonl(tmp_path / "in.jsonl", rows(40)), tmp_path / "out.jsonl")
    server.batches.create_refused = 1
    assert job.run("--via", "batch").returncode == 2
    (uploaded,) = server.batches.files
    return job, uploaded


def test_a_file_never_uploaded_whose_prompts_changed_is_dropped_not_submitted(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    # Was: the recorded file went as it was, 20 lines of prompts no row asks any more paid for.
    job = Job(server, write_jsonl(tmp_path / "in.jsonl", rows(40)), tmp_path / "out.jsonl")
    server.batches.upload_fail = 1
    assert job.run("--via", "batch", "--max-retries", "0").returncode == 1  # recorded, waiting
    write_jsonl(job.inp, changed(40, 20))

    done = job.run("--via", "batch", "--wait")

    assert done.returncode == 0, done.stderr
    assert "20 of its 40 requests are no longer asked as they were" in done.stderr
    assert sorted(submitted_prompts(server)) == sorted(r["prompt"] for r in changed(40, 20))
    assert answered(job) == {r["id"]: mock_answer(r["prompt"]) for r in changed(40, 20)}
    assert batch_rows(job.checkpoint, "SELECT state, done FROM batch_files ORDER BY seq") == [
        ("dropped", 1),
        ("completed", 1),
    ]
    assert batch_rows(job.checkpoint, "SELECT count(*) FROM batch_lines WHERE line IS NOT NULL"
                      ) == [(0,)]  # fmt: skip
    shown = CliRunner().invoke(cli, ["status", str(job.out)])
    assert (
        "batches    0 out (0 requests), 1 collected, 1 dropped (the input changed" in shown.output
    )


def test_an_uploaded_file_whose_rows_were_removed_is_dropped_and_deleted_at_the_server(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    job, uploaded = uploaded_not_made(server, tmp_path)
    write_jsonl(job.inp, rows(30))  # the last 10 rows removed

    done = job.run("--via", "batch", "--wait")

    assert done.returncode == 0, done.stderr
    assert uploaded not in server.batches.files  # deleted: no batch is ever made of it
    assert uploaded not in {b["input_file_id"] for b in server.batches.batches.values()}
    assert sorted(submitted_prompts(server)) == sorted(r["prompt"] for r in rows(30))
    assert answered(job) == {r["id"]: mock_answer(r["prompt"]) for r in rows(30)}


def test_a_file_whose_rows_are_all_still_asked_is_submitted_as_it_was(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    job, uploaded = uploaded_not_made(server, tmp_path)
    write_jsonl(job.inp, [{"id": "x", "prompt": "one more"}, *rows(40)])  # moved down a row

    done = job.run("--via", "batch", "--wait")

    assert done.returncode == 0, done.stderr
    assert next(iter(server.batches.batches.values()))["input_file_id"] == uploaded
    assert sorted(server.batches.submitted.values()) == [1] * 41
    assert answered(job)["q39"] == mock_answer("question 39")


def test_a_file_killed_during_its_create_keeps_the_batch_made_though_its_prompts_changed(
    server: ThreadedMockServer, spawn: Spawn, tmp_path: Path
) -> None:
    # The batch the server made is billed whatever the rerun does: it is found and collected,
    # not dropped (its answers kept), and only the changed rows are sent in a new file.
    job = Job(server, write_jsonl(tmp_path / "in.jsonl", rows(40)), tmp_path / "out.jsonl")
    server.batches.create_delay = 0.5
    kill_at(spawn, job.argv("--via", "batch"), lambda: len(server.batches.batches) >= 1)
    server.batches.create_delay = 0.0
    assert batch_rows(job.checkpoint, "SELECT state FROM batch_files") == [("creating",)]
    write_jsonl(job.inp, changed(40, 10))

    done = job.run("--via", "batch", "--wait")

    assert done.returncode == 0, done.stderr
    assert server.batches.made == 2
    assert sorted(server.batches.submitted.values()) == [1] * 50  # 40 once, 10 changed
    assert answered(job) == {r["id"]: mock_answer(r["prompt"]) for r in changed(40, 10)}


def test_a_file_a_run_stopped_creating_whose_batch_was_never_made_is_dropped(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    job, uploaded = uploaded_not_made(server, tmp_path)
    with sqlite3.connect(job.checkpoint) as conn:  # as a kill during the create leaves it
        conn.execute("UPDATE batch_files SET state = 'creating'")
    conn.close()
    write_jsonl(job.inp, changed(40, 40))

    done = job.run("--via", "batch", "--wait")

    assert done.returncode == 0, done.stderr
    assert uploaded not in server.batches.files
    assert sorted(submitted_prompts(server)) == sorted(r["prompt"] for r in changed(40, 40))


def test_lines_a_batch_left_unrun_are_not_resubmitted_once_their_prompts_changed(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    # An expired batch's 20 lines not run were resubmitted as they were, though 10 of them
    # asked prompts no row asked any more (the changed rows went in a file of their own).
    job = Job(server, write_jsonl(tmp_path / "in.jsonl", rows(40)), tmp_path / "out.jsonl")
    server.batches.seconds = 3600.0
    assert job.run("--via", "batch").returncode == 4  # its batch out
    (batch,) = server.batches.batches.values()
    batch["_expire"], batch["_started"] = True, batch["_started"] - 3600.0  # half of it run
    server.batches.seconds = 0.2
    write_jsonl(job.inp, changed(40, 30))  # 10 of the 20 lines not run ask other prompts now

    done = job.run("--via", "batch", "--wait")

    assert done.returncode == 0, done.stderr
    assert "10 requests a batch did not answer are no longer asked" in done.stderr
    expected = [r["prompt"] for r in rows(40)] + [r["prompt"] for r in changed(40, 30)[:30]]
    assert sorted(submitted_prompts(server)) == sorted(expected + rows_not_run(20, 30))
    assert answered(job) == {r["id"]: mock_answer(r["prompt"]) for r in changed(40, 30)}


def rows_not_run(first: int, changed_below: int) -> list[str]:
    """The prompts of the expired batch's lines not run (its second half, from `first`) that
    the input still asks as they were (from `changed_below` on)."""
    return [r["prompt"] for r in rows(40)[max(first, changed_below) :]]


async def _bad_gateway_once(request: web.Request, n: int) -> web.StreamResponse | None:
    """The first create answered 502: it may have made the batch (the file stays `creating`)."""
    return web.json_response({"error": {"message": "bad gateway"}}, status=502) if n == 0 else None


async def _no_listing(request: web.Request, n: int) -> web.StreamResponse | None:
    return web.json_response({"detail": "Method Not Allowed"}, status=405)


def test_a_file_that_may_have_made_a_batch_on_a_server_listing_none_stops_until_none_is_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whether its batch was made cannot be known. While a row still asks one of its requests,
    # the run stops (sending it again could pay twice); once none does (sent online, as the
    # stop advises, or the input changed) it is dropped. Was: it stopped every run for good, its
    # changed prompts never answered, so never closing it.
    monkeypatch.setenv("OPENAI_API_KEY", RAW_KEY)
    monkeypatch.setenv("BATCHPIZZA_BATCH_LIMITS", "40,,0.05,0.2")
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows(10)), tmp_path / "out.jsonl"
    with RawServer() as raw:
        raw.hooks["create"] = _bad_gateway_once
        raw.hooks["batches"] = _no_listing
        assert batch_run(inp, out, raw.base_url).returncode == 2  # `creating`, not to be found
        write_jsonl(inp, changed(10, 5))  # 5 of its requests still asked

        still = batch_run(inp, out, raw.base_url)
        assert still.returncode == 2 and "lists no batches to tell" in still.stderr
        online = run(*args(inp, out, raw.base_url, "--rate", "0"))  # as the stop advises
        assert online.returncode == 0, online.stderr

        done = batch_run(inp, out, raw.base_url)

    assert done.returncode == 0, done.stderr
    assert "10 of its 10 requests are no longer asked" in done.stderr, done.stderr
    assert raw.calls["create"] == 1  # nothing submitted: every row was answered online
    assert batch_rows(Path(f"{out}.checkpoint"), "SELECT state, done FROM batch_files") == [
        ("dropped", 1)
    ]


def test_rows_of_a_dropped_resubmission_file_keep_their_try_count_in_the_new_file(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    # 4 of 40 lines fail once; their resubmission file is recorded but never uploaded; the
    # input then changes one of them, so that file is dropped. The 3 rows still asked went in a
    # new file as their first try again (--max-retries more submissions than the limit, and an
    # `attempts` of 1 for a row submitted twice); they are their second try.
    job = Job(server, write_jsonl(tmp_path / "in.jsonl", rows(40)), tmp_path / "out.jsonl")
    server.batches.seconds, server.batches.fail_every = 3600.0, 10
    assert job.run("--via", "batch").returncode == 4  # its batch out
    server.batches.seconds = 0.0  # it has ended
    server.batches.upload_fail = server.batches.uploads + 2  # the resubmission's two tries
    assert job.run("--via", "batch", "--max-retries", "1").returncode == 1
    assert batch_rows(job.checkpoint, "SELECT state, lines FROM batch_files ORDER BY seq") == [
        ("completed", 40),
        ("intended", 4),
    ]
    inp = rows(40)
    inp[9]["prompt"] = "question 9, again"  # one of the 4 failed rows
    write_jsonl(job.inp, inp)

    done = job.run("--via", "batch", "--max-retries", "1", "--wait")

    assert done.returncode == 0, done.stderr
    assert "1 of its 4 requests is no longer asked as it was" in done.stderr
    tries = batch_rows(job.checkpoint, "SELECT l.id, l.tries FROM batch_lines l WHERE l.seq = 3")
    assert sorted(tries) == [("q19", 2), ("q29", 2), ("q39", 2), ("q9", 1)]
    attempts = {r["id"]: r["attempts"] for r in read_jsonl(job.out)}
    assert [attempts[i] for i in ("q9", "q19", "q29", "q39", "q0")] == [1, 2, 2, 2, 1]
    assert answered(job) == {r["id"]: mock_answer(r["prompt"]) for r in inp}
