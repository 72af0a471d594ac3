"""The report: numbers checked against synthetic attempts whose answers are known, the text and the
page drawn from them, and the page opened in headless Chromium with the network watched."""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchpizza.report import (
    MAX_POINTS,
    AttemptRecord,
    BreakerEvent,
    RateChange,
    ReportData,
    RunRecord,
    render_html,
    render_text,
    summarize,
)

REPO = Path(__file__).resolve().parent.parent
T0 = 1_714_557_600.0  # 2024-05-01T10:00:00Z
T1 = T0 + 3600  # the second run, an hour later
LATENCIES = [10.0 * i for i in range(1, 81)]  # 10 .. 800 ms, one per answered attempt
SECRETS = ("hunter2", "sk-abcdef", "s3cr3tpass")
MISUSE = "Misuse detected. Please get in touch, we can come up with a solution for your use case."


def known_attempts() -> list[AttemptRecord]:
    """100 attempts: 80 answered (10..800 ms, shuffled), 10 HTTP 503, 5 timeouts, 5 refusals.

    Run 1 sends rows 0-64 once (0-49 answered, 50-54 a 503, 55-59 a timeout, 60-64 refused), then
    retries 50-54 (answered) and 55-59 (a 503): 75 attempts, 65 rows, 10 retries. Run 2 sends the
    failed and refused rows 55-64 again and new rows 65-79, all answered: 25 attempts, 25 rows.
    """
    latencies = LATENCIES.copy()
    random.Random(7).shuffle(latencies)
    run1 = (
        [(r, "answered") for r in range(50)]
        + [(r, "http") for r in range(50, 55)]
        + [(r, "timeout") for r in range(55, 60)]
        + [(r, "refusal") for r in range(60, 65)]
        + [(r, "answered") for r in range(50, 55)]
        + [(r, "http") for r in range(55, 60)]
    )
    run2 = [(r, "answered") for r in range(55, 80)]
    out = []
    for run, plan, start, step in ((1, run1, T0 + 2, 1.0), (2, run2, T1 + 1, 0.5)):
        for k, (row, outcome) in enumerate(plan):
            t, row_id = start + k * step, f"r{row}"
            if outcome == "answered":
                out.append(AttemptRecord(run, row_id, t, latencies.pop(), outcome, 200, None))
            elif outcome == "http":
                error = (
                    f"HTTP 503 Service Unavailable (attempt {k}) from "
                    f"https://user:hunter2@api.example/x?api_key=sk-abcdef{k}"
                )
                out.append(AttemptRecord(run, row_id, t, 50.0, outcome, 503, error))
            elif outcome == "timeout":
                error = f"no complete reply within 5 s (attempt {k})"
                out.append(AttemptRecord(run, row_id, t, 5000.0, outcome, None, error))
            else:
                out.append(AttemptRecord(run, row_id, t, 120.0, outcome, None, MISUSE))
    return out


def known_data(attempts: list[AttemptRecord] | None = None) -> ReportData:
    options = {"rate": "auto", "concurrency": 8, "proxy": "http://bob:s3cr3tpass@proxy.local:3128"}
    return ReportData(
        rows_by_reason={
            "error": 4,
            "stop": 78,
            "length": 2,
            "misuse": 1,
            "pending": 3,
            "invalid": 2,
        },
        attempts=iter(known_attempts() if attempts is None else attempts),
        runs=[
            RunRecord(2, T1, T1 + 30, 25, 0, {"rate": "auto", "concurrency": 8}),
            RunRecord(1, T0, T0 + 100, 65, 3, options),
        ],
        rate_changes=[
            RateChange(T0 + 30, 2.0, "clean replies"),
            RateChange(T0, 1.0, "start"),
            RateChange(T0 + 60, 1.0, "HTTP 429: cut"),
            RateChange(T0 + 82, 0.5, "breaker closed: half rate"),
            RateChange(T1, 0.5, "learned rate"),
            RateChange(T1 + 10, 1.5, "clean replies"),
        ],
        breaker_events=[
            BreakerEvent(T0 + 80, "probe"),
            BreakerEvent(T0 + 70, "open"),
            BreakerEvent(T0 + 81, "closed"),
        ],
    )


