"""Durability: kills, signals, locks, torn and corrupt checkpoints, and what a rerun sends.

The crash and signal tests run `python -m batchpizza run` as a real subprocess against the mock
API served from this process, and kill or signal it; every subprocess is killed and reaped in the
`spawn` fixture's teardown whatever happens. Waiting on a subprocess is bounded polling.
"""

from __future__ import annotations

import collections
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import FAST, Spawn, read_jsonl, write_jsonl

import batchpizza
from batchpizza.checkpoint import Checkpoint, RunLock, is_locked
from batchpizza.checkpoint.reading import read_only
from batchpizza.cli import cli
from batchpizza.config import RunConfig
from batchpizza.errors import BatchpizzaError, Interrupted
from batchpizza.job.stages import Job
from batchpizza.mock.faults import MockConfig
from batchpizza.mock.replies import mock_answer
from batchpizza.mock.server import ThreadedMockServer
from batchpizza.sources.jsonl import JsonlSource
from batchpizza.sources.jsonl import JsonlSource as Source

RESULT_COLUMNS = ("answer", "finish_reason", "misuse", "error", "attempts", "latency_ms", "model")


# -- helpers -----------------------------------------------------------------------------------


def run_args(inp: Path | str, out: Path, base_url: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "batchpizza",
        "run",
        str(inp),
        "-o",
        str(out),
        "--base-url",
        base_url,
        "--rate",
        "0",
        "--no-progress",
        *extra,
    ]


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Bounded polling, for state owned by a subprocess."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def committed(ck: Path) -> dict[str, str | None]:
    """id -> finish_reason of every row in the checkpoint; {} while there is none yet."""
    if not ck.exists():
        return {}
    try:
        conn = read_only(ck)  # results staged by the run included
    except (sqlite3.Error, BatchpizzaError):
        return {}
    try:
        return dict(conn.execute("SELECT id, finish_reason FROM results"))
    except sqlite3.Error:
        return {}  # not created yet
    finally:
        conn.close()


def saved_answers(ck: Path) -> dict[str, str]:
    """id -> answer of every answered row, through Checkpoint.open as the next run would."""
    store = Checkpoint.open(ck, create=False)
    store.close()
    conn = sqlite3.connect(f"file:{ck}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT id, answer FROM results WHERE finish_reason = 'stop'")
        return dict(rows.fetchall())
    finally:
        conn.close()


def prompt_rows(n: int, label: str) -> list[dict[str, Any]]:
    return [{"id": f"{label}{i:04d}", "prompt": f"{label} question {i}", "n": i} for i in range(n)]


def check_output(out: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The output holds exactly `rows`, in order, each answered with the mock's answer."""
    written = read_jsonl(out)
    assert [r["id"] for r in written] == [r["id"] for r in rows]
    for row, line in zip(rows, written, strict=True):
        assert set(RESULT_COLUMNS) <= set(line)
        assert line["finish_reason"] == "stop", line
        assert line["answer"] == mock_answer(row["prompt"])
        assert line["misuse"] is False
        assert line["error"] is None
        assert line["n"] == row["n"]
    return written


def status_json(out: Path) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["status", str(out), "--json"])
    assert result.exit_code == 0, result.output
    info: dict[str, Any] = json.loads(result.stdout)
    return info


def extra_answers(server: ThreadedMockServer) -> int:
    """How many answers the server gave to a question it had answered before."""
    return sum(max(0, count - 1) for count in server.stats.answers.values())


# -- 1. kill -9 at random moments ----------------------------------------------------------------


