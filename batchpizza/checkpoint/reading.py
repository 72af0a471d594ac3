"""Read-only connections to a checkpoint (`status`, `report`, a dry run): the file is never
written, and is read in the current schema's shape whatever schema it holds.

A file of schema 1 or 2 (the second wave's) is read where it lies, through temporary views: its
results as those of schema 3 (`ident` computed as the upgrade would, only by the queries that ask
for it; the columns it lacks null), beside an empty in-memory checkpoint that holds the tables it
lacks, the identities of its runs and its meta table as the upgrade leaves it. Copied into memory
and upgraded there, as before, a `status` of 1,000,000 answers took 5.5 s of CPU and 436 MB; read
where it lies, 0.75 s and 44 MB (44 MB at 100,000 too; tests/old_checkpoints.py's files; an
upgraded file: 0.6 s, 29 MB, the difference the providers imported to name the runs' identities).
One thing differs from the upgrade: answers of two rows of one prompt asked by one identity (one
request in schema 3) are both read, as the batchpizza that wrote them counted them; the upgrade
keeps the first. Telling them apart needs a sort of every answer. A dry run's plan joins the
answers by request and needs the upgrade's one answer per request and its index: it reads an
upgraded copy still (`read_only(path, upgraded=True)`).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from batchpizza.checkpoint import taken
from batchpizza.checkpoint.schema import (
    IDENT_OF_OLD,
    NOT_KEPT_META,
    RESULT_COLUMNS,
    RESULT_NAMES,
    create_tables,
    new_in_memory,
    run_idents,
    schema_of,
)

# The tables of schema 1 and 2 a current checkpoint keeps as they are (schema 2's DDL of them is
# today's); the first schema 1 files had results and meta only.
_KEPT_AS_THEY_ARE = ("attempts", "runs", "events")


def read_only(path: Path, *, upgraded: bool = False) -> sqlite3.Connection:
    """A read-only connection to the checkpoint at `path`. One of schema 1 or 2 is read through
    views (see above), or with `upgraded`, copied into memory and upgraded there."""
    conn = sqlite3.connect(
        reading_uri(path), uri=True, isolation_level=None, check_same_thread=False
    )
    found = schema_of(conn, path)
    if found is None:
        # No tables (a run killed as it made them, or as it removed a checkpoint it had just
        # made): nothing in it yet, as an empty file.
        conn.close()
        return new_in_memory()
    if found not in ("1", "2"):
        _shadow_staged(conn)
        taken.readable(conn)
        return conn
    if not upgraded:
        conn.close()
        return _older_in_place(path)
    copy = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    conn.backup(copy)
    conn.close()
    copy.execute("BEGIN")
    create_tables(copy, found)
    copy.execute("COMMIT")
    return copy


def _older_in_place(path: Path) -> sqlite3.Connection:
    """A schema 1 or 2 file attached read-only as `older` to an empty in-memory checkpoint, its
    tables in today's shape by temporary views, whose names come first."""
    conn = new_in_memory()
    try:
        conn.execute("ATTACH DATABASE ? AS older", (reading_uri(path),))
        tables = "SELECT name FROM older.sqlite_master WHERE type = 'table'"
        has = {name for (name,) in conn.execute(tables)}
        for table in _KEPT_AS_THEY_ARE:
            if table in has:
                conn.execute(f"CREATE TEMP VIEW {table} AS SELECT * FROM older.{table}")
        # Its meta as the upgrade leaves it (the scan it describes dropped: main.scan is empty),
        # with the identity of its last run (its runs' identities in the in-memory identities).
        conn.execute("DELETE FROM meta")
        conn.execute(
            f"INSERT INTO meta SELECT key, value FROM older.meta WHERE key NOT IN {NOT_KEPT_META}"
        )
        run_idents(conn)
        shaped = {row[1]: row[1] for row in conn.execute("PRAGMA older.table_info(results)")}
        shaped["ident"] = f"{IDENT_OF_OLD} AS ident"
        columns = ", ".join(shaped.get(n, f"NULL AS {n}") for n in RESULT_NAMES.split(", "))
        conn.execute(f"CREATE TEMP VIEW results AS SELECT {columns} FROM older.results o")
    except BaseException:
        conn.close()
        raise
    return conn


def _shadow_staged(conn: sqlite3.Connection) -> None:
    """On a read-only connection to a file whose last results are still staged (a run going
    on, or one killed before it folded them): `results` as a temporary view of both, the staged
    result the later where a request has two, so that every query reads what a fold would make.
    A temporary name shadows the file's table of that name."""
    has_staged = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'staged'"
    ).fetchone()
    if not has_staged or conn.execute("SELECT 1 FROM main.staged LIMIT 1").fetchone() is None:
        return
    conn.execute(f"CREATE TEMP TABLE tail ({RESULT_COLUMNS}, PRIMARY KEY (ident, digest))")
    # A file from before a column was added (ADDED_TO_3) lacks it in both tables: read as null.
    have = {row[1] for row in conn.execute("PRAGMA main.table_info(staged)")}
    kept = ", ".join(n if n in have else f"NULL AS {n}" for n in RESULT_NAMES.split(", "))
    conn.execute(f"INSERT OR REPLACE INTO temp.tail SELECT {kept} FROM main.staged ORDER BY rowid")
    conn.execute("CREATE INDEX temp.tail_by_id ON tail (id)")
    conn.execute(
        f"CREATE TEMP VIEW results AS SELECT {kept} FROM main.results o WHERE NOT EXISTS "
        "(SELECT 1 FROM temp.tail t WHERE t.ident = o.ident AND t.digest = o.digest) "
        f"UNION ALL SELECT {RESULT_NAMES} FROM temp.tail"
    )


def readonly_uri(path: Path) -> str:
    return path.resolve().as_uri() + "?mode=ro"  # as_uri escapes # ? % in the path


def reading_uri(path: Path) -> str:
    """A read-only URI that leaves nothing beside the file. A read of a database in WAL mode
    makes a -wal and a -shm file unless it is `immutable`; immutable is right when there is no
    log (no run is writing, and the last one ended cleanly). With a log, the log must be read."""
    wal = path.with_name(path.name + "-wal")
    return readonly_uri(path) + ("" if wal.exists() else "&immutable=1")
