"""The checkpoint store, the run lock and `batchpizza status`.

Checkpoint.write / status / forget / meta are exercised against real SQLite files in tmp_path;
RunLock against the kernel's flock (a second lock in this process, and one in another process);
`batchpizza status` through click's CliRunner.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import FAST, write_jsonl
from old_checkpoints import SCHEMA_1

import batchpizza
from batchpizza.checkpoint import Checkpoint, RunLock, is_locked
from batchpizza.checkpoint.reading import read_only
from batchpizza.cli import cli
from batchpizza.errors import CheckpointMissing, CheckpointVersionError, LockedError, OutputError
from batchpizza.mock.replies import mock_answer
from batchpizza.mock.server import ThreadedMockServer
from batchpizza.records import Result
from batchpizza.rows import prompt_digest

DIGEST = b"\x01" * 16


def result(row_id: str, reason: str = "stop", *, digest: bytes | None = None) -> Result:
    """A result of row `row_id`; by default for a request of its own (results are kept by
    request fingerprint, so rows asking one request share one)."""
    answered = reason == "stop"
    return Result(
        id=row_id,
        digest=digest if digest is not None else prompt_digest(row_id),
        finish_reason=reason,
        answer=f"answer to {row_id}" if answered else None,
        error=None if answered else f"{reason} for {row_id}",
        attempts=2,
        latency_ms=12.5,
        model="gpt-4o-mini",
    )


def stored(path: Path) -> dict[str, tuple[object, ...]]:
    """Every row of the results table, as a reader of the file sees it (a run's results staged
    and not yet folded into it included)."""
    conn = read_only(path)
    try:
        rows = conn.execute(
            "SELECT id, digest, finish_reason, answer, error, attempts, latency_ms, model "
            "FROM results"
        ).fetchall()
    finally:
        conn.close()
    return {row[0]: row for row in rows}


@pytest.fixture
def ck_path(tmp_path: Path) -> Path:
    return tmp_path / "out.jsonl.checkpoint"


@pytest.fixture
def store(ck_path: Path) -> Iterator[Checkpoint]:
    checkpoint = Checkpoint.open(ck_path)
    yield checkpoint
    checkpoint.close()


# -- Checkpoint ------------------------------------------------------------------------------


def test_written_results_survive_closing_and_reopening(ck_path: Path) -> None:
    store = Checkpoint.open(ck_path)
    store.write([result("a"), result("b", "error"), result("c", "misuse")])
    store.close()

    rows = stored(ck_path)
    assert set(rows) == {"a", "b", "c"}
    assert rows["a"] == (
        "a", prompt_digest("a"), "stop", "answer to a", None, 2, 12.5, "gpt-4o-mini"
    )  # fmt: skip
    assert rows["b"][2:5] == ("error", None, "error for b")
    reopened = Checkpoint.open(ck_path, create=False)
    try:
        status = reopened.status()
    finally:
        reopened.close()
    assert (status["answered"], status["failed"], status["misuse"]) == (1, 1, 1)


def test_a_schema_3_checkpoint_without_the_body_column_gets_it_when_opened(ck_path: Path) -> None:
    store = Checkpoint.open(ck_path)
    store.write([result("a")])
    store.close()
    conn = sqlite3.connect(ck_path)
    for table in ("results", "staged"):  # as a checkpoint from before the column
        conn.execute(f"ALTER TABLE {table} DROP COLUMN body")
    conn.close()

    reopened = Checkpoint.open(ck_path, create=False)
    try:
        reopened.write([result("b")._replace(body=b'{"id": "chatcmpl-b"}')])
        reopened._fold()  # a run's results are folded into `results` before they are read
        bodies = {r[0]: r[1] for r in reopened._conn.execute("SELECT id, body FROM results")}
    finally:
        reopened.close()
    assert bodies == {"a": None, "b": b'{"id": "chatcmpl-b"}'}


def test_an_answer_for_another_request_of_the_same_row_is_kept_beside_it(
    store: Checkpoint,
) -> None:
    store.write([result("a", "stop", digest=b"\x01" * 16)])
    store.write([result("a", "stop", digest=b"\x02" * 16)])  # the row's prompt changed

    conn = read_only(store.path)
    kept = sorted(conn.execute("SELECT digest FROM results WHERE id = 'a'").fetchall())
    conn.close()
    assert kept == [(b"\x01" * 16,), (b"\x02" * 16,)]  # paid answers are never deleted


def test_write_replaces_the_earlier_result_of_the_same_request(store: Checkpoint) -> None:
    store.write([result("a", "error")])
    store.write([result("a", "stop")])

    rows = stored(store.path)
    assert len(rows) == 1
    assert rows["a"][1:4] == (prompt_digest("a"), "stop", "answer to a")
    assert store.status()["failed"] == 0


def raw_rows(path: Path, table: str) -> list[tuple[object, ...]]:
    """The ids and finish reasons in one table of the file, read with plain sqlite3."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return conn.execute(f"SELECT id, finish_reason FROM {table} ORDER BY id").fetchall()


