"""The `spend` table: what every run on this checkpoint used and what it cost, so that
`--max-cost` counts across runs (a rerun with a higher cap continues from what was spent).

One row per run and way of sending: the price it was charged at (null when none is known) and
the tokens of the answers it committed, and of the worst cases it charged without a usage to go
by (a timeout, a reply without usage: Checkpoint.charge, at once); a run that collected answers
through the Batch API has a second row (`batch` = 1) at the batch price (pricing.BATCH_DISCOUNT
of its price) for them. The tokens of results are added in the same transaction as the results
that carry them (Checkpoint.write), so the spend is as durable as the answers: a kill -9 loses
neither without the other. (Requests in flight at a kill were billed but not recorded: at most
`--concurrency` requests' worth, the same bound as the answers a kill re-sends.) `--restart`
forgets answers, not money: the spend stays.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass

from batchpizza.pricing import BATCH_DISCOUNT
from batchpizza.records import Result
from batchpizza.storable import INT64_MAX

SPEND = """
CREATE TABLE IF NOT EXISTS spend (
    run INTEGER, started REAL, price_in REAL, price_out REAL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0,
    estimated INTEGER NOT NULL DEFAULT 0, batch INTEGER NOT NULL DEFAULT 0
)"""


@dataclass(frozen=True)
class Spend:
    """Totals over runs: tokens, and dollars of the runs whose price was known."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    dollars: float = 0.0
    estimated: bool = False  # some counts are estimates (Pizzagpt's)
    # Of which through the Batch API, at its price:
    batch_prompt_tokens: int = 0
    batch_completion_tokens: int = 0
    batch_dollars: float = 0.0


def begin(
    conn: sqlite3.Connection, run: int, price: tuple[float, float] | None, batch: bool = False
) -> int:
    """A run's row (its Batch API row, at the batch price, with `batch`); its rowid, for `add`."""
    if price is not None and batch:
        price = (price[0] * BATCH_DISCOUNT, price[1] * BATCH_DISCOUNT)
    cursor = conn.execute(
        "INSERT INTO spend (run, started, price_in, price_out, batch) VALUES (?, ?, ?, ?, ?)",
        (run, time.time(), *(price or (None, None)), int(batch)),
    )
    return int(cursor.lastrowid or 0)


def add(conn: sqlite3.Connection, row: int, results: Sequence[Result]) -> None:
    """The tokens of `results` to the run's row, inside the caller's transaction."""
    prompt = completion = 0
    estimated = False
    for r in results:
        if r.prompt_tokens is not None and r.completion_tokens is not None:
            prompt += r.prompt_tokens
            completion += r.completion_tokens
            estimated = estimated or bool(r.tokens_estimated)
    add_tokens(conn, row, prompt, completion, estimated)


def add_tokens(
    conn: sqlite3.Connection, row: int, prompt: int, completion: int, estimated: bool = False
) -> None:
    """Tokens to the run's row, inside the caller's transaction."""
    if prompt or completion:
        # Saturating at the 64 bits a column holds: counts a server may send (each one fits)
        # can sum beyond them, and a failed write would take the group's answers with it. A
        # spend that large passes any cap all the same.
        conn.execute(
            f"UPDATE spend SET prompt_tokens = min(prompt_tokens + ?, {INT64_MAX}), "
            f"completion_tokens = min(completion_tokens + ?, {INT64_MAX}), "
            "estimated = max(estimated, ?) WHERE rowid = ?",
            (min(prompt, INT64_MAX), min(completion, INT64_MAX), int(estimated), row),
        )


def total(
    conn: sqlite3.Connection,
    rows: Sequence[int] | None = None,
    *,
    since: float | None = None,
    until: float | None = None,
) -> Spend:
    """Every run's spend (or one run's, by its rows; or of the runs started since or before a
    time, a --restart's)."""
    has = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE name = 'spend' AND type = 'table'"
    ).fetchone()
    if not has:  # a read-only look at a checkpoint from before the table
        return Spend()
    where = f"WHERE rowid IN ({', '.join('?' * len(rows))})" if rows is not None else ""
    params: tuple[float, ...] = tuple(rows or ())
    if since is not None or until is not None:
        where = "WHERE started >= ? AND started < ?"
        params = (-math.inf if since is None else since, math.inf if until is None else until)
    found = conn.execute(
        # total(), not sum(): sum() of integers fails past 64 bits ("integer overflow").
        f"SELECT batch, min(total(prompt_tokens), {INT64_MAX}), "
        f"min(total(completion_tokens), {INT64_MAX}), "
        "coalesce(sum((prompt_tokens * coalesce(price_in, 0) + completion_tokens * "
        f"coalesce(price_out, 0)) / 1e6), 0), coalesce(max(estimated), 0) FROM spend {where} "
        "GROUP BY batch",
        params,
    ).fetchall()
    sums = {bool(batch): (int(p), int(c), float(d), bool(e)) for batch, p, c, d, e in found}
    online, batch = sums.get(False, (0, 0, 0.0, False)), sums.get(True, (0, 0, 0.0, False))
    return Spend(
        online[0] + batch[0],
        online[1] + batch[1],
        online[2] + batch[2],
        online[3] or batch[3],
        batch[0],
        batch[1],
        batch[2],
    )


def mean_output(conn: sqlite3.Connection, ident: bytes) -> float | None:
    """The mean output tokens of the answers kept for this identity; None without any."""
    found = conn.execute(
        "SELECT avg(completion_tokens) FROM results WHERE ident = ? AND completion_tokens IS "
        "NOT NULL",
        (ident,),
    ).fetchone()
    return None if found is None or found[0] is None else float(found[0])
