"""The checkpoint's tables, which schema a file holds, and the upgrades of older ones.

Schema 3 keys answers by request fingerprint (batchpizza.fingerprint): `results` holds one row
per (identity, request key), several per input row id when it was asked with several models,
parameters or prompts, and `identities` what each identity digest stands for. Schema 4 adds
`staged`: a run's results land there, appended in the order they finish, and are folded into
`results` in one sorted pass (store.py says why); a schema 3 file only gains the empty table.
Schema 5 adds the Batch API's `batch_files` and `batch_lines` (batches.py); a schema 4 file
gains them, empty, when it is opened for writing. Schema 5 later gained, without a new version,
the kept to-do set `todo` (todo.py: a file without it gets it empty, and its first plan fills it)
the index `scan_bad` of the scan's bad rows (made on open, one pass over the scan), and `taken`,
the answers rows took from others (taken.py: a file without it gets it empty).
Schema 2 keyed
answers by row id and prompt digest; its answers are upgraded to the identity of the run that
wrote them where the runs table says it (a Pizzagpt run, whose request key is the prompt's
digest, as it was), else to fingerprint.UNKNOWN (asked again, and counted as such). Schema 1 is
schema 2 with fewer result columns.
"""

from __future__ import annotations

import json
import sqlite3
from importlib import metadata
from pathlib import Path
from typing import Any

import batchpizza.fingerprint as fingerprint
from batchpizza.checkpoint.batches import TABLES_SQL as BATCH_TABLES
from batchpizza.checkpoint.foreign import ORIGIN
from batchpizza.checkpoint.scan import SCHEMA as SCAN_SCHEMA
from batchpizza.checkpoint.spend import SPEND
from batchpizza.checkpoint.taken import TABLE as TAKEN
from batchpizza.checkpoint.todo import TABLE as TODO
from batchpizza.errors import CheckpointIsFolder, CheckpointVersionError

SCHEMA_VERSION = "5"
# What this version opens: 1 and 2 are upgraded to 3, 3 to 4 (the staged table added), and 4 to
# 5 (the Batch API's tables, checkpoint/batches.py, and the spend table, spend.py, added), each
# inside the open's transaction.
READABLE_SCHEMAS = ("1", "2", "3", "4", "5")
# `body`: the server's reply body (an OpenAI-compatible server's), kept for --format openai-batch
# only, null elsewhere; added to a schema 3 file on open (ADDED_TO_3), without a new version.
RESULT_COLUMNS = """
    ident BLOB NOT NULL,
    digest BLOB NOT NULL,
    id TEXT NOT NULL,
    finish_reason TEXT NOT NULL,
    answer TEXT,
    error TEXT,
    attempts INTEGER NOT NULL,
    latency_ms REAL,
    model TEXT,
    updated REAL NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    response_id TEXT,
    request_id TEXT,
    body BLOB,
    tokens_estimated INTEGER"""
RESULTS = f"""
CREATE TABLE IF NOT EXISTS results (
{RESULT_COLUMNS},
    -- Not the primary key of a table WITHOUT ROWID: the fingerprint is random, and rows (their
    -- answers) inserted in random key order cost twice the CPU of rows appended (measured:
    -- 0.26 s against 0.23 s for 20,000 results): an index of the key alone is cheaper.
    UNIQUE (ident, digest)
);
CREATE INDEX IF NOT EXISTS results_by_id ON results (id);
"""
# Results of a run not yet folded into `results`: no index, so that a group commit appends.
STAGED = f"CREATE TABLE IF NOT EXISTS staged ({RESULT_COLUMNS})"
# The columns of both, by name (a fold copies them).
RESULT_NAMES = ", ".join(
    line.split()[0] for line in RESULT_COLUMNS.strip().splitlines() if line.strip()
)
# The scan's bad rows by position: the count a run starts with, without reading every row.
SCAN_BAD = "CREATE INDEX IF NOT EXISTS scan_bad ON scan (pos) WHERE bad IS NOT NULL"
TABLES_SQL = f"""
{RESULTS}
{STAGED};
CREATE TABLE IF NOT EXISTS identities (
    ident BLOB PRIMARY KEY, version INTEGER NOT NULL, identity TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attempts (
    run INTEGER, row_id TEXT, started REAL, duration_ms REAL, outcome TEXT, status INTEGER,
    error TEXT
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, started REAL, ended REAL, rows_sent INTEGER, exit_code INTEGER,
    options TEXT
);
CREATE TABLE IF NOT EXISTS events (run INTEGER, t REAL, kind TEXT, value REAL, detail TEXT);
{SPEND};
{SCAN_SCHEMA.format(table="scan")};
{SCAN_BAD};
{TODO};
{TAKEN};
{BATCH_TABLES}
"""
TABLES = frozenset(
    {"results", "staged", "identities", "meta", "attempts", "runs", "events", "scan",
     "batch_files", "batch_lines", "spend", "todo", "taken"}
)  # fmt: skip
# Columns a checkpoint of schema 1 lacks.
_ADDED_COLUMNS = (
    ("prompt_tokens", "INTEGER"),
    ("completion_tokens", "INTEGER"),
    ("response_id", "TEXT"),
    ("request_id", "TEXT"),
)
# Columns added to schema 3 since it was first written: nullable, so a checkpoint that lacks
# them reads as one whose rows have none; added when one is opened for writing.
ADDED_TO_3 = (("body", "BLOB"), ("tokens_estimated", "INTEGER"))
# What an upgrade from schema 1 or 2 drops of the meta table (with the scan it described).
NOT_KEPT_META = "('scan_key', 'scan_info')"
# Answers an upgrade moves at once (_move_answers).
MOVED_AT_ONCE = 10_000
_KEPT = (
    "id, digest, finish_reason, answer, error, attempts, latency_ms, model, updated, "
    "prompt_tokens, completion_tokens, response_id, request_id"
)


