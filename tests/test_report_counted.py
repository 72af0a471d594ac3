"""The report from attempts counted by SQLite (report/tally.py): every number, the text and the
page the same as from the attempts streamed one by one, on checkpoints of every kind of attempt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from report_checkpoints import varied_checkpoint

from batchpizza.checkpoint import Checkpoint
from batchpizza.report import AttemptRecord, ReportData, render_html, render_text, summarize
from batchpizza.report.spend import spend_numbers
from batchpizza.report.structured import structured_numbers
from batchpizza.reporting import build_report, report_data


def streamed_report(path: Path) -> tuple[str, dict[str, Any], str]:
    """The report as it was built before the attempts were counted: each one a Python object."""
    store = Checkpoint.open(path, create=False, readonly=True)
    try:
        counted = report_data(store)
        data = ReportData(
            counted.rows_by_reason,
            [AttemptRecord(*row) for row in store.attempts()],
            counted.runs,
            counted.rate_changes,
            counted.breaker_events,
            list(store.answer_tokens()),
        )
        numbers = summarize(data)
        numbers["structured"] = structured_numbers(store)
        numbers["spend"] = spend_numbers(store)
    finally:
        store.close()
    return render_text(numbers), numbers, render_html(numbers)


@pytest.mark.parametrize(
    ("n", "spacing", "gap"),
    [
        (3000, 0.5, 86400.0),  # runs a day apart: wide buckets, idle time left out
        (600, 0.15, 48.0),  # overlapping runs within a minute: 1 s buckets
        (0, 1.0, 3600.0),  # runs that sent nothing
    ],
)
def test_counted_attempts_report_what_streamed_ones_do(
    tmp_path: Path, n: int, spacing: float, gap: float
) -> None:
    path = tmp_path / "out.jsonl.checkpoint"
    varied_checkpoint(path, n, spacing=spacing, gap=gap)

    text, numbers, page = build_report(path, html=True)

    assert (text, numbers, page) == streamed_report(path)
    assert numbers["requests"]["total"] >= n
    if n:
        assert len(numbers["errors"]) == 11  # every kind of failure, in a varied order
        assert numbers["latency_ms"]["count"] == numbers["requests"]["answered"]
        assert sum(numbers["series"]["requests"]) == numbers["requests"]["total"]
        assert any(m is not None and m != round(m) for m in numbers["series"]["latency_ms_mean"])
        assert "hunter2" not in text + page


def test_the_report_does_not_read_the_answered_attempts_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.jsonl.checkpoint"
    varied_checkpoint(path, 600, spacing=0.15, gap=48.0)
    failed = {"every": 0, "failed": 0}

    def every_attempt(self: Checkpoint) -> Any:
        failed["every"] += 1
        return iter(())

    def failed_attempts(self: Checkpoint) -> Any:
        for row in original(self):
            failed["failed"] += 1
            assert row[4] != "answered"
            yield row

    original = Checkpoint.failed_attempts
    monkeypatch.setattr(Checkpoint, "attempts", every_attempt)
    monkeypatch.setattr(Checkpoint, "failed_attempts", failed_attempts)

    numbers = build_report(path, html=False)[1]

    assert failed == {"every": 0, "failed": numbers["requests"]["failed"]}
    assert numbers["requests"]["answered"] > 0
