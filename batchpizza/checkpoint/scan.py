"""The validation scan's index: one small record per input row (position, id, request digest,
the text digest where it differs (`said`), what is wrong with it), written to a private temporary SQLite file so memory stays flat whatever
the input's size. Duplicate ids are found by a set-based query, in C, not row by row in Python.

The scan happens before the checkpoint may change (bad input changes nothing), so it is written
aside; once the input is known good, `Checkpoint.adopt_scan` copies it into the checkpoint, where
the next run reuses it while the input files are unchanged.
"""

from __future__ import annotations

import bisect
import itertools
import operator
import sqlite3
import threading
import uuid
from collections.abc import Generator, Iterable
from pathlib import Path

from batchpizza.collector import collector_paused
from batchpizza.errors import Interrupted, OutputError
from batchpizza.rows import BadRecord, GoodRow, ScanBatch

SHOWN = 10  # bad rows described in an error message; the rest are counted
_COLUMNS = "INSERT INTO rows (pos, id, digest, said, file, at) VALUES "
_INSERT_ONE = _COLUMNS + "(?, ?, ?, ?, ?, ?)"
# Good rows go in 64 to a statement: one step of SQLite's per 64 rows, not per row, halves the
# insert's CPU (measured: 1.25 s against 2.47 s for 1,000,000 rows).
_PER_INSERT = 64
_INSERT_MANY = _COLUMNS + ", ".join(["(?, ?, ?, ?, ?, ?)"] * _PER_INSERT)
# And where no row has a text digest apart (prompt rows), the null is in the statement and the
# digests are bound as bytearrays: sqlite3 looks for an adapter for every bytes and None it binds
# (not for int, str, bytearray), which was half of what was left (1.29 s against 0.72 s).
_INSERT_PROMPTS = _COLUMNS + ", ".join(["(?, ?, ?, NULL, ?, ?)"] * _PER_INSERT)
_POS, _ID, _DIGEST, _SAID, _FILE, _AT = map(operator.itemgetter, range(6))

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS {table} (pos INTEGER PRIMARY KEY, id TEXT, digest BLOB, "
    "said BLOB, bad TEXT, file INTEGER, at INTEGER)"
)


def _reason(row: BadRecord) -> str:
    return (f"field {row.field!r}: " if row.field else "") + row.problem