def kill_moment(
    mode: str, rng: random.Random, ck: Path, server: ThreadedMockServer
) -> Callable[[], bool]:
    """When to kill a run just started: after 1-60 more committed rows ("committed") or
    requests ("requests"), or after 0.05-0.8 s ("delay", often still starting up)."""
    target = rng.randint(1, 60)
    delay = rng.uniform(0.05, 0.8)
    rows, requests, started = len(committed(ck)), server.stats.requests, time.monotonic()

    def reached() -> bool:
        if mode == "committed":
            return len(committed(ck)) - rows >= target
        if mode == "requests":
            return server.stats.requests - requests >= target
        return time.monotonic() - started >= delay

    return reached


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_nothing_and_resends_at_most_concurrency_per_kill(
    tmp_path: Path, mock_api: ThreadedMockServer, spawn: Spawn
) -> None:
    rows = prompt_rows(400, "crash")
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    ck = Path(f"{out}.checkpoint")
    concurrency = 16
    args = run_args(inp, out, mock_api.base_url, "--concurrency", str(concurrency), "-q")
    mock_api.config = MockConfig(latency_ms=30, jitter_ms=10, seed=7)
    rng = random.Random(20240601)

    modes = ["delay", "committed", "requests", "committed"]
    rng.shuffle(modes)
    kills = 0
    for mode in modes:
        before = committed(ck)
        proc = spawn(args)
        wait_until(kill_moment(mode, rng, ck, mock_api), 10)
        assert proc.popen.poll() is None, f"the run ended before its kill: {proc.stderr}"
        proc.signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
        kills += 1

        after = committed(ck)
        assert set(before) <= set(after), "a committed row was lost"
        if ck.exists():  # a kill during start-up may come before the checkpoint exists
            info = status_json(out)
            assert info["answered"] == len(after)
        assert not out.exists()

    final = spawn(args)
    assert final.wait(30) == 0, final.stderr
    assert "Traceback" not in final.stderr
    check_output(out, rows)
    assert set(mock_api.stats.answers) == {r["prompt"] for r in rows}
    assert extra_answers(mock_api) <= concurrency * kills

    requests = mock_api.stats.requests
    written = out.read_bytes()
    again = spawn(args)
    assert again.wait(30) == 0, again.stderr
    assert mock_api.stats.requests == requests
    assert out.read_bytes() == written


# -- 2. incremental reruns -------------------------------------------------------------------------


@pytest.mark.slow
def test_rerun_sends_only_added_and_edited_rows_and_drops_removed_ones(
    tmp_path: Path, mock_api: ThreadedMockServer
) -> None:
    rows = prompt_rows(500, "grow")
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    options = {"base_url": mock_api.base_url, "concurrency": 16, **FAST}
    first = batchpizza.run(inp, out, **options)
    assert (first["exit_code"], first["requests"]) == (0, 500)

    removed = {f"grow{i:04d}" for i in range(3, 500, 50)}  # 10 rows
    edited = {f"grow{i:04d}" for i in range(7, 450, 50)}  # 9 rows
    assert len(removed) == 10 and len(edited) == 9 and not removed & edited
    kept = []
    for row in rows:
        if row["id"] in removed:
            continue
        if row["id"] in edited:
            row = {**row, "prompt": row["prompt"] + " (edited)"}
        kept.append(row)
    added = [{**r, "n": 1000 + r["n"]} for r in prompt_rows(100, "new")]
    current = kept[:250] + added[:50] + kept[250:] + added[50:]
    write_jsonl(inp, current)
    requests_before = mock_api.stats.requests

    second = batchpizza.run(inp, out, **options)

    assert second["exit_code"] == 0
    assert second["requests"] == 109
    assert mock_api.stats.requests - requests_before == 109
    resent = {p for p, count in mock_api.stats.answers.items() if count > 0} - {
        r["prompt"] for r in rows
    }
    assert resent == {
        r["prompt"] for r in current if r["id"] in edited or r["id"].startswith("new")
    }
    check_output(out, current)
    assert (second["rows"], second["answered"]) == (590, 590)
    info = status_json(out)
    assert (info["rows"], info["answered"], info["pending"]) == (590, 590, 0)
    # Rows that left the input left the output, but their paid answers stay in the checkpoint.
    assert set(committed(Path(f"{out}.checkpoint"))) == {r["id"] for r in current} | {
        r["id"] for r in rows
    }


