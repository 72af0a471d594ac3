"""Numbers and pictures of what a run did: the rendering half of `batchpizza report`.

The checkpoint hands over a `ReportData` (its attempts streamed); `summarize` turns it into one
JSON-ready dict, and `render_text` / `render_html` only draw that dict, so the terminal, `--json`
and the page always show the same numbers.

Definitions (also written into the dict, under "definitions"):
- requests: every attempt recorded, whatever its outcome ("stopped" ones included: they were sent).
- retries: requests minus the rows attempted, where the rows attempted are the sum over runs of
  `RunRecord.rows_sent` (the distinct rows that got at least one attempt in that run). So a retry is
  an attempt beyond a row's first in its run, as in each run's `--summary-json`; a row sent again by
  a later run starts afresh there. Taking the count from the runs keeps the pass over the attempts
  in bounded memory: counting distinct rows ourselves would need a set as large as the input.
- throughput: requests (and answered attempts) per second of time spent sending, that is the sum
  over runs of the span from the run's first attempt start to its last attempt end. Start-up,
  validation and the idle hours between cron runs do not dilute it.
- latency: of answered attempts only, exact nearest-rank percentiles (the p-th is the value of rank
  ceil(p/100 * n) in sorted order: always an observed latency, never an interpolation).
- time series: attempts counted in the bucket of their start; bucket widths come from a ladder
  (1 s, 2 s, 10 s, 20 s, 1 min, 2 min, 10 min, 20 min, 1 h, ...) in which each width divides the
  next, so buckets merge exactly when they outnumber MAX_POINTS, in one pass whatever the order of
  the attempts. Kept are the buckets inside a run or holding attempts: idle time between runs is
  left out (a jump in `t`). Times are unix seconds and ISO 8601 in UTC.

Memory: one pass over the attempts keeps a few counters per run, per error kind and per bucket (at
most MAX_POINTS of them), plus one 8-byte float per answered attempt for the exact percentiles; the
samples are sorted by pyarrow (already a dependency) without a Python float object per sample.

Charts: uPlot 1.6.32 (MIT, Leon Sorokin; vendored in report_assets/ with its licence, from the
npm package `uplot`: dist/uPlot.iife.min.js 51 KB + uPlot.min.css 2 KB), inlined into the page,
which therefore needs no network and weighs ~70-90 KB with its data. Why uPlot: it is small
(Chart.js is some 200 KB minified, Plotly's basic bundle about 1 MB), has no dependencies, draws
time series on canvas (fast for the few hundred points we give it, with cursor, legend and zoom
for free), and has been kept up for years with steady releases. Its risk is having one main
author; but the vendored file is pinned, needs no build step and no network, so these pages keep
drawing whatever becomes of the project, and upgrading is copying two files. Static SVG from
matplotlib would add a heavy dependency and pages of hundreds of KB; pygal is barely maintained.
The finish reasons are a handful of categories, not a series: they are drawn as proportional HTML
bars next to their counts, readable without JavaScript.

To upgrade uPlot: `npm pack uplot`, copy dist/uPlot.iife.min.js, dist/uPlot.min.css and LICENSE
(as uPlot.LICENSE) into report_assets/, run tests/test_report.py and look at its screenshot.
"""

from __future__ import annotations

import bisect
import functools
import html
import itertools
import json
import math
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from typing import Any

from batchpizza.records import is_answered
from batchpizza.redact import redact

__all__ = [
    "AttemptRecord",
    "BreakerEvent",
    "RateChange",
    "ReportData",
    "RunRecord",
    "render_html",
    "render_text",
    "summarize",
]

MAX_POINTS = 300  # time-series buckets at most: a chart's width in pixels has no use for more
TEXT_WIDTH = 100
EXAMPLE_CHARS = 300  # an error example is a hint, not a log: the checkpoint keeps the whole text
PERCENTILES = (50, 90, 99)
HISTOGRAM_BINS = 40
# Each width divides the next (ratios 2, 5, 2, 3, 2, 5, 2, 3, 2, 3, 2, 2, 2, 7), see _Buckets.
_WIDTHS = (1, 2, 10, 20, 60, 120, 600, 1200, 3600, 7200, 21600, 43200, 86400, 172800, 604800)


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
class RunRecord:
    id: int
    started: float
    ended: float | None  # None: the run is still going, or died without recording its end
    rows_sent: int  # distinct rows that got at least one attempt in this run
    exit_code: int | None
    options: dict[str, object]


@dataclass(frozen=True, slots=True)
class RateChange:
    t: float
    rate: float  # requests per second from t on
    reason: str


@dataclass(frozen=True, slots=True)
class BreakerEvent:
    t: float
    event: str  # "open", "probe", "closed", "gave-up"


@dataclass(frozen=True, slots=True)
class ReportData:
    rows_by_reason: dict[str, int]  # finish reasons of the current output rows
    attempts: Iterable[AttemptRecord]  # streamed: read once
    runs: list[RunRecord]
    rate_changes: list[RateChange]
    breaker_events: list[BreakerEvent]


# --- summarize ------------------------------------------------------------------------------------


