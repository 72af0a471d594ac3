"""A --via batch run collects the finished batches another model (or other parameters) left in the
checkpoint (batchapi/others.py): kept under the model that asked them, never in this run's
output; a run of that model then finds them answered. Batches made at another server are left."""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchpizza.batchapi.others import origin_of
from batchpizza.mock.server import ThreadedMockServer
from batchpizza.pricing import Price, cost
from batchpizza.providers.openai import OpenAIAPI
from tests.batchapi_shared import ModelAOut, run
from tests.conftest import Spawn, read_jsonl
from tests.test_batchapi import batch_rows, expected, kill_at


def models(out: Path) -> dict[str, tuple[str | None, str]]:
    """Each output row's (model, finish_reason)."""
    return {r["id"]: (r["model"], r["finish_reason"]) for r in read_jsonl(out)}


def kept(checkpoint: Path, model: str) -> dict[str, tuple[str, str | None]]:
    """The results the checkpoint keeps under `model`'s identity: row id -> (finish, answer)."""
    with sqlite3.connect(f"file:{checkpoint}?mode=ro", uri=True) as conn:
        found = conn.execute(
            "SELECT r.id, r.finish_reason, r.answer FROM results r JOIN identities i ON "
            "i.ident = r.ident WHERE json_extract(i.identity, '$.model') = ? UNION ALL "
            "SELECT s.id, s.finish_reason, s.answer FROM staged s JOIN identities i ON "
            "i.ident = s.ident WHERE json_extract(i.identity, '$.model') = ?",
            (model, model),
        ).fetchall()
    return {row_id: (finish, answer) for row_id, finish, answer in found}


def refused_after_answered_online(
    model_a_out: Callable[..., ModelAOut],
) -> tuple[ModelAOut, dict[str, tuple[str, str | None]]]:
    """Model a's batch out, its 10 rows then answered online by a run of a (paid twice, said),
    and the batch to be refused as a whole at the next poll: the job, and a's answers as the
    checkpoint keeps them."""
    job = model_a_out(10)
    (theirs,) = job.theirs
    batch = job.server.batches.batches[theirs]
    batch["_started"] += 7200.0  # still running while the rows are answered online
    online = job.run("--model", "a")
    assert online.returncode == 0, online.stderr
    batch["_fail"] = True
    answered: dict[str, tuple[str, str | None]] = {k: ("stop", v) for k, v in expected(10).items()}
    assert kept(job.checkpoint, "a") == answered
    return job, answered


def usage_of(server: ThreadedMockServer, ids: frozenset[str]) -> tuple[int, int]:
    """The usage the mock reported on the result lines of these batches."""
    prompt = completion = 0
    for batch_id in ids:
        file_id = server.batches.batches[batch_id].get("output_file_id")
        for raw in server.batches.contents.get(file_id or "", b"").splitlines():
            usage = json.loads(raw)["response"]["body"]["usage"]
            prompt += usage["prompt_tokens"]
            completion += usage["completion_tokens"]
    return prompt, completion


def spend(checkpoint: Path) -> list[tuple[Any, ...]]:
    return batch_rows(
        checkpoint,
        "SELECT run, batch, price_in, price_out, prompt_tokens, completion_tokens FROM spend "
        "ORDER BY rowid",
    )