@pytest.fixture(scope="module")
def numbers() -> dict[str, Any]:
    return summarize(known_data())


# --- the numbers ----------------------------------------------------------------------------------


def test_rows_by_finish_reason_put_answers_first(numbers: dict[str, Any]) -> None:
    rows = numbers["rows"]
    assert list(rows["by_reason"].items()) == [
        ("stop", 78),
        ("length", 2),
        ("error", 4),
        ("pending", 3),
        ("invalid", 2),
        ("misuse", 1),
    ]
    assert rows["total"] == 90
    assert rows["answered"] == 80


def test_requests_retries_and_their_share(numbers: dict[str, Any]) -> None:
    req = numbers["requests"]
    assert (req["total"], req["answered"], req["failed"]) == (100, 80, 20)
    # 90 rows attempted (65 in run 1, 25 in run 2): 10 attempts beyond a row's first in its run.
    distinct = {(a.run, a.row_id) for a in known_attempts()}
    assert req["rows_attempted"] == len(distinct) == 90
    assert req["retries"] == 10
    assert req["retry_share"] == 0.1


def test_throughput_counts_only_time_spent_sending(numbers: dict[str, Any]) -> None:
    spans = []
    for run in (1, 2):
        mine = [a for a in known_attempts() if a.run == run]
        spans.append(
            max(a.started + a.duration_ms / 1000 for a in mine) - min(a.started for a in mine)
        )
    sending = sum(spans)
    assert 74 < sending < 90  # the idle hour between the runs is not in it
    req = numbers["requests"]
    assert req["sending_s"] == pytest.approx(sending, abs=1e-3)
    assert req["per_s"] == pytest.approx(100 / sending, abs=1e-3)
    assert req["answered_per_s"] == pytest.approx(80 / sending, abs=1e-3)


def test_latency_percentiles_are_exact_nearest_rank(numbers: dict[str, Any]) -> None:
    lat = numbers["latency_ms"]
    # Ranks ceil(p/100 * 80): 40, 72, 80 of 10, 20, ..., 800 ms.
    assert (lat["p50"], lat["p90"], lat["p99"], lat["max"]) == (400.0, 720.0, 800.0, 800.0)
    assert (lat["count"], lat["min"], lat["mean"]) == (80, 10.0, 405.0)


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([float(v) for v in range(100, 0, -1)], (50.0, 90.0, 99.0, 100.0)),
        ([7.5], (7.5, 7.5, 7.5, 7.5)),
        ([1.0, 2.0], (1.0, 2.0, 2.0, 2.0)),
        ([3.0] * 10 + [1000.0], (3.0, 3.0, 1000.0, 1000.0)),
    ],
)
def test_percentiles_are_observed_values(
    samples: list[float], expected: tuple[float, float, float, float]
) -> None:
    attempts = [
        AttemptRecord(1, f"r{i}", T0 + i, v, "answered", 200, None) for i, v in enumerate(samples)
    ]
    lat = summarize(ReportData({}, attempts, [], [], []))["latency_ms"]
    assert (lat["p50"], lat["p90"], lat["p99"], lat["max"]) == expected


def test_latency_histogram_holds_every_answer(numbers: dict[str, Any]) -> None:
    hist = numbers["latency_ms"]["histogram"]
    assert sum(hist["counts"]) + hist["overflow"] == 80
    assert hist["overflow"] == 0
    assert (
        hist["start_ms"] <= 10.0 < 800.0 < hist["start_ms"] + len(hist["counts"]) * hist["bin_ms"]
    )


def test_a_long_tail_goes_into_the_overflow_count() -> None:
    samples = [100.0 + i for i in range(99)] + [60_000.0]
    attempts = [
        AttemptRecord(1, f"r{i}", T0 + i, v, "answered", 200, None) for i, v in enumerate(samples)
    ]
    lat = summarize(ReportData({}, attempts, [], [], []))["latency_ms"]
    hist = lat["histogram"]
    assert lat["max"] == 60_000.0
    assert hist["overflow"] == 1
    assert sum(hist["counts"]) == 99
    assert len(hist["counts"]) <= 41


