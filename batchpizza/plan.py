"""This run's rows, scanned once, and what to do with each: the bridge between input and checkpoint.

The scan writes one small record per input row (position, id, prompt digest, what is wrong with
it) to a private temporary SQLite database, so that memory stays flat whatever the input's size.
Duplicate ids, the rows still to send and the output's rows in input order are then set-based
queries joined against the checkpoint, done by SQLite in C rather than row by row in Python.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import astuple, dataclass
from pathlib import Path

from batchpizza.errors import BadRow, InputError, Interrupted, OutputError
from batchpizza.reader import Source, describe_bad
from batchpizza.rows import Row

PAGE = 4096
SCAN_VERSION = 2  # bump when what the scan stores or checks changes


@dataclass(frozen=True)
class Tally:
    rows: int
    answered: int
    failed: int
    misuse: int
    invalid: int

    @property
    def pending(self) -> int:
        return self.rows - self.answered - self.failed - self.misuse - self.invalid


def _reason(row: Row) -> str:
    return (f"field {row.field!r}: " if row.field else "") + row.problem


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The scan makes millions of short-lived objects and no reference cycles: the cyclic
    collector only costs time there (about a fifth of the pass, measured on 1M rows)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _readonly_uri(path: Path) -> str:
    """A read-only SQLite URI; as_uri escapes the characters (#, ?, %) a path may hold."""
    return path.resolve().as_uri() + "?mode=ro"


def _input_key(source: Source) -> str | None:
    """What identifies the input's exact bytes and how they are read; None for standard input."""
    if source.spooled is not None:
        return None
    files = []
    for path in source.paths:
        st = path.stat()
        files.append([str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
    return json.dumps({"version": SCAN_VERSION, "fields": astuple(source.fields), "files": files})


class Plan:
    """The scanned rows of one run. With `cache`, the scan is kept in that file and reused by the
    next run when the input files are unchanged (same path, size, mtime, ctime and inode) and read
    with the same field options, so resuming a large job does not validate it all again."""

    def __init__(self, source: Source, cache: Path | None = None) -> None:
        self.source = source
        self.total = 0
        self.bad = 0
        self.first_bad: list[Row] = []
        self.todo = 0
        self.reused = False
        self.checkpoint: Path | None = None
        self._cache = cache
        self._key = _input_key(source) if cache is not None else None
        self._fresh: Path | None = None  # the scan being written, until keep_cache
        self._db: sqlite3.Connection | None = None  # made by scan() or reuse_cache()

    @staticmethod
    def _connect(path: str, uri: bool = False) -> sqlite3.Connection:
        # Used by one thread at a time: the scan and the writer run in worker threads.
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, uri=uri)
        if not uri:
            # Written once, fsynced and renamed into place whole: no journal needed.
            db.execute("PRAGMA journal_mode = OFF")
            db.execute("PRAGMA synchronous = OFF")
        return db

    def reuse_cache(self, skip_bad_rows: bool) -> bool:
        """Take the previous run's scan if it is of these very files; True if it was taken. A
        cache that cannot be read whole is deleted, and the input scanned again."""
        cache = self._cache
        if cache is None or self._key is None or not cache.exists():
            return False
        db = None
        try:
            db = self._connect(_readonly_uri(cache), uri=True)
            info = dict(db.execute("SELECT key, value FROM info"))
            if info.get("key") != self._key or (int(info["bad"]) and not skip_bad_rows):
                db.close()
                return False
            total, bad = int(info["total"]), int(info["bad"])
            kinds = json.loads(info["kinds"])
            scanned_bytes = json.loads(info["bytes"])
            if db.execute("SELECT count(*) FROM rows").fetchone()[0] != total:
                raise ValueError("scan cache is incomplete")
        except (sqlite3.Error, KeyError, ValueError):
            if db is not None:
                db.close()
            cache.unlink(missing_ok=True)
            return False
        self._db = db
        self.total, self.bad = total, bad
        self.source.restore_field_types(kinds)
        self.source.scanned_bytes = scanned_bytes
        self.reused = True
        return True

    def keep_cache(self) -> None:
        """The scan is good to run from: keep it, complete and on disk, for the next run. It is
        never written again: what a run writes goes to the checkpoint or a private temp table."""
        if self._fresh is None or self._cache is None or self.reused:
            return
        kinds = {name: sorted(k) for name, k in self.source.field_types.items()}
        info = {
            "key": self._key,
            "total": self.total,
            "bad": self.bad,
            "kinds": json.dumps(kinds),
            "bytes": json.dumps(self.source.scanned_bytes),
        }
        db = self.db
        db.execute("CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT)")
        db.executemany("INSERT INTO info VALUES (?, ?)", list(info.items()))
        db.close()
        with self._fresh.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(self._fresh, self._cache)
        self._db = self._connect(_readonly_uri(self._cache), uri=True)
        self._fresh = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the plan has no rows yet: scan() or reuse_cache() first")
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
        if self._fresh is not None:  # a scan that was not kept (bad input, interrupt)
            self._fresh.unlink(missing_ok=True)

    # -- the scan -----------------------------------------------------------------------------

    def scan(self, stop: threading.Event | None = None) -> None:
        """Read and validate every row. Runs in a worker thread; `stop` ends it early."""
        cache = self._cache
        if cache is not None and self._key is not None:
            self._fresh = cache.with_name(cache.name + ".partial")
            self._fresh.unlink(missing_ok=True)
        # Without a cache, "" opens a private on-disk temporary database, deleted on close.
        self._db = db = self._connect(str(self._fresh) if self._fresh else "")
        db.execute(
            "CREATE TABLE rows (pos INTEGER PRIMARY KEY, id TEXT, digest BLOB, bad TEXT, "
            "file INTEGER, at INTEGER)"
        )
        db.execute("BEGIN")
        with _gc_paused():
            for good, bad in self.source.scan():
                if stop is not None and stop.is_set():
                    db.execute("ROLLBACK")
                    raise Interrupted("interrupted while reading the input", 0)
                db.executemany(
                    "INSERT INTO rows (pos, id, digest, file, at) VALUES (?, ?, ?, ?, ?)", good
                )
                if bad:
                    for row in bad:
                        self._note_bad(row)
                    db.executemany(
                        "INSERT INTO rows VALUES (?, ?, NULL, ?, ?, ?)",
                        [(r.pos, r.id, _reason(r), r.file, r.at) for r in bad],
                    )
                self.total += len(good) + len(bad)
        db.execute("COMMIT")
        self._mark_duplicates()

    def _note_bad(self, row: Row, *, in_order: bool = True) -> None:
        self.bad += 1
        if len(self.first_bad) < InputError.shown or not in_order:
            self.first_bad.append(row)

    def _mark_duplicates(self) -> None:
        db = self.db
        dups = db.execute(
            "SELECT r.pos, r.id, r.file, r.at, f.file, f.at FROM rows r JOIN "
            "(SELECT id, min(pos) AS first FROM rows WHERE bad IS NULL GROUP BY id "
            " HAVING count(*) > 1) d ON r.id = d.id JOIN rows f ON f.pos = d.first "
            "WHERE r.pos > d.first AND r.bad IS NULL ORDER BY r.pos"
        ).fetchall()
        if not dups:
            return
        name = self.source.names
        unit = "line" if self.source.kind == "jsonl" else "row"
        updates = []
        for pos, row_id, file, at, first_file, first_at in dups:
            first = f"{unit} {first_at}" + ("" if first_file == file else f" of {name[first_file]}")
            problem = f"duplicate id {row_id!r} (first on {first})"
            # Found after the scan, so possibly before rows already listed: sorted in below.
            self._note_bad(Row(pos, file, at, row_id, problem, "id"), in_order=False)
            updates.append((f"field 'id': {problem}", pos))
        db.execute("BEGIN")
        db.executemany("UPDATE rows SET bad = ?, digest = NULL WHERE pos = ?", updates)
        db.execute("COMMIT")
        self.first_bad.sort(key=lambda r: r.pos)
        del self.first_bad[InputError.shown :]

    def input_error(self) -> InputError:
        rows: tuple[BadRow, ...] = describe_bad(self.source, self.first_bad)
        return InputError(f"{self.bad} bad row(s) in the input:", rows, self.bad)

    # -- against the checkpoint ---------------------------------------------------------------

    def attach(self, checkpoint: Path) -> None:
        self.checkpoint = checkpoint
        with self._checkpoint_errors():
            self.db.execute("ATTACH DATABASE ? AS ck", (str(checkpoint),))
            # This run's scratch: a private temporary database, so the scan cache stays read-only.
            self.db.execute("ATTACH DATABASE '' AS work")

    def plan_sends(self) -> int:
        """Rows to send: good rows without an answer for their current prompt."""
        with self._checkpoint_errors():
            db = self.db
            db.execute("CREATE TABLE work.todo (pos INTEGER PRIMARY KEY)")
            db.execute(
                "INSERT INTO work.todo SELECT r.pos FROM rows r LEFT JOIN ck.results c "
                "ON c.id = r.id WHERE r.bad IS NULL AND (c.id IS NULL OR c.digest IS NOT r.digest "
                "OR c.finish_reason != 'stop') ORDER BY r.pos"
            )
            self.todo = int(db.execute("SELECT count(*) FROM work.todo").fetchone()[0])
        return self.todo

    @contextlib.contextmanager
    def _checkpoint_errors(self) -> Iterator[None]:
        """The checkpoint can only fail here if it is damaged (or the disk is): say so, plainly."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise OutputError(
                f"checkpoint {self.checkpoint}: {exc}. If it is damaged, move it aside to start over."
            ) from None

    def todo_positions(self) -> Iterator[int]:
        last = -1
        while True:
            page = self.db.execute(
                "SELECT pos FROM work.todo WHERE pos > ? ORDER BY pos LIMIT ?", (last, PAGE)
            ).fetchall()
            if not page:
                return
            for (pos,) in page:
                yield pos
            last = page[-1][0]

    _JOINED = (
        "FROM rows r LEFT JOIN ck.results c "
        "ON r.bad IS NULL AND c.id = r.id AND c.digest = r.digest"
    )

    def input_changed(self) -> bool:
        """Have the input files changed since this plan read them?"""
        return self._key is not None and _input_key(self.source) != self._key

    def output_rows(self) -> Iterator[list[tuple[object, ...]]]:
        """(id, bad, answer, finish_reason, error, attempts, latency_ms, model, digest), in input
        order."""
        last = -1
        while True:
            with self._checkpoint_errors():
                page = self.db.execute(
                    # A row too broken to show an id gets its position, as rows without one do.
                    "SELECT r.pos, CAST(coalesce(r.id, r.pos) AS TEXT), r.bad, c.answer, c.finish_reason, c.error, c.attempts, "
                    f"c.latency_ms, c.model, r.digest {self._JOINED} WHERE r.pos > ? ORDER BY r.pos LIMIT ?",
                    (last, PAGE),
                ).fetchall()
            if not page:
                return
            last = page[-1][0]
            yield [row[1:] for row in page]

    def tally(self) -> Tally:
        with self._checkpoint_errors():
            found = self.db.execute(
                "SELECT count(*), sum(c.finish_reason = 'stop'), sum(c.finish_reason = 'error'), "
                f"sum(c.finish_reason = 'misuse'), sum(r.bad IS NOT NULL) {self._JOINED}"
            ).fetchone()
        return Tally(*(int(x or 0) for x in found))

    def prune(self) -> int:
        """Forget results for rows that left the input, so the checkpoint matches the output."""
        with self._checkpoint_errors():
            cursor = self.db.execute(
                "DELETE FROM ck.results WHERE id NOT IN (SELECT id FROM rows WHERE bad IS NULL)"
            )
        return cursor.rowcount
