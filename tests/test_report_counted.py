"""The report from attempts counted by SQLite (report/tally.py): every number, the text and the
page the same as from the attempts streamed one by one, on checkpoints of every kind of attempt."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST, write_jsonl
from report_checkpoints import varied_checkpoint

import batchpizza
from batchpizza.checkpoint import Checkpoint
from batchpizza.identities import identity_of
from batchpizza.mock.faults import MockConfig
from batchpizza.mock.server import ThreadedMockServer
from batchpizza.records import Attempt
from batchpizza.report import AttemptRecord, ReportData, render_html, render_text, summarize
from batchpizza.reporting import build_report, checkpoint_numbers, report_data


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
        numbers.update(checkpoint_numbers(store))
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


def test_the_report_reads_no_attempt_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.jsonl.checkpoint"
    varied_checkpoint(path, 600, spacing=0.15, gap=48.0)

    def one_by_one(self: Checkpoint) -> Any:
        raise AssertionError("every attempt read as a Python object")

    monkeypatch.setattr(Checkpoint, "attempts", one_by_one)

    numbers = build_report(path, html=False)[1]

    assert numbers["requests"]["answered"] > 0
    assert sum(e["count"] for e in numbers["errors"]) == numbers["requests"]["failed"] > 0


def test_of_failures_started_at_once_the_first_recorded_gives_the_example(
    tmp_path: Path,
) -> None:
    # A batch's failed lines are recorded with the batch's creation time, all at once.
    path = tmp_path / "out.jsonl.checkpoint"
    store = Checkpoint.open(path)
    store.use_identity(identity_of("pizzagpt", None, {}))
    run = store.begin_run({"provider": "pizzagpt"})
    store.write(
        [],
        [
            Attempt("a", 1000.0, 5.0, "http", 500, ""),
            Attempt("b", 1000.0, 5.0, "http", 500, "first recorded"),
            Attempt("c", 1000.0, 5.0, "http", 500, "second recorded"),
            Attempt("d", 999.0, 5.0, "timeout", None, None),
        ],
        run,
    )
    store.close()

    text, numbers, page = build_report(path, html=True)

    assert (text, numbers, page) == streamed_report(path)
    assert [(e["kind"], e["count"], e["example"]) for e in numbers["errors"]] == [
        ("HTTP 500", 3, "first recorded"),
        ("timeout", 1, None),
    ]


def test_a_time_before_1970_falls_in_the_second_it_is_in(tmp_path: Path) -> None:
    # A clock set wrong: -0.5 is in the second from -1 to 0, where rounding toward 0 would not
    # put it.
    path = tmp_path / "out.jsonl.checkpoint"
    store = Checkpoint.open(path)
    store.use_identity(identity_of("pizzagpt", None, {}))
    run = store.begin_run({"provider": "pizzagpt"})
    store.write([], [Attempt("a", -0.5, 5.0, "answered"), Attempt("b", 0.5, 7.0, "answered")], run)
    store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE runs SET started = -1.0, ended = 1.0")
    conn.close()

    text, numbers, page = build_report(path, html=True)

    assert (text, numbers, page) == streamed_report(path)
    assert numbers["series"]["t"] == [-1, 0, 1]
    assert numbers["series"]["latency_ms_mean"] == [5.0, 7.0, None]


def test_counted_attempts_of_real_runs_report_what_streamed_ones_do(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # Two runs against a server that fails and garbles: the attempts and tokens as runs record
    # them, not as a test writes them. (The learned rate's events are in varied_checkpoint: a
    # --rate auto run paces itself for seconds.)
    mock_api.config = MockConfig(error_rate=0.2, garbage_rate=0.05, seed=3)
    rows = [
        {"id": f"r{i}", "prompt": f"[[fail-first:1]] q {i}" if i % 7 == 0 else f"q {i}"}
        for i in range(150)
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    options = {**FAST, "base_url": mock_api.base_url, "max_retries": 1}
    batchpizza.run(inp, out, **options)
    mock_api.config = MockConfig(seed=4)
    batchpizza.run(inp, out, **options)
    path = tmp_path / "out.jsonl.checkpoint"

    text, numbers, page = build_report(path, html=True)

    assert (text, numbers, page) == streamed_report(path)
    assert len(numbers["runs"]) == 2 and numbers["requests"]["failed"] > 0
    assert numbers["requests"]["tokens"] > 0
