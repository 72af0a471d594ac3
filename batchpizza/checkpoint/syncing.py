"""The checkpoint's sync (store.py): every commit so far made durable against power loss.

A WAL checkpoint fsyncs the log before it copies any of it into the database, but only then:
while another connection reads an older snapshot (a `status` beside a live run), the frames
after it cannot be copied, and where none can, SQLite syncs nothing at all. The log is then
fsynced here, so that what the caller commits and syncs (the Batch API's `creating` mark,
before its create goes out) is on disk whatever else reads the file."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def sync_log(conn: sqlite3.Connection, path: Path | None) -> None:
    """Make every commit on `conn` (the checkpoint at `path`) durable. sqlite3.Error when the
    checkpoint fails; OSError when the fsync does."""
    busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    if path is not None and (busy or frames > copied):
        log = Path(f"{path}-wal")
        if log.exists():
            fd = os.open(log, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