def test_rerun_does_not_resend_rows_whose_id_and_formatted_prompt_are_unchanged(
    tmp_path: Path, mock_api: ThreadedMockServer
) -> None:
    rows = prompt_rows(30, "same")
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    options = {"base_url": mock_api.base_url, **FAST}
    batchpizza.run(inp, out, **options)
    requests = mock_api.stats.requests

    # Reordered, a carried field changed, and one prompt given as one chat message (which
    # formats to the same prompt): none of these is a new prompt.
    changed = [{**r, "n": r["n"] + 100} for r in reversed(rows)]
    single = changed[0]
    changed[0] = {
        "id": single["id"],
        "messages": [{"role": "user", "content": single["prompt"]}],
        "n": single["n"],
    }
    write_jsonl(inp, changed)
    summary = batchpizza.run(inp, out, **options)

    assert summary["requests"] == 0
    assert mock_api.stats.requests == requests
    written = read_jsonl(out)
    assert [r["id"] for r in written] == [r["id"] for r in changed]
    assert [r["n"] for r in written] == [r["n"] for r in changed]
    prompt_of = {r["id"]: r["prompt"] for r in rows}
    assert all(r["answer"] == mock_answer(prompt_of[r["id"]]) for r in written)


def test_rerun_rebuilds_a_deleted_output_from_the_checkpoint_alone(
    tmp_path: Path, mock_api: ThreadedMockServer
) -> None:
    rows = prompt_rows(40, "rebuild")
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    options = {"base_url": mock_api.base_url, **FAST}
    batchpizza.run(inp, out, **options)
    written = out.read_bytes()
    requests = mock_api.stats.requests
    out.unlink()

    summary = batchpizza.run(inp, out, **options)

    assert summary["requests"] == 0
    assert mock_api.stats.requests == requests
    assert out.read_bytes() == written


# -- 3. what a rerun sends again -----------------------------------------------------------------