def test_errors_by_kind_with_first_last_and_the_earliest_example(numbers: dict[str, Any]) -> None:
    errors = {e["kind"]: e for e in numbers["errors"]}
    assert [e["kind"] for e in numbers["errors"]] == ["HTTP 503", "refusal", "timeout"]
    assert [e["count"] for e in numbers["errors"]] == [10, 5, 5]
    # Run 1's attempt k starts at 10:00:02 + k s: the 503s are k = 50-54 and 70-74.
    assert (errors["HTTP 503"]["first"], errors["HTTP 503"]["last"]) == (
        "2024-05-01T10:00:52Z",
        "2024-05-01T10:01:16Z",
    )
    assert (errors["timeout"]["first"], errors["timeout"]["last"]) == (
        "2024-05-01T10:00:57Z",
        "2024-05-01T10:01:01Z",
    )
    assert errors["refusal"]["first"] == "2024-05-01T10:01:02Z"
    assert errors["HTTP 503"]["example"] == (
        "HTTP 503 Service Unavailable (attempt 50) from https://***@api.example/x?api_key=***"
    )
    assert errors["timeout"]["example"] == "no complete reply within 5 s (attempt 55)"
    assert errors["refusal"]["example"] == MISUSE
    assert errors["HTTP 503"]["share"] == 0.1


def test_a_refusal_with_a_status_and_other_outcomes_are_kinds_of_their_own() -> None:
    attempts = [
        AttemptRecord(1, "a", T0, 10.0, "refusal", 403, "HTTP 403 Forbidden"),
        AttemptRecord(1, "b", T0, 10.0, "transport", None, "Connection reset by peer"),
        AttemptRecord(1, "c", T0, 10.0, "bad_reply", None, "reply is not JSON"),
        AttemptRecord(1, "d", T0, 10.0, "redirect", None, "redirect to another host"),
        AttemptRecord(1, "e", T0, 10.0, "stopped", None, None),
        AttemptRecord(1, "f", T0, 10.0, "http", 429, "HTTP 429"),
    ]
    errors = summarize(ReportData({}, attempts, [], [], []))["errors"]
    assert sorted((e["kind"], e["example"]) for e in errors) == [
        ("HTTP 429", "HTTP 429"),
        ("bad reply", "reply is not JSON"),
        ("connection error", "Connection reset by peer"),
        ("redirect", "redirect to another host"),
        ("refusal (HTTP 403)", "HTTP 403 Forbidden"),
        ("stopped", None),
    ]


def test_secrets_are_masked_in_every_output(numbers: dict[str, Any]) -> None:
    outputs = [json.dumps(numbers), render_text(numbers), render_html(numbers)]
    for secret in SECRETS:
        for out in outputs:
            assert secret not in out
    assert numbers["runs"][0]["options"]["proxy"] == "http://***@proxy.local:3128"
    assert numbers["runs"][0]["options"]["concurrency"] == 8


def test_bucketed_series_sum_to_the_totals(numbers: dict[str, Any]) -> None:
    series = numbers["series"]
    assert sum(series["requests"]) == 100
    assert sum(series["answered"]) == 80
    assert sum(series["errors"]) == 20
    assert series["bucket_s"] == 1
    # Every second of both runs (101 + 31 buckets), and the idle hour between them left out.
    assert len(series["t"]) == 132
    jumps = [b - a for a, b in itertools.pairwise(series["t"]) if b - a != series["bucket_s"]]
    assert jumps == [T1 - (T0 + 100)]
    means = [m for m in series["latency_ms_mean"] if m is not None]
    assert len(means) == sum(1 for a in series["answered"] if a)


def test_buckets_widen_to_stay_under_max_points_whatever_the_span() -> None:
    rng = random.Random(3)
    runs, attempts = [], []
    for day in range(10):  # ten nightly runs of two hours, an attempt every ~7 s
        start = T0 + day * 86400
        runs.append(RunRecord(day + 1, start, start + 7200, 1000, 0, {}))
        attempts += [
            AttemptRecord(
                day + 1, f"{day}-{i}", start + i * 7, rng.uniform(100, 900), "answered", 200, None
            )
            for i in range(1000)
        ]
    rng.shuffle(attempts)  # the checkpoint may stream in any order
    series = summarize(ReportData({"stop": 10_000}, attempts, runs, [], []))["series"]
    assert 10 < len(series["t"]) <= MAX_POINTS
    assert sum(series["requests"]) == sum(series["answered"]) == 10_000
    assert all(t % series["bucket_s"] == 0 for t in series["t"])
    assert series["t"] == sorted(series["t"])


