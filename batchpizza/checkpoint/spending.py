"""The checkpoint's side of the money: this run's rows of the spend table (spend.py holds its
SQL), the worst cases charged without a result, and what every run spent."""

from __future__ import annotations

import contextlib
import sqlite3

from batchpizza.checkpoint import spend


class Spending:
    """A mixin of Checkpoint, which owns the connection and its transactions."""

    _conn: sqlite3.Connection
    _spend_rows: dict[bool, int]  # this run's rows of the spend table, by batch
    ident: bytes

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError  # the Checkpoint's

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError  # the Checkpoint's

    def _fold(self) -> None:
        raise NotImplementedError  # the Checkpoint's

    def meta(self) -> dict[str, str]:
        raise NotImplementedError  # the Checkpoint's

    def begin_spend(self, run: int, price: tuple[float, float] | None, batch: bool = False) -> None:
        """Count the tokens of this run's results from now on, at `price` (spend.py); with
        `batch`, those collected through the Batch API apart, at the batch price."""
        with self._transaction():
            self._spend_rows = {False: spend.begin(self._conn, run, price)}
            if batch:
                self._spend_rows[True] = spend.begin(self._conn, run, price, batch=True)

    def charge(self, prompt_tokens: int, completion_tokens: int, batch: bool = False) -> None:
        """A request's worst case, counted as spent without a result to carry it (a reply
        without usage, a timeout, a Batch API line whose batch was cancelled): kept at once, so
        that a rerun's cap counts it, at the Batch API's price for a batch line."""
        row = self._spend_rows.get(batch)
        if row is not None:
            with self._transaction():
                spend.add_tokens(self._conn, row, prompt_tokens, completion_tokens)

    def spend(
        self, *, this_run: bool = False, since: float | None = None, until: float | None = None
    ) -> spend.Spend:
        """What every run on this checkpoint (or this one, or those started since or before a
        time) used and cost."""
        if this_run and not self._spend_rows:
            return spend.Spend()
        with self._errors():
            if this_run:
                return spend.total(self._conn, list(self._spend_rows.values()))
            return spend.total(self._conn, since=since, until=until)

    def restarted(self) -> float | None:
        """When the last --restart forgot the answers and runs (not the spend); None if never,
        or before batchpizza recorded it."""
        value = self.meta().get("restarted")
        try:
            return float(value) if value else None
        except ValueError:
            return None

    def mean_output(self) -> float | None:
        """The mean output tokens of this identity's answers (a dry run's estimate)."""
        self._fold()
        with self._errors():
            return spend.mean_output(self._conn, self.ident)
