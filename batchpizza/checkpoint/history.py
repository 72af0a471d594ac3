"""The checkpoint's record of what runs did, for the report: each run (its options, exit code),
every attempt (counted in SQL for the report), and the learned rate's and the breaker's events (a
mixin of Checkpoint, which owns the connection)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from array import array
from collections.abc import Iterator, Sequence
from typing import Any


def _floor(column: str) -> str:
    """The whole second a time falls in, also before 1970 (where CAST rounds up)."""
    return f"(CAST({column} AS INTEGER) - ({column} < CAST({column} AS INTEGER)))"


class History:
    _conn: sqlite3.Connection

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError  # the Checkpoint's

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError  # the Checkpoint's

    def begin_run(self, options: dict[str, Any]) -> int:
        with self._transaction():
            cursor = self._conn.execute(
                "INSERT INTO runs (started, rows_sent, options) VALUES (?, 0, ?)",
                (time.time(), json.dumps(options, default=str)),
            )
        return int(cursor.lastrowid or 0)

    def end_run(self, run: int, *, rows_sent: int, exit_code: int) -> None:
        with self._transaction():
            self._conn.execute(
                "UPDATE runs SET ended = ?, rows_sent = ?, exit_code = ? WHERE id = ?",
                (time.time(), rows_sent, exit_code, run),
            )

    def record_events(self, run: int, events: Sequence[tuple[float, str, float, str]]) -> None:
        """(unix time, kind, value, detail): a rate change ("rate") or a breaker event ("breaker")."""
        if events:
            with self._transaction():
                self._conn.executemany(
                    "INSERT INTO events VALUES (?, ?, ?, ?, ?)", [(run, *e) for e in events]
                )

    def runs(self) -> list[tuple[int, float, float | None, int, int | None, str]]:
        with self._errors():
            return self._conn.execute(
                "SELECT id, started, ended, rows_sent, exit_code, options FROM runs ORDER BY id"
            ).fetchall()

    def events(self) -> list[tuple[int, float, str, float, str]]:
        with self._errors():
            return self._conn.execute(
                "SELECT run, t, kind, value, detail FROM events ORDER BY t"
            ).fetchall()

    def rows_attempted(self) -> dict[int, int]:
        """Run -> how many distinct rows it sent (finished or not): what its retries are beyond."""
        with self._errors():
            found = self._conn.execute(
                "SELECT run, count(DISTINCT row_id) FROM attempts GROUP BY run"
            ).fetchall()
        return {int(run): int(count) for run, count in found}

    def answer_tokens(self) -> Iterator[tuple[float, int]]:
        """(when written, input + output tokens) of every answer kept, streamed."""
        with self._errors():
            cursor = self._conn.execute(
                "SELECT updated, coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0) "
                "FROM results WHERE prompt_tokens IS NOT NULL OR completion_tokens IS NOT NULL"
            )
        while page := cursor.fetchmany(4096):
            yield from page

    def attempts(self) -> Iterator[tuple[int, str, float, float, str, int | None, str | None]]:
        """Every attempt ever recorded, oldest first, streamed."""
        with self._errors():
            cursor = self._conn.execute(
                "SELECT run, row_id, started, duration_ms, outcome, status, error FROM attempts "
                "ORDER BY started"
            )
        while page := cursor.fetchmany(4096):
            yield from page

    # The report's attempts, counted in SQL: a Python object each made a report of a million
    # attempts take seconds more than SQLite takes to count them. Every number the report derives
    # from these is the one it derives from `attempts()` (report/tally.py).

    def attempt_cells(self) -> Iterator[tuple[int, int, float, float, int, int, float]]:
        """(run, whole second of start, first start, last end, attempts, answered, answered
        latency sum in ms) per run and second that saw an attempt, streamed."""
        with self._errors():
            cursor = self._conn.execute(
                f"SELECT run, {_floor('started')} AS second, min(started), "
                "max(started + duration_ms / 1000.0), count(*), sum(outcome IS 'answered'), "
                "total(CASE WHEN outcome IS 'answered' THEN duration_ms END) "
                "FROM attempts GROUP BY run, second"
            )
        while page := cursor.fetchmany(4096):
            yield from page

    def answered_latencies(self) -> array[float]:
        """The duration in ms of every answered attempt, 8 bytes each, in no order."""
        found: array[float] = array("d")
        with self._errors():
            cursor = self._conn.execute(
                "SELECT duration_ms FROM attempts WHERE outcome IS 'answered'"
            )
        while page := cursor.fetchmany(8192):
            found.extend([ms for (ms,) in page])
        return found

    def failure_groups(
        self,
    ) -> list[tuple[str, int | None, int, float, float, str | None, float]]:
        """The attempts not answered by (outcome, status): (outcome, status, count, first start,
        last start, the earliest non-empty error, its start). Of attempts started at once (a
        batch's lines), the first recorded gives the error: SQLite takes min()'s row so."""
        failed = "FROM attempts WHERE outcome IS NOT 'answered'"
        with self._errors():
            groups = self._conn.execute(
                f"SELECT outcome, status, count(*), min(started), max(started) {failed} "
                "GROUP BY outcome, status"
            ).fetchall()
            examples = self._conn.execute(
                f"SELECT outcome, status, min(started), error {failed} AND error <> '' "
                "GROUP BY outcome, status"
            ).fetchall()
        first_error = {(outcome, status): (error, t) for outcome, status, t, error in examples}
        return [
            (outcome, status, count, first, last, *first_error.get((outcome, status), (None, 0.0)))
            for outcome, status, count, first, last in groups
        ]

    def tokens_by_second(self) -> list[tuple[int, int]]:
        """(whole second, input + output tokens) of the answers kept written in that second."""
        with self._errors():
            found = self._conn.execute(
                f"SELECT {_floor('updated')} AS second, "
                "sum(coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0)) FROM results "
                "WHERE prompt_tokens IS NOT NULL OR completion_tokens IS NOT NULL GROUP BY second"
            ).fetchall()
        return [(int(second), int(tokens)) for second, tokens in found]