def test_a_run_killed_before_folding_its_staged_results_keeps_them_for_every_reader(
    ck_path: Path,
) -> None:
    store = Checkpoint.open(ck_path)
    store.write([result("a", "error"), result("b")])
    store.close()  # folded: both in results
    store = Checkpoint.open(ck_path)
    store.write([result("a")])  # the retry that answered a
    store.write([result("c", "misuse")])
    store._conn.close()  # killed: nothing folded, nothing synced

    assert raw_rows(ck_path, "staged") == [("a", "stop"), ("c", "misuse")]
    # A reader (status during a run, a dry run) sees the staged results, the later one of a
    # request replacing the earlier.
    assert {k: v[2] for k, v in stored(ck_path).items()} == {
        "a": "stop", "b": "stop", "c": "misuse"
    }  # fmt: skip
    reader = Checkpoint.open(ck_path, readonly=True)
    try:
        found = reader.status()
    finally:
        reader.close()
    assert (found["answers_kept"], raw_rows(ck_path, "staged")) == (
        2,
        [("a", "stop"), ("c", "misuse")],
    )

    Checkpoint.open(ck_path).close()  # the next run folds them when it opens the file

    assert raw_rows(ck_path, "staged") == []
    assert raw_rows(ck_path, "results") == [("a", "stop"), ("b", "stop"), ("c", "misuse")]


def test_results_are_staged_during_a_run_and_folded_before_they_are_read(
    store: Checkpoint,
) -> None:
    store.write([result("a"), result("b", "error")])

    assert raw_rows(store.path, "staged") == [("a", "stop"), ("b", "error")]
    assert raw_rows(store.path, "results") == []
    assert (store.tally().answered, store.status()["answers_kept"]) == (0, 1)  # no scan: 0 rows
    assert raw_rows(store.path, "staged") == []
    assert raw_rows(store.path, "results") == [("a", "stop"), ("b", "error")]


def test_a_group_is_committed_as_a_whole_or_not_at_all(store: Checkpoint) -> None:
    store.write([result("a")])
    # The second row of this group violates NOT NULL: the whole group must be rolled back.
    bad = Result("y", DIGEST, None, None, None, 1, None, None)  # type: ignore[arg-type]
    with pytest.raises(OutputError, match="checkpoint"):
        store.write([result("x"), bad])

    assert set(stored(store.path)) == {"a"}
    store.write([result("z")])  # and the store is still usable afterwards
    assert set(stored(store.path)) == {"a", "z"}


def test_status_counts_outcomes_and_pending_from_the_last_runs_input(store: Checkpoint) -> None:
    store.write([result("a"), result("b"), result("c", "error"), result("d", "misuse")])
    store.set_meta(input="prompts.jsonl", rows=10, invalid=2)

    status = store.status()

    assert status["answered"] == 2
    assert status["failed"] == 1
    assert status["misuse"] == 1
    assert status["invalid"] == 2
    assert status["input"] == "prompts.jsonl"
    assert status["rows"] == 10
    assert status["pending"] == 10 - 4 - 2