def test_rerun_resends_failed_rows_refused_ones_only_when_asked_and_never_answered_ones(
    tmp_path: Path, mock_api: ThreadedMockServer
) -> None:
    good = prompt_rows(20, "fine")
    rows = [
        *good[:10],
        {"id": "flaky", "prompt": "[[fail-first:2]] flaky", "n": -1},
        {"id": "refused", "prompt": "[[misuse]] refused", "n": -2},
        {"id": "gone", "prompt": "[[status:404]] gone", "n": -3},
        *good[10:],
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    options = {"base_url": mock_api.base_url, "max_retries": 1, "misuse_retries": 0, **FAST}

    first = batchpizza.run(inp, out, **options)
    one = {r["id"]: r for r in read_jsonl(out)}
    assert first["exit_code"] == 3
    assert (first["answered"], first["failed"], first["misuse"]) == (20, 2, 1)
    assert one["flaky"]["finish_reason"] == "error"
    assert one["refused"]["finish_reason"] == "misuse"
    assert one["gone"]["finish_reason"] == "error"
    assert first["requests"] == sum(r["attempts"] for r in one.values())

    requests = mock_api.stats.requests
    second = batchpizza.run(inp, out, **options)
    two = {r["id"]: r for r in read_jsonl(out)}

    # Answered rows were not sent again and keep the result of the run that produced them.
    assert all(mock_api.stats.answers[r["prompt"]] == 1 for r in good)
    assert all(two[r["id"]] == one[r["id"]] for r in good)
    # The failed ones were: the flaky row now succeeds (its third request). The refused one
    # was not: the service judged that prompt (--retry-refused asks again).
    assert two["flaky"]["finish_reason"] == "stop"
    assert two["flaky"]["answer"] == mock_answer("[[fail-first:2]] flaky")
    assert two["refused"] == one["refused"]
    assert two["gone"]["finish_reason"] == "error"
    resent = sum(two[i]["attempts"] for i in ("flaky", "gone"))
    assert second["requests"] == resent == mock_api.stats.requests - requests
    assert resent >= 2
    assert (second["answered"], second["failed"], second["misuse"]) == (21, 1, 1)
    assert second["exit_code"] == 3

    requests = mock_api.stats.requests
    asked = batchpizza.run(inp, out, retry_refused=True, **options)
    refused_again = {r["id"]: r for r in read_jsonl(out)}["refused"]
    assert refused_again["finish_reason"] == "misuse"
    resent = refused_again["attempts"] + 1  # and "gone", failed before, once more
    assert asked["requests"] == resent == mock_api.stats.requests - requests

    requests = mock_api.stats.requests
    third = batchpizza.run(inp, out, restart=True, **options)

    assert all(mock_api.stats.answers[r["prompt"]] == 2 for r in good)
    assert mock_api.stats.answers["[[fail-first:2]] flaky"] == 2
    assert third["requests"] == mock_api.stats.requests - requests
    assert third["requests"] >= len(rows)
    assert (third["answered"], third["failed"], third["misuse"]) == (21, 1, 1)


def test_restart_flag_resends_every_row(tmp_path: Path, mock_api: ThreadedMockServer) -> None:
    rows = prompt_rows(12, "again")
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    args = ["run", str(inp), "-o", str(out), "--base-url", mock_api.base_url, "--rate", "0", "-q"]
    runner = CliRunner()

    assert runner.invoke(cli, args).exit_code == 0
    assert runner.invoke(cli, args).exit_code == 0
    assert mock_api.stats.requests == 12
    result = runner.invoke(cli, [*args, "--restart"])

    assert result.exit_code == 0, result.output
    assert mock_api.stats.requests == 24
    assert all(mock_api.stats.answers[r["prompt"]] == 2 for r in rows)
    check_output(out, rows)


# -- 4. signals ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("signame", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_signal_saves_what_finished_and_the_rerun_completes(
    signame: str, code: int, tmp_path: Path, mock_api: ThreadedMockServer, spawn: Spawn
) -> None:
    rows = prompt_rows(200, "sig")
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    ck = Path(f"{out}.checkpoint")
    summary_path = tmp_path / "summary.json"
    mock_api.config = MockConfig(latency_ms=300)
    args = run_args(
        inp, out, mock_api.base_url, "--concurrency", "4", "--summary-json", str(summary_path)
    )
    proc = spawn(args)
    assert wait_until(lambda: mock_api.stats.requests >= 6, 20), proc.stderr

    proc.signal(getattr(signal, signame))
    assert proc.wait(10) == code  # within 10 s, or TimeoutExpired

    stderr = proc.stderr
    assert "Traceback" not in stderr
    assert f"batchpizza: {signame}: finishing requests in flight, then saving...\n" in stderr
    assert "rerun" in stderr.lower() and "resume" in stderr.lower(), stderr
    assert not out.exists()
    summary = json.loads(summary_path.read_text())
    assert summary["interrupted"] is True
    assert summary["exit_code"] == code
    # Requests in flight were given their grace and saved: nothing the server answered is lost.
    saved = saved_answers(ck)
    prompt_of = {r["id"]: r["prompt"] for r in rows}
    assert {prompt_of[i] for i in saved} == set(mock_api.stats.answers)
    assert all(answer == mock_answer(prompt_of[i]) for i, answer in saved.items())
    assert summary["answered"] == len(saved) >= 2
    info = status_json(out)
    assert (info["answered"], info["pending"]) == (len(saved), 200 - len(saved))

    mock_api.config = MockConfig()
    resumed = batchpizza.run(inp, out, base_url=mock_api.base_url, concurrency=4, **FAST)

    assert resumed["exit_code"] == 0
    assert resumed["requests"] == 200 - len(saved)
    check_output(out, rows)
    assert sorted(mock_api.stats.answers.values()) == [1] * 200


@pytest.mark.slow
def test_a_second_sigint_exits_at_once_and_leaves_a_usable_checkpoint(
    tmp_path: Path, mock_api: ThreadedMockServer, spawn: Spawn
) -> None:
    quick = prompt_rows(12, "quick")
    hanging = [{"id": f"hang{i}", "prompt": f"[[hang]] {i}", "n": i} for i in range(4)]
    inp = write_jsonl(tmp_path / "in.jsonl", quick + hanging)
    out = tmp_path / "out.jsonl"
    ck = Path(f"{out}.checkpoint")
    args = run_args(inp, out, mock_api.base_url, "--concurrency", "4", "--timeout", "60")
    proc = spawn(args)
    assert wait_until(
        lambda: len(mock_api.stats.answers) == 12 and mock_api.stats.in_flight >= 4, 20
    ), proc.stderr

    shown = len(proc.lines)
    proc.signal(signal.SIGINT)
    # Standard signals do not queue: wait until the first one was handled (it says so).
    assert wait_until(lambda: len(proc.lines) > shown, 5), "the first SIGINT went unnoticed"
    second = time.monotonic()
    proc.signal(signal.SIGINT)
    assert proc.wait(10) == 130
    took = time.monotonic() - second

    assert took < 2.5, f"the second SIGINT took {took:.1f}s, as long as the 5 s grace"
    assert "Traceback" not in proc.stderr
    said = "\nbatchpizza: SIGINT: finishing requests in flight, then saving...\n"
    assert said in proc.stderr and "batchpizza: interrupted again; exiting now" in proc.stderr
    assert not out.exists()
    saved = saved_answers(ck)
    assert set(saved) <= {r["id"] for r in quick}
    assert all(answer == mock_answer(f"quick question {int(i[5:])}") for i, answer in saved.items())
    info = status_json(out)
    assert info["answered"] == len(saved)
    assert info["answered"] + info["pending"] == 16
    with RunLock(out, ck):  # the lock died with the process
        pass