def version() -> str:
    try:
        return metadata.version("batchpizza")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source tree never installed
        return "0.0.0"


def schema_of(conn: sqlite3.Connection, path: Path | None) -> str | None:
    """The schema of the checkpoint `conn` holds: None for a new one (no tables yet), else one of
    READABLE_SCHEMAS; anything else raises CheckpointVersionError, naming what was found."""
    tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return None
    meta: dict[str, str] = {}
    if "meta" in tables:
        meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('schema', 'version')"))
    found = meta.get("schema")
    this = f"this batchpizza ({version()}) reads checkpoint schemas {', '.join(READABLE_SCHEMAS)}"
    written_by = f" by batchpizza {meta['version']}" if meta.get("version") else ""
    if found in READABLE_SCHEMAS:
        if "identities" in tables:
            newest = conn.execute("SELECT max(version) FROM identities").fetchone()[0]
            if isinstance(newest, int) and newest > fingerprint.VERSION:
                raise CheckpointVersionError(
                    f"checkpoint {path} holds request fingerprints of version {newest}, "
                    f"written{written_by or ' by a newer batchpizza'}; this batchpizza "
                    f"({version()}) knows version {fingerprint.VERSION} and cannot tell which "
                    "answers answer which request. Upgrade batchpizza to use it, or give "
                    "another --checkpoint."
                )
        return found
    if found is None and tables <= TABLES and _empty(conn, tables):
        return None  # our tables, created by a run killed before it stamped them: a new one
    if found is None:
        raise CheckpointVersionError(
            f"checkpoint {path} has tables but no schema version: it is not a batchpizza "
            f"checkpoint, or a damaged one; {this}. Give another --checkpoint, or move it aside "
            "to start over."
        )
    if found.isdigit() and int(found) > int(SCHEMA_VERSION):
        raise CheckpointVersionError(
            f"checkpoint {path} was written{written_by or ' by a newer batchpizza'} (schema "
            f"{found}); {this}. Upgrade batchpizza to use it, or give another --checkpoint."
        )
    raise CheckpointVersionError(
        f"checkpoint {path} has an unknown schema version {found[:40]!r}{written_by}; {this}. "
        "Give another --checkpoint, or move it aside to start over."
    )


def _empty(conn: sqlite3.Connection, tables: set[str]) -> bool:
    return all(
        conn.execute(f"SELECT count(*) FROM (SELECT 1 FROM {t} LIMIT 1)").fetchone()[0] == 0
        for t in tables & {"results", "meta"}
    )


def run_identity(options: dict[str, Any]) -> dict[str, Any] | None:
    """The identity a run of schema 2 asked with, from the options it recorded; None where they
    do not say it all (an OpenAI-compatible run did not record its parameters)."""
    from batchpizza.identities import identity_of  # not the providers': no aiohttp for `status`

    if "provider" not in options or (options["provider"] == "openai" and "params" not in options):
        return None
    return identity_of(options["provider"], options.get("model"), options.get("params") or {})


def record_identity(conn: sqlite3.Connection, identity: dict[str, Any]) -> bytes:
    ident = fingerprint.identity_digest(identity)
    conn.execute(
        "INSERT OR IGNORE INTO identities VALUES (?, ?, ?)",
        (ident, fingerprint.VERSION, json.dumps(identity, sort_keys=True)),
    )
    return ident


# The identity a schema 1 or 2 answer (`o`) is upgraded to: that of the last run started before
# it was written (temp.run_ident, see run_idents), else fingerprint.UNKNOWN.
IDENT_OF_OLD = (
    "coalesce((SELECT i.ident FROM temp.run_ident i WHERE i.started <= o.updated "
    f"ORDER BY i.started DESC LIMIT 1), x'{fingerprint.UNKNOWN.hex()}')"
)


def run_idents(conn: sqlite3.Connection) -> None:
    """temp.run_ident: when each run of a schema 1 or 2 file started and the identity it asked
    with (recorded in `identities`), for IDENT_OF_OLD; the last run's recorded in meta as what
    `status` counts against."""
    conn.execute("CREATE TEMP TABLE run_ident (started REAL, ident BLOB)")
    ident = None
    for started, options in conn.execute(
        "SELECT started, options FROM runs ORDER BY id"
    ).fetchall():
        try:
            recorded = json.loads(options or "{}")
        except ValueError:
            recorded = {}
        identity = run_identity(recorded) if isinstance(recorded, dict) else None
        ident = fingerprint.UNKNOWN if identity is None else record_identity(conn, identity)
        conn.execute("INSERT INTO temp.run_ident VALUES (?, ?)", (started, ident))
    if ident is not None:
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('identity', ?)", (ident.hex(),))


