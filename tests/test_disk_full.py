"""A disk that fills while a run's first scan is being kept (the checkpoint being made): the run
exits 1 saying so, leaves no checkpoint behind (nor its log), and the rerun with room works as a
first run; a checkpoint that was there before the run is never removed.

The disk fills for real inside SQLite (`PRAGMA max_page_count`: SQLITE_FULL, "database or disk is
full", the error a full disk gives), or for the whole process under a file size limit (EFBIG).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import LIMITED_CLI, read_jsonl, write_jsonl

import batchpizza.checkpoint.store as checkpoint_store
from batchpizza.checkpoint.store import Checkpoint
from batchpizza.cli import cli
from batchpizza.mock.server import ThreadedMockServer


def run_cli(server: ThreadedMockServer, source: Path, out: Path, *extra: str) -> Result:
    args = ["run", str(source), "-o", str(out), "--base-url", server.base_url, "--rate", "0"]
    return CliRunner().invoke(cli, [*args, "--no-progress", *extra])


def rows(n: int) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(n)]


def left_beside(out: Path) -> list[str]:
    """The checkpoint's files (and any partial) in the output's folder."""
    return sorted(p.name for p in out.parent.iterdir() if ".checkpoint" in p.name)


def full_at_open(monkeypatch: pytest.MonkeyPatch, checkpoint: Path) -> None:
    """The checkpoint's connection finds the disk full at its first page: making its tables."""
    connect = sqlite3.connect

    def limited(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(database, *args, **kwargs)
        if Path(str(database)) == checkpoint:
            conn.execute("PRAGMA max_page_count = 1")
        return conn

    monkeypatch.setattr(checkpoint_store.sqlite3, "connect", limited)


def full_at_adopt(monkeypatch: pytest.MonkeyPatch, checkpoint: Path) -> None:
    """The checkpoint is made, then the disk fills as the scan is copied into it."""
    adopt = Checkpoint.adopt_scan

    def limited(self: Checkpoint, *args: Any) -> None:
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        self._conn.execute(f"PRAGMA max_page_count = {pages + 1}")
        adopt(self, *args)

    monkeypatch.setattr(Checkpoint, "adopt_scan", limited)


FULL: dict[str, Callable[[pytest.MonkeyPatch, Path], None]] = {
    "open": full_at_open,
    "adopt": full_at_adopt,
}


@pytest.mark.parametrize("stage", sorted(FULL))
def test_a_disk_full_while_the_first_scan_is_kept_leaves_no_checkpoint(
    mock_api: ThreadedMockServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    source, out = write_jsonl(tmp_path / "in.jsonl", rows(300)), tmp_path / "out.jsonl"
    checkpoint = Path(f"{out}.checkpoint")
    FULL[stage](monkeypatch, checkpoint)

    full = run_cli(mock_api, source, out)

    assert full.exit_code == 1, full.output
    assert "Traceback" not in full.output
    assert f"checkpoint {checkpoint}: database or disk is full" in full.stderr
    assert mock_api.stats.requests == 0 and not out.exists()
    assert left_beside(out) == []  # no database, no log, no scan left
    monkeypatch.undo()  # room again
    status = CliRunner().invoke(cli, ["status", str(out)])
    assert status.exit_code == 2 and "no checkpoint" in status.stderr  # not "no such table"

    again = run_cli(mock_api, source, out)

    assert again.exit_code == 0, again.output
    assert "300 rows: 300 to send: 300 new rows; 0 answered before, 0 invalid" in again.stderr
    assert mock_api.stats.requests == 300
    assert [r["id"] for r in read_jsonl(out)] == [r["id"] for r in rows(300)]
    assert left_beside(out) == ["out.jsonl.checkpoint"]


def test_an_empty_checkpoint_file_left_by_a_killed_run_goes_too(
    mock_api: ThreadedMockServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run killed during its first scan leaves the file its lock made, empty (no checkpoint:
    # SQLite had written nothing). The rerun found it there, so kept what the full disk left
    # of it: a database with no scan and no run, which status took for a checkpoint.
    source, out = write_jsonl(tmp_path / "in.jsonl", rows(300)), tmp_path / "out.jsonl"
    checkpoint = Path(f"{out}.checkpoint")
    checkpoint.touch()
    full_at_adopt(monkeypatch, checkpoint)

    full = run_cli(mock_api, source, out)

    assert full.exit_code == 1, full.output
    assert "database or disk is full" in full.stderr
    assert left_beside(out) == []
    monkeypatch.undo()
    status = CliRunner().invoke(cli, ["status", str(out)])
    assert status.exit_code == 2 and "no checkpoint" in status.stderr
    assert run_cli(mock_api, source, out).exit_code == 0


def test_a_database_without_tables_reads_as_a_new_checkpoint(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # What a kill -9 leaves between the log's unlink and the database's as a failed first run
    # removes its checkpoint (or as a first run makes its tables): the database's first page
    # alone, its tables only ever in the log. `status` and a dry run said "no such table:
    # results" (exit 1) where an empty file reads as a checkpoint with nothing in it yet.
    source, out = write_jsonl(tmp_path / "in.jsonl", rows(3)), tmp_path / "out.jsonl"
    checkpoint = Path(f"{out}.checkpoint")
    conn = sqlite3.connect(checkpoint)
    conn.execute("PRAGMA journal_mode = WAL")  # writes the first page, and no table
    conn.close()
    assert checkpoint.stat().st_size > 0

    status = CliRunner().invoke(cli, ["status", str(out)])
    assert status.exit_code == 0, status.output
    assert "answered   0" in status.output
    dry = run_cli(mock_api, source, out, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert run_cli(mock_api, source, out).exit_code == 0
    assert mock_api.stats.requests == 3


def test_a_disk_full_at_a_later_scan_keeps_the_checkpoint_that_was_there(
    mock_api: ThreadedMockServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, out = write_jsonl(tmp_path / "in.jsonl", rows(30)), tmp_path / "out.jsonl"
    assert run_cli(mock_api, source, out).exit_code == 0
    write_jsonl(source, rows(300))  # grown: scanned and kept again
    full_at_adopt(monkeypatch, Path(f"{out}.checkpoint"))

    full = run_cli(mock_api, source, out)

    assert full.exit_code == 1, full.output
    assert "database or disk is full" in full.stderr
    assert left_beside(out) == ["out.jsonl.checkpoint"]
    monkeypatch.undo()
    again = run_cli(mock_api, source, out)
    assert again.exit_code == 0, again.output
    assert "270 new rows; 30 answered before" in again.stderr
    assert mock_api.stats.requests == 300  # the first 30 were not paid for twice


@pytest.mark.slow
def test_a_file_size_limit_hit_making_the_checkpoint_leaves_nothing_and_the_rerun_works(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source, out = write_jsonl(tmp_path / "in.jsonl", rows(20)), tmp_path / "out.jsonl"
    args = ["run", str(source), "-o", str(out), "--base-url", mock_api.base_url, "--rate", "0"]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}

    def cli_run(*command: str) -> subprocess.CompletedProcess[str]:
        run = [sys.executable, *command, *args, "--no-progress"]
        return subprocess.run(run, capture_output=True, text=True, timeout=60, env=env)

    # 16 KiB: the scan of 20 rows fits, a checkpoint's tables do not.
    full = cli_run("-c", LIMITED_CLI, "16384")

    assert full.returncode == 1, full.stderr
    assert "Traceback" not in full.stderr
    # SQLite's "disk I/O error" alone never named the cause the user could fix.
    assert (
        f"batchpizza: checkpoint {out}.checkpoint: disk I/O error (this process may write files "
        "of at most 16,384 bytes: raise `ulimit -f`)" in full.stderr
    )
    assert left_beside(out) == []
    again = cli_run("-m", "batchpizza")
    assert again.returncode == 0, again.stderr
    assert "20 new rows; 0 answered before" in again.stderr
    assert mock_api.stats.requests == 20


@pytest.mark.slow
def test_a_file_size_limit_hit_mid_run_is_named_and_the_rerun_sends_only_the_rest(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    many = [{"id": f"r{i}", "prompt": f"question {i} " + "x" * 200} for i in range(3000)]
    source, out = write_jsonl(tmp_path / "in.jsonl", many), tmp_path / "out.jsonl"
    args = ["run", str(source), "-o", str(out), "--base-url", mock_api.base_url, "--rate", "0"]
    args += ["--no-progress", "--summary-json", str(tmp_path / "summary.json")]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}

    # 600 KiB: the scan of 3,000 rows fits, their answers do not.
    limit = 600 * 1024
    command = [sys.executable, "-c", LIMITED_CLI, str(limit), *args]
    full = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)

    assert full.returncode == 1, full.stderr
    assert "Traceback" not in full.stderr
    assert (
        f"batchpizza: checkpoint {out}.checkpoint: disk I/O error (this process may write files "
        f"of at most {limit:,} bytes: raise `ulimit -f`)" in full.stderr
    )
    kept = json.loads((tmp_path / "summary.json").read_text())["answered"]
    assert 0 < kept < 3000
    sent = mock_api.stats.requests
    again = subprocess.run(
        [sys.executable, "-m", "batchpizza", *args], capture_output=True, text=True, timeout=120,
        env=env,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert mock_api.stats.requests - sent == 3000 - kept
