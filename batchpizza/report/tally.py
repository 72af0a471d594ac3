"""The report's pass over the attempts, fed one attempt at a time (a list, a stream) or already
counted by the checkpoint (`AttemptCounts`): both fold into the same counters, so the numbers do
not depend on which form came.

Why the counted form: a million attempts took 5 to 7 s of CPU as Python objects, one by one,
against about 3 s counted by SQLite (README's Benchmarks). It counts them per run and whole
second of start, which the time series folds exactly (every bucket width is a whole number of
seconds, and floor(floor(t) / w) == floor(t / w)); only the answered latencies come as one
column, 8 bytes each, for the exact percentiles; and the attempts not answered come by outcome
and status, each group with its count, first and last start and earliest message, for the
errors table. The one sum whose order changes is a bucket's latency (second by second rather
than attempt by attempt): its last bits, far below the 0.1 ms its mean is shown to.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable
from dataclasses import dataclass

from batchpizza.report.series import Buckets


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One request as the checkpoint recorded it."""

    run: int
    row_id: str
    started: float  # unix seconds
    duration_ms: float
    # "answered", "http" (non-2xx, status set), "timeout", "transport", "bad_reply",
    # "refusal" (misuse or the bot check), "redirect", "stopped"
    outcome: str
    status: int | None
    error: str | None


@dataclass(frozen=True, slots=True)
class AttemptCounts:
    """The attempts, counted: what `summarize` takes in place of a stream of AttemptRecords."""

    # (run, whole second of start, first start, last end (start + duration), requests, answered,
    # sum of the answered latencies in ms), one per run and second that saw an attempt; streamed.
    cells: Iterable[tuple[int, int, float, float, int, int, float]]
    latencies: array[float]  # of every answered attempt, in ms, in any order
    # The attempts not answered by (outcome, status): (outcome, status, count, first start, last
    # start, the earliest non-empty error message or None, its start).
    failures: Iterable[tuple[str, int | None, int, float, float, str | None, float]]


@dataclass(slots=True)
class Kind:
    count: int
    first: float
    last: float
    example: str | None = None
    example_t: float = math.inf


@dataclass(slots=True)
class RunTally:
    first: float
    last_end: float
    requests: int = 0
    answered: int = 0


def kind_of(outcome: str, status: int | None) -> str:
    """The row of the errors table an unanswered attempt counts in."""
    if outcome == "http":
        return f"HTTP {status}" if status is not None else "HTTP error"
    if outcome == "refusal" and status is not None:
        return f"refusal (HTTP {status})"  # a 401/403 refusal, told from a text refusal
    return {"bad_reply": "bad reply", "transport": "connection error"}.get(outcome, outcome)


class Tally:
    """Requests, answers, latencies, errors by kind, runs and time buckets of the attempts seen."""

    def __init__(self, buckets: Buckets) -> None:
        self.buckets = buckets
        self.requests = self.answered = 0
        self.latencies: array[float] = array("d")
        self.kinds: dict[str, Kind] = {}
        self.per_run: dict[int, RunTally] = {}

    def take(self, attempts: Iterable[AttemptRecord] | AttemptCounts) -> None:
        if isinstance(attempts, AttemptCounts):
            self._take_counts(attempts)
            return
        for attempt in attempts:
            self._add(attempt)

    def _run(self, run: int, first: float, last_end: float) -> RunTally:
        tally = self.per_run.get(run)
        if tally is None:
            tally = self.per_run[run] = RunTally(first, last_end)
        tally.first, tally.last_end = min(tally.first, first), max(tally.last_end, last_end)
        return tally

    def _add(self, attempt: AttemptRecord) -> None:
        self.requests += 1
        tally = self._run(
            attempt.run, attempt.started, attempt.started + attempt.duration_ms / 1000
        )
        tally.requests += 1
        ok = attempt.outcome == "answered"
        self.buckets.add(attempt.started, ok, attempt.duration_ms)
        if ok:
            self.answered += 1
            tally.answered += 1
            self.latencies.append(attempt.duration_ms)
        else:
            name, t = kind_of(attempt.outcome, attempt.status), attempt.started
            self._failed(name, 1, t, t, attempt.error, t)

    def _take_counts(self, counts: AttemptCounts) -> None:
        for run, second, first, last_end, requests, answered, latency_ms in counts.cells:
            tally = self._run(run, first, last_end)
            tally.requests += requests
            tally.answered += answered
            self.requests += requests
            self.answered += answered
            self.buckets.add_cell(second, requests, answered, latency_ms)
        self.latencies = counts.latencies
        for outcome, status, count, first, last, example, example_t in counts.failures:
            self._failed(kind_of(outcome, status), count, first, last, example, example_t)

    def _failed(
        self, name: str, count: int, first: float, last: float, example: str | None, t: float
    ) -> None:
        kind = self.kinds.get(name)
        if kind is None:
            kind = self.kinds[name] = Kind(0, first, last)
        kind.count += count
        kind.first, kind.last = min(kind.first, first), max(kind.last, last)
        # The earliest message: the same example whatever order the checkpoint streams in.
        if example and t < kind.example_t:
            kind.example, kind.example_t = example, t