@pytest.mark.slow
def test_sigterm_while_reading_standard_input_exits_143_promptly(
    tmp_path: Path, mock_api: ThreadedMockServer, spawn: Spawn
) -> None:
    out = tmp_path / "out.jsonl"
    proc = spawn(run_args("-", out, mock_api.base_url), stdin=subprocess.PIPE)
    assert proc.popen.stdin is not None
    proc.popen.stdin.write(b'{"id": "a", "prompt": "from a pipe"}\n')
    proc.popen.stdin.flush()
    # The lock is taken before the input is read: once it is held, the run is reading stdin,
    # whose writer (this test) has not closed it, as `slow-producer | batchpizza run - ...`.
    ck = Path(f"{out}.checkpoint")
    assert wait_until(lambda: is_locked(ck), 20)

    proc.signal(signal.SIGTERM)
    try:
        code = proc.wait(4)
    except subprocess.TimeoutExpired:
        pytest.fail("SIGTERM while reading standard input did not stop the run within 4 s")
    assert code == 143
    assert "Traceback" not in proc.stderr
    assert mock_api.stats.requests == 0
    assert not out.exists()


async def test_an_interrupt_during_validation_changes_nothing(
    tmp_path: Path, mock_api: ThreadedMockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(20, "early"))
    out = tmp_path / "out.jsonl"
    config = RunConfig.from_options(str(inp), str(out), base_url=mock_api.base_url, **FAST)
    job = Job(config)
    scan = Source.scan

    def scan_then_signal(self: Source, limit: int | None = None) -> Iterator[Any]:
        yield from scan(self, limit)
        # The signal lands while the reader is finishing: still validating, nothing sent yet.
        job.interrupt(signal.SIGTERM)

    monkeypatch.setattr(Source, "scan", scan_then_signal)

    with pytest.raises(Interrupted) as caught:
        await job.run()

    assert caught.value.exit_code == 143
    assert mock_api.stats.requests == 0
    assert not out.exists()
    assert not config.checkpoint_path.exists(), "an interrupted validation created a checkpoint"


# -- 6. torn and corrupt checkpoints ----------------------------------------------------------

WRITER = """
import hashlib
import sys
from pathlib import Path
from batchpizza.checkpoint import Checkpoint
from batchpizza.records import Result

store = Checkpoint.open(Path(sys.argv[1]))
group, size = int(sys.argv[2]), int(sys.argv[3])
while True:
    ids = [f"g{group:05d}-{j:04d}" for j in range(size)]
    # Each row its own request (answers are kept per request digest).
    store.write([
        Result(i, hashlib.blake2b(i.encode(), digest_size=16).digest(), "stop", "x" * 2000,
               None, 1, 1.0, "gpt-4o-mini")
        for i in ids
    ])
    group += 1
"""