@pytest.mark.slow
def test_a_run_of_model_b_collects_model_a_batches_under_a_and_a_then_sends_nothing(
    server: ThreadedMockServer, model_a_out: Callable[..., ModelAOut]
) -> None:
    job = model_a_out(50, "--price", "1,2")
    out, summary, checkpoint, theirs = job.out, job.summary, job.checkpoint, job.theirs
    assert len(theirs) == 2  # 40 + 10 lines

    b = job.run("--via", "batch", "--wait", "--model", "b",
                "--price", "3,4", "--summary-json", str(summary))  # fmt: skip

    assert b.returncode == 0, b.stderr
    # b's output holds b's answers only: none of a's, though a's were collected first.
    assert models(out) == {f"q{i}": ("b", "stop") for i in range(50)}
    assert "collected 50 results (50 answers) from 2 finished Batch API batches" in b.stderr
    said = json.loads(summary.read_text())
    assert said["batches"]["others"] == 50 and said["batches"]["submitted"] == 50
    assert "50 results of other models collected from batches" in b.stderr.splitlines()[-1]
    # a's answers are in the checkpoint, under a.
    assert kept(checkpoint, "a") == {k: ("stop", v) for k, v in expected(50).items()}
    assert batch_rows(checkpoint, "SELECT count(*) FROM batch_files WHERE done = 0") == [(0,)]
    # Their tokens were spent at a's run's price (its Batch API half), on a's run (1).
    prompt, completion = usage_of(server, theirs)
    assert prompt > 0
    foreign = [row[2:] for row in spend(checkpoint) if row[:2] == (1, 1) and row[4]]
    assert {row[:2] for row in foreign} == {(0.5, 1.0)}
    assert (sum(row[2] for row in foreign), sum(row[3] for row in foreign)) == (prompt, completion)
    # Each row went once as a's request and once as b's (their custom_ids are the same).
    assert sorted(server.batches.submitted.values()) == [2] * 50
    batches, chats = len(server.batches.batches), server.stats.requests

    a = job.run("--via", "batch", "--model", "a", "--price", "1,2",
                "--summary-json", str(summary))  # fmt: skip

    assert a.returncode == 0, a.stderr
    assert models(out) == {f"q{i}": ("a", "stop") for i in range(50)}
    assert {r["id"]: r["answer"] for r in read_jsonl(out)} == expected(50)
    assert (len(server.batches.batches), server.stats.requests) == (batches, chats)
    said = json.loads(summary.read_text())
    assert said["requests"] == 0 and said["batches"]["submitted"] == 0
    assert said["batches"]["others"] == 0  # b's batches were its own run's, collected by it


@pytest.mark.slow
def test_a_kill_during_the_collection_of_another_model_loses_nothing_and_counts_nothing_twice(
    server: ThreadedMockServer, spawn: Spawn, model_a_out: Callable[..., ModelAOut]
) -> None:
    job = model_a_out(100, "--price", "1,2")
    out, checkpoint, theirs = job.out, job.checkpoint, job.theirs
    assert len(theirs) == 3  # 40 + 40 + 20 lines
    argv = job.argv("--via", "batch", "--wait", "--model", "b")

    # Killed while downloading the second of a's batches: the first is kept, the second not.
    server.batches.download_delay = 0.5
    kill_at(spawn, argv, lambda: server.batches.downloads >= 2)
    server.batches.download_delay = 0.0
    assert len(kept(checkpoint, "a")) == 40
    assert not kept(checkpoint, "b")
    assert server.batches.downloads == 2

    done = run(*argv)

    assert done.returncode == 0, done.stderr
    assert "collected 60 results" in done.stderr
    assert models(out) == {f"q{i}": ("b", "stop") for i in range(100)}
    assert kept(checkpoint, "a") == {k: ("stop", v) for k, v in expected(100).items()}
    # a's tokens counted once, by the server's own count.
    prompt, completion = usage_of(server, theirs)
    foreign = [row for row in spend(checkpoint) if row[0] == 1 and row[1] == 1]
    assert sum(r[4] for r in foreign) == prompt and sum(r[5] for r in foreign) == completion
    assert sorted(server.batches.submitted.values()) == [2] * 100  # a's once, b's once
    # Fetched again: the output of a's batch whose download was cut, not of the one kept;
    # then a's third and b's three.
    assert server.batches.downloads == 2 + 1 + 1 + 3
    batches = len(server.batches.batches)

    a = job.run("--via", "batch", "--model", "a")
    assert a.returncode == 0, a.stderr
    assert models(out) == {f"q{i}": ("a", "stop") for i in range(100)}
    assert len(server.batches.batches) == batches