def test_status_of_a_fresh_checkpoint_is_all_zero(store: Checkpoint) -> None:
    status = store.status()

    assert (status["answered"], status["failed"], status["misuse"], status["invalid"]) == (
        0,
        0,
        0,
        0,
    )
    assert status["updated"] is None
    assert "rows" not in status  # no run has said how many rows its input had


def test_write_records_when_the_checkpoint_was_last_written(store: Checkpoint) -> None:
    before = time.time()
    store.write([result("a")])
    after = time.time()

    updated = store.status()["updated"]
    assert isinstance(updated, float)
    assert before - 1 <= updated <= after + 1
    assert float(store.meta()["updated"]) == updated


def test_forget_drops_every_result_and_keeps_the_store_usable(store: Checkpoint) -> None:
    store.write([result(f"r{i}") for i in range(50)])
    store.set_meta(input="in.jsonl", rows=50)

    store.forget()

    assert stored(store.path) == {}
    assert store.status()["answered"] == 0
    assert store.meta()["input"] == "in.jsonl"
    store.write([result("again")])
    assert set(stored(store.path)) == {"again"}


def test_meta_round_trips_values_as_text_and_none(store: Checkpoint) -> None:
    store.set_meta(input="in.jsonl", rows=3, invalid=0, note=None)
    store.set_meta(rows=4)

    meta = store.meta()

    assert meta["input"] == "in.jsonl"
    assert meta["rows"] == "4"
    assert meta["invalid"] == "0"
    assert meta["note"] is None
    assert meta["schema"] == "5"


def test_open_without_create_raises_checkpoint_missing_and_creates_nothing(
    ck_path: Path,
) -> None:
    with pytest.raises(CheckpointMissing) as caught:
        Checkpoint.open(ck_path, create=False)
    with pytest.raises(CheckpointMissing):
        Checkpoint.open(ck_path, create=False, readonly=True)

    assert caught.value.exit_code == 2
    assert str(ck_path) in caught.value.message
    assert list(ck_path.parent.iterdir()) == []


def test_a_readonly_checkpoint_refuses_writes_with_a_typed_error(ck_path: Path) -> None:
    writer = Checkpoint.open(ck_path)
    writer.write([result("a")])
    writer.close()

    reader = Checkpoint.open(ck_path, readonly=True)
    try:
        assert reader.status()["answered"] == 1
        with pytest.raises(OutputError):
            reader.write([result("b")])
    finally:
        reader.close()
    assert set(stored(ck_path)) == {"a"}


def test_a_file_that_is_not_a_database_raises_output_error(ck_path: Path) -> None:
    garbage = random.Random(3).randbytes(8192)
    ck_path.write_bytes(garbage)

    with pytest.raises(OutputError, match=re.escape(str(ck_path))):
        Checkpoint.open(ck_path)
    with pytest.raises(OutputError):
        Checkpoint.open(ck_path, readonly=True)
    assert ck_path.read_bytes() == garbage  # a user's file is never overwritten


# -- RunLock ---------------------------------------------------------------------------------


def lock_for(ck_path: Path) -> RunLock:
    """The lock of the output whose default checkpoint is `ck_path`."""
    return RunLock(ck_path.with_name(ck_path.name.removesuffix(".checkpoint")), ck_path)


def test_runs_on_one_output_exclude_each_other_whatever_checkpoint_they_use(
    tmp_path: Path,
) -> None:
    output = tmp_path / "out.jsonl"
    with RunLock(output, tmp_path / "elsewhere.db"), pytest.raises(LockedError):
        RunLock(output, tmp_path / "out.jsonl.mock-checkpoint").acquire()
    with RunLock(output, tmp_path / "shared.db"), pytest.raises(LockedError):
        RunLock(tmp_path / "other.jsonl", tmp_path / "shared.db").acquire()


