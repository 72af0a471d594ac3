"""The kept to-do set (checkpoint/todo.py): a rerun plans over the slots still without an answer,
not over every row; and whatever the order of kills, new scans, restarts and other writers, the
plan it makes is the plan a join of every row would make."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner
from conftest import read_jsonl, write_jsonl

from batchpizza.checkpoint import Checkpoint, ScanIndex
from batchpizza.cli import cli
from batchpizza.config import RunConfig
from batchpizza.identities import identity_of
from batchpizza.mock.replies import mock_answer
from batchpizza.mock.server import ThreadedMockServer
from batchpizza.records import Plan, Result
from batchpizza.rows import Fields, prompt_digest
from batchpizza.sources import open_source

PIZZAGPT = identity_of("pizzagpt", None, {})  # what a default run asks with

T = TypeVar("T")


def prompts(path: Path, n: int, label: str = "q") -> Path:
    return write_jsonl(
        path, [{"id": f"{label}{i}", "prompt": f"{label} question {i}"} for i in range(n)]
    )


def cli_run(server: ThreadedMockServer, inp: Path, out: Path, *extra: str, code: int = 0) -> Any:
    args = ["run", str(inp), "-o", str(out), "--rate", "0", "--no-progress"]
    result = CliRunner().invoke(cli, [*args, "--base-url", server.base_url, *extra])
    assert result.exit_code == code, result.output
    return result


def answer(row: int, label: str = "q") -> Result:
    prompt = f"{label} question {row}"
    return Result(
        f"{label}{row}", prompt_digest(prompt), "stop", mock_answer(prompt), None, 1, 5.0, "m"
    )


def scanned(inp: Path, ck: Path) -> Checkpoint:
    """A checkpoint holding the scan of `inp`, as a run's start leaves it."""
    fields = Fields.from_config(RunConfig(input=str(inp), output="out.jsonl"), extra_reserved=())
    source = open_source(str(inp), fields, None, None)
    scan = ScanIndex(None)
    scan.scan(source.scan(None), source.unit, source.names)
    store = Checkpoint.open(ck)
    store.adopt_scan(scan, source.input_key(), {"total": scan.total, "bad": 0})
    scan.close()
    return store


def kept(ck: Path) -> list[int]:
    with sqlite3.connect(ck) as conn:
        slots = [slot for (slot,) in conn.execute("SELECT slot FROM todo ORDER BY slot")]
    conn.close()
    return slots


def lose(ck: Path, rows: range, *, keep_slots: bool = True) -> None:
    """Take these rows' answers out of the checkpoint; with `keep_slots`, as a kill leaves them
    (their slots still in the set); without, as another writer would (the set not told)."""
    with sqlite3.connect(ck) as conn:
        conn.executemany("DELETE FROM results WHERE id = ?", [(f"q{i}",) for i in rows])
        if keep_slots:
            conn.executemany("INSERT OR IGNORE INTO todo VALUES (?)", [(i,) for i in rows])
    conn.close()


def plan_steps(ck: Path) -> tuple[Plan, int]:
    """The plan of a rerun with the default identity, and the SQLite steps it took (in
    thousands of virtual machine instructions: work, not time)."""
    store = Checkpoint.open(ck)
    try:
        store.use_identity(PIZZAGPT)
        return counting_steps(store, store.plan)
    finally:
        store.close()


