"""The checkpoint's side of collecting another identity's batches (batchapi/others.py): where each
file's batch went, who submitted it and at what price, and the one commit that keeps what one
of them answered under the identity that asked it (a mixin of Checkpoint through BatchRecords).

`batch_files.origin` is the API root a file was submitted to, without credentials (no user,
password or query; a remembered secret masked): a batch can only be fetched from the server
that made it, with a key of that server. A file an earlier batchpizza recorded has none: where
it went is not known, and only a run of its own identity collects it, as before.

A collected file is kept in one transaction: its results under its identity, their attempts
under the run that submitted it, their tokens in a spend row of that run at its price (the
Batch API's half of it), its lines' outcomes and the file done. A kill leaves the file either
collected whole or still out (downloaded again by the next run), never its tokens counted twice.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from batchpizza.checkpoint import spend
from batchpizza.checkpoint.guarded import insert_group
from batchpizza.records import UNANSWERED, Attempt, Result, is_answered

ORIGIN = ("origin", "TEXT")  # the column, added to a file from before it when opened to write

Row = tuple[Any, ...]


class ForeignBatches:
    _conn: sqlite3.Connection
    ident: bytes
    _staged: int
    _result_sqls: tuple[str, str]
    # Where this run's files go (batchapi/others.py sets it): recorded with each new file.
    batch_origin: str | None = None

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError  # the Checkpoint's

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError  # the Checkpoint's

    def _check_identity(self) -> None:
        raise NotImplementedError  # the Checkpoint's

    def _finish_lines(self, seq: int, outcomes: Sequence[tuple[str, str]], state: str) -> None:
        raise NotImplementedError  # BatchRecords'

    def _fold(self) -> None:
        raise NotImplementedError  # the Checkpoint's

    def _has_origins(self) -> bool:
        """A read-only view of a file from before the column has none."""
        have = {row[1] for row in self._conn.execute("PRAGMA table_info(batch_files)")}
        return ORIGIN[0] in have

    def file_origins(self) -> dict[int, str | None]:
        """Where the batch of each file not collected yet went (None: not recorded)."""
        with self._errors():
            if not self._has_origins():
                return {}
            rows = self._conn.execute(
                "SELECT seq, origin FROM batch_files WHERE done = 0"
            ).fetchall()
        return {int(seq): origin for seq, origin in rows}

    def not_over_answers(self, seq: int, results: Sequence[Result]) -> list[Result]:
        """`results` collected from file `seq`, less the failures of requests its identity has
        an answer to already (got online while the batch was out, and paid for): an error row
        replaced the answer, and the next run sent the request again."""
        had = self.answered_lines(seq)
        return [r for r in results if is_answered(r.finish_reason) or r.digest not in had]

    def answered_lines(self, seq: int) -> set[bytes]:
        """The requests of file `seq` its identity has an answer to already."""
        self._fold()
        unanswered = ", ".join(f"'{reason}'" for reason in sorted(UNANSWERED))
        with self._errors():
            rows = self._conn.execute(
                "SELECT l.digest FROM batch_lines l JOIN batch_files f ON f.seq = l.seq "
                "JOIN results r ON r.ident = f.ident AND r.digest = l.digest WHERE l.seq = ? "
                f"AND r.finish_reason NOT IN ({unanswered})",
                (seq,),
            ).fetchall()
        return {bytes(digest) for (digest,) in rows}

    def file_ident(self, seq: int) -> bytes:
        with self._errors():
            (ident,) = self._conn.execute(
                "SELECT ident FROM batch_files WHERE seq = ?", (seq,)
            ).fetchone()
        return bytes(ident)

    def submitter(self, created: float) -> tuple[int | None, tuple[float, float] | None]:
        """The run that recorded a file at `created` (runs hold the lock one at a time: the last
        one started before it) and the price it ran at, before the Batch API's half; (None,
        None) where the checkpoint does not say."""
        with self._errors():
            found = self._conn.execute(
                "SELECT id FROM runs WHERE started <= ? ORDER BY started DESC LIMIT 1", (created,)
            ).fetchone()
            if found is None:
                return None, None
            price = self._conn.execute(
                "SELECT price_in, price_out FROM spend WHERE run = ? AND batch = 0 AND "
                "price_in IS NOT NULL AND price_out IS NOT NULL ORDER BY rowid LIMIT 1",
                (found[0],),
            ).fetchone()
        return int(found[0]), None if price is None else (float(price[0]), float(price[1]))

    def keep_foreign(
        self,
        seq: int,
        results: Sequence[Result],
        attempts: Sequence[Attempt],
        outcomes: Sequence[tuple[str, str]],
        state: str,
        *,
        run: int,
        price: tuple[float, float] | None,
    ) -> None:
        """File `seq`, of another identity, collected: see the module's docstring."""
        self._check_identity()  # as every write: not into a checkpoint replaced meanwhile
        ident = self.file_ident(seq)
        now = time.time()
        with self._transaction():
            insert_group(self._conn, self._result_sqls, ident, results, attempts, run, now)
            if any(r.prompt_tokens or r.completion_tokens for r in results):
                row = spend.begin(self._conn, run, price, batch=True)
                spend.add(self._conn, row, results)
            self._finish_lines(seq, outcomes, state)
        self._staged += len(results)