@pytest.mark.slow
def test_batches_made_at_another_base_url_are_left_there_and_status_says_where(
    server: ThreadedMockServer, model_a_out: Callable[..., ModelAOut]
) -> None:
    job = model_a_out(10)
    out, checkpoint = job.out, job.checkpoint
    polls = server.batches.polls

    with ThreadedMockServer() as elsewhere:
        elsewhere.batches.seconds = 0.2
        b = job.run("--via", "batch", "--wait", "--model", "b", on=elsewhere.base_url)
        assert b.returncode == 0, b.stderr
        assert sorted(elsewhere.batches.submitted.values()) == [1] * 10  # b's own only

    assert server.batches.polls == polls  # a's batches were not asked for anywhere
    origin = f"{server.base_url}/v1"
    assert (
        f"1 Batch API batch of other models or parameters was made at {origin}, not at this "
        "run's base URL: left there; a run with that --base-url collects it" in b.stderr
    )
    assert "collected" not in b.stderr
    assert not kept(checkpoint, "a")
    assert batch_rows(checkpoint, "SELECT count(*) FROM batch_files WHERE done = 0") == [(1,)]
    shown = run("status", str(out))
    assert f"made at {origin}, not at the last run's base URL" in shown.stdout
    assert json.loads(run("status", str(out), "--json").stdout)["other_batches"]["servers"] == {
        origin: 1
    }

    # A file recorded by a batchpizza that did not say where it went: left alone too.
    with sqlite3.connect(checkpoint) as conn:
        conn.execute("UPDATE batch_files SET origin = NULL WHERE done = 0")
    b = job.run("--via", "batch", "--model", "b")
    assert b.returncode == 0, b.stderr
    assert "was made by a batchpizza that did not record where: left to a --via batch" in b.stderr
    assert server.batches.polls == polls and not kept(checkpoint, "a")

    # Model a's own run collects it, as before.
    a = job.run("--via", "batch", "--model", "a")
    assert a.returncode == 0, a.stderr
    assert models(out) == {f"q{i}": ("a", "stop") for i in range(10)}


@pytest.mark.slow
def test_batches_of_another_model_still_running_stay_out_and_a_later_run_collects_them(
    server: ThreadedMockServer, model_a_out: Callable[..., ModelAOut]
) -> None:
    job = model_a_out(10)
    out, checkpoint, theirs = job.out, job.checkpoint, job.theirs
    for batch_id in theirs:
        server.batches.batches[batch_id]["_started"] += 7200.0  # running for an hour yet
    argv = job.argv("--via", "batch", "--wait", "--model", "b")

    b = run(*argv)

    assert b.returncode == 0, b.stderr
    assert "collected" not in b.stderr and not kept(checkpoint, "a")
    assert {b["status"] for b in (server.batches.batches[i] for i in theirs)} == {"validating"}
    shown = run("status", str(out)).stdout
    assert (
        "1 batch of other models or parameters still out (10 requests, billed when they end): "
        "a run at their server (--provider openai) collects them once they end" in shown
    ), shown

    for batch_id in theirs:
        server.batches.batches[batch_id]["_started"] -= 7200.0  # now they end
    # Nothing of b's is left to send: the run collects a's all the same.
    b = run(*argv)
    assert b.returncode == 0, b.stderr
    assert "collected 10 results (10 answers) from 1 finished Batch API batch" in b.stderr
    assert kept(checkpoint, "a") == {k: ("stop", v) for k, v in expected(10).items()}
    assert models(out) == {f"q{i}": ("b", "stop") for i in range(10)}


@pytest.mark.slow
def test_expired_and_refused_batches_of_another_model_are_left_to_its_runs_to_send_again(
    server: ThreadedMockServer, model_a_out: Callable[..., ModelAOut]
) -> None:
    job = model_a_out(50)
    out, checkpoint = job.out, job.checkpoint
    first, second = sorted(job.theirs)  # 40 lines, then 10
    server.batches.batches[first]["_expire"] = True  # ends with half its lines run
    server.batches.batches[second]["_fail"] = True  # the file refused as a whole

    b = job.run("--via", "batch", "--wait", "--model", "b")

    # Not b's batches: b's run goes on, and says what became of them.
    assert b.returncode == 0, b.stderr
    assert models(out) == {f"q{i}": ("b", "stop") for i in range(50)}
    assert "collected 30 results (20 answers) from 2 finished Batch API batches" in b.stderr
    assert f"batch {second} of model a: line 1: invalid_request: the file is wrong" in b.stderr
    theirs = kept(checkpoint, "a")
    assert sum(finish == "stop" for finish, _ in theirs.values()) == 20
    assert sum(finish == "error" for finish, _ in theirs.values()) == 10
    assert len(theirs) == 30  # the 20 lines the expired batch did not run wait to be resubmitted
    batches = len(server.batches.batches)

    a = job.run("--via", "batch", "--wait", "--model", "a")

    assert a.returncode == 0, a.stderr
    assert models(out) == {f"q{i}": ("a", "stop") for i in range(50)}
    assert {r["id"]: r["answer"] for r in read_jsonl(out)} == expected(50)
    # a's run sent the 20 expired (resubmitted) and the 10 failed (rows to retry) again, not
    # the 20 answered.
    new = list(server.batches.batches.values())[batches:]
    assert sorted(len(batch["_lines"]) for batch in new) == [10, 20]


