"""The checkpoint's queries about structured outputs (--schema): how many of the output's
answers fit the schema at once, after a re-ask, or never (invalid_output), and the validation
errors heard most. No table of its own: an attempt whose answer did not fit is recorded with the
outcome invalid_output and its error, and the row's result keeps its last answer."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Mapping
from typing import Any

from batchpizza.checkpoint.counts import UNANSWERED
from batchpizza.records import ENDED_EMPTY, NOT_VALIDATED

INVALID_OUTPUT = "invalid_output"
# What str.strip() takes off (the code points str.isspace() holds): a blank answer cut off is
# as empty as an empty one, as the runner tells them.
_WHITESPACE = [c for c in range(0x3001) if chr(c).isspace()]
_BLANK = "char(" + ", ".join(map(str, _WHITESPACE)) + ")"


def _sql(names: frozenset[str]) -> str:
    return "(" + ", ".join(f"'{name}'" for name in sorted(names)) + ")"


class Fitting:
    """A mixin of Checkpoint, which owns the connection (and PlanQueries, the joins)."""

    _conn: sqlite3.Connection
    ident: bytes
    identity: Mapping[str, Any] | None

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError  # the Checkpoint's

    def _fold(self) -> None:
        raise NotImplementedError  # the Checkpoint's

    def _joined(self) -> str:
        raise NotImplementedError  # PlanQueries'

    def fit_counts(self, limit: int | None = None) -> dict[str, int] | None:
        """Over the output's rows: `valid` answers (fitting the schema), of which `reasked` fit
        only after a re-ask; `invalid` (re-asks spent); and `not_validated`, answers the schema
        was never tried on (a refusal, tool calls, an empty answer cut off: engine/runner.py's
        _fitted keeps them as they came). None for a run without a schema."""
        if self.identity is None or "schema" not in self.identity:
            return None
        self._fold()
        end = limit if limit is not None else 1 << 62
        answered = f"c.finish_reason NOT IN {UNANSWERED}"
        unchecked = (
            f"(c.finish_reason IN {_sql(NOT_VALIDATED)} OR (trim(c.answer, {_BLANK}) = '' AND "
            f"c.finish_reason IN {_sql(ENDED_EMPTY)}))"
        )
        with self._errors():
            found = self._conn.execute(
                f"SELECT sum({answered} AND NOT {unchecked}), sum({answered} AND NOT {unchecked} "
                "AND c.id IN (SELECT row_id FROM attempts WHERE outcome = ?2)), "
                f"sum(c.finish_reason = ?2), sum({answered} AND {unchecked}) "
                f"{self._joined().replace('c.ident = ?', 'c.ident = ?1')} WHERE r.pos < ?3",
                (self.ident, INVALID_OUTPUT, end),
            ).fetchone()
        valid, reasked, invalid, unvalidated = (int(x or 0) for x in found)
        return {
            "valid": valid,
            "reasked": reasked,
            "invalid": invalid,
            "not_validated": unvalidated,
        }

    def validation_errors(self, top: int = 5) -> list[tuple[str, int]]:
        """The validation errors of every attempt whose answer did not fit, most heard first."""
        self._fold()
        with self._errors():
            found = self._conn.execute(
                "SELECT error, count(*) FROM attempts WHERE outcome = ? GROUP BY error "
                "ORDER BY 2 DESC, 1 LIMIT ?",
                (INVALID_OUTPUT, top),
            ).fetchall()
        return [(str(error), int(count)) for error, count in found]
