"""What `status` says of a checkpoint, and the HTTP statuses of the rows that failed: queries over
the plan's (a mixin of Checkpoint, as PlanQueries is)."""

from __future__ import annotations

from batchpizza.checkpoint.counts import UNANSWERED
from batchpizza.checkpoint.plan import PlanQueries
from batchpizza.errors import OutputError
from batchpizza.records import Tally


class StatusQueries(PlanQueries):
    _staged: int  # (the Checkpoint's) results staged since the last fold
    _readonly: bool

    def tally(self, limit: int | None = None) -> Tally:
        """PlanQueries.tally; when the staged answers cannot be folded first (a full disk), they
        are counted where they are, through a read-only view of the file (as `status` reads a
        live run's), so that the summary of the run that failed still says what it answered."""
        try:
            return super().tally(limit)
        except OutputError:
            if self.path is None or self._readonly or not self._staged:
                raise
            from batchpizza.checkpoint.store import Checkpoint  # (the class this is a mixin of)

            view = Checkpoint.open(self.path, create=False, readonly=True)
            try:
                view.ident = self.ident
                view.use_samples(self.samples)
                return view.tally(limit)
            finally:
                view.close()

    def failure_statuses(self) -> dict[str, int]:
        """Row id -> the HTTP status of the last attempt of each row that failed or was refused,
        when that attempt got a non-2xx reply (a timeout has none; a 2xx without an answer is no
        HTTP failure). For OpenAI batch output lines; one pass over the attempts."""
        self._fold()
        with self._errors():
            found = self._conn.execute(
                # SQLite takes a bare column from the row that holds the max().
                "SELECT a.row_id, a.status, max(a.started) FROM attempts a "
                f"JOIN results c ON c.id = a.row_id WHERE c.finish_reason IN {UNANSWERED} "
                "GROUP BY a.row_id"
            ).fetchall()
        return {
            str(row_id): int(status)
            for row_id, status, _ in found
            if isinstance(status, int) and not 200 <= status < 300
        }

    def status(self) -> dict[str, object]:
        """Counts by outcome over the last run's rows, and what that run recorded of its input."""
        self._fold()
        meta = self.meta()
        info: dict[str, object] = {"input": meta.get("input")}
        has_scan = self._scanned() > 0
        if has_scan:
            tally = self.tally()
            if self.samples > 1:  # --repeat: `rows` are output rows, `samples` to an input row
                info["samples"] = self.samples
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
                answered=sum(v for k, v in found.items() if k not in UNANSWERED),
                failed=found.get("error", 0) + found.get("invalid_output", 0),
                misuse=found.get("misuse", 0),
                invalid=int(meta.get("invalid") or 0),
            )
            if meta.get("rows"):
                rows = int(meta["rows"])
                done = sum(found.values()) + int(meta.get("invalid") or 0)
                info.update(rows=rows, pending=max(0, rows - done))
        if has_scan and self.identity is not None:  # what a rerun of the last run would send
            plan = self.plan()
            info.update(to_send=plan.reasons(), plan=plan.to_dict())
        info["updated"] = float(meta["updated"]) if meta.get("updated") else None
        with self._errors():
            info["answers_kept"] = self._conn.execute(
                f"SELECT count(*) FROM results WHERE finish_reason NOT IN {UNANSWERED}"
            ).fetchone()[0]
        return info