def test_a_second_lock_on_the_same_checkpoint_raises_locked_error(ck_path: Path) -> None:
    first = lock_for(ck_path)
    first.acquire()
    try:
        with pytest.raises(LockedError) as caught:
            lock_for(ck_path).acquire()
    finally:
        first.release()
    assert caught.value.exit_code == 75  # EX_TEMPFAIL: cron can tell it from bad input
    assert "another batchpizza run" in caught.value.message
    assert "try again later" in caught.value.message


def test_the_lock_can_be_taken_again_after_release(ck_path: Path) -> None:
    first = lock_for(ck_path)
    first.acquire()
    first.release()

    with lock_for(ck_path), pytest.raises(LockedError):
        lock_for(ck_path).acquire()
    with lock_for(ck_path):
        assert is_locked(ck_path)
    assert not is_locked(ck_path)


def test_the_lock_is_released_when_the_block_raises(ck_path: Path) -> None:
    with pytest.raises(RuntimeError), lock_for(ck_path):
        raise RuntimeError("boom")

    with lock_for(ck_path):  # does not raise LockedError
        pass


def test_a_lock_leaves_no_file_beside_the_output_or_the_checkpoint(ck_path: Path) -> None:
    before = sorted(ck_path.parent.iterdir())
    with lock_for(ck_path):
        # The lock is held on the checkpoint file itself (created empty to be locked)...
        assert sorted(ck_path.parent.iterdir()) == sorted([*before, ck_path])
    # ... and a checkpoint the run left empty goes with the lock.
    assert sorted(ck_path.parent.iterdir()) == before


def test_a_lock_file_of_the_old_kind_left_beside_the_checkpoint_does_not_block(
    ck_path: Path,
) -> None:
    # What a run of an earlier version killed with SIGKILL left behind: a file naming a dead pid.
    ck_path.with_name(ck_path.name + ".lock").write_text("999999999\n")

    with lock_for(ck_path):
        assert is_locked(ck_path)


@pytest.mark.slow
def test_a_lock_held_here_blocks_another_process(ck_path: Path) -> None:
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from batchpizza.checkpoint import RunLock\n"
        "from batchpizza.errors import LockedError\n"
        "try:\n"
        "    ck = Path(sys.argv[1])\n"
        "    RunLock(ck.with_name(ck.name.removesuffix('.checkpoint')), ck).acquire()\n"
        "except LockedError:\n"
        "    sys.exit(42)\n"
    )
    with lock_for(ck_path):
        held = subprocess.run([sys.executable, "-c", script, str(ck_path)], timeout=30)
    free = subprocess.run([sys.executable, "-c", script, str(ck_path)], timeout=30)

    assert held.returncode == 42
    assert free.returncode == 0


# -- batchpizza status -------------------------------------------------------------------------


def make_checkpoint(path: Path) -> None:
    store = Checkpoint.open(path)
    try:
        store.write([result("a"), result("b"), result("c"), result("d", "error")])
        store.write([result("e", "misuse")])
        store.set_meta(input="prompts.jsonl", rows=9, invalid=1)
    finally:
        store.close()