class _Buckets:
    """Requests, answered, errors and answered latency per time bucket, at most MAX_POINTS kept.

    Buckets are aligned on multiples of the width since the epoch, so when they outnumber
    MAX_POINTS every bucket folds exactly into the next width's (floor(floor(t/w)/k) equals
    floor(t/(k*w)) for a whole k): no second pass, and the order of the attempts does not matter.

    Kept are the buckets holding attempts and every bucket inside a run (a quiet minute while the
    breaker waits is a fact: a zero). The idle hours between cron runs are left out, or a week of
    nightly runs would be seven slivers on an empty chart; the page draws such a gap as a break.
    """

    def __init__(self, spans: Iterable[tuple[float, float]]) -> None:
        self._spans = sorted(spans)  # (start, end) of each run, unix seconds
        self.width = _WIDTHS[0]
        self._level = 0
        self.cells: dict[int, list[float]] = {}  # index -> [requests, answered, errors, lat sum]
        self._index_runs()
        while self._in_runs > MAX_POINTS:
            self._coarsen()

    def _index_runs(self) -> None:
        """The runs as disjoint, sorted index intervals at the current width."""
        merged: list[tuple[int, int]] = []
        for start, end in self._spans:
            lo, hi = math.floor(start / self.width), math.floor(end / self.width)
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        self._runs = merged
        self._run_starts = [lo for lo, _ in merged]
        self._in_runs = sum(hi - lo + 1 for lo, hi in merged)
        self._outside = sum(not self._in_run(i) for i in self.cells)

    def _in_run(self, index: int) -> bool:
        k = bisect.bisect_right(self._run_starts, index) - 1
        return k >= 0 and index <= self._runs[k][1]

    def add(self, t: float, answered: bool, latency_ms: float) -> None:
        index = math.floor(t / self.width)
        cell = self.cells.get(index)
        if cell is None:
            cell = self.cells[index] = [0.0, 0.0, 0.0, 0.0]
            self._outside += not self._in_run(index)
        cell[0] += 1
        if answered:
            cell[1] += 1
            cell[3] += latency_ms
        else:
            cell[2] += 1
        while self._in_runs + self._outside > MAX_POINTS:
            self._coarsen()

    def _coarsen(self) -> None:
        self._level += 1
        wider = _WIDTHS[self._level] if self._level < len(_WIDTHS) else self.width * 2
        factor = wider // self.width
        merged: dict[int, list[float]] = {}
        for index, cell in self.cells.items():
            into = merged.setdefault(index // factor, [0.0, 0.0, 0.0, 0.0])
            for i in range(4):
                into[i] += cell[i]
        self.cells, self.width = merged, wider
        self._index_runs()

    def series(self) -> dict[str, Any]:
        kept = set(self.cells)
        for lo, hi in self._runs:
            kept.update(range(lo, hi + 1))
        indexes = sorted(kept)
        cells = [self.cells.get(i, [0.0, 0.0, 0.0, 0.0]) for i in indexes]
        return {
            "bucket_s": self.width,
            "t": [i * self.width for i in indexes],  # bucket starts; a jump is idle time left out
            "requests": [int(c[0]) for c in cells],
            "answered": [int(c[1]) for c in cells],
            "errors": [int(c[2]) for c in cells],
            "latency_ms_mean": [round(c[3] / c[1], 1) if c[1] else None for c in cells],
        }


@dataclass(slots=True)
class _Kind:
    count: int
    first: float
    last: float
    example: str | None = None
    example_t: float = math.inf


@dataclass(slots=True)
class _RunTally:
    first: float
    last_end: float
    requests: int = 0
    answered: int = 0


def _run_span(run: RunRecord) -> tuple[float, float]:
    end = run.started if run.ended is None else run.ended
    return min(run.started, end), max(run.started, end)


def _kind(attempt: AttemptRecord) -> str:
    """The row of the errors table an unanswered attempt counts in."""
    if attempt.outcome == "http":
        return f"HTTP {attempt.status}" if attempt.status is not None else "HTTP error"
    if attempt.outcome == "refusal" and attempt.status is not None:
        return f"refusal (HTTP {attempt.status})"  # a 401/403 refusal, told from a text refusal
    return {"bad_reply": "bad reply", "transport": "connection error"}.get(
        attempt.outcome, attempt.outcome
    )


def _iso(t: float) -> str:
    stamp = datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="seconds")
    return stamp.replace("+00:00", "Z")


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def _nice(x: float) -> int:
    """The smallest of 1, 2, 5 x 10^k (at least 1) not below x: bin widths a reader can add up."""
    magnitude = 1
    while True:
        for step in (1, 2, 5):
            if step * magnitude >= x:
                return step * magnitude
        magnitude *= 10


