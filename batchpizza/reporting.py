"""The checkpoint's record of what the runs did, as the report's data: the bridge between the
checkpoint (which owns the tables) and report.py (which only computes and draws)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from batchpizza.checkpoint import Checkpoint
from batchpizza.errors import BatchpizzaError
from batchpizza.report import (
    AttemptCounts,
    BreakerEvent,
    RateChange,
    ReportData,
    RunRecord,
    render_html,
    render_text,
    summarize,
)
from batchpizza.report.numbers import iso
from batchpizza.report.spend import spend_numbers
from batchpizza.report.structured import structured_numbers
from batchpizza.sources import input_files


def report_data(checkpoint: Checkpoint) -> ReportData:
    # Counted by SQLite: no Python object per attempt (report/tally.py).
    attempts = AttemptCounts(
        checkpoint.attempt_cells(), checkpoint.answered_latencies(), checkpoint.failure_groups()
    )

    # Rows sent per run, from the attempts themselves: a killed or running run never wrote its
    # count, and a stopped one counts only the rows it finished.
    attempted = checkpoint.rows_attempted()
    runs = [
        RunRecord(
            run_id, started, ended, attempted.get(run_id, 0), exit_code, json.loads(options or "{}")
        )
        for run_id, started, ended, _rows_done, exit_code, options in checkpoint.runs()
    ]
    rates, trips = [], []
    for _run, t, kind, value, detail in checkpoint.events():
        if kind == "rate":
            rates.append(RateChange(t, value, detail))
        elif kind == "breaker":
            trips.append(BreakerEvent(t, detail))
    return ReportData(
        checkpoint.rows_by_reason(), attempts, runs, rates, trips, checkpoint.tokens_by_second()
    )


def checkpoint_numbers(checkpoint: Checkpoint) -> dict[str, Any]:
    """The report's numbers that are not of the attempts: --schema's (None without one), the
    spend (None when no answer carried tokens), and the last --restart's time (the runs and
    attempts before it went with its answers: every section is of the runs since)."""
    restarted = checkpoint.restarted()
    return {
        "structured": structured_numbers(checkpoint),
        "spend": spend_numbers(checkpoint),
        "restarted": None if restarted is None else iso(restarted),
    }


def build_report(path: Path, *, html: bool) -> tuple[str, dict[str, Any], str | None]:
    """(terminal text, JSON numbers, HTML page or None) for the checkpoint at `path`."""
    store = Checkpoint.open(path, create=False, readonly=True)
    try:
        numbers = summarize(report_data(store))
        numbers.update(checkpoint_numbers(store))
    finally:
        store.close()
    return render_text(numbers), numbers, render_html(numbers) if html else None


# Files SQLite keeps beside a database while it is open or after a crash: part of the checkpoint.
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
_CHECKPOINT_SUFFIXES = (".checkpoint", ".mock-checkpoint")


def run_files(path: Path, output: str | None) -> tuple[list[tuple[str, Path]], list[Path]]:
    """The files of the run whose checkpoint is at `path`, which a report must never write over:
    ([(what, path)], input folders). The checkpoint (with SQLite's files beside it), the output
    (named, else the one a default checkpoint name implies) and its other checkpoint, and the
    input the last run recorded. A relative input is taken both from here and from the
    checkpoint's folder: which folder the run started in is not recorded."""
    own = [("checkpoint", path)]
    own += [("checkpoint", path.with_name(path.name + side)) for side in _SQLITE_SIDE_FILES]
    if output is None:
        output = next(
            (path.name[: -len(s)] for s in _CHECKPOINT_SUFFIXES if path.name.endswith(s)), None
        )
        output = str(path.with_name(output)) if output else None
    if output is not None:
        own.append(("output", Path(output)))
        own += [("checkpoint", Path(output + suffix)) for suffix in _CHECKPOINT_SUFFIXES]
    folders: list[Path] = []
    recorded = _recorded_input(path)
    if recorded and recorded != "-":
        places = [Path(recorded)]
        if not places[0].is_absolute():
            places.append(path.parent / recorded)
        for place in places:
            if place.is_dir():
                folders.append(place)
            own += [("input", p) for p in input_files(str(place))]
    return own, folders


def _recorded_input(path: Path) -> str | None:
    try:
        store = Checkpoint.open(path, create=False, readonly=True)
    except BatchpizzaError:
        return None  # no checkpoint: building the report says so
    try:
        return store.meta().get("input")
    finally:
        store.close()