def test_the_order_of_attempts_does_not_change_the_numbers(numbers: dict[str, Any]) -> None:
    assert summarize(known_data(known_attempts()[::-1])) == numbers


def test_attempts_are_read_in_one_pass() -> None:
    reads = 0

    def stream() -> Iterator[AttemptRecord]:
        nonlocal reads
        reads += 1
        yield from known_attempts()

    class Once:
        def __iter__(self) -> Iterator[AttemptRecord]:
            return stream()

    summarize(ReportData({}, Once(), [], [], []))
    assert reads == 1


@pytest.mark.slow
def test_memory_stays_bounded_whatever_the_number_of_attempts() -> None:
    # 20,000 failed attempts on distinct rows: no latency samples to keep, so what the pass holds
    # is counters per run, per error kind and per bucket. A set of the row ids alone would take
    # over a megabyte.
    def stream() -> Iterator[AttemptRecord]:
        for i in range(20_000):
            status = 500 + i % 4
            yield AttemptRecord(
                1, f"row-{i}", T0 + i * 0.37, 50.0, "http", status, f"HTTP {status}"
            )

    tracemalloc.start()
    try:
        numbers = summarize(
            ReportData({}, stream(), [RunRecord(1, T0, T0 + 7400, 20_000, 3, {})], [], [])
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert numbers["requests"]["failed"] == 20_000
    assert len(numbers["errors"]) == 4
    assert peak < 400_000


def test_rate_breaker_and_runs_in_time_order(numbers: dict[str, Any]) -> None:
    rate = numbers["rate"]
    assert [c["rate"] for c in rate["changes"]] == [1.0, 2.0, 1.0, 0.5, 0.5, 1.5]
    assert rate["changes"][0]["time"] == "2024-05-01T10:00:00Z"
    assert (rate["current"], rate["min"], rate["max"]) == (1.5, 0.5, 2.0)
    breaker = numbers["breaker"]
    assert breaker["trips"] == 1
    assert not breaker["gave_up"]
    assert [e["event"] for e in breaker["events"]] == ["open", "probe", "closed"]
    runs = numbers["runs"]
    assert [r["id"] for r in runs] == [1, 2]
    assert runs[0] | {"options": None} == {
        "id": 1,
        "started": "2024-05-01T10:00:00Z",
        "started_t": T0,
        "ended": "2024-05-01T10:01:40Z",
        "duration_s": 100.0,
        "rows_sent": 65,
        "requests": 75,
        "answered": 55,
        "exit_code": 3,
        "options": None,
    }
    assert numbers["period"]["start"] == "2024-05-01T10:00:00Z"
    assert numbers["period"]["end"] == "2024-05-01T11:00:30Z"


def test_summary_is_json_ready(numbers: dict[str, Any]) -> None:
    assert json.loads(json.dumps(numbers, allow_nan=False)) == numbers


def test_an_empty_checkpoint_still_reports() -> None:
    numbers = summarize(ReportData({}, [], [], [], []))
    assert numbers["requests"]["total"] == 0
    assert numbers["latency_ms"] is None
    assert numbers["series"]["t"] == []
    assert numbers["period"]["start"] is None
    assert "Errors by kind" in render_text(numbers)
    assert "No attempts recorded" in render_html(numbers)


# --- the text -------------------------------------------------------------------------------------


def test_text_report_holds_the_key_lines_within_100_columns(numbers: dict[str, Any]) -> None:
    text = render_text(numbers)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert lines[0] == "batchpizza report  ·  2 runs  ·  2024-05-01 10:00:00 → 11:00:30 UTC"
    for pattern in (
        r"^  stop +78 +86\.7%  █+$",
        r"^  total +90$",
        r"^  requests +100  answered 80 \(80\.0%\) · failed 20$",
        r"^  retries +10  10\.0% of requests · 90 rows attempted$",
        r"^  throughput +1\.\d\d/s  requests · 0\.\d\d/s answered",
        r"^  p50 400 ms   p90 720 ms   p99 800 ms   max 800 ms   mean 405 ms$",
        r"^  HTTP 503 +10 +10\.0%   10:00:52 +10:01:16$",
        r"^      HTTP 503 Service Unavailable \(attempt 50\) from https://\*\*\*@api",
        r"^  refusal +5 +5\.0%",
        r"^  now 1\.50/s · min 0\.50/s · max 2\.00/s · 6 changes, 2 cuts",
        r"^  10:01:00 +2\.00/s → 1\.00/s  HTTP 429: cut$",
        r"^  10:01:22 +1\.00/s → 0\.50/s  breaker closed: half rate$",
        r"^  1 trip$",
        r"^  10:01:10 +open$",
        r"^ +1  2024-05-01 10:00:00 +1m 40s +65 +75 +55 +3$",
        r"^ +2  2024-05-01 11:00:00 +30 s +25 +25 +25 +0$",
    ):
        assert re.search(pattern, text, re.MULTILINE), pattern
    assert not any(line != line.rstrip() for line in lines)


def test_long_texts_are_cut_to_fit() -> None:
    attempts = [AttemptRecord(1, "a", T0, 5.0, "transport", None, "boom " * 200)]
    numbers = summarize(ReportData({"a-very-long-finish-reason-name": 1}, attempts, [], [], []))
    assert numbers["errors"][0]["example"].endswith("…")
    assert max(map(len, render_text(numbers).splitlines())) <= 100


# --- the page -------------------------------------------------------------------------------------

# Anything that would make a browser fetch: src=, href=, CSS @import and url(), to http(s) or
# protocol-relative addresses.
FETCHING = re.compile(
    r"""(?:\b(?:src|href|action|poster)\s*=\s*["']?\s*|@import\s*["']?\s*|url\(\s*["']?\s*)"""
    r"(?:https?:)?//",
    re.IGNORECASE,
)


def test_page_is_self_contained_and_small(numbers: dict[str, Any]) -> None:
    page = render_html(numbers)
    assert not FETCHING.search(page)
    assert "@import" not in page
    assert len(page.encode()) < 2_000_000
    assert page.count("<script") == 3  # the data, uPlot, ours: nothing loaded from outside
    assert "default-src 'none'" in page
    assert "Copyright (c) 2022 Leon Sorokin" in page  # uPlot's MIT licence travels with it


def test_page_embeds_the_same_numbers(numbers: dict[str, Any]) -> None:
    page = render_html(numbers)
    found = re.search(
        r'<script id="report-data" type="application/json">(.*?)</script>', page, re.S
    )
    assert found
    assert json.loads(found.group(1)) == json.loads(json.dumps(numbers))
    for shown in ("400 ms", "1.15/s", "HTTP 503", "10 retries (10.0%)", "86.7%"):
        assert shown in page


def test_page_escapes_hostile_error_text() -> None:
    hostile = '</script><script>alert(1)</script><img src="http://evil.example/x.png">'
    attempts = [AttemptRecord(1, "a", T0, 5.0, "bad_reply", None, hostile)]
    numbers = summarize(ReportData({hostile: 1}, attempts, [], [], []))
    page = render_html(numbers)
    assert "<script>alert" not in page
    assert "<img" not in page
    assert not FETCHING.search(page)
    assert page.count("<script") == 3


# --- the page in a browser ------------------------------------------------------------------------


def realistic_data() -> ReportData:
    """Two nights of `--rate auto`: a ramp, a 429 episode and its cut, a misuse streak that trips
    the breaker, a probe and a resume at half rate, then a shorter rerun the next night."""
    rng = random.Random(2024)
    attempts: list[AttemptRecord] = []
    rates: list[RateChange] = []
    events: list[BreakerEvent] = []
    runs: list[RunRecord] = []
    last: dict[str, str] = {}
    failures: dict[str, int] = {}
    next_row = 0
    for run, start, minutes in ((1, T0, 25), (2, T0 + 16 * 3600, 8)):
        rate = rates[-1].rate if rates else 1.0
        rates.append(RateChange(start, rate, "start" if run == 1 else "learned rate"))
        t, end, grow_at, pushed, refused, cut_429 = (
            start + 2,
            start + minutes * 60,
            start + 20,
            False,
            0,
            False,
        )
        retry: list[str] = []
        sent: set[str] = set()
        while t < end:
            elapsed = t - start
            if retry and rng.random() < 0.5:
                row = retry.pop(0)
            else:
                row, next_row = f"row-{next_row}", next_row + 1
            sent.add(row)
            if run == 1 and 600 <= elapsed < 630:
                outcome, status, ms, error = "http", 429, 40.0, "HTTP 429 Too Many Requests"
            elif run == 1 and 1080 <= elapsed < 1095:
                outcome, status, ms, error = "refusal", None, 300.0, MISUSE
            else:
                roll = rng.random()
                if roll < 0.012:
                    outcome, status, ms, error = "http", 503, 80.0, "HTTP 503 Service Unavailable"
                elif roll < 0.018:
                    outcome, status, ms, error = "timeout", None, 30_000.0, "no reply within 30 s"
                else:
                    outcome, status, error = "answered", 200, None
                    ms = min(29_000.0, rng.lognormvariate(math.log(900), 0.35))
            attempts.append(AttemptRecord(run, row, t, ms, outcome, status, error))
            last[row] = outcome
            failures[row] = failures.get(row, 0) + (outcome != "answered")
            if outcome != "answered" and failures[row] < 3:  # the third failure is final
                retry.append(row)
            if outcome == "http" and status == 429 and not cut_429:
                cut_429, pushed, rate = True, True, max(1.0, rate / 2)
                rates.append(RateChange(t, rate, "HTTP 429: cut by half"))
            refused = refused + 1 if outcome == "refusal" else 0
            if refused == 10:  # the breaker: wait, probe, resume at half the rate
                events += [BreakerEvent(t, "open"), BreakerEvent(t + 60, "probe")]
                events.append(BreakerEvent(t + 61, "closed"))
                rate, t, refused = rate / 2, t + 61, 0
                rates.append(RateChange(t, rate, "breaker closed: half rate"))
                continue
            if t >= grow_at and outcome == "answered" and rate < 8.0:
                rate = min(8.0, rate + 0.25 if pushed else rate * 1.25)
                rates.append(RateChange(t, rate, "clean replies"))
                grow_at = t + 20
            t += 1 / rate
        runs.append(
            RunRecord(run, start, end + 3, len(sent), 3 if run == 1 else 0, {"rate": "auto"})
        )
    reasons = {"stop": 0, "length": 0, "error": 0, "misuse": 0, "pending": 40, "invalid": 3}
    for row, outcome in last.items():
        reason = {"answered": "stop", "refusal": "misuse"}.get(outcome, "error")
        long = reason == "stop" and int(row.removeprefix("row-")) % 50 == 0
        reasons["length" if long else reason] += 1
    # Each answer's tokens, written when it ended (a few hundred, as short prompts take).
    tokens = [
        (a.started + a.duration_ms / 1000, 150 + int(a.duration_ms) % 300)
        for a in attempts
        if a.outcome == "answered"
    ]
    return ReportData(reasons, attempts, runs, rates, events, tokens)


class Sink:
    """A stand-in proxy on 127.0.0.1 that accepts every connection and closes it at once.

    Chromium sends everything through it (loopback included), so nothing it tries leaves the
    machine: not the page's requests, had it any, nor the browser's own service calls (the
    component updater, network time, account checks), which Debian's build makes whatever the
    flags. Those make the connection count useless as proof, so which requests the *page* made is
    read from Chromium's net log instead, where the browser's own carry no initiator origin."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.05)
        self.port = self._server.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def __enter__(self) -> Sink:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._server.close()


def page_requests(netlog: Path) -> list[str]:
    """The URLs of the network requests a page made, from a Chromium net log.

    Every request through the network stack starts a URL_REQUEST job; a page's carry the page's
    origin as initiator ("null" for a file:// page), the browser's own services "not an origin"."""
    log = json.loads(netlog.read_text(encoding="utf-8"))
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        event["params"]["url"]
        for event in log["events"]
        if event["type"] == start_job
        and "url" in event.get("params", {})
        and event["params"].get("initiator") != "not an origin"
    ]


@pytest.fixture
def chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        # CI installs Debian's chromium (.ci/run), so there a missing browser is a broken setup,
        # not a reason to skip; a developer without it may skip.
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run should have installed it")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return binary


def run_chromium(binary: str, work: Path, proxy: int, page: Path, *args: str) -> str:
    """Open `page` in headless Chromium, network through the sink, net log to work/netlog.json."""
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={work / 'profile'}",
        f"--proxy-server=127.0.0.1:{proxy}",
        "--proxy-bypass-list=<-loopback>",
        f"--log-net-log={work / 'netlog.json'}",
        "--virtual-time-budget=5000",
        *args,
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=True)
    return done.stdout