def _latency(samples: array[float]) -> dict[str, Any] | None:
    n = len(samples)
    if not n:
        return None
    import pyarrow as pa  # imported here: only the report needs it, and only with answers

    # Zero-copy view of the array, sorted in C: no Python float per sample, even for millions.
    ordered = pa.Array.from_buffers(pa.float64(), n, [None, pa.py_buffer(samples)]).sort()

    def rank(r: int) -> float:  # 1-based
        return float(ordered[r - 1].as_py())

    def below(x: float) -> int:  # how many samples are < x (binary search over the sorted array)
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi) // 2
            if ordered[mid].as_py() < x:
                lo = mid + 1
            else:
                hi = mid
        return lo

    result: dict[str, Any] = {"count": n, "min": rank(1)}
    for p in PERCENTILES:
        result[f"p{p}"] = rank(-(-p * n // 100))  # ceil(p * n / 100) in integers: exact
    result["max"] = rank(n)
    result["mean"] = round(math.fsum(samples) / n, 3)
    # A long tail would squeeze the body of the distribution into a few bars: above twice the
    # p99, the rest is one overflow count, said under the chart.
    top = result["max"] if result["max"] <= 2 * result["p99"] else result["p99"]
    width = _nice((top - result["min"]) / HISTOGRAM_BINS)
    start = math.floor(result["min"] / width) * width
    bins = math.floor((top - start) / width) + 1
    edges = [start + i * width for i in range(bins + 1)]
    cumulative = [below(e) for e in edges]
    result["histogram"] = {
        "start_ms": start,
        "bin_ms": width,
        "counts": [b - a for a, b in itertools.pairwise(cumulative)],
        "overflow_from_ms": edges[-1],
        "overflow": n - cumulative[-1],
    }
    return result


def _options(options: Mapping[str, object]) -> dict[str, object]:
    """Run options as JSON values, with any credential (a proxy URL's password) masked."""
    clean: dict[str, object] = {}
    for key, value in options.items():
        if value is None or isinstance(value, (bool, int, float)):
            clean[key] = value
        else:
            clean[key] = redact(str(value))
    return clean


def _reasons(rows_by_reason: Mapping[str, int]) -> dict[str, int]:
    """Answers first ("stop" at the top), then the rest, each group by count."""
    return dict(
        sorted(
            ((str(k), int(v)) for k, v in rows_by_reason.items()),
            key=lambda kv: (not is_answered(kv[0]), kv[0] != "stop", -kv[1], kv[0]),
        )
    )


def summarize(data: ReportData) -> dict[str, Any]:
    """Every number of the report, JSON-ready, in one pass over `data.attempts`."""
    requests = answered = 0
    latencies: array[float] = array("d")
    kinds: dict[str, _Kind] = {}
    per_run: dict[int, _RunTally] = {}
    buckets = _Buckets(span for span in map(_run_span, data.runs) if all(map(math.isfinite, span)))
    for attempt in data.attempts:
        requests += 1
        end = attempt.started + attempt.duration_ms / 1000
        tally = per_run.get(attempt.run)
        if tally is None:
            tally = per_run[attempt.run] = _RunTally(attempt.started, end)
        tally.first, tally.last_end = min(tally.first, attempt.started), max(tally.last_end, end)
        tally.requests += 1
        ok = attempt.outcome == "answered"
        buckets.add(attempt.started, ok, attempt.duration_ms)
        if ok:
            answered += 1
            tally.answered += 1
            latencies.append(attempt.duration_ms)
            continue
        name = _kind(attempt)
        kind = kinds.get(name)
        if kind is None:
            kind = kinds[name] = _Kind(0, attempt.started, attempt.started)
        kind.count += 1
        kind.first, kind.last = min(kind.first, attempt.started), max(kind.last, attempt.started)
        # The earliest message: the same example whatever order the checkpoint streams in.
        if attempt.error and attempt.started < kind.example_t:
            kind.example, kind.example_t = attempt.error, attempt.started

    runs = sorted(data.runs, key=lambda r: (r.started, r.id))
    rows_attempted = sum(r.rows_sent for r in runs)
    retries = max(0, requests - rows_attempted)
    sending_s = sum(max(0.0, t.last_end - t.first) for t in per_run.values())
    starts = [t.first for t in per_run.values()] + [r.started for r in runs]
    ends = [t.last_end for t in per_run.values()] + [r.ended for r in runs if r.ended is not None]
    ends += [c.t for c in data.rate_changes] + [e.t for e in data.breaker_events]
    rows = _reasons(data.rows_by_reason)
    rates = sorted(data.rate_changes, key=lambda c: c.t)
    events = sorted(data.breaker_events, key=lambda e: e.t)
    return {
        "period": {
            "start": _iso(min(starts)) if starts else None,
            "end": _iso(max(ends + starts)) if starts else None,
            "start_t": min(starts) if starts else None,
            "end_t": max(ends + starts) if starts else None,
        },
        "rows": {
            "total": sum(rows.values()),
            "answered": sum(v for k, v in rows.items() if is_answered(k)),
            "by_reason": rows,
        },
        "requests": {
            "total": requests,
            "answered": answered,
            "failed": requests - answered,
            "rows_attempted": rows_attempted,
            "retries": retries,
            "retry_share": _share(retries, requests),
            "sending_s": round(sending_s, 3),
            "per_s": round(requests / sending_s, 3) if sending_s else None,
            "answered_per_s": round(answered / sending_s, 3) if sending_s else None,
        },
        "latency_ms": _latency(latencies),
        "errors": [
            {
                "kind": name,
                "count": k.count,
                "share": _share(k.count, requests),
                "first": _iso(k.first),
                "last": _iso(k.last),
                # Redacted before it is cut: a cut could leave half a secret the patterns miss.
                "example": _clip(redact(k.example), EXAMPLE_CHARS) if k.example else None,
            }
            for name, k in sorted(kinds.items(), key=lambda nk: (-nk[1].count, nk[0]))
        ],
        "series": buckets.series(),
        "rate": {
            "changes": [
                {"t": c.t, "time": _iso(c.t), "rate": c.rate, "reason": redact(c.reason)}
                for c in rates
            ],
            "current": rates[-1].rate if rates else None,
            "min": min(c.rate for c in rates) if rates else None,
            "max": max(c.rate for c in rates) if rates else None,
        },
        "breaker": {
            "trips": sum(e.event == "open" for e in events),
            "gave_up": any(e.event == "gave-up" for e in events),
            "events": [{"t": e.t, "time": _iso(e.t), "event": e.event} for e in events],
        },
        "runs": [_run(r, per_run.get(r.id)) for r in runs],
        "definitions": {
            "retries": "requests - rows attempted (each run's rows sent, summed): attempts "
            "beyond a row's first in its run",
            "throughput": "per second of sending: each run's first attempt start to last end",
            "latency": "answered attempts; nearest-rank percentiles (an observed value)",
            "times": "unix seconds and ISO 8601 UTC; series buckets by attempt start",
        },
    }


def _run(run: RunRecord, tally: _RunTally | None) -> dict[str, Any]:
    return {
        "id": run.id,
        "started": _iso(run.started),
        "started_t": run.started,
        "ended": _iso(run.ended) if run.ended is not None else None,
        "duration_s": round(run.ended - run.started, 3) if run.ended is not None else None,
        "rows_sent": run.rows_sent,
        "requests": tally.requests if tally else 0,
        "answered": tally.answered if tally else 0,
        "exit_code": run.exit_code,
        "options": _options(run.options),
    }


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())  # one line: an example must not break a table
    return text if len(text) <= width else text[: width - 1] + "…"


# --- the terminal ---------------------------------------------------------------------------------

_SPARK = "▁▂▃▄▅▆▇█"
_EIGHTHS = " ▏▎▍▌▋▊▉"
LAST_RATE_CHANGES = 8
LAST_BREAKER_EVENTS = 10
LAST_RUNS = 20


def _int(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def _pct(share: float | None) -> str:
    return "—" if share is None else f"{share * 100:.1f}%"


def _ms(x: float | None) -> str:
    if x is None:
        return "—"
    if x >= 10_000:
        return f"{x / 1000:,.1f} s"
    return f"{x:,.0f} ms" if x >= 100 else f"{x:.1f} ms"


def _per_s(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:,.0f}/s" if x >= 100 else f"{x:.2f}/s"


def _duration(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 60:
        return f"{s:.0f} s" if s == int(s) else f"{s:.1f} s"
    whole = round(s)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d {whole % 86400 // 3600:02d}h"


def _bar(fraction: float, width: int) -> str:
    """A horizontal bar in eighths of a character."""
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    return "█" * (eighths // 8) + (_EIGHTHS[eighths % 8] if eighths % 8 else "")


def _sparkline(values: Sequence[float], width: int) -> str:
    """Values averaged into at most `width` columns (a mean, so a short last column is not a dip);
    an idle column is blank, any activity shows."""
    if not values:
        return ""
    group = -(-len(values) // width)
    means = [
        sum(values[i : i + group]) / len(values[i : i + group])
        for i in range(0, len(values), group)
    ]
    top = max(means)
    if top <= 0:
        return " " * len(means)
    return "".join(
        " " if v <= 0 else _SPARK[max(0, math.ceil(v / top * len(_SPARK)) - 1)] for v in means
    )


def _step_values(changes: Sequence[Mapping[str, Any]], times: Sequence[float]) -> list[float]:
    """The rate in force at each time (0 before the first change)."""
    values, i, rate = [], 0, 0.0
    for t in times:
        while i < len(changes) and changes[i]["t"] <= t:
            rate = float(changes[i]["rate"])
            i += 1
        values.append(rate)
    return values


class _Clock:
    """Times shortened for the terminal: the clock alone when the report spans one UTC day."""

    def __init__(self, period: Mapping[str, Any]) -> None:
        start, end = period.get("start"), period.get("end")
        self.same_day = bool(start and end and start[:10] == end[:10])

    def __call__(self, iso: str | None) -> str:
        if not iso:
            return "—"
        return iso[11:19] if self.same_day else iso[:16].replace("T", " ")

    def span(self, period: Mapping[str, Any]) -> str:
        start = f"{period['start'][:10]} {period['start'][11:19]}"
        end = (
            self(period["end"]) if self.same_day else f"{period['end'][:10]} {period['end'][11:19]}"
        )
        return f"{start} → {end} UTC"


def _plural(n: int, noun: str) -> str:
    return f"{_int(n)} {noun}{'s' * (n != 1)}"


def render_text(numbers: Mapping[str, Any]) -> str:
    """The report for a terminal: sections of aligned tables, no line wider than 100 columns."""
    clock = _Clock(numbers["period"])
    head = "batchpizza report"
    if numbers["period"]["start"]:
        head += f"  ·  {_plural(len(numbers['runs']), 'run')}  ·  {clock.span(numbers['period'])}"
    sections = [
        [head],
        _text_rows(numbers["rows"]),
        _text_requests(numbers["requests"], numbers["series"]),
        _text_latency(numbers["latency_ms"]),
        _text_errors(numbers["errors"], numbers["requests"]["failed"], clock),
        _text_rate(numbers["rate"], numbers["series"], clock),
        _text_breaker(numbers["breaker"], clock),
        _text_runs(numbers["runs"]),
    ]
    lines = [line for section in sections if section for line in [*section, ""]]
    return "\n".join(line[:TEXT_WIDTH].rstrip() for line in lines[:-1]) + "\n"


def _text_rows(rows: Mapping[str, Any]) -> list[str]:
    out = ["Rows by finish reason"]
    biggest = max(rows["by_reason"].values(), default=0)
    for reason, count in rows["by_reason"].items():
        bar = _bar(count / biggest, 50) if biggest else ""
        share = _pct(_share(count, rows["total"]))
        out.append(f"  {_clip(reason, 14):<14}{_int(count):>12}  {share:>6}  {bar}")
    return [*out, f"  {'total':<14}{_int(rows['total']):>12}"]


def _text_requests(req: Mapping[str, Any], series: Mapping[str, Any]) -> list[str]:
    answered = _pct(_share(req["answered"], req["total"]))
    out = [
        "Requests",
        f"  {'requests':<14}{_int(req['total']):>12}  answered {_int(req['answered'])}"
        f" ({answered}) · failed {_int(req['failed'])}",
        f"  {'retries':<14}{_int(req['retries']):>12}  {_pct(req['retry_share'])} of requests"
        f" · {_int(req['rows_attempted'])} rows attempted",
        f"  {'throughput':<14}{_per_s(req['per_s']):>12}  requests · "
        f"{_per_s(req['answered_per_s'])} answered · {_duration(req['sending_s'])} spent sending",
    ]
    if series["t"]:
        width = series["bucket_s"]
        peak = max(series["requests"]) / width
        spark = _sparkline(series["requests"], 56)
        out.append(f"  {'over time':<14}  {spark}  {_duration(width)} buckets, peak {_per_s(peak)}")
    return out


def _text_latency(lat: Mapping[str, Any] | None) -> list[str]:
    if not lat:
        return []
    cells = [f"p{p} {_ms(lat[f'p{p}'])}" for p in PERCENTILES]
    cells += [f"max {_ms(lat['max'])}", f"mean {_ms(lat['mean'])}"]
    head = f"Latency of answered attempts  (nearest-rank, {_int(lat['count'])} answers)"
    return [head, "  " + "   ".join(cells)]


def _text_errors(errors: Sequence[Mapping[str, Any]], failed: int, clock: _Clock) -> list[str]:
    out = [f"Errors by kind  ({_int(failed)} failed attempts)"]
    if not errors:
        return [*out, "  none"]
    out.append(f"  {'kind':<24}{'count':>10}{'share':>8}   {'first':<16}  last")
    for e in errors:
        out.append(
            f"  {_clip(e['kind'], 24):<24}{_int(e['count']):>10}{_pct(e['share']):>8}"
            f"   {clock(e['first']):<16}  {clock(e['last'])}"
        )
        if e["example"]:
            out.append(f"      {_clip(e['example'], TEXT_WIDTH - 6)}")
    return out


def _text_rate(rate: Mapping[str, Any], series: Mapping[str, Any], clock: _Clock) -> list[str]:
    changes = rate["changes"]
    if not changes:
        return ["Rate", "  no changes recorded (a fixed --rate)"]
    # What a reader looks for is why the rate came down: the cuts, or else the latest changes.
    steps = [(before["rate"], c) for before, c in itertools.pairwise(changes)]
    cuts = [(was, c) for was, c in steps if c["rate"] < was]
    shown = cuts or [(None, changes[0]), *steps]
    line = (
        f"  now {_per_s(rate['current'])} · min {_per_s(rate['min'])} · max "
        f"{_per_s(rate['max'])} · {_plural(len(changes), 'change')}, {_plural(len(cuts), 'cut')}"
    )
    if series["t"]:
        line += "  " + _sparkline(_step_values(changes, series["t"]), 36)
    out = ["Rate", line]
    if len(shown) > LAST_RATE_CHANGES:
        out.append(f"  … {len(shown) - LAST_RATE_CHANGES} earlier {'cuts' if cuts else 'changes'}")
    for was, c in shown[-LAST_RATE_CHANGES:]:
        step = f"{_per_s(was)} → {_per_s(c['rate'])}" if was is not None else _per_s(c["rate"])
        reason = _clip(c["reason"], TEXT_WIDTH - 42)
        out.append(f"  {clock(c['time']):<16}  {step:>18}  {reason}")
    return out


def _text_breaker(breaker: Mapping[str, Any], clock: _Clock) -> list[str]:
    events = breaker["events"]
    if not events:
        return ["Breaker", "  no trips"]
    gave_up = " · gave up" if breaker["gave_up"] else ""
    out = ["Breaker", f"  {_plural(breaker['trips'], 'trip')}{gave_up}"]
    if len(events) > LAST_BREAKER_EVENTS:
        out.append(f"  … {len(events) - LAST_BREAKER_EVENTS} earlier events")
    out += [f"  {clock(e['time']):<16}  {e['event']}" for e in events[-LAST_BREAKER_EVENTS:]]
    return out


def _text_runs(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    out = [
        "Runs",
        f"  {'run':>5}  {'started':<19}  {'duration':>9}  {'rows sent':>10}"
        f"  {'requests':>10}  {'answered':>10}  {'exit':>4}",
    ]
    if len(runs) > LAST_RUNS:
        out.append(f"  … {len(runs) - LAST_RUNS} earlier runs")
    for r in runs[-LAST_RUNS:]:
        exit_code = "—" if r["exit_code"] is None else str(r["exit_code"])
        out.append(
            f"  {r['id']:>5}  {r['started'][:19].replace('T', ' '):<19}"
            f"  {_duration(r['duration_s']):>9}  {_int(r['rows_sent']):>10}"
            f"  {_int(r['requests']):>10}  {_int(r['answered']):>10}  {exit_code:>4}"
        )
    return out


# --- the page -------------------------------------------------------------------------------------

# Colours of the usual finish reasons; any other reason takes the next of _PALETTE.
_REASON_COLOURS = {
    "stop": "#1f9d6b",
    "length": "#7a5af8",
    "content_filter": "#b54708",
    "error": "#d64545",
    "misuse": "#e0902f",
    "invalid": "#98a2b3",
    "pending": "#5b8def",
}
_PALETTE = ("#0e9384", "#c11574", "#6172f3", "#ca8504", "#667085")


@functools.cache
def _asset(name: str) -> str:
    return (resources.files("batchpizza") / "report_assets" / name).read_text("utf-8")


def _json_for_script(numbers: Mapping[str, Any]) -> str:
    """The dict as JSON that cannot end its <script> element early, whatever the error texts say."""
    text = json.dumps(numbers, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _card(label: str, value: str, note: str) -> str:
    return (
        f'<div class="card"><div class="label">{html.escape(label)}</div>'
        f'<div class="value">{html.escape(value)}</div>'
        f'<div class="note">{html.escape(note)}</div></div>'
    )


def _cards(numbers: Mapping[str, Any]) -> str:
    rows, req, lat = numbers["rows"], numbers["requests"], numbers["latency_ms"]
    errors, breaker, rate = numbers["errors"], numbers["breaker"], numbers["rate"]
    top_error = f"most: {errors[0]['kind']} × {_int(errors[0]['count'])}" if errors else "none"
    percentiles = f"p90 {_ms(lat['p90'])} · p99 {_ms(lat['p99'])}" if lat else ""
    trips, opened = breaker["trips"], [e for e in breaker["events"] if e["event"] == "open"]
    breaker_note = f"last {_Clock(numbers['period'])(opened[-1]['time'])}" if opened else "never"
    if breaker["gave_up"]:
        breaker_note = "the run gave up"
    if rate["current"] is None:  # never changed: a fixed rate, which the last run's options say
        runs = numbers["runs"]
        rate_value = str(runs[-1]["options"].get("rate") or "—") if runs else "—"
        rate_note = "fixed rate"
    else:
        rate_value = _per_s(rate["current"])
        rate_note = f"min {_per_s(rate['min'])} · max {_per_s(rate['max'])}"
    return "".join(
        [
            _card(
                "Rows",
                _int(rows["total"]),
                f"{_pct(_share(rows['answered'], rows['total']))} answered",
            ),
            _card(
                "Requests",
                _int(req["total"]),
                f"{_int(req['retries'])} retries ({_pct(req['retry_share'])})",
            ),
            _card("Throughput", _per_s(req["per_s"]), f"{_per_s(req['answered_per_s'])} answered"),
            _card("Latency p50", _ms(lat["p50"]) if lat else "—", percentiles),
            _card("Failed attempts", _int(req["failed"]), top_error),
            _card("Rate now", rate_value, rate_note),
            _card("Breaker trips", _int(trips), breaker_note),
        ]
    )


def _reasons_panel(rows: Mapping[str, Any]) -> str:
    total, by_reason = rows["total"], rows["by_reason"]
    colours, spare = {}, iter(_PALETTE * (1 + len(by_reason) // len(_PALETTE)))
    for reason in by_reason:
        colours[reason] = _REASON_COLOURS.get(reason) or next(spare)
    stack = "".join(
        f'<span style="width:{100 * count / total:.3f}%;background:{colours[reason]}"'
        f' title="{html.escape(reason)}: {_int(count)}"></span>'
        for reason, count in by_reason.items()
        if total and count
    )
    biggest = max(by_reason.values(), default=0)
    lines = "".join(
        f'<tr><td><span class="swatch" style="background:{colours[reason]}"></span>'
        f"{html.escape(reason)}</td>"
        f'<td class="num">{_int(count)}</td><td class="num">{_pct(_share(count, total))}</td>'
        f'<td class="barcell"><div class="hbar" style="width:{100 * count / biggest:.2f}%;'
        f'background:{colours[reason]}"></div></td></tr>'
        for reason, count in by_reason.items()
    )
    if not by_reason:
        return '<div class="chart empty">No rows in the output.</div>'
    return (
        f'<div class="stack" id="reasons-stack">{stack}</div>'
        f'<table class="data reasons"><thead><tr><th>reason</th><th class="num">rows</th>'
        f'<th class="num">share</th><th></th></tr></thead><tbody>{lines}</tbody>'
        f'<tfoot><tr><td>total</td><td class="num">{_int(total)}</td><td></td><td></td></tr>'
        "</tfoot></table>"
    )


def _errors_table(errors: Sequence[Mapping[str, Any]], clock: _Clock) -> str:
    if not errors:
        return '<p class="caption">No failed attempts.</p>'
    body = "".join(
        f'<tr><td class="nowrap"><strong>{html.escape(e["kind"])}</strong></td>'
        f'<td class="num">{_int(e["count"])}</td><td class="num">{_pct(e["share"])}</td>'
        f'<td class="mono nowrap" title="{html.escape(e["first"])}">{clock(e["first"])}</td>'
        f'<td class="mono nowrap" title="{html.escape(e["last"])}">{clock(e["last"])}</td>'
        f'<td class="example mono">{html.escape(e["example"] or "")}</td></tr>'
        for e in errors
    )
    return (
        '<table class="data"><thead><tr><th>kind</th><th class="num">attempts</th><th class="num">share</th>'
        "<th>first (UTC)</th><th>last (UTC)</th><th>example</th></tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def _runs_table(runs: Sequence[Mapping[str, Any]]) -> str:
    if not runs:
        return '<p class="caption">No runs recorded.</p>'
    body = "".join(
        f'<tr><td class="num">{r["id"]}</td>'
        f'<td class="mono nowrap">{html.escape(r["started"][:19].replace("T", " "))}</td>'
        f'<td class="num">{_duration(r["duration_s"])}</td>'
        f'<td class="num">{_int(r["rows_sent"])}</td><td class="num">{_int(r["requests"])}</td>'
        f'<td class="num">{_int(r["answered"])}</td>'
        f'<td class="num">{"—" if r["exit_code"] is None else r["exit_code"]}</td>'
        f'<td class="mono options">{html.escape(_options_line(r["options"]))}</td></tr>'
        for r in runs
    )
    return (
        '<table class="data"><thead><tr><th class="num">run</th><th>started (UTC)</th>'
        '<th class="num">duration</th><th class="num">rows sent</th><th class="num">requests</th>'
        '<th class="num">answered</th><th class="num">exit</th><th>options</th></tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


def _options_line(options: Mapping[str, object]) -> str:
    return " ".join(f"{k}={v}" for k, v in options.items() if v is not None)


def _panel(title: str, caption: str, inner: str, wide: bool = False) -> str:
    cls = "panel wide" if wide else "panel"
    return (
        f'<section class="{cls}"><h2>{html.escape(title)}</h2>'
        f'<p class="caption">{html.escape(caption)}</p>{inner}</section>'
    )


def render_html(numbers: Mapping[str, Any]) -> str:
    """One self-contained page: styles, uPlot and the numbers inlined; nothing from the network.

    The tables and headline numbers are HTML written here, readable without JavaScript; the four
    charts are drawn by the inlined script from the same dict, embedded as JSON.
    """
    period, series, lat = numbers["period"], numbers["series"], numbers["latency_ms"]
    clock, req = _Clock(period), numbers["requests"]
    when = clock.span(period) if period["start"] else "nothing recorded yet"
    subtitle = f"{_plural(len(numbers['runs']), 'run')} · {when}"
    bucket = _duration(series["bucket_s"]) if series["t"] else "—"
    sending = f"{_duration(req['sending_s'])} spent sending"
    overflow = ""
    if lat and lat["histogram"]["overflow"]:
        h = lat["histogram"]
        overflow = f"; {_int(h['overflow'])} slower than {_ms(h['overflow_from_ms'])} not drawn"
    latency_caption = (
        f"{_int(lat['count'])} answered attempts, nearest-rank percentiles marked{overflow}"
        if lat
        else "No answered attempts."
    )
    breaker_key = "Breaker: red = opened, amber = probe, green = closed."
    panels = "".join(
        [
            _panel(
                "Requests and errors per second",
                f"Per {bucket} bucket, by attempt start; {sending}, idle time between runs"
                f" left out. {breaker_key}"
                if series["t"]
                else "Nothing sent yet.",
                '<div class="chart" id="chart-requests"></div>',
                wide=True,
            ),
            _panel(
                "Latency distribution",
                latency_caption,
                '<div class="chart" id="chart-latency"></div>',
            ),
            _panel(
                "Finish reasons",
                "The current output rows, by how they ended.",
                _reasons_panel(numbers["rows"]),
            ),
            _panel(
                "Rate over time",
                "The pacing rate in force, as learned under --rate auto, on the same time axis."
                f" {breaker_key}",
                '<div class="chart" id="chart-rate"></div>',
                wide=True,
            ),
            _panel(
                "Errors by kind",
                "Failed attempts, with the earliest message of each kind (secrets masked).",
                _errors_table(numbers["errors"], clock),
                wide=True,
            ),
            _panel(
                "Runs",
                "Each run of the command on this checkpoint.",
                _runs_table(numbers["runs"]),
                wide=True,
            ),
        ]
    )
    return "".join(
        [
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            # The browser itself refuses any fetch: the page cannot reach the network even if a
            # future edit (or a hostile error text) slipped a URL in.
            '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
            "script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:\">",
            f"<title>batchpizza report · {html.escape(when)}</title>",
            f"<style>{_asset('uPlot.min.css')}</style><style>{_CSS}</style></head><body><main>",
            f"<header><h1>batchpizza report</h1><p>{html.escape(subtitle)}</p></header>",
            f'<div class="cards">{_cards(numbers)}</div><div class="grid">{panels}</div>',
            "<footer>Made by batchpizza report. Charts: uPlot (MIT), inlined.</footer></main>",
            f'<script id="report-data" type="application/json">{_json_for_script(numbers)}</script>',
            # uPlot's MIT licence travels with every copy of it, so with every page.
            f"<script>/*! uPlot {_asset('uPlot.LICENSE')} */\n{_asset('uPlot.iife.min.js')}</script>",
            f"<script>{_JS}</script>",
            "</body></html>\n",
        ]
    )


_CSS = """
:root{--ink:#1d2330;--muted:#667085;--line:#e6e8ee;--bg:#f5f6fa;--card:#fff}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.45 system-ui,-apple-system,
"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1220px;margin:0 auto;padding:28px 24px 40px}
header h1{font-size:22px;margin:0 0 2px;letter-spacing:-.01em}
header p{margin:0;color:var(--muted)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(140px,1fr));gap:12px;margin:20px 0}
.card,.panel{background:var(--card);border:1px solid var(--line);border-radius:10px;
box-shadow:0 1px 2px rgba(16,24,40,.04)}
.card{padding:12px 14px;min-width:0}
.card .label{color:var(--muted);font-size:11.5px;text-transform:uppercase;letter-spacing:.06em}
.card .value{font-size:23px;font-weight:650;font-variant-numeric:tabular-nums;margin-top:2px;
white-space:nowrap}
.card .note{color:var(--muted);font-size:12.5px}
.grid{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:16px}
.panel{padding:16px 18px;min-width:0}
.panel.wide{grid-column:1/-1}
.panel h2{font-size:15px;margin:0 0 2px}
.caption{color:var(--muted);font-size:12.5px;margin:0 0 10px}
.chart{min-height:200px}
.chart.empty{display:flex;align-items:center;justify-content:center;color:var(--muted);
border:1px dashed var(--line);border-radius:8px;min-height:90px}
table.data{width:100%;border-collapse:collapse;font-variant-numeric:tabular-nums}
.data th,.data td{text-align:left;padding:6px 8px;border-bottom:1px solid var(--line);
vertical-align:top}
.data th{font-size:11.5px;color:var(--muted);font-weight:600;text-transform:uppercase;
letter-spacing:.04em;white-space:nowrap}
.data tfoot td{border-bottom:0;font-weight:600}
.nowrap{white-space:nowrap}
.num,.data .num{text-align:right;white-space:nowrap}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
.example{color:#475467;word-break:break-word}
.options{color:#475467;font-size:11.5px}
.stack{display:flex;height:18px;border-radius:6px;overflow:hidden;margin:4px 0 12px;background:var(--line)}
.stack span{display:block;height:100%}
.swatch{display:inline-block;width:10px;height:10px;border-radius:3px;margin-right:8px}
.barcell{width:45%;vertical-align:middle}
.hbar{height:8px;border-radius:4px;min-width:2px}
.uplot{font-family:inherit}
.u-legend{font-size:12.5px;color:var(--muted)}
footer{color:var(--muted);font-size:12px;margin-top:22px}
"""

# Draws the four charts from the embedded dict; each in its own try, so one failing chart leaves
# the others (and says so in data-chart-errors, which the tests read).
_JS = r"""
(function () {
  "use strict";
  var R = JSON.parse(document.getElementById("report-data").textContent);
  var C = {blue: "#3566d6", green: "#1f9d6b", red: "#d64545", amber: "#e0902f",
           violet: "#7a5af8", ink: "#1d2330", muted: "#667085", line: "#e6e8ee"};
  var MARK = {open: C.red, probe: C.amber, closed: C.green, "gave-up": C.ink};
  var dpr = window.devicePixelRatio || 1, drawn = [], failed = [], plots = [];
  var stepped = uPlot.paths.stepped({align: 1});
  var S = R.series, w = S.bucket_s, n = S.t.length;

  // The time charts put the kept buckets side by side: x is a bucket's position, and idle time
  // between runs (a jump in S.t) is cut out and drawn as a break.
  var breaks = [];
  for (var b = 1; b < n; b++) {
    if (S.t[b] - S.t[b - 1] > w) breaks.push([b, S.t[b] - S.t[b - 1] - w]);
  }
  function pos(t) {
    if (!n || t <= S.t[0]) return 0;
    var lo = 0, hi = n - 1;
    while (lo < hi) {
      var mid = (lo + hi + 1) >> 1;
      if (S.t[mid] <= t) lo = mid; else hi = mid - 1;
    }
    return lo + Math.min(1, (t - S.t[lo]) / w);
  }
  function timeAt(x) {
    var i = Math.max(0, Math.min(n - 1, Math.floor(x)));
    return S.t[i] + (x - i) * w;
  }
  var multiDay = n && Math.floor(S.t[0] / 86400) !== Math.floor(S.t[n - 1] / 86400);
  function two(v) { return (v < 10 ? "0" : "") + v; }
  function clock(ts, seconds) {
    var d = new Date(ts * 1000);
    var s = two(d.getUTCHours()) + ":" + two(d.getUTCMinutes());
    if (seconds) s += ":" + two(d.getUTCSeconds());
    return multiDay ? two(d.getUTCMonth() + 1) + "-" + two(d.getUTCDate()) + " " + s : s;
  }
  function span(s) {
    if (s < 3600) return Math.round(s / 60) + "m";
    if (s < 86400) return Math.floor(s / 3600) + "h " + two(Math.round(s % 3600 / 60)) + "m";
    return Math.floor(s / 86400) + "d " + two(Math.round(s % 86400 / 3600)) + "h";
  }
  // Ticks at the start of each run of buckets and at round times (some 8 over the axis), none
  // crowding the one before; a run's start wins over a round time too close to it.
  var every = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
               43200, 86400, 172800, 604800].filter(function (c) {
    return c % w === 0 && c / w >= n / 8;
  })[0] || w * Math.ceil(n / 8);
  function ticks() {
    var out = [], starts = [], room = every / w * 0.6;
    for (var i = 0; i < n; i++) {
      var start = i === 0 || S.t[i] - S.t[i - 1] > w;
      if (!start && S.t[i] % every !== 0) continue;
      var last = out.length - 1;
      if (last < 0 || i - out[last] >= room) {
        out.push(i);
        starts.push(start);
      } else if (start && !starts[last]) {
        out[last] = i;
        starts[last] = true;
      }
    }
    return out;
  }
  var timeAxis = {
    stroke: C.muted, grid: {stroke: C.line, width: 1}, ticks: {stroke: C.line, width: 1},
    splits: ticks,
    values: function (u, xs) { return xs.map(function (x) { return clock(timeAt(x), w < 60); }); }
  };
  var timeX = {
    label: "UTC",
    value: function (u, x) { return x == null ? "—" : clock(timeAt(x), true); }
  };

  function fmt(v, digits) {
    return v == null ? "—" : v.toLocaleString("en-US", {maximumFractionDigits: digits});
  }
  function box(el, height) { return {width: Math.max(280, Math.floor(el.clientWidth)), height: height}; }
  function axis(label) {
    return {label: label, stroke: C.muted, grid: {stroke: C.line, width: 1},
            ticks: {stroke: C.line, width: 1}};
  }
  function upTo(max) { return function () { return [0, Math.max(max, 1e-9) * 1.15]; }; }
  function chart(id, height, make) {
    var el = document.getElementById(id);
    try {
      var spec = make(el);
      if (typeof spec === "string") {
        el.className += " empty";
        el.textContent = spec;
        return;
      }
      var opts = box(el, height);
      for (var k in spec.opts) opts[k] = spec.opts[k];
      plots.push([new uPlot(opts, spec.data, el), el, height]);
      drawn.push(id);
    } catch (err) {
      failed.push(id + ": " + err);
    }
  }
  // A label beside a marker, on a pale backing so that it stays legible over a line.
  function label(ctx, s, x, y, colour, right) {
    ctx.font = 11 * dpr + "px system-ui, sans-serif";
    var width = ctx.measureText(s).width, left = right ? x - 4 * dpr - width : x + 4 * dpr;
    ctx.fillStyle = "rgba(255,255,255,.85)";
    ctx.fillRect(left - 2 * dpr, y - 10 * dpr, width + 4 * dpr, 13 * dpr);
    ctx.fillStyle = colour;
    ctx.textAlign = "left";
    ctx.fillText(s, left, y);
  }
  function vline(u, x, colour) {
    var ctx = u.ctx;
    ctx.strokeStyle = colour;
    ctx.beginPath();
    ctx.moveTo(x, u.bbox.top);
    ctx.lineTo(x, u.bbox.top + u.bbox.height);
    ctx.stroke();
  }
  function nearRight(u, x) { return x > u.bbox.left + u.bbox.width - 90 * dpr; }
  // Idle time cut out between runs: a pale band under the series, its length written over them
  // where there is room.
  var gaps = {hooks: {
    drawClear: [function (u) {
      u.ctx.save();
      u.ctx.fillStyle = "rgba(102,112,133,.13)";
      breaks.forEach(function (br) {
        var x = u.valToPos(br[0], "x", true);
        u.ctx.fillRect(x - 3 * dpr, u.bbox.top, 6 * dpr, u.bbox.height);
      });
      u.ctx.restore();
    }],
    draw: [function (u) {
      var last = -Infinity;
      u.ctx.save();
      breaks.forEach(function (br) {
        var x = u.valToPos(br[0], "x", true);
        if (x - last < 70 * dpr) return;
        label(u.ctx, span(br[1]) + " idle", x, u.bbox.top + 12 * dpr, C.muted,
              nearRight(u, x));
        last = x;
      });
      u.ctx.restore();
    }]
  }};
  // Breaker events as dashed vertical lines; a trip is labelled.
  var breaker = {hooks: {draw: [function (u) {
    var ctx = u.ctx;
    ctx.save();
    ctx.lineWidth = 1.5 * dpr;
    ctx.setLineDash([5 * dpr, 4 * dpr]);
    R.breaker.events.forEach(function (e) {
      var x = Math.round(u.valToPos(pos(e.t), "x", true));
      vline(u, x, MARK[e.event] || C.ink);
      if (e.event === "open" || e.event === "gave-up") {
        label(ctx, e.event === "open" ? "breaker open" : "gave up", x, u.bbox.top + 12 * dpr,
              MARK[e.event], nearRight(u, x));
      }
    });
    ctx.restore();
  }]}};
  function line(name, colour, fill) {
    return {label: name, stroke: colour, width: 2, fill: fill, paths: stepped,
            points: {show: false}, value: function (u, v) { return fmt(v, 2); }};
  }
  function timeChart(data, series, yMax, yLabel) {
    return {
      data: data,
      opts: {
        cursor: {sync: {key: "time"}}, plugins: [gaps, breaker],
        scales: {x: {time: false, range: [0, n]}, y: {range: upTo(yMax)}},
        series: [timeX].concat(series),
        axes: [timeAxis, axis(yLabel)]
      }
    };
  }

  chart("chart-requests", 280, function () {
    if (!n) return "No attempts recorded.";
    // A step holds its bucket's value to the bucket's end: repeat the last value there.
    function perSecond(a) {
      var out = a.map(function (v) { return v / w; });
      out.push(out[n - 1]);
      return out;
    }
    var xs = S.t.map(function (t, i) { return i; }).concat([n]), req = perSecond(S.requests);
    return timeChart([xs, req, perSecond(S.answered), perSecond(S.errors)], [
      line("requests/s", C.blue, "rgba(53,102,214,.10)"),
      line("answered/s", C.green),
      line("errors/s", C.red, "rgba(214,69,69,.22)")
    ], Math.max.apply(null, req), "per second");
  });

  chart("chart-latency", 260, function () {
    var L = R.latency_ms;
    if (!L) return "No answered attempts.";
    var h = L.histogram, xs = [], ys = h.counts;
    for (var i = 0; i < ys.length; i++) xs.push(h.start_ms + (i + 0.5) * h.bin_ms);
    var marks = [["p50", L.p50], ["p90", L.p90], ["p99", L.p99]];
    var percentiles = {hooks: {draw: [function (u) {
      var ctx = u.ctx;
      ctx.save();
      ctx.lineWidth = 1.5 * dpr;
      ctx.setLineDash([4 * dpr, 3 * dpr]);
      marks.forEach(function (m, k) {
        var x = Math.round(u.valToPos(m[1], "x", true));
        vline(u, x, C.ink);
        label(ctx, m[0] + " " + fmt(m[1], 0) + " ms", x, u.bbox.top + (12 + 13 * k) * dpr,
              C.ink, nearRight(u, x));
      });
      ctx.restore();
    }]}};
    return {
      data: [xs, ys],
      opts: {
        plugins: [percentiles],
        scales: {x: {time: false, range: [h.start_ms, h.start_ms + ys.length * h.bin_ms]},
                 y: {range: upTo(Math.max.apply(null, ys) * 1.25)}},
        series: [
          {label: "latency", value: function (u, v) {
            return v == null ? "—" : fmt(v - h.bin_ms / 2, 0) + "–" +
              fmt(v + h.bin_ms / 2, 0) + " ms";
          }},
          {label: "answers", stroke: C.blue, fill: "rgba(53,102,214,.55)", width: 1,
           paths: uPlot.paths.bars({size: [1, Infinity], gap: 1}), points: {show: false}}
        ],
        axes: [axis("milliseconds"), axis("answers")]
      }
    };
  });

  chart("chart-rate", 220, function () {
    var ch = R.rate.changes;
    if (!ch.length) {
      var fixed = [];
      R.runs.forEach(function (r) {
        var rate = r.options.rate;
        if (rate != null && fixed.indexOf(String(rate)) < 0) fixed.push(String(rate));
      });
      return "The rate did not change: a fixed rate" +
        (fixed.length ? " (--rate " + fixed.join(", ") + ")." : ".");
    }
    if (!n) return "No attempts recorded.";
    var xs = ch.map(function (c) { return pos(c.t); }), ys = ch.map(function (c) { return c.rate; });
    if (xs[xs.length - 1] < n) {
      xs.push(n);
      ys.push(ys[ys.length - 1]);
    }
    return timeChart([xs, ys], [line("rate (requests/s)", C.violet, "rgba(122,90,248,.10)")],
                     Math.max.apply(null, ys), "requests/s");
  });

  window.addEventListener("resize", function () {
    plots.forEach(function (p) { p[0].setSize(box(p[1], p[2])); });
  });
  document.body.setAttribute("data-charts", drawn.join(" "));
  document.body.setAttribute("data-chart-errors", failed.join("; "));
})();
"""