def upgrade(conn: sqlite3.Connection, found: str) -> None:
    """Schema 1 or 2 -> 3, inside the caller's transaction (after TABLES_SQL made what is new).
    Every answer is kept: under the identity of the run that wrote it where the runs table says
    it, else under fingerprint.UNKNOWN."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(results)")}
    if "ident" in have:
        return
    if found == "1":
        for name, kind in _ADDED_COLUMNS:
            if name not in have:
                conn.execute(f"ALTER TABLE results ADD COLUMN {name} {kind}")
    # The scan's rows lack the request digest: the next run scans again. Dropped first, so that
    # the answers moved below fill its pages, not new ones at the file's end.
    conn.execute("DROP TABLE scan")
    conn.execute(SCAN_SCHEMA.format(table="scan"))
    conn.execute(SCAN_BAD)
    conn.execute("DROP INDEX IF EXISTS results_by_id")  # made on the old table by TABLES_SQL
    conn.execute("ALTER TABLE results RENAME TO results_v2")
    for statement in RESULTS.split(";"):  # not executescript: it would commit the transaction
        if statement.strip():
            conn.execute(statement)
    run_idents(conn)
    _move_answers(conn)
    conn.execute("DROP TABLE results_v2")
    conn.execute("DROP TABLE temp.run_ident")
    conn.execute(f"DELETE FROM meta WHERE key IN {NOT_KEPT_META}")


def _move_answers(conn: sqlite3.Connection) -> None:
    """The old results into the new table, MOVED_AT_ONCE at a time in id order (the old key), each
    group deleted from the old table as it is copied: the pages it frees take the next groups.
    Copied whole and then dropped, the old table's pages stayed in the file, free (an upgrade of
    1,000,000 answers left a file of twice its data). In id order, as the copy whole was, so
    that of two answers of one request the first id's is kept."""
    while True:
        bound = conn.execute(
            "SELECT id FROM results_v2 ORDER BY id LIMIT 1 OFFSET ?", (MOVED_AT_ONCE - 1,)
        ).fetchone()
        until = "" if bound is None else "WHERE o.id <= ?1 "
        conn.execute(
            f"INSERT OR IGNORE INTO results (ident, {_KEPT}) SELECT {IDENT_OF_OLD}, {_KEPT} "
            f"FROM results_v2 o {until}ORDER BY o.id",
            () if bound is None else bound,
        )
        if bound is None:
            return
        conn.execute("DELETE FROM results_v2 WHERE id <= ?", bound)


def has_data(path: Path) -> bool:
    """Is there a checkpoint at `path`? An empty file is none: the run lock creates the file it
    locks before SQLite writes its first page (see lock.py). A folder is a --ray run's."""
    if path.is_dir():  # SQLite said only "disk I/O error"
        raise CheckpointIsFolder(path)
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def create_tables(conn: sqlite3.Connection, found: str | None) -> None:
    """The tables of a new checkpoint, or those an older schema lacks and its upgrade (inside
    the caller's transaction: executescript would commit it)."""
    upgrade_from = found if found in ("1", "2") else None
    for statement in TABLES_SQL.split(";"):
        # The old tables these index are replaced by the upgrade, which indexes the new ones.
        made_later = "results_by_id" in statement or "scan_bad" in statement
        if statement.strip() and not (upgrade_from and made_later):
            conn.execute(statement)
    if upgrade_from is not None:
        upgrade(conn, upgrade_from)
    elif found is not None:
        for table in ("results", "staged"):
            have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            for name, kind in ADDED_TO_3:
                if name not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
        have = {row[1] for row in conn.execute("PRAGMA table_info(batch_files)")}
        if ORIGIN[0] not in have:  # where a file's batch went (foreign.py), since schema 5
            conn.execute(f"ALTER TABLE batch_files ADD COLUMN {' '.join(ORIGIN)}")


def new_in_memory() -> sqlite3.Connection:
    # uri: a read-only view of an older schema's file attaches it by a read-only URI (reading.py).
    conn = sqlite3.connect(":memory:", uri=True, isolation_level=None, check_same_thread=False)
    create_tables(conn, None)
    conn.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
    return conn


def fold(conn: sqlite3.Connection) -> None:
    """Staged results into `results`, inside the caller's transaction: sorted by key, so the
    key's index takes them in one pass over its pages, and in the order they were staged within
    a key, so the later result of a request replaces the earlier one."""
    conn.execute(
        f"INSERT OR REPLACE INTO results ({RESULT_NAMES}) SELECT {RESULT_NAMES} FROM staged "
        "ORDER BY rowid"
    )
    conn.execute("DELETE FROM staged")
