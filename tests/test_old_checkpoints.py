"""`status` and `report` on a checkpoint of schema 1 or 2 (an older batchpizza's): read where it
lies, in today's shape (checkpoint/reading.py), saying what its upgrade would say, the file left
as it was."""

from __future__ import annotations

import functools
import json
import os
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import write_jsonl
from old_checkpoints import RUNS, old_checkpoint

import batchpizza.checkpoint.store as store_module
from batchpizza.checkpoint.reading import read_only
from batchpizza.checkpoint.schema import SCHEMA_VERSION
from batchpizza.cli import cli
from batchpizza.rows import prompt_digest

ANSWERS = 300


def outputs(path: Path, tmp_path: Path) -> dict[str, str]:
    """What status and report print (text and JSON), and the report's page."""
    said = {}
    page = tmp_path / "report.html"
    for args in (["status"], ["status", "--json"], ["report"], ["report", "--json"]):
        done = CliRunner().invoke(cli, [*args, "--checkpoint", str(path)])
        assert done.exit_code == 0, done.output
        said[" ".join(args)] = done.stdout
    done = CliRunner().invoke(cli, ["report", "--checkpoint", str(path), "--html", str(page)])
    assert done.exit_code == 0, done.output
    said["page"] = page.read_text(encoding="utf-8")
    return said


def as_it_is(path: Path) -> tuple[bytes, int, list[str]]:
    """The file's bytes, its mtime and what lies beside it."""
    return path.read_bytes(), path.stat().st_mtime_ns, sorted(p.name for p in path.parent.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("schema", ["1", "2"])
def test_status_and_report_of_an_old_checkpoint_say_what_its_upgrade_in_memory_says(
    tmp_path: Path, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.jsonl.checkpoint"
    old_checkpoint(path, schema, ANSWERS)

    read_where_it_lies = outputs(path, tmp_path)
    monkeypatch.setattr(store_module, "read_only", functools.partial(read_only, upgraded=True))
    upgraded = outputs(path, tmp_path)

    assert read_where_it_lies == upgraded
    status = json.loads(read_where_it_lies["status --json"])
    with sqlite3.connect(path) as conn:
        kept = conn.execute(
            "SELECT count(*) FROM results WHERE finish_reason IN ('stop', 'length')"
        ).fetchone()[0]
    assert status["answers_kept"] == status["answered"] == kept > 0
    runs = json.loads(read_where_it_lies["report --json"])["runs"]
    assert len(runs) == (0 if schema == "1" else len(RUNS))


def test_status_and_report_leave_an_old_checkpoint_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    path = tmp_path / "runs" / "out.jsonl.checkpoint"
    old_checkpoint(path, "2", ANSWERS)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    before = as_it_is(path)

    page = ["report", "--html", str(tmp_path / "page.html")]
    for args in (["status"], ["status", "--json"], ["report"], ["report", "--json"], page):
        done = CliRunner().invoke(cli, [*args, "--checkpoint", str(path)])
        assert done.exit_code == 0, done.output

    assert as_it_is(path) == before


@pytest.mark.parametrize("schema", ["1", "2"])
def test_an_old_checkpoint_is_read_where_it_lies_none_of_it_copied(
    tmp_path: Path, schema: str
) -> None:
    path = tmp_path / "out.jsonl.checkpoint"
    old_checkpoint(path, schema, ANSWERS)

    conn = read_only(path)
    try:
        assert conn.execute("SELECT count(*) FROM results").fetchone() == (ANSWERS,)
        # What memory holds: the empty checkpoint the views stand beside.
        assert conn.execute("SELECT count(*) FROM main.results").fetchone() == (0,)
        assert conn.execute("PRAGMA main.page_count").fetchone()[0] < 50
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        assert meta["schema"] == schema and meta["input"] == "in.jsonl"
    finally:
        conn.close()


def test_status_of_an_old_checkpoint_counts_each_rows_answer_to_one_prompt(
    tmp_path: Path,
) -> None:
    # Two rows of one prompt asked by one run: one request since schema 3, whose upgrade keeps
    # the first answer; read where it lies, both count, as the batchpizza that wrote them said.
    path = tmp_path / "out.jsonl.checkpoint"
    old_checkpoint(path, "1", 0)
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO results VALUES (?, ?, 'stop', 'same', NULL, 1, 1.0, 'm', 0)",
            [("a", prompt_digest("same prompt")), ("b", prompt_digest("same prompt"))],
        )
    conn.close()

    done = CliRunner().invoke(cli, ["status", "--checkpoint", str(path), "--json"])

    assert done.exit_code == 0, done.output
    status = json.loads(done.stdout)
    assert (status["answered"], status["answers_kept"], status["pending"]) == (2, 2, 8)


@pytest.mark.parametrize(
    ("schema", "said"),
    [
        ("6", "(schema 6)"),
        ("banana", "unknown schema version 'banana'"),
        (None, "no schema version"),
    ],
)
def test_status_and_report_still_refuse_a_checkpoint_of_a_newer_or_unknown_schema(
    tmp_path: Path, schema: str | None, said: str
) -> None:
    path = tmp_path / "out.jsonl.checkpoint"
    old_checkpoint(path, "2", 10)
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM meta WHERE key = 'schema'")
        if schema is not None:
            conn.execute("INSERT INTO meta VALUES ('schema', ?)", (schema,))
    conn.close()
    before = as_it_is(path)

    for command in ("status", "report"):
        done = CliRunner().invoke(cli, [command, "--checkpoint", str(path)])
        assert done.exit_code == 2, done.output
        assert said in done.stderr
        assert f"reads checkpoint schemas 1, 2, 3, 4, {SCHEMA_VERSION}" in done.stderr
    assert as_it_is(path) == before


def test_status_reads_what_a_live_run_of_an_older_batchpizza_has_in_its_log(
    tmp_path: Path,
) -> None:
    path = tmp_path / "out.jsonl.checkpoint"
    old_checkpoint(path, "2", 10)
    with sqlite3.connect(path) as conn:
        kept = conn.execute(
            "SELECT count(*) FROM results WHERE finish_reason IN ('stop', 'length')"
        ).fetchone()[0]
    conn.close()
    running = sqlite3.connect(path, isolation_level=None)
    try:
        running.execute("PRAGMA journal_mode = WAL")
        running.execute("PRAGMA wal_autocheckpoint = 0")  # the answer stays in the log
        running.execute(
            "INSERT INTO results VALUES ('live', x'00', 'stop', 'just now', NULL, 1, 1.0, 'm', "
            f"{RUNS[1][1] + 1}, 3, 4, NULL, NULL)"
        )
        assert Path(f"{path}-wal").stat().st_size > 0
        done = CliRunner().invoke(cli, ["status", "--checkpoint", str(path), "--json"])
    finally:
        running.close()

    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["answers_kept"] == kept + 1


def test_a_dry_run_on_an_old_checkpoint_plans_with_its_upgrade_and_leaves_it_as_it_was(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.jsonl"
    path = Path(f"{out}.checkpoint")
    old_checkpoint(path, "2", 10)  # r0-r4 written under the Pizzagpt run, r5-r9 under the other
    inp = write_jsonl(
        tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(12)]
    )
    before = as_it_is(path)

    done = CliRunner().invoke(cli, ["run", str(inp), "-o", str(out), "--dry-run"])

    assert done.exit_code == 0, done.output
    said = (
        "to send     8: 5 asked before fingerprints (request not known), 2 new rows, "
        "1 failed before"
    )
    assert "answered    3 (kept, not sent again)" in done.output
    assert said in done.output
    assert as_it_is(path) == before
