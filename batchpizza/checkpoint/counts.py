"""How many of the output's rows are what: answered, failed, refused, invalid, answered with
another row's answer, by finish reason. Counted in SQL over the scan joined to the results of the
run's identity (PlanQueries makes the joins), or over the kept to-do set while it holds.
"""

from __future__ import annotations

import contextlib
import sqlite3

from batchpizza.checkpoint.todo import KeptTodo
from batchpizza.records import Tally

UNANSWERED = "('error', 'misuse', 'invalid', 'pending', 'invalid_output')"
_FAILED = "('error', 'invalid_output')"


class OutputCounts(KeptTodo):
    """A mixin of Checkpoint (which owns the connection), through PlanQueries (the joins)."""

    _conn: sqlite3.Connection
    ident: bytes
    samples: int = 1

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError  # the Checkpoint's

    def _fold(self) -> None:
        raise NotImplementedError  # the Checkpoint's

    def _rows(self, kept: bool = False) -> tuple[str, str, str]:
        raise NotImplementedError  # PlanQueries'

    def _joined(self) -> str:
        raise NotImplementedError  # PlanQueries'

    def _scanned(self) -> int:
        raise NotImplementedError  # PlanQueries'

    def rows(self, limit: int | None = None) -> int:
        """How many rows the output has: `tally(limit).rows` without joining every row to its
        result (0.4 ms instead of 11 ms at 20,000 rows; it was asked twice a run)."""
        scanned = self._scanned()
        return (scanned if limit is None else min(scanned, limit)) * self.samples

    def invalid(self, limit: int | None = None) -> int:
        """How many of the output's rows are bad input rows: `tally(limit).invalid` without the
        join (the scan's index of its bad rows)."""
        end = limit if limit is not None else 1 << 62
        with self._errors():
            found = self._conn.execute(
                "SELECT count(*) FROM scan WHERE bad IS NOT NULL AND pos < ?", (end,)
            ).fetchone()
        return int(found[0]) * self.samples

    def tally(self, limit: int | None = None) -> Tally:
        self._fold()
        if self._todo_kept():
            return self._tally_kept(limit)
        end = limit if limit is not None else 1 << 62
        with self._errors():
            found = self._conn.execute(
                "SELECT count(*), "
                f"sum(c.finish_reason IS NOT NULL AND c.finish_reason NOT IN {UNANSWERED}), "
                f"sum(c.finish_reason IN {_FAILED}), sum(c.finish_reason = 'misuse'), "
                f"sum(r.bad IS NOT NULL) {self._joined()} WHERE r.pos < ?",
                (self.ident, end),
            ).fetchone()
        return Tally(*(int(x or 0) for x in found))

    def _tally_kept(self, limit: int | None) -> Tally:
        """tally() while the kept to-do set is valid: it holds every slot without an answer, so
        only its slots are joined to their results, and the other good rows are answered (at
        1,000,000 rows, `status` joined every row: 2.7 s)."""
        rows, slot, key = self._rows(kept=True)
        # The set leads the join: SQLite would otherwise walk the whole scan for `slot < ?`.
        rows = rows.replace("t JOIN scan", "t CROSS JOIN scan")
        end = min((limit if limit is not None else 1 << 62) * self.samples, 1 << 62)
        with self._errors():
            found = self._conn.execute(
                f"SELECT count(*), sum(c.finish_reason IN {_FAILED}), "
                f"sum(c.finish_reason = 'misuse') FROM {rows} LEFT JOIN results c ON "
                f"c.ident = ? AND c.digest = {key} WHERE {slot} < ? AND r.bad IS NULL AND "
                f"(c.id IS NULL OR c.finish_reason IN {UNANSWERED})",
                (self.ident, end),
            ).fetchone()
        unanswered, failed, misuse = (int(x or 0) for x in found)
        total, invalid = self.rows(limit), self.invalid(limit)
        return Tally(total, total - invalid - unanswered, failed, misuse, invalid)

    def reused(self, limit: int | None = None) -> int:
        """Output rows whose answer was asked for another row (an identical request)."""
        self._fold()
        end = limit if limit is not None else 1 << 62
        with self._errors():
            found = self._conn.execute(
                f"SELECT count(*) {self._joined()} WHERE r.pos < ? AND c.id IS NOT r.id "
                "AND c.id IS NOT NULL",
                (self.ident, end),
            ).fetchone()
        return int(found[0])

    def rows_by_reason(self) -> dict[str, int]:
        """The last run's output rows by finish reason (invalid and pending included)."""
        self._fold()
        with self._errors():
            found = self._conn.execute(
                "SELECT CASE WHEN r.bad IS NOT NULL THEN 'invalid' "
                "ELSE coalesce(c.finish_reason, 'pending') END, count(*) "
                f"{self._joined()} GROUP BY 1",
                (self.ident,),
            ).fetchall()
        return {str(reason): int(count) for reason, count in found}