def counting_steps(store: Checkpoint, work: Callable[[], T]) -> tuple[T, int]:
    """What `work` returns, and the SQLite steps it took on `store`, in thousands."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    store._conn.set_progress_handler(count, 1000)
    try:
        return work(), steps
    finally:
        store._conn.set_progress_handler(None, 0)


@pytest.mark.slow
def test_a_rerun_plans_over_the_rows_left_not_over_every_row(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    small, large = tmp_path / "small", tmp_path / "large"
    work = {}
    for where, n in ((small, 200), (large, 4000)):
        where.mkdir()
        inp, out = prompts(where / "in.jsonl", n), where / "out.jsonl"
        cli_run(mock_api, inp, out)
        assert kept(Path(f"{out}.checkpoint")) == []  # every answered slot left the set
        lose(Path(f"{out}.checkpoint"), range(n - 10, n))  # a kill before the last ten
        work[n] = plan_steps(Path(f"{out}.checkpoint"))

    assert work[200][0] == work[4000][0] == Plan(new=10)
    # Twenty times the rows, the same rows left: about the same work (a join of every row
    # would take twenty times as many steps).
    assert work[4000][1] < 2 * work[200][1] + 20


def test_a_kill_after_answers_were_committed_but_before_their_slots_left_the_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inp, ck = prompts(tmp_path / "in.jsonl", 30), tmp_path / "out.jsonl.checkpoint"
    monkeypatch.setattr(Checkpoint, "FLUSH_SLOTS", 8)
    # A first run's start, by hand: scan, plan (which writes the set), then answers committed in
    # three groups. Answered slots leave the set with a later commit once 8 wait: the first
    # group's 10 with the second commit, the second's with the third; the third's 5 would leave
    # with a later one, which the kill prevents.
    store = scanned(inp, ck)
    store.use_identity(PIZZAGPT)
    assert store.plan() == Plan(new=30)
    assert kept(ck) == list(range(30))
    store.begin_run({})
    for group in (range(0, 10), range(10, 20), range(20, 25)):
        store.write([answer(i) for i in group])
        for i in group:
            store.answered(i, "stop")
    assert kept(ck) == list(range(20, 30))
    store._conn.close()  # kill -9: no close, nothing more flushed

    assert kept(ck) == list(range(20, 30))  # more than the rows left: never fewer
    plan, _ = plan_steps(ck)
    assert plan == Plan(new=5)
    assert kept(ck) == list(range(25, 30))  # the plan dropped the slots answered meanwhile


def test_answered_slots_leave_the_set_in_runs_and_all_at_the_close(tmp_path: Path) -> None:
    inp, ck = prompts(tmp_path / "in.jsonl", 2000), tmp_path / "out.jsonl.checkpoint"
    store = scanned(inp, ck)
    store.use_identity(PIZZAGPT)
    assert store.plan() == Plan(new=2000)
    store.begin_run({})
    for start in range(0, 1500, 30):  # group commits of 30 answers, as a run makes them
        group = range(start, start + 30)
        store.write([answer(i) for i in group])
        for i in group:
            store.answered(i, "stop")
    # Deleted once, by the first commit to find FLUSH_SLOTS waiting (not a few with every
    # commit); the rest wait in memory.
    flushed = -(-Checkpoint.FLUSH_SLOTS // 30) * 30
    assert kept(ck) == list(range(flushed, 2000))
    store.close()
    assert kept(ck) == list(range(1500, 2000))


def test_restart_and_changed_input_plan_every_row_again(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    inp, out = prompts(tmp_path / "in.jsonl", 20), tmp_path / "out.jsonl"
    cli_run(mock_api, inp, out)
    assert mock_api.stats.requests == 20

    cli_run(mock_api, inp, out, "--restart")  # every answer forgotten: the set with them
    assert mock_api.stats.requests == 40

    rows = [*read_jsonl(inp), {"id": "q20", "prompt": "q question 20"}]
    rows[3]["prompt"] = "an edited question"
    write_jsonl(inp, rows)  # a new scan: the set was of the old one
    result = cli_run(mock_api, inp, out)
    assert mock_api.stats.requests == 42
    assert "2 to send: 1 prompt changed, 1 new row" in result.output
    assert len(read_jsonl(out)) == 21


def test_a_run_of_another_writer_makes_the_next_plan_join_every_row(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    inp, out = prompts(tmp_path / "in.jsonl", 20), tmp_path / "out.jsonl"
    cli_run(mock_api, inp, out)
    ck = Path(f"{out}.checkpoint")
    # A batchpizza from before the set ran on the file: it lost these answers (its --restart,
    # say) and recorded a run, without a word to the set.
    lose(ck, range(5, 8), keep_slots=False)
    with sqlite3.connect(ck) as conn:
        conn.execute("INSERT INTO runs (started, rows_sent, options) VALUES (1.0, 0, '{}')")
    conn.close()

    cli_run(mock_api, inp, out)

    assert mock_api.stats.requests == 23
    assert [r["finish_reason"] for r in read_jsonl(out)] == ["stop"] * 20
    assert kept(ck) == []


def test_a_plan_with_a_limit_uses_the_set_and_leaves_the_rows_after_it_in_it(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    inp, out = prompts(tmp_path / "in.jsonl", 20), tmp_path / "out.jsonl"
    cli_run(mock_api, inp, out)
    ck = Path(f"{out}.checkpoint")
    lose(ck, range(10, 20))

    cli_run(mock_api, inp, out, "--limit", "15")

    assert mock_api.stats.requests == 25
    assert kept(ck) == list(range(15, 20))
    cli_run(mock_api, inp, out)
    assert mock_api.stats.requests == 30
    assert kept(ck) == []


def test_invalid_counts_the_bad_rows_as_the_tally_does(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    rows: list[Any] = [{"id": f"q{i}", "prompt": f"q question {i}"} for i in range(8)]
    rows[2] = {"id": "q2", "prompt": ""}
    rows[5] = {"id": "q5", "prompt": 7}
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    cli_run(mock_api, inp, out, "--skip-bad-rows", code=3)
    store = Checkpoint.open(Path(f"{out}.checkpoint"))
    try:
        for limit in (None, 0, 2, 3, 5, 6, 100):
            assert store.invalid(limit) == store.tally(limit).invalid, limit
        assert store.rows(None) == 8 and store.rows(3) == 3 and store.rows(100) == 8
    finally:
        store.close()


def status_steps(ck: Path) -> tuple[dict[str, object], int]:
    """What `status` counts and plans (read-only, as it opens the file), and the SQLite steps
    that took, in thousands (the count of answers kept, which reads every result, left out)."""
    store = Checkpoint.open(ck, create=False, readonly=True)
    try:
        return counting_steps(store, lambda: {"tally": store.tally(), "plan": store.plan()})
    finally:
        store.close()


@pytest.mark.slow
def test_status_counts_and_plans_over_the_rows_left_not_over_every_row(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    work = {}
    for n in (200, 4000):
        (tmp_path / str(n)).mkdir()
        inp, out = prompts(tmp_path / str(n) / "in.jsonl", n), tmp_path / str(n) / "out.jsonl"
        cli_run(mock_api, inp, out)
        lose(Path(f"{out}.checkpoint"), range(n - 10, n))  # a kill before the last ten
        work[n] = status_steps(Path(f"{out}.checkpoint"))

    assert work[200][0]["plan"] == work[4000][0]["plan"] == Plan(new=10)
    assert work[4000][0]["tally"].answered == 3990 and work[4000][0]["tally"].pending == 10
    # Twenty times the rows, the same rows left: about the same work.
    assert work[4000][1] < 2 * work[200][1] + 20


def mixed(tmp_path: Path, server: ThreadedMockServer, samples: int) -> Path:
    """A checkpoint holding every kind of row: answered, failed, refused, pending, invalid, and
    rows that share one request, each asked `samples` times; returns the checkpoint."""
    rows: list[Any] = [{"id": f"q{i}", "prompt": f"q question {i}"} for i in range(40)]
    rows[3]["prompt"] = rows[4]["prompt"] = "the same question"
    rows[5]["prompt"] = rows[6]["prompt"] = "[[status:404]] the same failing question"
    rows[7]["prompt"] = "[[status:400]] failing"
    rows[8] = {"id": "q8", "prompt": ""}  # invalid
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    cli_run(server, inp, out, "--skip-bad-rows", "--repeat", str(samples), code=3)
    ck = Path(f"{out}.checkpoint")
    with sqlite3.connect(ck) as conn:
        # Pending, as a kill leaves them (their slots still in the set), and refused as misuse
        # (a slot without an answer stays in it).
        conn.executemany("DELETE FROM results WHERE id = ?", [(f"q{i}",) for i in range(30, 35)])
        conn.execute("UPDATE results SET finish_reason = 'misuse' WHERE id IN ('q10', 'q11')")
        slots = [(pos * samples + s,) for pos in (10, 11, *range(30, 35)) for s in range(samples)]
        conn.executemany("INSERT OR IGNORE INTO todo VALUES (?)", slots)
    conn.close()
    return ck


@pytest.mark.parametrize("samples", [1, 2])
def test_status_over_the_kept_set_says_what_a_join_of_every_row_says(
    mock_api: ThreadedMockServer, tmp_path: Path, samples: int
) -> None:
    ck = mixed(tmp_path, mock_api, samples)

    def said(joined: bool) -> tuple[Any, ...]:
        store = Checkpoint.open(ck, create=False, readonly=True)
        try:
            assert store._todo_kept()
            store._own_scan = not joined  # the kept set left aside: every row joined
            tallies = [store.tally(limit) for limit in (None, 0, 7, 31, 100)]
            return store.status(), tallies
        finally:
            store.close()

    fast, joined = said(joined=False), said(joined=True)
    assert fast == joined
    status, _ = fast
    counts = ("answered", "failed", "misuse", "invalid", "pending")
    assert [status[k] for k in counts] == [n * samples for n in (29, 3, 2, 1, 5)]


def test_a_dry_run_over_a_changed_input_plans_its_own_scan_not_the_kept_set(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    inp, out = prompts(tmp_path / "in.jsonl", 20), tmp_path / "out.jsonl"
    cli_run(mock_api, inp, out)
    rows = [*read_jsonl(inp), {"id": "q20", "prompt": "q question 20"}]
    rows[3]["prompt"] = "an edited question"
    write_jsonl(inp, rows)  # the file's set (empty: all answered) is of the old scan

    result = cli_run(mock_api, inp, out, "--dry-run")

    assert "to send     2: 1 prompt changed, 1 new row" in result.output
    assert mock_api.stats.requests == 20
