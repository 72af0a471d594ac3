"""The scan adopted, the plan, and the output: the scan joined to the results of the run's
identity. A row's answer is the result kept for its request: the run's identity digest and the row's
request key (the request digest, or the text digest for a provider that sends only text; see
batchpizza.fingerprint). Rows asking the same request share one result: the plan sends the
first of them, and the output gives every one of them its answer, naming the row it was asked
for (`reused_from`) where that is another.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import batchpizza.fingerprint as fingerprint
from batchpizza.checkpoint.batches import UNLAUNCHED
from batchpizza.checkpoint.counts import UNANSWERED, OutputCounts
from batchpizza.checkpoint.scan import ScanIndex
from batchpizza.checkpoint.taken import asked, last_asked, record
from batchpizza.records import OutputRow, Plan, invalid_row, pending_row

PAGE = 4096
# The request keys in this identity's (:ident) Batch API batches still out: made, or a create
# may have been sent, or recorded for a server other than the run's (:origin).
_KEYS_OUT = (
    "SELECT l.digest FROM batch_lines l JOIN batch_files f ON f.seq = l.seq WHERE f.ident = "
    ":ident AND f.done = 0 AND l.outcome IS NULL AND (f.batch_id IS NOT NULL OR f.state NOT IN "
    f"{UNLAUNCHED!r} OR coalesce(f.origin, :origin) IS NOT :origin)"
)
_OUTPUT_COLUMNS = (
    "finish_reason, answer, error, attempts, latency_ms, model, prompt_tokens, "
    "completion_tokens, response_id, request_id"
)


class PlanQueries(OutputCounts):
    """The checkpoint's queries over the scan and the results of its identity (a mixin of
    Checkpoint, which owns the connection)."""

    _conn: sqlite3.Connection
    ident: bytes  # the run's identity digest
    last_ident: bytes | None = None  # the last run's, before this one (use_identity)
    identity: Mapping[str, Any] | None
    # Samples of each request (--repeat): each row's output rows, and its slots in the plan
    # (slot = position * samples + sample).
    samples: int = 1
    # BatchRecords' (declared, not defined: this class comes first in Checkpoint's order).
    _has_batches: Callable[[], bool]

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError  # the Checkpoint's

    def meta(self) -> dict[str, str]:
        raise NotImplementedError  # the Checkpoint's

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError  # the Checkpoint's

    def _fold(self) -> None:
        raise NotImplementedError  # the Checkpoint's: staged results into `results`

    @property
    def _key(self) -> str:
        """The scan's column a result is found by (see the module's docstring)."""
        by_text = self.identity is not None and fingerprint.keyed_by_text(self.identity)
        return "coalesce(r.said, r.digest)" if by_text else "r.digest"

    def use_samples(self, samples: int) -> None:
        """Ask each request `samples` times: the scan's rows times a temporary table of the
        sample numbers, each sample's key its own (fingerprint.sample_digest)."""
        self.samples = samples
        conn = self._conn
        with self._errors():
            conn.execute("DROP TABLE IF EXISTS temp.samples")
            if samples > 1:
                conn.execute("CREATE TEMP TABLE samples (s INTEGER PRIMARY KEY)")
                conn.executemany(
                    "INSERT INTO temp.samples VALUES (?)", ((s,) for s in range(samples))
                )

    def _rows(self, kept: bool = False) -> tuple[str, str, str]:
        """The scan's rows as the plan and the output take them: (the FROM, a row's slot, its
        request key). Without samples, the scan itself and a row's position. `kept`: only the
        slots of the kept to-do set (todo.py)."""
        sample = self._sample(kept)
        if kept:
            rows = f"main.todo t JOIN scan r ON r.pos = t.slot / {self.samples}"
            if self.samples == 1:
                return rows.removesuffix(" / 1"), "t.slot", self._key
            return rows, "t.slot", f"sample_key({self._key}, {sample})"
        if self.samples == 1:
            return "scan r", "r.pos", self._key
        return (
            "scan r CROSS JOIN temp.samples k",
            f"r.pos * {self.samples} + k.s",
            f"sample_key({self._key}, {sample})",
        )

    def _sample(self, kept: bool) -> str:
        return f"t.slot % {self.samples}" if kept else "k.s"

    def _new_sample(self, kept: bool, key: str) -> str:
        """A plan's reason: a sample never asked of a request whose first sample was (with more
        samples than before) is a new row, not a changed prompt; but one asked of the row
        with another identity (a run of a new model stopped between a row's samples) is sent
        for that change. `key`: the sample's own request key."""
        if self.samples == 1:
            return ""
        this = f"o.id = r.id AND o.digest = {key}"
        return (
            f"WHEN {self._sample(kept)} > 0 AND EXISTS (SELECT 1 FROM results o WHERE "
            f"o.ident = ?1 AND o.digest = {self._key}) THEN CASE WHEN {asked(this + ' AND o.ident = ?2')} "
            f"THEN 'unknown' WHEN {asked(this)} THEN 'identity' ELSE 'new' END "
        )

    def _joined(self) -> str:
        rows, _slot, key = self._rows()
        return (
            f"FROM {rows} LEFT JOIN results c ON r.bad IS NULL AND c.ident = ? AND c.digest = {key}"
        )

    def scan_info(self, key: str) -> dict[str, Any] | None:
        """What the last run's scan recorded, if it was of the input `key` names."""
        meta = self.meta()
        if meta.get("scan_key") != key or "scan_info" not in meta:
            return None
        info: dict[str, Any] = json.loads(meta["scan_info"])
        return info if self._scanned() == info.get("total") else None

    def _scanned(self) -> int:
        """The scan's rows: its positions are 0 to n - 1, so the last one says how many (a
        lookup, where count(*) read every page of the table: 10,000,000 rows, twice a run)."""
        with self._errors():
            last = self._conn.execute("SELECT max(pos) FROM scan").fetchone()[0]
        return 0 if last is None else int(last) + 1

    def adopt_scan(self, scan: ScanIndex, key: str | None, info: dict[str, Any]) -> None:
        """Make `scan` this checkpoint's scan, for this run and for the next one to reuse."""
        conn = self._conn
        self._fold()  # the answers rows took are looked up among them (taken.record)
        with self._errors():
            # Attached outside the transaction: SQLite cannot attach or detach inside one.
            conn.execute("ATTACH DATABASE ? AS scanned", (scan.uri,))
        try:
            with self._transaction():
                record(conn, "main.scan", "scanned.rows")  # before the scan that says it goes
                conn.execute("DELETE FROM scan")
                conn.execute("INSERT INTO scan SELECT * FROM scanned.rows")
                self._drop_todo()  # the kept to-do set was of the scan replaced
                conn.executemany(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                    [("scan_key", key), ("scan_info", json.dumps(info))],
                )
        finally:
            with self._errors():
                conn.execute("DETACH DATABASE scanned")

    def plan(self, limit: int | None = None, *, retry_refused: bool = False) -> Plan:
        """Decide what to send: one row per request without an answer (among the first `limit`
        rows), but not those refused as misuse unless `retry_refused`; and why. Over the kept
        to-do set where it is valid (todo.py), else over every row of the scan, keeping the set
        for the next run when this plan covers the whole scan."""
        self._fold()
        end = (1 << 62) if limit is None else int(limit)
        kept = self._todo_kept()
        (rows, slot, key), ident = self._rows(kept), self.ident
        with self._errors():
            conn = self._conn
            conn.execute("DROP TABLE IF EXISTS temp.todo")
            conn.execute("DROP TABLE IF EXISTS temp.send")
            conn.execute(
                "CREATE TEMP TABLE todo "
                "(pos INTEGER PRIMARY KEY, why TEXT, key BLOB, prev BLOB, refused INTEGER)"
            )
            # Every slot without an answer, refused ones marked: the kept set is all of them.
            conn.execute(
                f"INSERT INTO temp.todo SELECT {slot}, CASE WHEN c.id IS NOT NULL THEN 'retry' "
                # A row never asked (the usual one to send) is told by two look-ups, not six.
                # Asked: a result of its own, or another row's answer it took (taken.py).
                f"WHEN NOT {asked('o.id = r.id')} THEN 'new' "
                f"{self._new_sample(kept, key)}WHEN {asked('o.id = r.id AND o.ident = ?1')} "
                f"THEN 'changed' WHEN {asked('o.id = r.id AND o.ident = ?2')} THEN 'unknown' "
                "ELSE 'identity' END, "
                f"{key}, NULL, c.finish_reason IS 'misuse' FROM {rows} LEFT JOIN results c ON "
                f"c.ident = ?1 AND c.digest = {key} WHERE r.bad IS NULL AND r.pos < ?3 AND "
                f"(c.id IS NULL OR c.finish_reason IN {UNANSWERED}) ORDER BY 1",
                (ident, fingerprint.UNKNOWN, end),
            )
            if self._may_keep_todo() and (kept or limit is None):
                self._keep_todo(kept, end)
            refused = 0
            if not retry_refused:
                refused = conn.execute("DELETE FROM temp.todo WHERE refused").rowcount
            # The first row of each request, and why (SQLite takes a bare column from the row
            # that holds the min()); inserted in position order, so appended (18 ms for 20,000
            # rows, against 27 ms for a table made by the GROUP BY, indexed, and counted by IN).
            conn.execute("CREATE TEMP TABLE send (pos INTEGER PRIMARY KEY, why TEXT)")
            conn.execute(
                "INSERT INTO temp.send SELECT min(pos), why FROM temp.todo GROUP BY key ORDER BY 1"
            )
            counts = dict(conn.execute("SELECT why, count(*) FROM temp.send GROUP BY why"))
            rows = conn.execute("SELECT count(*) FROM temp.todo").fetchone()[0]
            change = self._change() if counts.get("identity") else None
        sent = sum(counts.values())
        return Plan(
            **{
                k: int(counts.get(k, 0)) for k in ("new", "changed", "retry", "identity", "unknown")
            },
            reused=int(rows) - sent,
            change=change,
            refused=max(0, refused),
        )

    def _keep_todo(self, kept: bool, end: int) -> None:
        """The kept to-do set after a plan (temp.todo: every slot below `end` that wants an
        answer): over the set, the slots answered since it was written dropped; over the whole
        scan, written anew, with its stamp, in one transaction."""
        with self._transaction():
            if kept:
                self._conn.execute(
                    "DELETE FROM main.todo WHERE slot < ? AND slot NOT IN (SELECT pos FROM "
                    "temp.todo)",
                    (min(end * self.samples, 1 << 62),),
                )
            else:
                self._conn.execute("DELETE FROM main.todo")
                self._conn.execute("INSERT INTO main.todo SELECT pos FROM temp.todo")
                self._stamp_todo()
        self._todo_live = True

    def _change(self) -> str:
        """What changed for the rows asked before with another identity: the most common
        change (the identity whose answer the last run's output gave the row, else the one it
        was last asked with -> this one). Not only the last asked: model A, B, then A again
        (sent nothing), then A at another temperature changed the temperature, not B's model."""
        last = self.last_ident if self.last_ident != self.ident else None
        found = self._conn.execute(
            f"SELECT CASE WHEN {asked('o.id = r.id AND o.ident = ?2')} THEN ?2 ELSE "
            f"{last_asked('o.id = r.id AND o.ident != ?1')} END AS prev, count(*) FROM temp.todo t "
            f"JOIN scan r ON r.pos = t.pos / {self.samples} WHERE t.why = 'identity' GROUP BY prev "
            "ORDER BY count(*) DESC LIMIT 2",
            (self.ident, last),
        ).fetchall()
        before = self.identity_of(found[0][0])
        text = fingerprint.describe_change(before, self.identity or {})
        return text + (" and others" if len(found) > 1 else "")

    def identity_of(self, ident: bytes) -> dict[str, Any] | None:
        row = self._conn.execute(
            "SELECT identity FROM identities WHERE ident = ?", (ident,)
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def in_batches_out(self, origin: str | None) -> int:
        """Of the last plan's requests, those in this identity's Batch API batches still out
        (made, or a create may have been sent; or recorded for a server other than `origin`,
        the run's): a --via batch run collects them, or waits for them, never sends them. Not
        those of a file waiting to be submitted here, nor lines to resubmit: it sends those."""
        with self._errors():
            if not self._has_batches():
                return 0  # a read-only view of a checkpoint from before the Batch API
            found = self._conn.execute(
                "SELECT count(*) FROM temp.send s JOIN temp.todo t ON t.pos = s.pos WHERE t.key "
                f"IN ({_KEYS_OUT})",
                {"ident": self.ident, "origin": origin},
            ).fetchone()
        return int(found[0])

    def slots_of(self, keys: Iterable[bytes]) -> dict[bytes, int]:
        """The slot of this run's plan each request key answers (its first row's, as the plan
        sends it); none for a request the plan does not want. A Batch API line names the
        position its row had when its file was made: the input may have changed since."""
        wanted = list(set(keys))
        found: dict[bytes, int] = {}
        with self._errors():
            self._conn.execute("CREATE INDEX IF NOT EXISTS temp.todo_by_key ON todo (key)")
            for at in range(0, len(wanted), 500):
                chunk = wanted[at : at + 500]
                found.update(
                    self._conn.execute(
                        "SELECT key, min(pos) FROM temp.todo WHERE key IN "
                        f"({', '.join('?' * len(chunk))}) GROUP BY key",
                        chunk,
                    )
                )
        return found

    def todo_positions(self) -> Iterator[int]:
        return self._positions("", {})

    def positions_to_send(self, origin: str | None) -> Iterator[int]:
        """The last plan's positions but those whose request is in a batch still out (as
        in_batches_out counts them): what a --via batch run sends, as its dry run prices it."""
        with self._errors():
            if not self._has_batches():
                return self.todo_positions()
        skip = f" AND pos NOT IN (SELECT pos FROM temp.todo WHERE key IN ({_KEYS_OUT}))"
        return self._positions(skip, {"ident": self.ident, "origin": origin})

    def _positions(self, skip: str, args: dict[str, Any]) -> Iterator[int]:
        last = -1
        while True:
            with self._errors():
                page = self._conn.execute(
                    f"SELECT pos FROM temp.send WHERE pos > :last{skip} ORDER BY pos LIMIT :page",
                    {**args, "last": last, "page": PAGE},
                ).fetchall()
            if not page:
                return
            for (pos,) in page:
                yield pos
            last = page[-1][0]

    def output_rows(
        self, limit: int | None = None, *, bodies: bool = False
    ) -> Iterator[list[OutputRow]]:
        """Every row of the output, in input order, in pages. A bad row whose id could not be
        read has none (null), not its position, which could be another row's id; a row not sent
        yet is pending. With `bodies`, each
        row's kept reply body too (only --format openai-batch reads them)."""
        self._fold()
        last, end = -1, (limit if limit is not None else 1 << 62)
        with self._errors():
            # A read-only view of a checkpoint from before the column has none to read.
            have = {row[1] for row in self._conn.execute("PRAGMA table_info(results)")}
        has_body = bodies and "body" in have
        estimated = "c.tokens_estimated" if "tokens_estimated" in have else "NULL"
        columns = (
            "SELECT r.pos, CASE WHEN r.bad IS NULL THEN CAST(coalesce(r.id, r.pos) AS TEXT) "
            "ELSE r.id END, r.bad, r.digest, c.id, "
            f"{', '.join('c.' + n.strip() for n in _OUTPUT_COLUMNS.split(','))}, "
            f"{'c.body' if has_body else 'NULL'}, {estimated}"
        )
        if self.samples == 1:
            query = f"{columns} {self._joined()} WHERE r.pos > ?2 AND r.pos < ?3 ORDER BY r.pos LIMIT ?4"
        else:  # a page of input rows, each with its samples
            _rows, _slot, key = self._rows()
            query = (
                f"{columns}, k.s FROM (SELECT * FROM scan WHERE pos > ?2 AND pos < ?3 ORDER BY pos "
                "LIMIT ?4) r CROSS JOIN temp.samples k LEFT JOIN results c ON r.bad IS NULL AND "
                f"c.ident = ?1 AND c.digest = {key} ORDER BY r.pos, k.s"
            )
        while True:
            with self._errors():
                page = self._conn.execute(query, (self.ident, last, end, PAGE)).fetchall()
            if not page:
                return
            last = page[-1][0]
            yield [_output_row(row) for row in page]


def _output_row(row: tuple[Any, ...]) -> OutputRow:
    """An output row from the joined scan and results columns (see output_rows)."""
    (_pos, row_id, bad, digest, asked_for, reason, *rest) = row
    sample = rest[11] if len(rest) > 11 else None  # with --repeat N, N > 1
    if bad is not None:
        return invalid_row(row_id, bad)._replace(sample=sample)
    if reason is None:  # not sent yet: the run stopped early
        return pending_row(row_id, digest)._replace(sample=sample)
    answer, error, attempts, latency, model, ptok, ctok, response_id, request_id, body = rest[:10]
    estimated = None if ptok is None and ctok is None else bool(rest[10])
    # Built directly (answered_row would make a Result first): one of these per output row.
    return OutputRow(
        row_id, answer, reason, reason == "misuse", error, attempts, latency, model, ptok, ctok,
        response_id, request_id, digest, None if asked_for == row_id else asked_for, sample, body,
        estimated,
    )  # fmt: skip
