"""The checkpoint's record of the Batch API (--via batch): every request file and batch, and every
line in them (a mixin of Checkpoint, which owns the connection).

What is recorded, and when, is what makes a kill at any moment safe (batchapi/flow.py): a file's
lines are recorded (`intend_file`) before it is uploaded, its file id once the upload returned,
and its batch id once the batch is created. A file without an id is looked for on the server by
its name (unique to this checkpoint and the file's sequence number) before it is uploaded again;
a batch without an id by the file id it was made from.

    batch_files  one row per request file: its name, lines and bytes, the server's file id, the
                 batch made from it (id, state, request counts, output and error files, errors),
                 `done` once its results are collected (or it was abandoned), and the API root
                 it went to (`origin`, foreign.py: null in a file recorded before it was kept)
    batch_lines  one row per line of a file: the row and request it asks (row id, position,
                 request key), how many times this request was submitted (`tries`), the line as
                 sent (kept until it is answered, to upload again or resubmit), and its outcome:
                 null while out, "answered" (also the mark of a result that came through the
                 Batch API, priced at the batch price), "error" (failed for good), "failed" or
                 "expired" (to resubmit), "resubmitted", "online" (sent online by --via auto,
                 or by an online run that collected its file: batchapi/collecting.py),
                 "dropped" (its file never submitted: the input changed, batchapi/dropping.py)
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from batchpizza.checkpoint.foreign import ForeignBatches
from batchpizza.checkpoint.tries import DROPPED as DROPPED
from batchpizza.checkpoint.tries import LineTries
from batchpizza.records import UNANSWERED

TABLES_SQL = """
CREATE TABLE IF NOT EXISTS batch_files (
    seq INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, ident BLOB NOT NULL,
    lines INTEGER NOT NULL, bytes INTEGER NOT NULL, file_id TEXT, batch_id TEXT,
    state TEXT NOT NULL, counts TEXT, output_file_id TEXT, error_file_id TEXT, errors TEXT,
    created REAL NOT NULL, updated REAL NOT NULL, done INTEGER NOT NULL DEFAULT 0, origin TEXT
);
CREATE TABLE IF NOT EXISTS batch_lines (
    seq INTEGER NOT NULL, custom_id TEXT NOT NULL, id TEXT NOT NULL, pos INTEGER NOT NULL,
    digest BLOB NOT NULL, tries INTEGER NOT NULL, line BLOB, outcome TEXT,
    PRIMARY KEY (seq, custom_id)
) WITHOUT ROWID;
"""
# Outcomes of lines still to be answered by a batch: out, or waiting to be resubmitted.
_OUT = "(l.outcome IS NULL OR l.outcome IN ('failed', 'expired'))"
TO_RESUBMIT = ("failed", "expired")
# A file collected: its seq, each line's (custom_id, outcome), the batch's final state.
FileDone = tuple[int, Sequence[tuple[str, str]], str]


@dataclass(frozen=True)
class BatchFile:
    """One request file and the batch made from it, as the checkpoint holds them."""

    seq: int
    name: str
    lines: int
    bytes: int
    file_id: str | None
    batch_id: str | None
    state: str  # "intended", "stored" (uploaded), "creating", then the batch's status on the server
    counts: dict[str, int]
    output_file_id: str | None
    error_file_id: str | None
    errors: str | None
    created: float
    done: bool
    # Last told of by the server (the batch made, a poll answered; set_batch), else as created.
    updated: float = 0.0

    @property
    def kept_by_restart(self) -> bool:
        """Not collected, and a batch of it was or may have been made (so it runs and is billed
        whatever a --restart forgets): one only recorded or uploaded goes (Checkpoint.forget)."""
        return not self.done and (self.batch_id is not None or self.state not in UNLAUNCHED)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file_id": self.file_id,
            "batch_id": self.batch_id,
            "state": self.state,
            "lines": self.lines,
            "counts": self.counts,
            "done": self.done,
            **({"errors": self.errors} if self.errors else {}),
        }


@dataclass(frozen=True)
class BatchLine:
    seq: int
    custom_id: str
    id: str  # the row's id
    pos: int  # the row's position in the input
    digest: bytes  # the request's key
    tries: int
    line: bytes | None


# A file's states before its batch's create was sent (set_file_id; batchapi/creating.py marks
# 'creating' first); 'uploaded', a version's from before that mark, may have sent it.
UNLAUNCHED = ("intended", "stored")
# The files a --restart drops with their lines (Checkpoint.forget; BatchFile.kept_by_restart).
NOT_KEPT_BY_RESTART = f"done OR (batch_id IS NULL AND state IN {UNLAUNCHED!r})"

_FILE_COLUMNS = (
    "seq, name, lines, bytes, file_id, batch_id, state, counts, output_file_id, error_file_id, "
    "errors, created, done, updated"
)
_LINE_COLUMNS = "l.seq, l.custom_id, l.id, l.pos, l.digest, l.tries, l.line"


def _file(row: tuple[Any, ...]) -> BatchFile:
    counts = json.loads(row[7]) if row[7] else {}
    seq, name, lines, size, file_id, batch_id, state = row[:7]
    output_id, error_id, errors, created = row[8:12]
    return BatchFile(seq, name, lines, size, file_id, batch_id, state, counts, output_id, error_id,
                     errors, created, bool(row[12]), row[13])  # fmt: skip


class BatchRecords(ForeignBatches, LineTries):
    _conn: sqlite3.Connection
    ident: bytes

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError  # the Checkpoint's

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError  # the Checkpoint's

    def _fold(self) -> None:
        raise NotImplementedError  # the Checkpoint's

    def lines_answered(self, seq: int) -> bool:
        """Does every line of file `seq` have an answer under this identity (however it came:
        online, since the file was recorded)?"""
        self._fold()
        unanswered = ", ".join(f"'{reason}'" for reason in sorted(UNANSWERED))
        with self._errors():
            left = self._conn.execute(
                "SELECT 1 FROM batch_lines l WHERE l.seq = ? AND NOT EXISTS (SELECT 1 FROM "
                "results c WHERE c.ident = ? AND c.digest = l.digest AND c.finish_reason NOT IN "
                f"({unanswered})) LIMIT 1",
                (seq, self.ident),
            ).fetchone()
        return left is None

    def _has_batches(self) -> bool:
        """A read-only view of a schema 4 file has no batch tables (they are made on open)."""
        found = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'batch_files'"
        ).fetchone()
        return found is not None

    def batch_token(self) -> str:
        """What names this checkpoint's files on the server: random once, then kept, so a file's
        name says which checkpoint and which of its files it is."""
        with self._transaction():
            found = self._conn.execute(
                "SELECT value FROM meta WHERE key = 'batch_token'"
            ).fetchone()
            if found and found[0]:
                return str(found[0])
            token = secrets.token_hex(6)
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('batch_token', ?)", (token,))
        return token

    def intend_file(
        self,
        lines: Sequence[tuple[str, str, int, bytes, int, bytes]],
        resubmitted: Iterable[tuple[int, str]] = (),
    ) -> BatchFile:
        """Record a request file before it is uploaded: its lines, (custom_id, row id, position,
        request key, tries, line), and the lines it resubmits, marked so in the same
        transaction (never resubmitted twice)."""
        token = self.batch_token()
        now = time.time()
        size = sum(len(line[5]) for line in lines)
        with self._transaction():
            (seq,) = self._conn.execute(
                "SELECT coalesce(max(seq), 0) + 1 FROM batch_files"
            ).fetchone()
            name = f"batchpizza-{token}-{seq:06d}.jsonl"
            self._conn.execute(
                "INSERT INTO batch_files (seq, name, ident, lines, bytes, state, created, "
                "updated, origin) VALUES (?, ?, ?, ?, ?, 'intended', ?, ?, ?)",
                (seq, name, self.ident, len(lines), size, now, now, self.batch_origin),
            )
            self._conn.executemany(
                "INSERT INTO batch_lines (seq, custom_id, id, pos, digest, tries, line) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(seq, *line) for line in lines],
            )
            self._conn.executemany(
                "UPDATE batch_lines SET outcome = 'resubmitted', line = NULL "
                "WHERE seq = ? AND custom_id = ?",
                list(resubmitted),
            )
        return BatchFile(seq, name, len(lines), size, None, None, "intended", {}, None, None,
                         None, now, False)  # fmt: skip

    def set_file_id(self, seq: int, file_id: str) -> None:
        """Not `uploaded`: that is what a batchpizza from before the `creating` mark left, create
        sent or not (batchapi/creating.py tells them apart by it)."""
        with self._transaction():
            self._conn.execute(
                "UPDATE batch_files SET file_id = ?, state = 'stored', updated = ? WHERE seq = ?",
                (file_id, time.time(), seq),
            )

    def mark_file(self, seq: int, state: str) -> None:
        """File `seq` reached `state` on its way to a batch (batchapi/creating.py)."""
        with self._transaction():
            self._conn.execute(
                "UPDATE batch_files SET state = ?, updated = ? WHERE seq = ?",
                (state, time.time(), seq),
            )

    def file_state(self, seq: int) -> str | None:
        with self._errors():
            found = self._conn.execute(
                "SELECT state FROM batch_files WHERE seq = ?", (seq,)
            ).fetchone()
        return None if found is None else str(found[0])

    def set_batch(self, seq: int, batch: dict[str, Any]) -> None:
        """What the server said of the batch made from file `seq` (its id on creation, then its
        status, counts, output and error files at each poll)."""
        errors = batch.get("errors")
        errors_text = _errors_text(errors) if errors else None
        counts = batch.get("request_counts")
        with self._transaction():
            self._conn.execute(
                "UPDATE batch_files SET batch_id = coalesce(?, batch_id), state = ?, "
                "counts = coalesce(?, counts), output_file_id = coalesce(?, output_file_id), "
                "error_file_id = coalesce(?, error_file_id), errors = coalesce(?, errors), "
                "updated = ? WHERE seq = ?",
                (
                    _text(batch.get("id")),
                    _text(batch.get("status")) or "unknown",
                    json.dumps(counts) if isinstance(counts, dict) else None,
                    _text(batch.get("output_file_id")),
                    _text(batch.get("error_file_id")),
                    errors_text,
                    time.time(),
                    seq,
                ),
            )

    def finish_file(self, seq: int, outcomes: Sequence[tuple[str, str]], state: str) -> None:
        """File `seq` collected: each line's (custom_id, outcome); answered lines no longer need
        their text."""
        with self._transaction():
            self._finish_lines(seq, outcomes, state)

    def _finish_lines(self, seq: int, outcomes: Sequence[tuple[str, str]], state: str) -> None:
        """`finish_file` inside the caller's transaction."""
        self._conn.executemany(
            "UPDATE batch_lines SET outcome = ?, line = CASE WHEN ? IN ('answered', 'error', "
            "'dropped') THEN NULL ELSE line END WHERE seq = ? AND custom_id = ?",
            [(outcome, outcome, seq, cid) for cid, outcome in outcomes],
        )
        self._conn.execute(
            "UPDATE batch_files SET done = 1, state = ?, updated = ? WHERE seq = ?",
            (state, time.time(), seq),
        )

    def lines_online(self, seq: int) -> None:
        """The lines of collected file `seq` that failed or expired are sent online instead of
        resubmitted (an online run's collection: batchapi/collecting.py)."""
        with self._transaction():
            self._conn.execute(
                "UPDATE batch_lines SET outcome = 'online' WHERE seq = ? AND outcome IN "
                "('failed', 'expired')",
                (seq,),
            )

    def drop_lines(self, lines: Sequence[tuple[int, str]]) -> None:
        """Lines (seq, custom_id) never to be submitted again (batchapi/dropping.py)."""
        with self._transaction():
            sql = "UPDATE batch_lines SET outcome = ?, line = NULL WHERE seq = ? AND custom_id = ?"
            self._conn.executemany(sql, [(DROPPED, *line) for line in lines])

    def open_files(self, others: bool = False) -> list[BatchFile]:
        """This identity's files not collected yet (with `others`, those of every other
        identity: another model's, which a run of that model collects), oldest first."""
        with self._errors():
            if not self._has_batches():
                return []
            rows = self._conn.execute(
                f"SELECT {_FILE_COLUMNS} FROM batch_files WHERE done = 0 AND "
                f"ident {'!=' if others else '='} ? ORDER BY seq",
                (self.ident,),
            ).fetchall()
        return [_file(r) for r in rows]

    def batch_files(self) -> list[BatchFile]:
        """Every file of this identity, oldest first (status, --dry-run)."""
        with self._errors():
            if not self._has_batches():
                return []
            rows = self._conn.execute(
                f"SELECT {_FILE_COLUMNS} FROM batch_files WHERE ident = ? ORDER BY seq",
                (self.ident,),
            ).fetchall()
        return [_file(r) for r in rows]

    def file_lines(self, seq: int) -> list[BatchLine]:
        with self._errors():
            rows = self._conn.execute(
                f"SELECT {_LINE_COLUMNS} FROM batch_lines l WHERE l.seq = ? ORDER BY l.pos",
                (seq,),
            ).fetchall()
        return [BatchLine(*r) for r in rows]

    def out_keys(self) -> set[bytes]:
        """The request keys of this identity's lines that a batch still has or that wait to be
        resubmitted: rows the plan counts to send, but not to put in a new file."""
        with self._errors():
            if not self._has_batches():
                return set()
            rows = self._conn.execute(
                f"SELECT l.digest FROM batch_lines l JOIN batch_files f ON f.seq = l.seq "
                f"WHERE f.ident = ? AND {_OUT}",
                (self.ident,),
            ).fetchall()
        return {bytes(r[0]) for r in rows}

    def to_resubmit(self) -> list[BatchLine]:
        """Lines of collected files that failed or expired and were not resubmitted yet; not
        those whose request has an answer since (an online run's: resubmitted, they were
        paid for twice)."""
        self._fold()
        unanswered = ", ".join(f"'{reason}'" for reason in sorted(UNANSWERED))
        with self._errors():
            rows = self._conn.execute(
                f"SELECT {_LINE_COLUMNS} FROM batch_lines l JOIN batch_files f ON f.seq = l.seq "
                "WHERE f.ident = ?1 AND f.done = 1 AND l.outcome IN ('failed', 'expired') "
                "AND NOT EXISTS (SELECT 1 FROM results c WHERE c.ident = ?1 AND c.digest = "
                f"l.digest AND c.finish_reason NOT IN ({unanswered})) ORDER BY l.seq, l.pos",
                (self.ident,),
            ).fetchall()
        return [BatchLine(*r) for r in rows]

    def batch_answered(self) -> int:
        """Results of this identity that came through the Batch API (priced at its price)."""
        with self._errors():
            if not self._has_batches():
                return 0
            return int(
                self._conn.execute(
                    "SELECT count(DISTINCT l.digest) FROM batch_lines l JOIN batch_files f "
                    "ON f.seq = l.seq WHERE f.ident = ? AND l.outcome = 'answered'",
                    (self.ident,),
                ).fetchone()[0]
            )

    def batch_tokens(self) -> tuple[int, int]:
        """(prompt tokens, completion tokens) of this identity's results answered through the
        Batch API: what is priced at the batch price."""
        with self._errors():
            if not self._has_batches():
                return 0, 0
            found = self._conn.execute(
                "SELECT coalesce(sum(r.prompt_tokens), 0), coalesce(sum(r.completion_tokens), 0) "
                "FROM results r WHERE r.ident = ? AND r.digest IN (SELECT l.digest FROM "
                "batch_lines l JOIN batch_files f ON f.seq = l.seq WHERE f.ident = ? AND "
                "l.outcome = 'answered')",
                (self.ident, self.ident),
            ).fetchone()
        return int(found[0]), int(found[1])


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _errors_text(errors: object) -> str:
    """A failed batch's errors ({"data": [{"code", "message", "line", "param"}]}) on one line."""
    data = errors.get("data") if isinstance(errors, dict) else None
    if not isinstance(data, list):
        return json.dumps(errors)[:2000]
    said = []
    for item in data[:10]:
        if isinstance(item, dict):
            where = f"line {item['line']}: " if isinstance(item.get("line"), int) else ""
            said.append(f"{where}{item.get('code') or 'error'}: {item.get('message') or ''}")
    more = f" (and {len(data) - 10} more)" if len(data) > 10 else ""
    return "; ".join(said)[:2000] + more
