"""The kept to-do set: the slots of the scan that still want an answer, kept in the checkpoint
between runs, so that a rerun plans over them instead of joining every scanned row with the
results (at 10,000,000 rows that join was ten seconds before the first request).

The table `todo` holds slots (a row's position, times --repeat's samples, plus the sample). It is
valid for one scan, identity and sample count, and one last run, which `meta.todo` stamps; what
it promises while the stamp holds: every slot without an answer under that identity (no result,
or a result that failed or was refused) is in it. It may hold more (slots answered since it was
written); the plan drops those as it goes. How the promise is kept, crash by crash:

- a plan over the whole scan writes the table and its stamp in one transaction;
- a slot leaves it only after its answer is committed (the deletes ride with a later group
  commit, FLUSH_SLOTS at a time, or the close): a kill in between leaves answered slots in it,
  never the reverse;
- a new scan (`adopt_scan`) and `forget` (--restart) drop the stamp with the change, in one
  transaction;
- a run's start stamps its own id; any other writer of the file (a batchpizza from before this
  table) adds a run, replaces the runs (its --restart), changes the scan or the identity, and
  the stamp no longer matches: the next plan joins every row again, and writes the table anew.

A run sends only the slots of the plan, each once, and an answer is never replaced by a failure
of the same request within a run, so the answered slots it deletes stay answered.
Only a writable checkpoint file keeps the set. A reader of the file (status) plans and counts
over it while its stamp holds, writing nothing; in memory (rows in memory) and in a dry run's
view (its own scan in place of the file's, for which the set was not made) the plan joins
every row, as before.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from batchpizza.checkpoint.history import History
from batchpizza.records import is_answered

TABLE = "CREATE TABLE IF NOT EXISTS todo (slot INTEGER PRIMARY KEY)"


class KeptTodo(History):
    """A mixin of Checkpoint (which owns the connection): the kept to-do set's stamp and upkeep.
    PlanQueries.plan reads and writes the table through `_todo_kept` and `_keep_todo`."""

    _conn: sqlite3.Connection
    _readonly: bool
    path: Path | None
    ident: bytes
    samples: int = 1
    # Answered slots whose answers are committed, to delete from the set with the next commit.
    _answered_slots: list[int]  # (made by the Checkpoint)
    _todo_live = False  # this run planned over a valid set: it keeps it up to date
    _own_scan = True  # False in a dry run's view: its scan is not the one the set was made for

    def meta(self) -> dict[str, str]:
        raise NotImplementedError  # the Checkpoint's

    def _may_keep_todo(self) -> bool:
        return self.path is not None and not self._readonly

    def _todo_stamp(self) -> str:
        """What the set is valid for: the identity, the samples, the scan (as `scan_info` names
        it) and the last run (its id and start: a --restart by another writer empties the runs
        table, and its next run may take the same id, not the same start)."""
        meta = self.meta()
        with self._errors():
            last = self._conn.execute(
                "SELECT id, started FROM runs ORDER BY id DESC LIMIT 1"
            ).fetchone()
        return json.dumps(
            [
                self.ident.hex(),
                self.samples,
                meta.get("scan_key"),
                meta.get("scan_info"),
                None if last is None else list(last),
            ]
        )

    def _todo_kept(self) -> bool:
        """Is the kept set valid for this run's plan (or a reader's counts)?"""
        if self.path is None or not self._own_scan:
            return False
        return self.meta().get("todo") == self._todo_stamp()

    def _stamp_todo(self) -> None:
        """Inside the caller's transaction: the set is now valid for this scan, identity, run."""
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('todo', ?)", (self._todo_stamp(),))
        self._todo_live = True

    def _drop_todo(self) -> None:
        """Inside the caller's transaction (one that changes the scan or forgets answers)."""
        self._conn.execute("DELETE FROM main.todo")
        self._conn.execute("DELETE FROM meta WHERE key = 'todo'")
        self._todo_live = False
        self._answered_slots = []

    def begin_run(self, options: dict[str, Any]) -> int:
        """The run's record; the set, valid before it, stamped with it (a kill in between leaves
        an old stamp: the next plan writes the set anew, which is slower, not wrong)."""
        valid = self._todo_live and self._todo_kept()
        run = super().begin_run(options)
        if valid:
            with self._transaction():
                self._stamp_todo()
        return run

    # Answered slots leave the set this many at a time: deleting each group commit's few slots
    # wrote the set's pages into every commit (1.1 us of a row's CPU at zero latency, measured).
    # A kill leaves at most this many answered slots in it, which the next plan drops.
    FLUSH_SLOTS = 1024

    def answered(self, slot: int, finish_reason: str) -> None:
        """A slot's result is committed: if it is an answer, the slot leaves the set with a
        later commit (see FLUSH_SLOTS)."""
        if self._todo_live and is_answered(finish_reason):
            self._answered_slots.append(slot)

    def _flush_answered(self, every: bool = False) -> None:
        """Inside the caller's transaction: the answered slots out of the set, once FLUSH_SLOTS
        wait (`every`: however many)."""
        if len(self._answered_slots) >= (1 if every else self.FLUSH_SLOTS):
            slots, self._answered_slots = self._answered_slots, []
            self._conn.executemany("DELETE FROM main.todo WHERE slot = ?", ((s,) for s in slots))

    def _close_todo(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            if self._answered_slots:
                with self._transaction():
                    self._flush_answered(every=True)
