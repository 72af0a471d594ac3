"""A checkpoint of schema 1 or 2 (an older batchpizza's) opened for writing, as a run opens it, is
upgraded in place (checkpoint/schema.py): every answer kept, a file about the size of its data,
and a kill in the middle of the upgrade leaving the old file whole, to be upgraded again."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from old_checkpoints import old_checkpoint

import batchpizza
import batchpizza.checkpoint.schema as schema_module
from batchpizza.checkpoint.store import Checkpoint

ANSWERS = 2_000
MOVED_AT_ONCE = 100  # answers moved at once in these tests: many groups of a small file

# Opens the checkpoint at argv[1] for writing and kills itself (SIGKILL) inside the upgrade's
# transaction, right after its third group of answers was moved out of the old table.
_KILLED_MID_UPGRADE = f"""
import os, signal, sqlite3, sys
from pathlib import Path
import batchpizza.checkpoint.schema as schema
from batchpizza.checkpoint.store import Checkpoint

schema.MOVED_AT_ONCE = {MOVED_AT_ONCE}

class KilledMidUpgrade(sqlite3.Connection):
    moved = 0

    def execute(self, sql, *args):
        cursor = super().execute(sql, *args)
        if sql.startswith("DELETE FROM results_v2"):
            KilledMidUpgrade.moved += 1
            if KilledMidUpgrade.moved == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        return cursor

connect = sqlite3.connect
sqlite3.connect = lambda *args, **kwargs: connect(*args, factory=KilledMidUpgrade, **kwargs)
Checkpoint.open(Path(sys.argv[1]))
"""


def answers(path: Path) -> list[tuple[object, ...]]:
    """Every answer in the file, as both schemas hold it: row id, prompt digest, outcome, text."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return sorted(conn.execute("SELECT id, digest, finish_reason, answer FROM results"))


def schema_of(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return str(conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0])


@pytest.mark.parametrize("schema", ["1", "2"])
def test_an_upgrade_keeps_every_answer_and_leaves_a_file_about_the_size_of_its_data(
    tmp_path: Path, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schema_module, "MOVED_AT_ONCE", MOVED_AT_ONCE)
    path = tmp_path / "out.jsonl.checkpoint"
    old_checkpoint(path, schema, ANSWERS)
    before = answers(path)

    Checkpoint.open(path).close()

    assert schema_of(path) == schema_module.SCHEMA_VERSION
    assert answers(path) == before
    with contextlib.closing(sqlite3.connect(path)) as conn:
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
    # Copied whole, the old answers' pages stayed in the file, free: a third of it.
    assert free <= pages // 20, (free, pages)


@pytest.mark.slow
def test_a_kill_in_the_middle_of_an_upgrade_loses_no_answer(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl.checkpoint"
    old_checkpoint(path, "2", ANSWERS)
    before = answers(path)
    env = {**os.environ, "PYTHONPATH": str(Path(batchpizza.__file__).parents[1])}

    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_MID_UPGRADE, str(path)], env=env, timeout=60, check=False
    )

    assert killed.returncode == -signal.SIGKILL
    assert schema_of(path) == "2"
    assert answers(path) == before
    Checkpoint.open(path).close()  # upgraded this time
    assert schema_of(path) == schema_module.SCHEMA_VERSION
    assert answers(path) == before