@pytest.mark.slow
def test_a_kill_during_group_commits_leaves_whole_groups_only(tmp_path: Path, spawn: Spawn) -> None:
    ck = tmp_path / "out.jsonl.checkpoint"
    size = 300
    rng = random.Random(77)
    groups = 0
    for _ in range(3):
        proc = spawn([sys.executable, "-c", WRITER, str(ck), str(groups), str(size)])
        floor = groups * size
        assert wait_until(lambda floor=floor: len(committed(ck)) > floor, 20), proc.stderr
        # Not a wait for anything: the kill lands at a random moment among the commits.
        time.sleep(rng.uniform(0.0, 0.25))
        proc.signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL

        store = Checkpoint.open(ck)  # as the next run would
        try:
            status = store.status()
        finally:
            store.close()
        conn = sqlite3.connect(ck)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            ids = [row[0] for row in conn.execute("SELECT id FROM results")]
        finally:
            conn.close()
        sizes = collections.Counter(i.split("-")[0] for i in ids)
        assert set(sizes.values()) == {size}, "a group was committed in part"
        assert sorted(sizes) == [f"g{g:05d}" for g in range(len(sizes))], "a gap among groups"
        assert len(sizes) > groups
        assert status["answered"] == len(ids)
        groups = len(sizes)


def test_a_garbage_checkpoint_is_a_clear_error_and_is_left_alone(
    tmp_path: Path, mock_api: ThreadedMockServer
) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", prompt_rows(5, "junk"))
    out = tmp_path / "out.jsonl"
    ck = Path(f"{out}.checkpoint")
    garbage = random.Random(11).randbytes(16384)
    ck.write_bytes(garbage)

    result = CliRunner().invoke(
        cli, ["run", str(inp), "-o", str(out), "--base-url", mock_api.base_url, "--rate", "0"]
    )

    assert result.exit_code in (1, 2), result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "checkpoint" in result.stderr
    assert mock_api.stats.requests == 0
    assert ck.read_bytes() == garbage
    assert not out.exists()


def test_a_checkpoint_with_a_corrupt_page_is_a_clear_error(
    tmp_path: Path, mock_api: ThreadedMockServer
) -> None:
    rows = [{"id": f"row-{i:05d}-{'x' * 100}", "prompt": f"page question {i}"} for i in range(600)]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    ck = Path(f"{out}.checkpoint")
    batchpizza.run(inp, out, base_url=mock_api.base_url, concurrency=16, **FAST)
    conn = sqlite3.connect(ck)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(ck.read_bytes())
    pages = len(data) // 4096
    assert pages > 10
    middle = pages // 2 * 4096
    data[middle : middle + 4096] = random.Random(13).randbytes(4096)
    ck.write_bytes(bytes(data))
    requests = mock_api.stats.requests

    result = CliRunner().invoke(
        cli, ["run", str(inp), "-o", str(out), "--base-url", mock_api.base_url, "--rate", "0"]
    )

    # A damaged file is the user's to deal with, not a bug: a message, not a traceback. The
    # checkpoint now also holds the scan and the attempts: a damaged page that a resume never
    # reads (an attempt kept for the report) goes unnoticed, and the run must then be right.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    if result.exit_code == 0:
        written = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["id"] for r in written] == [r["id"] for r in rows]
        assert all(r["answer"] == mock_answer(r["prompt"]) for r in written)
    else:
        assert result.exit_code in (1, 2), result.output
        assert "checkpoint" in result.stderr
    assert mock_api.stats.requests == requests


@pytest.mark.slow
def test_the_scan_lives_in_the_checkpoint_and_a_rerun_of_unchanged_input_reuses_it(
    tmp_path: Path, mock_api: ThreadedMockServer
) -> None:
    # At rest there is the output and the checkpoint, nothing else: the validated scan that
    # lets a resume skip revalidation is a table of the checkpoint, written in its transactions
    # (so a kill -9 cannot tear it, as it could tear the separate cache file of old).
    rows = [{"id": f"row-{i:05d}", "prompt": f"cache question {i}"} for i in range(1500)]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    options = {"base_url": mock_api.base_url, "concurrency": 16, **FAST}
    batchpizza.run(inp, out, **options)
    written = out.read_bytes()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["in.jsonl", "out.jsonl", "out.jsonl.checkpoint"]
    requests = mock_api.stats.requests

    scans: list[object] = []
    real_scan = JsonlSource.scan

    def counting_scan(self: JsonlSource, limit: int | None = None) -> Iterator[Any]:
        scans.append(self)
        return real_scan(self, limit)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(JsonlSource, "scan", counting_scan)
        summary = batchpizza.run(inp, out, **options)

    assert scans == []
    assert summary["exit_code"] == 0
    assert mock_api.stats.requests == requests
    assert out.read_bytes() == written
