"""Rows that took another row's answer: what the plan's reasons need to know of them.

A result is kept under the row that asked it (`results.id`); a row of the same request took
its answer (`reused_from`) without a result of its own. Once its prompt changed, the plan found
no result of its id and called it a new row. `taken` keeps, for such a row, the requests whose
answers it took (identity and request key) and when those were written, in the shape of the
results' columns the plan's reasons read, so that they read both alike (`asked`).

It is written when that is about to be lost: when a new scan replaces the one that says which
request each row made (`adopt_scan`), for the rows of the old scan whose row (id, request) the
new one does not hold at the same position (an edit, a removal, a shift; an appended row
changes nothing). A row still the same keeps its request, and is written once it changes; the
answer it took stays (answers are never deleted but by --restart, which drops this table too).
A dry run writes nothing: its view holds them in a temporary table of the same name.
"""

from __future__ import annotations

import sqlite3

TABLE = (
    "CREATE TABLE IF NOT EXISTS taken (id TEXT NOT NULL, ident BLOB NOT NULL, "
    "digest BLOB NOT NULL, updated REAL NOT NULL, PRIMARY KEY (id, ident, digest)) WITHOUT ROWID"
)


def asked(where: str) -> str:
    """SQL: is there a request a row asked, or took the answer of, such that `where` (over `o`,
    with the columns id, ident, digest, updated)?"""
    return (
        f"(EXISTS (SELECT 1 FROM results o WHERE {where}) OR "
        f"EXISTS (SELECT 1 FROM taken o WHERE {where}))"
    )


def last_asked(where: str) -> str:
    """SQL: the identity of the request a row last asked or took the answer of, such that
    `where` (over `o`); null where there is none."""
    return (
        f"(SELECT ident FROM (SELECT o.ident, o.updated FROM results o WHERE {where} UNION ALL "
        f"SELECT o.ident, o.updated FROM taken o WHERE {where}) ORDER BY updated DESC LIMIT 1)"
    )


def record(conn: sqlite3.Connection, old: str, new: str, into: str = "taken") -> int:
    """Into `into`, the answers each row of the scan `old` took from another row, where the scan
    `new` does not hold that row as it was at its position (see the module's docstring); how
    many. Inside the caller's transaction. A row's request key is its request digest, or its
    text digest for a provider that sends only text (fingerprint.keyed_by_text): each looked
    up under every identity the checkpoint knows (a handful), by the results' key; CROSS JOIN
    keeps that order (given both digests at once by IN, SQLite read every result for each row:
    42 s for 200,000 rows)."""
    recorded = 0
    for key in ("digest", "said"):
        recorded += conn.execute(
            f"INSERT OR IGNORE INTO {into} (id, ident, digest, updated) "
            f"SELECT r.id, c.ident, c.digest, c.updated FROM {old} r LEFT JOIN {new} n ON "
            f"n.pos = r.pos CROSS JOIN identities i CROSS JOIN results c ON c.ident = i.ident "
            f"AND c.digest = r.{key} WHERE r.bad IS NULL AND r.id IS NOT NULL AND r.{key} IS NOT "
            "NULL AND NOT (n.id IS r.id AND n.digest IS r.digest AND n.said IS r.said) AND "
            "c.id IS NOT r.id"
        ).rowcount
    return recorded


def _has(conn: sqlite3.Connection, schema: str) -> bool:
    found = f"SELECT 1 FROM {schema}.sqlite_master WHERE type = 'table' AND name = 'taken'"
    return conn.execute(found).fetchone() is not None


def readable(conn: sqlite3.Connection) -> None:
    """On a read-only connection to a file from before the table: an empty one in its place."""
    if not _has(conn, "main") and not _has(conn, "temp"):
        conn.execute(TABLE.replace(" taken ", " temp.taken ", 1))


def planned(conn: sqlite3.Connection, old: str, new: str) -> None:
    """A dry run's view (read-only): the file's `taken` as adopting the scan `new` in place of
    `old` would leave it, in a temporary table that shadows the file's."""
    copied = _has(conn, "main")
    conn.execute(TABLE.replace(" taken ", " temp.taken ", 1))
    if copied:
        conn.execute("INSERT INTO temp.taken SELECT * FROM main.taken")
    record(conn, old, new, into="temp.taken")
