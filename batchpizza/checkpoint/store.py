"""The checkpoint: one SQLite file, the single source of truth for resume, and the one owner of
every table in it:

    results   the last outcome of every row ever sent, by id (answers are never deleted on a rerun)
    scan      the validated input of the last run, reused while the input files are unchanged
    attempts  every request sent: row, start, duration, outcome (for the report)
    runs      each run's start, end, options and exit code
    events    the learned rate's changes and the breaker's trips, over time
    meta      schema version (and the batchpizza that wrote it), the learned rate, what the last
              run read

A row is finished once its record is committed here, and not before. Results are committed in
groups: whatever finished while the previous commit was being written goes into the next one. No
row can fail a group for the others: a value SQLite cannot bind (a lone surrogate, an integer
beyond 64 bits) is made storable by batchpizza.storable's rules, and a row that still cannot be
stored becomes an error row saying so (sent again by the next run).

A checkpoint says which schema it has; one this version does not know (a newer batchpizza's, or
no schema at all in a file with tables) is refused, never rewritten. Schema 1 is upgraded to 2.

Settings, chosen for what they promise:
- journal_mode=WAL: a commit appends to the write-ahead log; a kill -9 mid-commit leaves the last
  commit either whole or absent. A commit that returned is in the operating system's cache, so a
  crash or kill of batchpizza loses nothing committed.
- synchronous=NORMAL, and the log made durable within SYNC_INTERVAL seconds of every commit (a WAL
  checkpoint, which fsyncs the log first; the runner's Committer syncs after a commit when one is
  due, on a timer while none comes, and once when it closes): a power loss can cost the answers of
  the last second at most; they are sent again, and the file is never corrupted. Measured: synchronous=FULL (an fsync
  per group commit) cost a third of the throughput at zero latency, because rows hold their
  concurrency slot until committed (20,000 rows: 2.8 s against 1.97 s).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from batchpizza import storable
from batchpizza.checkpoint.scan import SCHEMA as SCAN_SCHEMA
from batchpizza.checkpoint.scan import ScanIndex
from batchpizza.errors import CheckpointMissing, CheckpointVersionError, OutputError
from batchpizza.records import (
    Attempt,
    OutputRow,
    Result,
    Tally,
    invalid_row,
    pending_row,
)

log = logging.getLogger("batchpizza")

SCHEMA_VERSION = "2"
READABLE_SCHEMAS = ("1", "2")  # what this version opens; 1 is upgraded to 2 when opened to write
SYNC_INTERVAL = 1.0  # seconds of answers a power loss may cost at most (see above)
PAGE = 4096
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS results (
    id TEXT PRIMARY KEY,
    digest BLOB NOT NULL,
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
    request_id TEXT
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
{SCAN_SCHEMA.format(table="scan")};
"""
# Columns a checkpoint of schema 1 lacks; added on open, so an old checkpoint still resumes.
_ADDED_COLUMNS = (
    ("prompt_tokens", "INTEGER"),
    ("completion_tokens", "INTEGER"),
    ("response_id", "TEXT"),
    ("request_id", "TEXT"),
)
# The columns Result and Attempt fill, named after their fields, so a row is the tuple itself.
_RESULT_NAMES = ", ".join(Result._fields)
_ATTEMPT_NAMES = ", ".join(("run", *Attempt._fields))
_INSERT_RESULT = (
    f"INSERT OR REPLACE INTO results ({_RESULT_NAMES}, updated) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_ATTEMPT = f"INSERT INTO attempts ({_ATTEMPT_NAMES}) VALUES (?, ?, ?, ?, ?, ?, ?)"
_UNANSWERED = "('error', 'misuse', 'invalid', 'pending')"
_TABLES = frozenset({"results", "meta", "attempts", "runs", "events", "scan"})
# What binding a value SQLite cannot hold raises: a str with a lone surrogate, an int beyond 64
# bits, a value of another type. Never a failing disk (that is an OperationalError).
_UNBINDABLE = (UnicodeEncodeError, OverflowError, sqlite3.InterfaceError, sqlite3.ProgrammingError)
_UNANSWERED_BUT_REFUSED = "('error', 'invalid', 'pending')"  # what a rerun sends by default


def _sqlite_error(path: Path | None, exc: sqlite3.Error) -> OutputError:
    hint = ". If it is damaged, move it aside to start over." if "malformed" in str(exc) else ""
    return OutputError(f"checkpoint {path}: {exc}{hint}")


def _version() -> str:
    try:
        return metadata.version("batchpizza")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source tree never installed
        return "0.0.0"


def _has_data(path: Path) -> bool:
    """Is there a checkpoint at `path`? An empty file is none: the run lock creates the file it
    locks before SQLite writes its first page (see lock.py)."""
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def _schema_of(conn: sqlite3.Connection, path: Path | None) -> str | None:
    """The schema of the checkpoint `conn` holds: None for a new one (no tables yet), else one of
    READABLE_SCHEMAS; anything else raises CheckpointVersionError, naming what was found."""
    tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return None
    meta: dict[str, str] = {}
    if "meta" in tables:
        meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('schema', 'version')"))
    found = meta.get("schema")
    if found in READABLE_SCHEMAS:
        return found
    if found is None and tables <= _TABLES and _empty(conn, tables):
        return None  # our tables, created by a run killed before it stamped them: a new one
    this = f"this batchpizza ({_version()}) reads checkpoint schemas {', '.join(READABLE_SCHEMAS)}"
    written_by = f" by batchpizza {meta['version']}" if meta.get("version") else ""
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


def _readonly_uri(path: Path) -> str:
    return path.resolve().as_uri() + "?mode=ro"  # as_uri escapes # ? % in the path


def _reading_uri(path: Path) -> str:
    """A read-only URI that leaves nothing beside the file. A read of a database in WAL mode
    makes a -wal and a -shm file unless it is `immutable`; immutable is right when there is no
    log (no run is writing, and the last one ended cleanly). With a log, the log must be read."""
    wal = path.with_name(path.name + "-wal")
    return _readonly_uri(path) + ("" if wal.exists() else "&immutable=1")


class Checkpoint:
    """The store at `path`. Open with `Checkpoint.open`, or `Checkpoint.planning` for a dry run."""

    def __init__(self, path: Path | None, conn: sqlite3.Connection, readonly: bool = False) -> None:
        self.path = path
        self._conn = conn
        self._readonly = readonly
        self._synced = time.monotonic()
        self._identity = _identity(path) if path is not None and not readonly else None

    @classmethod
    def open(cls, path: Path, *, create: bool = True, readonly: bool = False) -> Checkpoint:
        if not create and not path.exists():
            raise CheckpointMissing(f"no checkpoint at {path}")
        if readonly:
            try:
                if _has_data(path):
                    conn = sqlite3.connect(
                        _reading_uri(path), uri=True, isolation_level=None, check_same_thread=False
                    )
                    _schema_of(conn, path)
                else:  # a run that just took its lock: nothing in it yet, as in a new one
                    conn = sqlite3.connect(
                        ":memory:", isolation_level=None, check_same_thread=False
                    )
                    conn.executescript(_SCHEMA)
                conn.execute("SELECT 1 FROM results LIMIT 1")
            except sqlite3.DatabaseError as exc:
                raise _sqlite_error(path, exc) from None
            return cls(path, conn, readonly=True)
        try:
            # check_same_thread=False: the periodic sync and the output run in worker threads,
            # one at a time.
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.DatabaseError as exc:
            raise _sqlite_error(path, exc) from None
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            found = _schema_of(conn, path)  # before anything is written: refused, it stays as is
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            # Checkpoints (which fsync) are ours, once a second in a thread (see sync), so that
            # a commit on the event loop never waits for the disk.
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            # One transaction, so that no checkpoint has tables without a schema version.
            conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
            if found == "1":
                have = {row[1] for row in conn.execute("PRAGMA table_info(results)")}
                for name, kind in _ADDED_COLUMNS:
                    if name not in have:
                        conn.execute(f"ALTER TABLE results ADD COLUMN {name} {kind}")
            stamp = {"schema": SCHEMA_VERSION, "version": _version()}
            kept = "SELECT key, value FROM meta WHERE key IN ('schema', 'version')"
            if dict(conn.execute(kept)) != stamp:
                conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", stamp.items())
        except (sqlite3.DatabaseError, CheckpointVersionError) as exc:
            conn.close()
            if isinstance(exc, CheckpointVersionError):
                raise
            raise _sqlite_error(path, exc) from None
        return cls(path, conn)

    @classmethod
    def in_memory(cls) -> Checkpoint:
        """A checkpoint that lives as long as this object, for rows in memory without a file:
        the same plan, results and tallies, nothing on disk."""
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        conn.executescript(_SCHEMA)
        conn.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        return cls(None, conn)

    @classmethod
    def peek_scan(cls, path: Path, key: str) -> dict[str, Any] | None:
        """The scan info `scan_info` would give, read without leaving a trace: an immutable
        read opens no log and no shared-memory file beside the checkpoint. It may miss the
        last commits (those in the log): the caller checks again once it holds the file."""
        try:
            conn = sqlite3.connect(_reading_uri(path), uri=True)
        except sqlite3.Error:
            return None
        try:
            return cls(None, conn, readonly=True).scan_info(key)
        except (sqlite3.Error, OutputError, ValueError, KeyError):
            return None
        finally:
            conn.close()

    @classmethod
    def planning(cls, path: Path | None, scan: ScanIndex) -> Checkpoint:
        """A read-only view for a dry run: the checkpoint at `path` if there is one (else an empty
        one in memory) with `scan` standing in for its scan table. Nothing on disk changes."""
        try:
            if path is not None and _has_data(path):
                conn = sqlite3.connect(
                    _reading_uri(path), uri=True, isolation_level=None, check_same_thread=False
                )
                _schema_of(conn, path)
                conn.execute("SELECT 1 FROM results LIMIT 1")
            else:
                conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
                conn.executescript(_SCHEMA)
            conn.execute("ATTACH DATABASE ? AS scanned", (scan.uri,))
            # A temporary view shadows the checkpoint's own scan table by name.
            conn.execute("CREATE TEMP VIEW scan AS SELECT * FROM scanned.rows")
        except sqlite3.DatabaseError as exc:
            raise _sqlite_error(path, exc) from None
        return cls(path, conn, readonly=True)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            if not self._readonly:
                self.sync()
            self._conn.close()

    # -- results ------------------------------------------------------------------------------

    def write(
        self, results: Sequence[Result], attempts: Sequence[Attempt] = (), run: int = 0
    ) -> None:
        """Commit a group of results (and the attempts behind them) at once: a write to the log,
        no fsync (see sync). A row SQLite cannot bind fails alone, never the group (see
        _insert_result)."""
        self._check_identity()
        now = time.time()
        # Result and Attempt are named tuples of the columns: (*r, now) is the row as it is.
        # (dataclasses.astuple, when they were dataclasses, deep-copied every field: 12.5 us a
        # row, 6 % of a run's CPU at zero latency.)
        rows = [(*r, now) for r in results]
        conn = self._conn
        with self._transaction():
            try:  # no rows: only attempts of rows a stop left unfinished
                conn.executemany(_INSERT_RESULT, rows)
            except _UNBINDABLE:
                # The rows before the one that failed are in; INSERT OR REPLACE makes writing
                # them again harmless. One at a time, so that only that row pays.
                for row in rows:
                    self._insert_result(row)
            if attempts:
                attempt_rows = [(run, *a) for a in attempts]
                before = conn.total_changes
                try:
                    conn.executemany(_INSERT_ATTEMPT, attempt_rows)
                except _UNBINDABLE:  # the ones before the failing one are in: go on from it
                    for attempt in attempt_rows[conn.total_changes - before :]:
                        self._insert_attempt(attempt)
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('updated', ?)", (now,))

    def _insert_result(self, row: tuple[Any, ...]) -> None:
        """One result row: as it is, else made storable (a lone surrogate as U+FFFD, an integer
        beyond 64 bits as null), else as an error row saying why, so the next run sends it
        again. A provider makes its server's values storable itself: this is the last guard."""
        try:
            self._conn.execute(_INSERT_RESULT, row)
            return
        except _UNBINDABLE:
            pass
        fixed = tuple(_storable(v) for v in row)
        try:
            self._conn.execute(_INSERT_RESULT, fixed)
            log.warning("row %s: a value the checkpoint cannot hold was made storable", row[0])
            return
        except _UNBINDABLE as exc:
            problem = storable.text(f"{type(exc).__name__}: {exc}")
        row_id, digest, attempts, latency, updated = (fixed[i] for i in (0, 1, 5, 6, -1))
        error = f"the result could not be stored in the checkpoint ({problem}); sent again next run"
        self._conn.execute(
            _INSERT_RESULT,
            (
                row_id,
                digest,
                "error",
                None,
                error,
                attempts if isinstance(attempts, int) else 0,
                latency if isinstance(latency, float) else None,
                None,
                None,
                None,
                None,
                None,
                updated,
            ),
        )

    def _insert_attempt(self, row: tuple[Any, ...]) -> None:
        """One attempt row (for the report): as it is, else made storable, else without its
        status and error."""
        for candidate in (row, tuple(_storable(v) for v in row)):
            try:
                self._conn.execute(_INSERT_ATTEMPT, candidate)
                return
            except _UNBINDABLE:
                continue
        self._conn.execute(_INSERT_ATTEMPT, (*candidate[:5], None, None))

    def _check_identity(self) -> None:
        """A checkpoint deleted or replaced under a run would take every later commit with it:
        stop instead of pretending (the next run would send everything again)."""
        if self._identity is not None and _identity(self.path) != self._identity:
            raise OutputError(
                f"checkpoint {self.path} was deleted or replaced during the run; "
                "answers since then are lost. Rerun the same command."
            )

    def sync_due(self) -> bool:
        return self.sync_delay() <= 0

    def sync_delay(self) -> float:
        """Seconds until the next sync is due (0 or less: now)."""
        return SYNC_INTERVAL - (time.monotonic() - self._synced)

    def sync(self) -> None:
        """Make every commit so far durable against power loss: a WAL checkpoint fsyncs the log
        (and then the database)."""
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.DatabaseError as exc:
            raise _sqlite_error(self.path, exc) from None
        self._synced = time.monotonic()

    def forget(self) -> None:
        """--restart: drop every result, attempt and event; the scan stays valid."""
        with self._transaction():
            for table in ("results", "attempts", "runs", "events"):
                self._conn.execute(f"DELETE FROM {table}")
            self._conn.execute("DELETE FROM meta WHERE key = 'learned_rate'")

    # -- meta ---------------------------------------------------------------------------------

    def set_meta(self, **values: object) -> None:
        with self._transaction():
            self._conn.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [(k, None if v is None else str(v)) for k, v in values.items()],
            )

    def meta(self) -> dict[str, str]:
        try:
            return dict(self._conn.execute("SELECT key, value FROM meta"))
        except sqlite3.DatabaseError as exc:
            raise _sqlite_error(self.path, exc) from None

    def learned_rate(self) -> float | None:
        value = self.meta().get("learned_rate")
        return float(value) if value else None

    # -- the scan -----------------------------------------------------------------------------

    def scan_info(self, key: str) -> dict[str, Any] | None:
        """What the last run's scan recorded, if it was of the input `key` names."""
        meta = self.meta()
        if meta.get("scan_key") != key or "scan_info" not in meta:
            return None
        info: dict[str, Any] = json.loads(meta["scan_info"])
        with self._errors():
            found = self._conn.execute("SELECT count(*) FROM scan").fetchone()[0]
        return info if found == info.get("total") else None

    def adopt_scan(self, scan: ScanIndex, key: str | None, info: dict[str, Any]) -> None:
        """Make `scan` this checkpoint's scan, for this run and for the next one to reuse."""
        conn = self._conn
        with self._errors():
            # Attached outside the transaction: SQLite cannot attach or detach inside one.
            conn.execute("ATTACH DATABASE ? AS scanned", (scan.uri,))
        try:
            with self._transaction():
                conn.execute("DELETE FROM scan")
                conn.execute("INSERT INTO scan SELECT * FROM scanned.rows")
                conn.executemany(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                    [("scan_key", key), ("scan_info", json.dumps(info))],
                )
        finally:
            with self._errors():
                conn.execute("DETACH DATABASE scanned")

    # -- the plan -----------------------------------------------------------------------------

    def plan(self, limit: int | None = None, *, retry_refused: bool = False) -> dict[str, int]:
        """Decide what to send: good rows without an answer for their current prompt (among the
        first `limit` rows), but not those refused as misuse unless `retry_refused`. Returns the
        counts a dry run prints."""
        where = "" if limit is None else f" AND r.pos < {int(limit)}"
        again = _UNANSWERED if retry_refused else _UNANSWERED_BUT_REFUSED
        with self._errors():
            conn = self._conn
            conn.execute("DROP TABLE IF EXISTS temp.todo")
            conn.execute("CREATE TEMP TABLE todo (pos INTEGER PRIMARY KEY, why TEXT)")
            conn.execute(
                "INSERT INTO temp.todo SELECT r.pos, CASE WHEN c.id IS NULL THEN 'new' "
                "WHEN c.digest IS NOT r.digest THEN 'changed' ELSE 'retry' END "
                "FROM scan r LEFT JOIN results c ON c.id = r.id WHERE r.bad IS NULL AND "
                "(c.id IS NULL OR c.digest IS NOT r.digest OR c.finish_reason IN "
                f"{again}){where} ORDER BY r.pos"
            )
            counts = dict(conn.execute("SELECT why, count(*) FROM temp.todo GROUP BY why"))
        return {k: int(counts.get(k, 0)) for k in ("new", "changed", "retry")}

    def todo_positions(self) -> Iterator[int]:
        last = -1
        while True:
            with self._errors():
                page = self._conn.execute(
                    "SELECT pos FROM temp.todo WHERE pos > ? ORDER BY pos LIMIT ?", (last, PAGE)
                ).fetchall()
            if not page:
                return
            for (pos,) in page:
                yield pos
            last = page[-1][0]

    _JOINED = (
        "FROM scan r LEFT JOIN results c ON r.bad IS NULL AND c.id = r.id AND c.digest = r.digest"
    )

    def output_rows(self, limit: int | None = None) -> Iterator[list[OutputRow]]:
        """Every row of the output, in input order, in pages. A row too broken to show an id gets
        its position, as rows without one do; a row not sent yet is pending."""
        last, end = -1, (limit if limit is not None else 1 << 62)
        while True:
            with self._errors():
                page = self._conn.execute(
                    "SELECT r.pos, CAST(coalesce(r.id, r.pos) AS TEXT), r.bad, r.digest, "
                    f"{', '.join('c.' + n.strip() for n in _RESULT_NAMES.split(',')[2:])} "
                    f"{self._JOINED} WHERE r.pos > ? AND r.pos < ? ORDER BY r.pos LIMIT ?",
                    (last, end, PAGE),
                ).fetchall()
            if not page:
                return
            last = page[-1][0]
            yield [_output_row(row) for row in page]

    def failure_statuses(self) -> dict[str, int]:
        """Row id -> the HTTP status of the last attempt of each row that failed or was refused,
        when that attempt got a non-2xx reply (a timeout has none; a 2xx without an answer is no
        HTTP failure). For OpenAI batch output lines; one pass over the attempts."""
        with self._errors():
            found = self._conn.execute(
                # SQLite takes a bare column from the row that holds the max().
                "SELECT a.row_id, a.status, max(a.started) FROM attempts a "
                f"JOIN results c ON c.id = a.row_id WHERE c.finish_reason IN {_UNANSWERED} "
                "GROUP BY a.row_id"
            ).fetchall()
        return {
            str(row_id): int(status)
            for row_id, status, _ in found
            if isinstance(status, int) and not 200 <= status < 300
        }

    def rows(self, limit: int | None = None) -> int:
        """How many rows the output has: `tally(limit).rows` without joining every row to its
        result (0.4 ms instead of 11 ms at 20,000 rows; it was asked twice a run)."""
        end = limit if limit is not None else 1 << 62
        with self._errors():
            found = self._conn.execute("SELECT count(*) FROM scan WHERE pos < ?", (end,)).fetchone()
        return int(found[0])

    def tally(self, limit: int | None = None) -> Tally:
        end = limit if limit is not None else 1 << 62
        with self._errors():
            found = self._conn.execute(
                "SELECT count(*), "
                f"sum(c.finish_reason IS NOT NULL AND c.finish_reason NOT IN {_UNANSWERED}), "
                "sum(c.finish_reason = 'error'), sum(c.finish_reason = 'misuse'), "
                f"sum(r.bad IS NOT NULL) {self._JOINED} WHERE r.pos < ?",
                (end,),
            ).fetchone()
        return Tally(*(int(x or 0) for x in found))

    def status(self) -> dict[str, object]:
        """Counts by outcome over the last run's rows, and what that run recorded of its input."""
        meta = self.meta()
        info: dict[str, object] = {"input": meta.get("input")}
        with self._errors():
            has_scan = self._conn.execute("SELECT count(*) FROM scan").fetchone()[0] > 0
        if has_scan:
            tally = self.tally()
            info.update(
                rows=tally.rows,
                answered=tally.answered,
                failed=tally.failed,
                misuse=tally.misuse,
                invalid=tally.invalid,
                pending=tally.pending,
            )
        else:  # a checkpoint from before the scan lived here: what its results say
            with self._errors():
                found = dict(
                    self._conn.execute("SELECT finish_reason, count(*) FROM results GROUP BY 1")
                )
            info.update(
                answered=sum(v for k, v in found.items() if k not in _UNANSWERED),
                failed=found.get("error", 0),
                misuse=found.get("misuse", 0),
                invalid=int(meta.get("invalid") or 0),
            )
            if meta.get("rows"):
                rows = int(meta["rows"])
                done = sum(found.values()) + int(meta.get("invalid") or 0)
                info.update(rows=rows, pending=max(0, rows - done))
        info["updated"] = float(meta["updated"]) if meta.get("updated") else None
        with self._errors():
            info["answers_kept"] = self._conn.execute(
                f"SELECT count(*) FROM results WHERE finish_reason NOT IN {_UNANSWERED}"
            ).fetchone()[0]
        return info

    def rows_by_reason(self) -> dict[str, int]:
        """The last run's output rows by finish reason (invalid and pending included)."""
        with self._errors():
            found = self._conn.execute(
                "SELECT CASE WHEN r.bad IS NOT NULL THEN 'invalid' "
                "ELSE coalesce(c.finish_reason, 'pending') END, count(*) "
                f"{self._JOINED} GROUP BY 1"
            ).fetchall()
        return {str(reason): int(count) for reason, count in found}

    # -- runs and events ----------------------------------------------------------------------

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

    def attempts(self) -> Iterator[tuple[int, str, float, float, str, int | None, str | None]]:
        """Every attempt ever recorded, oldest first, streamed."""
        with self._errors():
            cursor = self._conn.execute(
                "SELECT run, row_id, started, duration_ms, outcome, status, error FROM attempts "
                "ORDER BY started"
            )
        while page := cursor.fetchmany(PAGE):
            yield from page

    # -- plumbing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """The checkpoint can only fail here if it is damaged (or the disk is): say so, plainly."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise _sqlite_error(self.path, exc) from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:  # a full disk, a damaged file: a clear error
            raise _sqlite_error(self.path, exc) from None


def _storable(value: object) -> object:
    """`value` as SQLite can bind it, by batchpizza.storable's rules."""
    if isinstance(value, str):
        return storable.text(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value if -storable.INT64_MAX - 1 <= value <= storable.INT64_MAX else None
    return value


def _identity(path: Path | None) -> tuple[int, int] | None:
    try:
        st = path.stat() if path is not None else None
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if st is not None else None


def _output_row(row: tuple[Any, ...]) -> OutputRow:
    """An output row from the joined scan and results columns (see output_rows)."""
    (_pos, row_id, bad, digest, reason, *rest) = row
    if bad is not None:
        return invalid_row(row_id, bad)
    if reason is None:  # not sent yet: the run stopped early
        return pending_row(row_id, digest)
    answer, error, attempts, latency, model, ptok, ctok, response_id, request_id = rest
    # Built directly (answered_row would make a Result first): one of these per output row.
    return OutputRow(
        row_id, answer, reason, reason == "misuse", error, attempts, latency, model, ptok, ctok,
        response_id, request_id, digest,
    )  # fmt: skip
