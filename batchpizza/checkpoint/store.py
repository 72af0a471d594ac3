"""The checkpoint: one SQLite file, the single source of truth for resume, and the one owner of
every table in it:

    results   the last outcome of every request ever sent, by request fingerprint (provider,
              model, parameters, prompt as sent): answers are never deleted on a rerun
    identities  what each fingerprint's identity part stands for (provider, model, parameters)
    scan      the validated input of the last run, reused while the input files are unchanged
    todo      the slots of that scan without an answer yet, for the next run's plan (todo.py)
    taken     the answers rows took from other rows of the same request (taken.py)
    attempts  every request sent: row, start, duration, outcome (for the report)
    runs      each run's start, end, options and exit code
    events    the learned rate's changes and the breaker's trips, over time
    batch_files, batch_lines  the Batch API's files, batches and lines (batches.py)
    meta      schema version (and the batchpizza that wrote it), the learned rate, what the last
              run read

A row is finished once its record is committed here, and not before. Results are committed in
groups: whatever finished while the previous commit was being written goes into the next one.
A group lands in `staged`, a table without an index, where it is appended; the staged results are
folded into `results` (keyed by request fingerprint, a random digest) in one pass sorted by key
before anything reads them, when the run's output is written or the checkpoint closed, and when a
run opens a checkpoint a killed run left results staged in. A group commit straight into the
key's index touches a page of it per row (a random key), and each touched page is written to the
log: 0.24 s of CPU for 20,000 results, against 0.09 s staged plus 0.06 s for the fold (paired,
benchmarks/RESULTS.md, 2026-12-06). A reader of a file with staged results (status during a run)
sees them through a temporary view (reading.py). No
row can fail a group for the others: a value SQLite cannot bind (a lone surrogate, an integer
beyond 64 bits) is made storable by batchpizza.storable's rules, and a row that still cannot be
stored becomes an error row saying so (sent again by the next run).

A checkpoint says which schema it has; one this version does not know (a newer batchpizza's, or
no schema at all in a file with tables) is refused, never rewritten. Schemas 1 and 2 are upgraded
to 3 (schema.py), and read where they lie by `status` and `report` (reading.py); the plan and
the output's joins are in plan.py.

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
import logging
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import batchpizza.fingerprint as fingerprint
from batchpizza.checkpoint import binding, spend, taken
from batchpizza.checkpoint.batches import NOT_KEPT_BY_RESTART, BatchRecords, FileDone
from batchpizza.checkpoint.fitting import Fitting
from batchpizza.checkpoint.guarded import insert_group
from batchpizza.checkpoint.history import History
from batchpizza.checkpoint.reading import read_only, reading_uri
from batchpizza.checkpoint.scan import ScanIndex
from batchpizza.checkpoint.schema import (
    SCHEMA_VERSION,
    create_tables,
    fold,
    has_data,
    new_in_memory,
    record_identity,
    schema_of,
    version,
)
from batchpizza.checkpoint.spending import Spending
from batchpizza.checkpoint.status import StatusQueries
from batchpizza.checkpoint.syncing import sync_log
from batchpizza.errors import CheckpointMissing, CheckpointVersionError, OutputError
from batchpizza.records import Attempt, Result

log = logging.getLogger("batchpizza")

SYNC_INTERVAL = 1.0  # seconds of answers a power loss may cost at most (see above)


class Checkpoint(StatusQueries, History, BatchRecords, Fitting, Spending):
    """The store at `path`. Open with `Checkpoint.open`, or `Checkpoint.planning` for a dry run.
    Its answers are those of one identity (`use_identity`; by default the last run's)."""

    def __init__(self, path: Path | None, conn: sqlite3.Connection, readonly: bool = False) -> None:
        self.path = path
        self._conn = conn
        self._readonly = readonly
        self._synced = time.monotonic()
        self._spend_rows: dict[bool, int] = {}  # this run's rows of the spend table, by batch
        self._file_id = _file_id(path) if path is not None and not readonly else None
        # A file's results are staged, then folded (see the module's docstring); in memory,
        # where no page is written to a log, straight into `results`.
        self._result_sqls = binding.result_sql(
            "staged" if path is not None and not readonly else "results"
        )
        self._staged = 0  # results staged since the last fold
        self._updated = 0.0  # when a commit last wrote meta.updated
        self._answered_slots: list[int] = []  # see todo.py
        self.ident = b""  # no identity given: results written and read under the empty one
        self.identity: dict[str, Any] | None = None
        conn.create_function("sample_key", 2, _sample_key, deterministic=True)
        with contextlib.suppress(sqlite3.Error, OutputError, ValueError):
            meta = self.meta()
            if meta.get("identity"):
                self.ident = bytes.fromhex(meta["identity"])
                self.identity = self.identity_of(self.ident)
            if int(meta.get("samples") or 1) > 1:  # what the last run asked: what status counts
                self.use_samples(int(meta["samples"]))

    def use_identity(self, identity: Mapping[str, Any], samples: int = 1) -> None:
        """Read and write the answers of requests made with `identity` (a provider's), each
        asked `samples` times (--repeat); recorded, unless read-only, as the last run's (what
        `status` counts against)."""
        self.identity = dict(identity)
        self.use_samples(samples)
        last = self.meta().get("identity")  # the last run's, whose answers its output holds
        self.last_ident = bytes.fromhex(last) if last else None
        if self._readonly:
            self.ident = fingerprint.identity_digest(identity)
            return
        with self._transaction():
            self.ident = record_identity(self._conn, self.identity)
            self._conn.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [("identity", self.ident.hex()), ("samples", str(samples))],
            )

    @classmethod
    def open(cls, path: Path, *, create: bool = True, readonly: bool = False) -> Checkpoint:
        if not create and not path.exists():
            raise CheckpointMissing(f"no checkpoint at {path}")
        if readonly:
            try:
                # An empty file: a run that just took its lock, nothing in it yet, as a new one.
                conn = read_only(path) if has_data(path) else new_in_memory()
                conn.execute("SELECT 1 FROM results LIMIT 1")
            except sqlite3.DatabaseError as exc:
                raise OutputError.of_checkpoint(path, exc) from None
            return cls(path, conn, readonly=True)
        try:
            # check_same_thread=False: the periodic sync and the output run in worker threads,
            # one at a time.
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.DatabaseError as exc:
            raise OutputError.of_checkpoint(path, exc) from None
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            found = schema_of(conn, path)  # before anything is written: refused, it stays as is
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            # Checkpoints (which fsync) are ours, once a second in a thread (see sync), so that
            # a commit on the event loop never waits for the disk.
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            # One transaction, so that no checkpoint has tables without a schema version, and
            # none is left half upgraded.
            conn.execute("BEGIN IMMEDIATE")
            create_tables(conn, found)
            fold(conn)  # what a killed run left staged
            stamp = {"schema": SCHEMA_VERSION, "version": version()}
            kept = "SELECT key, value FROM meta WHERE key IN ('schema', 'version')"
            if dict(conn.execute(kept)) != stamp:
                conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", stamp.items())
            conn.execute("COMMIT")
        except (sqlite3.DatabaseError, CheckpointVersionError) as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            conn.close()
            if isinstance(exc, CheckpointVersionError):
                raise
            raise OutputError.of_checkpoint(path, exc) from None
        return cls(path, conn)

    @classmethod
    def in_memory(cls) -> Checkpoint:
        """A checkpoint that lives as long as this object, for rows in memory without a file:
        the same plan, results and tallies, nothing on disk."""
        return cls(None, new_in_memory())

    @classmethod
    def peek_scan(cls, path: Path, key: str) -> dict[str, Any] | None:
        """The scan info `scan_info` would give, read without leaving a trace: an immutable
        read opens no log and no shared-memory file beside the checkpoint. It may miss the
        last commits (those in the log): the caller checks again once it holds the file."""
        try:
            conn = sqlite3.connect(reading_uri(path), uri=True)
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
            if path is not None and has_data(path):
                conn = read_only(path, upgraded=True)  # the plan's joins need one per request
                conn.execute("SELECT 1 FROM results LIMIT 1")
            else:
                conn = new_in_memory()
            conn.execute("ATTACH DATABASE ? AS scanned", (scan.uri,))
            taken.planned(conn, "main.scan", "scanned.rows")  # as adopting `scan` would leave it
            # A temporary view shadows the checkpoint's own scan table by name.
            conn.execute("CREATE TEMP VIEW scan AS SELECT * FROM scanned.rows")
        except sqlite3.DatabaseError as exc:
            raise OutputError.of_checkpoint(path, exc) from None
        view = cls(path, conn, readonly=True)
        view._own_scan = False  # the file's kept to-do set is not of this scan
        return view

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error, OutputError):
            if not self._readonly:
                self._close_todo()
                self._fold()
                self.sync()
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()

    # -- results ------------------------------------------------------------------------------

    def write(
        self,
        results: Sequence[Result],
        attempts: Sequence[Attempt] = (),
        run: int = 0,
        batch: bool = False,
        finished: FileDone | None = None,
    ) -> None:
        """Commit a group of results (and the attempts behind them) at once: a write to the log,
        no fsync (see sync); a row SQLite cannot bind fails alone (see guarded.py). `batch`:
        collected through the Batch API, spent at its price; `finished`, the batch file they came
        from marked done in the same commit (else a kill between the two would have the next run
        collect it again, its tokens spent twice), its failures of requests answered meanwhile
        left out (foreign.py)."""
        self._check_identity()
        if finished is not None:
            results = self.not_over_answers(finished[0], results)
        now = time.time()
        conn = self._conn
        with self._transaction():
            insert_group(conn, self._result_sqls, self.ident, results, attempts, run, now)
            self._flush_answered()  # answers committed before: out of the to-do set
            spend_row = self._spend_rows.get(batch)
            if spend_row is not None:
                spend.add(conn, spend_row, results)  # as durable as the answers
            if finished is not None:
                self._finish_lines(*finished)
            if now - self._updated >= 1.0:  # status's "updated": a page of every commit else
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('updated', ?)", (now,))
                self._updated = now
        self._staged += len(results)

    def _fold(self) -> None:
        """The staged results into `results`, before anything reads them (a no-op when none)."""
        if self._staged:
            with self._transaction():
                fold(self._conn)
            self._staged = 0

    def _check_identity(self) -> None:
        """A checkpoint deleted or replaced under a run would take every later commit with it:
        stop instead of pretending (the next run would send everything again)."""
        if self._file_id is not None and _file_id(self.path) != self._file_id:
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
        (and then the database); the log fsynced where a reader held it back (syncing.py)."""
        try:
            sync_log(self._conn, self.path)
        except sqlite3.DatabaseError as exc:
            raise OutputError.of_checkpoint(self.path, exc) from None
        except OSError as exc:
            raise OutputError.of_checkpoint(self.path, exc) from None
        self._synced = time.monotonic()

    def forget(self) -> None:
        """--restart: drop every result, attempt, run and event; the scan stays valid. Batch API
        files not collected yet are kept, with their lines: their batches run and are billed
        whatever the checkpoint forgets, so their requests are collected, not submitted again
        (and their worst cases stay on a --max-cost). A file no batch was asked of (recorded or
        uploaded only: no create sent) goes like a collected one: the next run would have
        launched it, paying for the requests of rows that may ask others since."""
        gone = NOT_KEPT_BY_RESTART
        with self._transaction():
            for table in ("results", "staged", "taken", "attempts", "runs", "events"):
                self._conn.execute(f"DELETE FROM {table}")
            self._conn.execute(
                f"DELETE FROM batch_lines WHERE seq IN (SELECT seq FROM batch_files WHERE {gone})"
            )
            self._conn.execute(f"DELETE FROM batch_files WHERE {gone}")
            self._drop_todo()
            # A new token: the next files must not take the names of files already uploaded.
            self._conn.execute(
                "DELETE FROM meta WHERE key IN ('learned_rate', 'learned_tpm', 'batch_token')"
            )
            # Its time: the spend stays (money is not forgotten), and the report tells what the
            # runs since it spent from what the forgotten ones did.
            self._conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('restarted', ?)", (repr(time.time()),)
            )
        self._staged = 0

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
            raise OutputError.of_checkpoint(self.path, exc) from None

    def learned_rate(self) -> float | None:
        value = self.meta().get("learned_rate")
        return float(value) if value else None

    # -- plumbing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """The checkpoint can only fail here if it is damaged (or the disk is): say so, plainly."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise OutputError.of_checkpoint(self.path, exc) from None

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
            raise OutputError.of_checkpoint(self.path, exc) from None


def _sample_key(digest: bytes | None, sample: int) -> bytes | None:
    """SQL's sample_key(): a row's request key for one of its samples (None for a bad row)."""
    return None if digest is None else fingerprint.sample_digest(digest, sample)


def _file_id(path: Path | None) -> tuple[int, int] | None:
    try:
        st = path.stat() if path is not None else None
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if st is not None else None
