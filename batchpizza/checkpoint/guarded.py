"""Rows written so that no single one can fail a group commit: as they are, else made storable
(a lone surrogate as U+FFFD, an integer beyond 64 bits as null), else as an error row saying why.
A provider makes its server's values storable itself; this is the store's last guard."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import batchpizza.storable as storable
from batchpizza.checkpoint import binding
from batchpizza.records import Attempt, Result

log = logging.getLogger("batchpizza")

# What binding a value SQLite cannot hold raises: a str with a lone surrogate, an int beyond 64
# bits, a value of another type. Never a failing disk (that is an OperationalError).
UNBINDABLE = (UnicodeEncodeError, OverflowError, sqlite3.InterfaceError, sqlite3.ProgrammingError)


def insert_group(
    conn: sqlite3.Connection,
    sqls: tuple[str, str],
    ident: bytes,
    results: Sequence[Result],
    attempts: Sequence[Attempt],
    run: int,
    now: float,
) -> None:
    """Results under `ident` and the attempts behind them, inside the caller's transaction: each
    kind in as few statements as binding.py makes runs of; `sqls` the result inserts, (whole,
    lean). A row that cannot be bound goes alone through insert_result / insert_attempt."""
    whole_sql, lean_sql = sqls
    for lean, rows in binding.result_runs(ident, results, now):
        if lean:
            _many(
                conn,
                lean_sql,
                rows,
                lambda r: insert_result(conn, whole_sql, binding.full_result(r)),
            )
        else:
            _many(conn, whole_sql, rows, lambda r: insert_result(conn, whole_sql, r))
    if attempts:
        lean_attempts, other = binding.split_attempts(run, attempts)
        full = binding.ATTEMPT_SQL
        _many(conn, binding.LEAN_ATTEMPT_SQL, lean_attempts,
              lambda r: insert_attempt(conn, full, binding.full_attempt(r)))  # fmt: skip
        _many(conn, full, other, lambda r: insert_attempt(conn, full, r))


def _many(
    conn: sqlite3.Connection,
    sql: str,
    rows: list[tuple[Any, ...]],
    one: Callable[[tuple[Any, ...]], None],
) -> None:
    """`rows` in one statement; if one cannot be bound, the rows before it are in: the rest go
    one at a time through `one`, so that only that row pays."""
    if not rows:
        return
    before = conn.total_changes
    try:
        conn.executemany(sql, rows)
    except UNBINDABLE:
        for row in rows[conn.total_changes - before :]:
            one(row)


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