@pytest.mark.slow
def test_what_another_models_batches_cost_counts_against_max_cost_once_collected(
    server: ThreadedMockServer, model_a_out: Callable[..., ModelAOut]
) -> None:
    priced = ("--price", "1,2", "--param", "max_tokens=20")
    job = model_a_out(50, *priced)
    summary, theirs = job.summary, job.theirs
    for batch_id in theirs:  # ended, their output made: what they cost is known
        urllib.request.urlopen(f"{server.base_url}/v1/batches/{batch_id}", timeout=10).read()
    spent = cost(Price(1.0, 2.0), *usage_of(server, theirs), batch=True)

    # A cap a's batches all but fill: b's first row would pass it.
    b = job.run("--via", "batch", "--model", "b", *priced,
                "--max-cost", f"{spent * 1.01:.9f}", "--summary-json", str(summary))  # fmt: skip

    assert b.returncode == 4, b.stderr
    said = json.loads(summary.read_text())
    assert said["stopped"] == "budget" and said["batches"]["others"] == 50
    assert said["batches"]["submitted"] == 0
    assert sorted(server.batches.submitted.values()) == [1] * 50  # a's lines only
    assert said["cost"]["total"] == pytest.approx(spent)
    assert said["cost"]["run"] == 0  # a's batches are a's run's spend, not b's


@pytest.mark.slow
def test_another_models_batches_without_a_price_count_at_this_runs_against_max_cost(
    server: ThreadedMockServer, model_a_out: Callable[..., ModelAOut]
) -> None:
    # a's run knew no price (a model the table does not know, no --price: allowed without a
    # cap). b's cap held a's lines at b's price while they were out; collected, they counted as
    # free, and b spent their share again.
    job = model_a_out(50, "--param", "max_tokens=20")
    summary, theirs = job.summary, job.theirs
    for batch_id in theirs:  # ended, their output made: what they cost is known
        urllib.request.urlopen(f"{server.base_url}/v1/batches/{batch_id}", timeout=10).read()
    at_bs_price = cost(Price(1.0, 2.0), *usage_of(server, theirs), batch=True)

    b = job.run("--via", "batch", "--model", "b", "--price", "1,2",
                "--param", "max_tokens=20", "--max-cost", f"{at_bs_price * 1.01:.9f}",
                "--summary-json", str(summary))  # fmt: skip

    assert b.returncode == 4, b.stderr
    said = json.loads(summary.read_text())
    assert said["stopped"] == "budget" and said["batches"]["others"] == 50
    assert said["batches"]["submitted"] == 0
    assert sorted(server.batches.submitted.values()) == [1] * 50  # a's lines only


def test_the_server_a_batch_went_to_is_kept_without_credentials() -> None:
    # What the checkpoint records of where a file's batch went: no user, password or query
    # (a gateway's ?token=); the endpoint given whole names the same server as its root.
    secret = OpenAIAPI("https://user:pw@Gateway.example:443/v1/?token=sekrit#frag")
    assert origin_of(secret) == "https://gateway.example/v1"
    root, endpoint = "http://127.0.0.1:8080/v1", "http://127.0.0.1:8080/v1/chat/completions"
    assert origin_of(OpenAIAPI(root)) == origin_of(OpenAIAPI(endpoint)) == root
    assert origin_of(OpenAIAPI("http://127.0.0.1:8081/v1")) != root


