"""The checkpoint's sync (checkpoint/syncing.py): what was committed is fsynced, even while
another connection reads an older snapshot of the file (SQLite's checkpoint then syncs
nothing). SQLite's own fsyncs are not seen from Python; the log's fsync by the sync is."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchpizza.checkpoint import Checkpoint


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Checkpoint]:
    store = Checkpoint.open(tmp_path / "c.checkpoint")
    store.use_identity({"provider": "openai", "model": "m"})
    store.sync()  # the log copied into the database: what follows is all a reader can hold back
    yield store
    store.close()


def log_fsyncs(monkeypatch: pytest.MonkeyPatch, store: Checkpoint) -> list[int]:
    """The fsyncs of the checkpoint's log by Python code from now on (its inode, each)."""
    log = Path(f"{store.path}-wal")
    synced: list[int] = []
    fsync = os.fsync

    def spying(fd: int) -> None:
        if os.fstat(fd).st_ino == log.stat().st_ino:
            synced.append(fd)
        fsync(fd)

    monkeypatch.setattr(os, "fsync", spying)
    return synced


def test_a_commit_is_fsynced_while_a_reader_holds_an_older_snapshot(
    store: Checkpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM batch_files").fetchone()  # a snapshot, held
        f = store.intend_file([("0-ab", "q0", 0, b"k", 1, b"{}\n")])
        store.mark_file(f.seq, "creating")
        synced = log_fsyncs(monkeypatch, store)
        store.sync()
    finally:
        reader.close()

    assert len(synced) == 1


def test_no_fsync_of_its_own_when_sqlite_s_checkpoint_copied_the_log(
    store: Checkpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = store.intend_file([("0-ab", "q0", 0, b"k", 1, b"{}\n")])
    store.mark_file(f.seq, "creating")
    synced = log_fsyncs(monkeypatch, store)
    store.sync()

    assert synced == []
