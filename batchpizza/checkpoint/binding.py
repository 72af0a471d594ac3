"""Result and attempt rows as Python's sqlite3 binds them cheaply.

sqlite3 binds an exact int, float, str or bytearray at once; any other value (None, bytes, a
bool) first goes through its adapter lookup, measured here at 0.35 to 0.45 us a value. An
answered row has seven of them (its identity and digest, four empty columns, the estimate's
flag) and its attempt two: some 3 us of a row's 140 us at zero latency. So the usual rows are
bound lean: the columns they leave empty written as NULL into the statement, digests as
bytearrays (stored as the same BLOB) and the flag as an int. Any other row is bound as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from batchpizza.records import Attempt, Result

Row = tuple[Any, ...]
# A result's columns a lean row leaves NULL: its error, the server's ids and its reply's body.
_EMPTY = ("error", "response_id", "request_id", "body")
_LEAN = tuple(f for f in Result._fields if f not in _EMPTY)
_FULL_NAMES = ", ".join(Result._fields)
_LEAN_NAMES = ", ".join(_LEAN)


def result_sql(table: str) -> tuple[str, str]:
    """The INSERT of a result row as it is (ident, the Result's fields, updated) and of a lean
    one (ident, the fields but _EMPTY, updated)."""
    full = (
        f"INSERT OR REPLACE INTO {table} (ident, {_FULL_NAMES}, updated) "
        f"VALUES ({', '.join('?' * (len(Result._fields) + 2))})"
    )
    lean = (
        f"INSERT OR REPLACE INTO {table} (ident, {_LEAN_NAMES}, updated, {', '.join(_EMPTY)}) "
        f"VALUES ({', '.join('?' * (len(_LEAN) + 2))}, {', '.join(['NULL'] * len(_EMPTY))})"
    )
    return full, lean


ATTEMPT_SQL = (
    f"INSERT INTO attempts (run, {', '.join(Attempt._fields)}) "
    f"VALUES ({', '.join('?' * (len(Attempt._fields) + 1))})"
)
# An attempt that was answered: no status, no error.
LEAN_ATTEMPT_SQL = (
    f"INSERT INTO attempts (run, {', '.join(Attempt._fields[:4])}, status, error) "
    "VALUES (?, ?, ?, ?, ?, NULL, NULL)"
)


def result_runs(
    ident: bytes, results: Sequence[Result], now: float
) -> list[tuple[bool, list[Row]]]:
    """`results` as rows, in their order (a later result of a request replaces an earlier one),
    in runs of lean rows (True; see the module's docstring) and of rows as they are (False)."""
    key = bytearray(ident)
    runs: list[tuple[bool, list[Row]]] = []
    rows: list[Row] = []
    lean_run = True
    for r in results:
        lean = r.error is None and r.response_id is None and r.request_id is None and r.body is None
        if lean is not lean_run:
            if rows:
                runs.append((lean_run, rows))
            rows, lean_run = [], lean
        if lean:
            estimated = r.tokens_estimated
            rows.append(
                (key, r.id, bytearray(r.digest), r.finish_reason, r.answer, r.attempts,
                 r.latency_ms, r.model, r.prompt_tokens, r.completion_tokens,
                 1 if estimated else (None if estimated is None else 0), now)
            )  # fmt: skip
        else:
            rows.append((ident, *r, now))
    if rows:
        runs.append((lean_run, rows))
    return runs


def full_result(lean: Row) -> Row:
    """A lean result row as it is bound whole (a row that failed to bind goes one at a time)."""
    key, row_id, digest, reason, answer, attempts, latency, model, given, got, estimated, now = lean
    return (key, row_id, digest, reason, answer, None, attempts, latency, model, given, got,
            None, None, None, estimated, now)  # fmt: skip


def split_attempts(run: int, attempts: Sequence[Attempt]) -> tuple[list[Row], list[Row]]:
    """The lean rows of `attempts` (answered: no status, no error; `full_attempt` makes one
    whole), and the rest as they are."""
    lean: list[Row] = []
    rest: list[Row] = []
    for a in attempts:
        if a.status is None and a.error is None:
            lean.append((run, a.row_id, a.started, a.duration_ms, a.outcome))
        else:
            rest.append((run, *a))
    return lean, rest


def full_attempt(lean: Row) -> Row:
    return (*lean, None, None)