@pytest.mark.slow
def test_its_own_batches_made_at_another_base_url_are_left_there_not_taken_for_lost(
    server: ThreadedMockServer, model_a_out: Callable[..., ModelAOut]
) -> None:
    # Model a's batches out at one server, then model a's run at another --base-url: polled
    # there, they answered 404 until taken for lost and their lines were submitted again
    # there, while the first server ran (and billed) them all the same, never collected.
    job = model_a_out(10)
    out, theirs = job.out, job.theirs
    polls = server.batches.polls

    with ThreadedMockServer() as elsewhere:
        elsewhere.batches.seconds = 0.2
        moved = job.run("--via", "batch", "--wait", "--model", "a", "--deadline", "30",
                        on=elsewhere.base_url)  # fmt: skip
        assert moved.returncode == 4, moved.stderr  # its batches are still out, at the first
        assert not elsewhere.batches.batches and elsewhere.batches.polls == 0
    assert server.batches.polls == polls
    origin = f"{server.base_url}/v1"
    assert f"1 Batch API batch of this model and parameters was made at {origin}" in moved.stderr
    assert "submitted again" not in moved.stderr
    shown = run("status", str(out))  # says where, as the run did
    assert f"made at {origin}, not the last run's server" in shown.stdout, shown.stdout

    a = job.run("--via", "batch", "--model", "a")
    assert a.returncode == 0, a.stderr
    assert models(out) == {f"q{i}": ("a", "stop") for i in range(10)}
    assert sorted(server.batches.submitted.values()) == [1] * 10  # each line once, anywhere
    assert set(server.batches.batches) == theirs


@pytest.mark.slow
def test_a_refused_batch_of_another_model_never_replaces_answers_that_model_already_has(
    server: ThreadedMockServer, model_a_out: Callable[..., ModelAOut]
) -> None:
    # Model a's batch out, then model a's rows answered online (its run sends the rows in
    # batches still out: paid twice, said); the batch is then refused as a whole. Collected by
    # model b's run, its error rows replaced a's answers: a's output showed errors, and a's
    # next run sent (and paid for) every row a third time.
    job, answered = refused_after_answered_online(model_a_out)
    out, checkpoint = job.out, job.checkpoint

    b = job.run("--via", "batch", "--wait", "--model", "b")

    assert b.returncode == 0, b.stderr
    assert kept(checkpoint, "a") == answered
    chats = server.stats.requests
    a = job.run("--model", "a")
    assert a.returncode == 0, a.stderr
    assert server.stats.requests == chats  # nothing sent again
    assert models(out) == {f"q{i}": ("a", "stop") for i in range(10)}


def test_another_models_batch_is_never_kept_into_a_checkpoint_replaced_meanwhile(
    tmp_path: Path,
) -> None:
    # Every write checks the file is still the run's (a checkpoint deleted or replaced under a
    # run would take every later commit with it); the collection of another model's batch too.
    import os

    from batchpizza.checkpoint import Checkpoint
    from batchpizza.errors import OutputError

    path = tmp_path / "out.jsonl.checkpoint"
    store = Checkpoint.open(path)
    try:
        other = tmp_path / "other.checkpoint"
        other.write_bytes(path.read_bytes())
        os.replace(other, path)
        with pytest.raises(OutputError, match="deleted or replaced"):
            store.keep_foreign(1, [], [], [], "completed", run=1, price=None)
    finally:
        store.close()


@pytest.mark.slow
def test_a_waiting_run_warns_once_of_another_models_batch_the_server_answers_404_for(
    server: ThreadedMockServer, model_a_out: Callable[..., ModelAOut]
) -> None:
    # Said at info only: a cron run at the default verbosity never heard that model a's batch
    # was unknown to the server, polled by every run.
    job = model_a_out(10)
    (theirs,) = job.theirs
    server.batches.batches.pop(theirs)
    server.batches.seconds = 1.0  # b's own batch keeps the run polling a while

    b = job.run("--via", "batch", "--wait", "--model", "b")

    assert b.returncode == 0, b.stderr
    assert server.batches.polls >= 4  # a's looked for at each of them
    said = f"polling batch {theirs}: HTTP 404 Not Found: No such Batch object; left to a run"
    assert b.stderr.count(said) == 1, b.stderr
    assert batch_rows(job.checkpoint, "SELECT count(*) FROM batch_files WHERE done = 0") == [(1,)]
