"""Rows written so that no single one can fail a group commit: as they are, else made storable
(a lone surrogate as U+FFFD, an integer beyond 64 bits as null), else as an error row saying why.
A provider makes its server's values storable itself; this is the store's last guard."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import batchpizza.storable as storable

log = logging.getLogger("batchpizza")

# What binding a value SQLite cannot hold raises: a str with a lone surrogate, an int beyond 64
# bits, a value of another type. Never a failing disk (that is an OperationalError).
UNBINDABLE = (UnicodeEncodeError, OverflowError, sqlite3.InterfaceError, sqlite3.ProgrammingError)


def insert_result(conn: sqlite3.Connection, sql: str, row: tuple[Any, ...]) -> None:
    """One result row (ident, the Result's fields, updated): as it is, else made storable, else
    an `error` row saying why, so the next run sends it again."""
    try:
        conn.execute(sql, row)
        return
    except UNBINDABLE:
        pass
    fixed = tuple(_storable(v) for v in row)
    try:
        conn.execute(sql, fixed)
        log.warning("row %s: a value the checkpoint cannot hold was made storable", row[1])
        return
    except UNBINDABLE as exc:
        problem = storable.text(f"{type(exc).__name__}: {exc}")
    ident, row_id, digest, attempts, latency, updated = (fixed[i] for i in (0, 1, 2, 6, 7, -1))
    error = f"the result could not be stored in the checkpoint ({problem}); sent again next run"
    attempts = attempts if isinstance(attempts, int) else 0
    latency = latency if isinstance(latency, float) else None
    blank = (None,) * (len(row) - 9)  # model and what follows it, but `updated`
    conn.execute(
        sql, (ident, row_id, digest, "error", None, error, attempts, latency, *blank, updated)
    )


def insert_attempt(conn: sqlite3.Connection, sql: str, row: tuple[Any, ...]) -> None:
    """One attempt row (for the report): as it is, else made storable, else without its status
    and error."""
    for candidate in (row, tuple(_storable(v) for v in row)):
        try:
            conn.execute(sql, candidate)
            return
        except UNBINDABLE:
            continue
    conn.execute(sql, (*candidate[:5], None, None))


def _storable(value: object) -> object:
    """`value` as SQLite can bind it, by batchpizza.storable's rules."""
    if isinstance(value, str):
        return storable.text(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value if -storable.INT64_MAX - 1 <= value <= storable.INT64_MAX else None
    return value
