"""The checkpoint's record of what the runs did, as the report's data: the bridge between the
checkpoint (which owns the tables) and report.py (which only computes and draws)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from batchpizza.checkpoint import Checkpoint
from batchpizza.report import (
    AttemptRecord,
    BreakerEvent,
    RateChange,
    ReportData,
    RunRecord,
    render_html,
    render_text,
    summarize,
)


def report_data(checkpoint: Checkpoint) -> ReportData:
    def attempts() -> Iterator[AttemptRecord]:
        for row in checkpoint.attempts():
            yield AttemptRecord(*row)

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
    return ReportData(checkpoint.rows_by_reason(), attempts(), runs, rates, trips)


def build_report(path: Path, *, html: bool) -> tuple[str, dict[str, Any], str | None]:
    """(terminal text, JSON numbers, HTML page or None) for the checkpoint at `path`."""
    store = Checkpoint.open(path, create=False, readonly=True)
    try:
        numbers = summarize(report_data(store))
    finally:
        store.close()
    return render_text(numbers), numbers, render_html(numbers) if html else None