# Added to a copy of the page only: counts the inked pixels of each chart's canvases, to prove
# the charts are drawn, not merely created.
INK_PROBE = """<script>
setTimeout(function () {
  var found = [];
  document.querySelectorAll(".chart").forEach(function (chart) {
    var inked = 0;
    chart.querySelectorAll("canvas").forEach(function (c) {
      var px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      for (var i = 3; i < px.length; i += 4) if (px[i]) inked++;
    });
    found.push(chart.id + ":" + inked);
  });
  document.body.setAttribute("data-inked", found.join(" "));
}, 200);
</script></body>"""


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


@pytest.mark.slow
def test_page_renders_its_charts_in_chromium_without_the_network(
    chromium: str, tmp_path: Path
) -> None:
    numbers = summarize(realistic_data())
    page = render_html(numbers)
    assert len(page.encode()) < 2_000_000
    report, control = tmp_path / "report", tmp_path / "control"
    report.mkdir()
    control.mkdir()
    (report / "report.html").write_text(page.replace("</body>", INK_PROBE), encoding="utf-8")
    (control / "control.html").write_text(
        '<img src="http://report-test.invalid/pixel.png">'
        '<script>fetch("https://cdn.report-test.invalid/lib.js").catch(function () {});</script>',
        encoding="utf-8",
    )
    shot = report / "report.png"
    started = time.monotonic()
    with Sink() as sink:
        dom = run_chromium(
            chromium,
            report,
            sink.port,
            report / "report.html",
            "--dump-dom",
            "--window-size=1280,2000",
            f"--screenshot={shot}",
        )
        # The control: a page that does fetch is caught by the same net-log reading.
        run_chromium(chromium, control, sink.port, control / "control.html", "--dump-dom")
    elapsed = time.monotonic() - started

    assert page_requests(report / "netlog.json") == []
    assert sorted(page_requests(control / "netlog.json")) == [
        "http://report-test.invalid/pixel.png",
        "https://cdn.report-test.invalid/lib.js",
    ]
    body = re.search(r"<body[^>]*>", dom)
    assert body
    assert 'data-charts="chart-requests chart-tokens chart-latency chart-rate"' in body.group(0)
    assert 'data-chart-errors=""' in body.group(0)
    for chart in ("chart-requests", "chart-tokens", "chart-latency", "chart-rate"):
        holder = re.search(rf'<div class="chart" id="{chart}">(.*?)</div></section>', dom, re.S)
        assert holder and "<canvas" in holder.group(1), chart
    inked = dict(pair.split(":") for pair in re.findall(r'data-inked="([^"]*)"', dom)[0].split())
    assert {k: int(v) > 2000 for k, v in inked.items()} == {
        "chart-requests": True,
        "chart-tokens": True,
        "chart-latency": True,
        "chart-rate": True,
    }
    assert dom.count('class="swatch"') == len(numbers["rows"]["by_reason"])
    assert png_size(shot) == (1280, 2000)
    assert shot.stat().st_size > 50_000  # a blank page compresses to a few KB
    if os.environ.get("BATCHPIZZA_UPDATE_SCREENSHOT"):  # to refresh docs/report.png on purpose
        shutil.copyfile(shot, REPO / "docs" / "report.png")
    print(f"two chromium runs in {elapsed:.1f} s; page {len(page.encode()):,} bytes")