def test_status_prints_what_the_checkpoint_holds(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    make_checkpoint(Path(f"{out}.checkpoint"))

    result_ = CliRunner().invoke(cli, ["status", str(out)])

    assert result_.exit_code == 0, result_.output
    text = result_.stdout
    assert f"{out}.checkpoint" in text
    assert "prompts.jsonl" in text
    assert "9 rows" in text
    for key, value in (("answered", 3), ("failed", 1), ("misuse", 1), ("invalid", 1)):
        assert re.search(rf"^\s*{key}\s+{value}\s*$", text, re.MULTILINE), text
    assert re.search(r"^\s*pending\s+3\s*$", text, re.MULTILINE), text
    assert re.search(r"^\s*written\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\s*$", text, re.MULTILINE)


def test_status_json_is_machine_readable(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    make_checkpoint(Path(f"{out}.checkpoint"))

    result_ = CliRunner().invoke(cli, ["status", str(out), "--json"])

    assert result_.exit_code == 0, result_.output
    info = json.loads(result_.stdout)
    assert info["answered"] == 3
    assert info["failed"] == 1
    assert info["misuse"] == 1
    assert info["invalid"] == 1
    assert info["rows"] == 9
    assert info["pending"] == 3
    assert info["input"] == "prompts.jsonl"
    assert info["checkpoint"] == f"{out}.checkpoint"
    assert isinstance(info["updated"], float)


def test_status_reads_the_checkpoint_named_by_the_option(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.db"
    make_checkpoint(path)

    result_ = CliRunner().invoke(cli, ["status", "--checkpoint", str(path), "--json"])

    assert result_.exit_code == 0, result_.output
    assert json.loads(result_.stdout)["answered"] == 3


def test_status_without_a_checkpoint_exits_2_and_creates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"

    for args in (["status", str(out)], ["status", str(out), "--json"]):
        result_ = CliRunner().invoke(cli, args)
        assert result_.exit_code == 2
        assert isinstance(result_.exception, SystemExit)
        assert "no checkpoint" in result_.stderr
        assert "Traceback" not in result_.output
    assert list(tmp_path.iterdir()) == []


def test_status_needs_an_output_or_a_checkpoint() -> None:
    result_ = CliRunner().invoke(cli, ["status"])

    assert result_.exit_code == 2
    assert "OUTPUT" in result_.output


def test_status_works_while_a_run_holds_the_lock(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    ck = Path(f"{out}.checkpoint")
    make_checkpoint(ck)

    with RunLock(out, ck):
        result_ = CliRunner().invoke(cli, ["status", str(out), "--json"])

    assert result_.exit_code == 0, result_.output
    assert json.loads(result_.stdout)["answered"] == 3


def test_status_agrees_with_the_summary_of_a_real_run(
    tmp_path: Path, mock_api: ThreadedMockServer
) -> None:
    rows = [{"id": f"r{i}", "prompt": f"status question {i}"} for i in range(20)]
    rows.append({"id": "bad", "prompt": "[[status:404]] no such page"})
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"

    summary = batchpizza.run(inp, out, base_url=mock_api.base_url, **FAST)
    result_ = CliRunner().invoke(cli, ["status", str(out), "--json"])

    assert result_.exit_code == 0, result_.output
    info = json.loads(result_.stdout)
    for key in ("rows", "answered", "failed", "misuse", "invalid", "pending"):
        assert info[key] == summary[key], key
    assert (info["rows"], info["answered"], info["failed"], info["pending"]) == (21, 20, 1, 0)
    assert info["input"] == str(inp)
    answers = {r[0]: r[3] for r in stored(Path(f"{out}.checkpoint")).values()}
    assert answers["r7"] == mock_answer("status question 7")


def test_status_on_a_garbage_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    Path(f"{out}.checkpoint").write_bytes(random.Random(5).randbytes(8192))

    result_ = CliRunner().invoke(cli, ["status", str(out)])

    assert result_.exit_code in (1, 2)
    assert isinstance(result_.exception, SystemExit)
    assert "checkpoint" in result_.stderr


def test_status_on_a_checkpoint_with_a_corrupt_page_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    ck = Path(f"{out}.checkpoint")
    store = Checkpoint.open(ck)
    store.write([result(f"row-{i:05d}-{'x' * 80}") for i in range(2000)])
    store.close()  # the last connection folds the write-ahead log into the file
    assert not Path(f"{ck}-wal").exists()
    with contextlib.closing(sqlite3.connect(ck)) as conn:
        conn.execute("VACUUM")  # no free page left (the staged results'): every page is read
    data = bytearray(ck.read_bytes())
    pages = len(data) // 4096
    assert pages > 20
    middle = pages // 2 * 4096
    data[middle : middle + 4096] = random.Random(9).randbytes(4096)
    ck.write_bytes(bytes(data))

    result_ = CliRunner().invoke(cli, ["status", str(out)])

    assert result_.exit_code in (1, 2)
    # A damaged file is the user's to deal with, not a bug: a message, not a traceback.
    assert isinstance(result_.exception, SystemExit), result_.exception
    assert "checkpoint" in result_.stderr


# -- schema versions ---------------------------------------------------------------------------


def with_meta(path: Path, **values: str | None) -> None:
    """A checkpoint with one answer, its meta then set (a value of None: the key removed)."""
    store = Checkpoint.open(path)
    store.write([result("q1")])
    store.close()
    conn = sqlite3.connect(path)
    with conn:
        for key, value in values.items():
            if value is None:
                conn.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
    conn.close()


def meta_of(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT key, value FROM meta"))
    finally:
        conn.close()


def test_a_checkpoint_from_a_newer_version_is_refused_naming_that_version(ck_path: Path) -> None:
    with_meta(ck_path, schema="99", version="7.1.0")
    before = meta_of(ck_path)

    for readonly in (False, True):
        with pytest.raises(CheckpointVersionError) as caught:
            Checkpoint.open(ck_path, readonly=readonly)
        assert caught.value.exit_code == 2
        assert "batchpizza 7.1.0" in caught.value.message
        assert "schema 99" in caught.value.message
        assert "reads checkpoint schemas 1, 2" in caught.value.message
    assert meta_of(ck_path) == before  # never rewritten as schema 2
    with contextlib.closing(sqlite3.connect(f"file:{ck_path}?mode=ro", uri=True)) as conn:
        assert conn.execute("SELECT id FROM results").fetchall() == [("q1",)]


@pytest.mark.parametrize(
    ("schema", "said"),
    [(None, "no schema version"), ("banana", "unknown schema version 'banana'"), ("", "''")],
)
def test_a_checkpoint_with_a_missing_or_garbage_schema_is_refused(
    ck_path: Path, schema: str | None, said: str
) -> None:
    with_meta(ck_path, schema=schema, version=None)

    with pytest.raises(CheckpointVersionError) as caught:
        Checkpoint.open(ck_path)
    assert said in caught.value.message
    assert meta_of(ck_path).get("schema") == schema


def test_another_programs_sqlite_file_is_refused_and_left_alone(ck_path: Path) -> None:
    conn = sqlite3.connect(ck_path)
    with conn:
        conn.execute("CREATE TABLE invoices (n INTEGER)")
    conn.close()

    with pytest.raises(CheckpointVersionError, match="not a batchpizza checkpoint"):
        Checkpoint.open(ck_path)
    conn = sqlite3.connect(ck_path)
    tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert tables == {"invoices"}


def test_a_schema_1_checkpoint_is_upgraded_to_5_and_keeps_its_answers(ck_path: Path) -> None:
    conn = sqlite3.connect(ck_path)
    with conn:  # what the first version created
        conn.executescript(SCHEMA_1)
        conn.execute(
            "INSERT INTO results VALUES ('q1', ?, 'stop', 'old answer', NULL, 1, 2.0, 'm', 0)",
            (DIGEST,),
        )
    conn.close()

    store = Checkpoint.open(ck_path)
    store.write([result("q2")._replace(prompt_tokens=3)])
    store.close()

    assert meta_of(ck_path)["schema"] == "5"
    assert stored(ck_path)["q1"][3] == "old answer"


def test_tables_created_without_their_schema_by_a_killed_first_run_are_taken_as_new(
    ck_path: Path,
) -> None:
    conn = sqlite3.connect(ck_path)
    with conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID")
    conn.close()

    Checkpoint.open(ck_path).close()
    assert meta_of(ck_path)["schema"] == "5"


def test_a_run_on_a_newer_checkpoint_exits_2_having_sent_and_changed_nothing(
    tmp_path: Path,
) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "q1", "prompt": "hi"}])
    out = tmp_path / "out.jsonl"
    ck = Path(f"{out}.checkpoint")
    with_meta(ck, schema="6", version="3.0.0")
    before = ck.read_bytes()

    done = CliRunner().invoke(
        cli, ["run", str(inp), "-o", str(out), "--base-url", "http://127.0.0.1:9", "-q"]
    )

    assert done.exit_code == 2, done.output
    assert "batchpizza 3.0.0" in done.output and "schema 6" in done.output
    assert ck.read_bytes() == before
    assert not out.exists()