class ScanIndex:
    """The scanned rows of one input. `scan` fills it; `path` is the file `adopt_scan` copies."""

    def __init__(self, path: Path | None = None) -> None:
        """At `path` (a file of its own, replaced if there), or in memory when None: a named
        in-memory database that the checkpoint's connection can attach, so that in-memory data
        leaves nothing on disk."""
        self.path = path
        if path is None:
            self.uri = f"file:batchpizza-scan-{uuid.uuid4().hex}?mode=memory&cache=shared"
            name, uri = self.uri, True
        else:
            path.unlink(missing_ok=True)
            self.uri = path.resolve().as_uri() + "?mode=ro"  # as_uri escapes # ? % in the path
            name, uri = str(path), False
        self.total = 0
        self.bad = 0
        self.first_bad: list[BadRecord] = []
        # Used by one thread at a time: the scan runs in a worker thread.
        self._db = sqlite3.connect(name, isolation_level=None, check_same_thread=False, uri=uri)
        # Written once and then thrown away: no journal, no fsync.
        self._db.execute("PRAGMA journal_mode = OFF")
        self._db.execute("PRAGMA synchronous = OFF")
        self._db.execute(SCHEMA.format(table="rows"))

    def verdicts(self) -> Generator[tuple[int, str | None, str | None], None, None]:
        """(position, id as the output shows it, what is wrong or None) of every scanned row,
        in input order (a cluster run stages the rows with them)."""
        # As the output shows ids (checkpoint.plan): a good row without one gets its position; a
        # bad row whose id could not be read none, as its position could be another row's id.
        yield from self._db.execute(
            "SELECT pos, CASE WHEN bad IS NULL THEN CAST(coalesce(id, pos) AS TEXT) ELSE id END,"
            " bad FROM rows ORDER BY pos"
        )

    def close(self) -> None:
        self._db.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def scan(
        self,
        batches: Iterable[ScanBatch],
        unit: str,
        names: list[str],
        stop: threading.Event | None = None,
    ) -> None:
        """Record every row of `batches`; `stop` ends it early (Interrupted)."""
        db = self._db
        ascending = _Ascending()
        try:
            db.execute("BEGIN")
            with collector_paused():
                for good, bad in batches:
                    if stop is not None and stop.is_set():
                        db.execute("ROLLBACK")
                        raise Interrupted("interrupted while reading the input", 0)
                    _insert(db, good)
                    ascending.see(good)
                    if bad:
                        for row in bad:
                            self._note_bad(row)
                        db.executemany(
                            "INSERT INTO rows VALUES (?, ?, NULL, NULL, ?, ?, ?)",
                            [(r.pos, r.id, _reason(r), r.file, r.at) for r in bad],
                        )
                    self.total += len(good) + len(bad)
            db.execute("COMMIT")
            if not ascending.holds:  # ids in order cannot repeat: no sort of every id
                self._mark_duplicates(unit, names)
        except sqlite3.Error as exc:  # the temporary folder is full, most likely
            raise OutputError(
                f"cannot keep the scan of the input in {self.path or 'memory'}: {exc}"
            ) from None

    def _note_bad(self, row: BadRecord, *, in_order: bool = True) -> None:
        self.bad += 1
        if len(self.first_bad) < SHOWN or not in_order:
            self.first_bad.append(row)

    def _mark_duplicates(self, unit: str, names: list[str]) -> None:
        db = self._db
        dups = db.execute(
            "SELECT r.pos, r.id, r.file, r.at, f.file, f.at FROM rows r JOIN "
            "(SELECT id, min(pos) AS first FROM rows WHERE bad IS NULL GROUP BY id "
            " HAVING count(*) > 1) d ON r.id = d.id JOIN rows f ON f.pos = d.first "
            "WHERE r.pos > d.first AND r.bad IS NULL ORDER BY r.pos"
        ).fetchall()
        if not dups:
            return
        updates = []
        for pos, row_id, file, at, first_file, first_at in dups:
            first = f"{unit} {first_at}" + (
                "" if first_file == file else f" of {names[first_file]}"
            )
            problem = f"duplicate id {row_id!r} (first on {first})"
            # Found after the scan, so possibly before rows already listed: sorted in below.
            self._note_bad(BadRecord(pos, file, at, row_id, problem, "id"), in_order=False)
            updates.append((f"field 'id': {problem}", pos))
        db.execute("BEGIN")
        db.executemany("UPDATE rows SET bad = ?, digest = NULL WHERE pos = ?", updates)
        db.execute("COMMIT")
        self.first_bad.sort(key=lambda r: r.pos)
        del self.first_bad[SHOWN:]


def _insert(db: sqlite3.Connection, good: list[GoodRow]) -> None:
    whole = len(good) - len(good) % _PER_INSERT
    flat: list[object]  # the values of 64 rows after one another, for each statement
    if whole and any(map(_SAID, good)):
        flat = list(itertools.chain.from_iterable(itertools.islice(good, whole)))
        step = 6 * _PER_INSERT  # a good row is six columns
        db.executemany(_INSERT_MANY, [flat[i : i + step] for i in range(0, len(flat), step)])
    elif whole:  # (in C, column by column: a loop over the rows in Python cost as much)
        rows = good[:whole]
        digests = map(bytearray, map(_DIGEST, rows))
        columns = zip(
            map(_POS, rows), map(_ID, rows), digests, map(_FILE, rows), map(_AT, rows), strict=True
        )
        flat = list(itertools.chain.from_iterable(columns))
        step = 5 * _PER_INSERT
        db.executemany(_INSERT_PROMPTS, [flat[i : i + step] for i in range(0, len(flat), step)])
    if whole < len(good):
        db.executemany(_INSERT_ONE, good[whole:])


class _Ascending:
    """Are the ids of the good rows seen so far strictly ascending, shorter ones first and by
    text within a length ("9" < "10", "r0000001" < "r0000002")? Then no two are the same, and
    the query that finds duplicates (a sort of every id: 5 s of 70 at 10,000,000 rows) is not
    needed. Rows without an id (their position is their id) and numbered ids are so; checked
    a batch at a time, in C but for a loop over the batch's id lengths."""

    def __init__(self) -> None:
        self.holds = True
        self._last: tuple[int, str] | None = None

    def see(self, good: list[GoodRow]) -> None:
        if not self.holds or not good:
            return
        ids: list[str] = list(map(operator.itemgetter(1), good))
        lengths = list(map(len, ids))
        first = (lengths[0], ids[0])
        if lengths != sorted(lengths) or (self._last is not None and not self._last < first):
            self.holds = False
            return
        for length in set(lengths):
            same = ids[bisect.bisect_left(lengths, length) : bisect.bisect_right(lengths, length)]
            if not all(map(operator.lt, same, itertools.islice(same, 1, None))):
                self.holds = False
                return
        self._last = (lengths[-1], ids[-1])
