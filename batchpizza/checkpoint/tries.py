"""The try a Batch API line is (`batch_lines.tries`, the submissions of its request so far and
one), where its request's last line was dropped (batchapi/dropping.py): a mixin of Checkpoint
through BatchRecords. A line past --max-retries tries is a failed row, not resubmitted; a row
of a dropped file that the plan still asks goes in a new file at the try it had reached, not
the first (its `attempts` counts its submissions)."""

from __future__ import annotations

import contextlib
import sqlite3

# A file never submitted, its requests no longer the plan's (batchapi/dropping.py): its state,
# and each of its lines' outcome.
DROPPED = "dropped"


class LineTries:
    _conn: sqlite3.Connection
    ident: bytes

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError  # the Checkpoint's

    def _has_batches(self) -> bool:
        raise NotImplementedError  # BatchRecords'

    def next_tries(self) -> dict[bytes, int]:
        """The try a new line of each request whose last line was dropped is (batchapi/
        dropping.py): its submissions so far and one, as a resubmission counts it. Counted from
        1 again, a row whose file was dropped had --max-retries more submissions than it may."""
        with self._errors():
            if not self._has_batches():
                return {}
            dropped = self._conn.execute(
                "SELECT l.digest, l.seq, l.tries, f.state FROM batch_lines l JOIN batch_files f "
                "ON f.seq = l.seq WHERE f.ident = ? AND l.outcome = ? ORDER BY l.seq",
                (self.ident, DROPPED),
            ).fetchall()
            if not dropped:
                return {}
            later = self._conn.execute(  # lines of these requests made since: theirs count
                "SELECT digest, max(seq) FROM batch_lines WHERE seq > ? GROUP BY digest",
                (dropped[0][1],),
            ).fetchall()
        last = {bytes(digest): seq for digest, seq in later}
        # A line of a file dropped whole was never submitted (no batch made of it): its try is
        # the next one; one dropped from a collected file's resubmissions was.
        return {
            bytes(digest): tries + (state != DROPPED)
            for digest, seq, tries, state in dropped
            if last.get(bytes(digest), seq) <= seq
        }
