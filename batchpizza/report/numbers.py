"""The report's numbers: one bounded pass over the checkpoint's attempts (see the package
docstring)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from batchpizza.records import is_answered
from batchpizza.redact import redact, shorten
from batchpizza.report.latency import latency
from batchpizza.report.series import Buckets
from batchpizza.report.tally import AttemptCounts, AttemptRecord, RunTally, Tally

__all__ = [
    "AttemptCounts",
    "AttemptRecord",
    "BreakerEvent",
    "RateChange",
    "ReportData",
    "RunRecord",
    "summarize",
]

TEXT_WIDTH = 100
EXAMPLE_CHARS = 300  # an error example is a hint, not a log: the checkpoint keeps the whole text


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
    # Streamed (read once), or counted by the checkpoint (a million attempts in a second or two).
    attempts: Iterable[AttemptRecord] | AttemptCounts
    runs: list[RunRecord]
    rate_changes: list[RateChange]
    breaker_events: list[BreakerEvent]
    # (when written, input + output tokens) of every answer kept: the tokens-per-second chart.
    tokens: Iterable[tuple[float, int]] = ()


def clip(text: str, width: int) -> str:
    text = " ".join(text.split())  # one line: an example must not break a table
    return text if len(text) <= width else text[: width - 1] + "…"


def iso(t: float) -> str:
    stamp = datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="seconds")
    return stamp.replace("+00:00", "Z")


def share(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


# --- summarize ------------------------------------------------------------------------------------


def _run_span(run: RunRecord) -> tuple[float, float]:
    end = run.started if run.ended is None else run.ended
    return min(run.started, end), max(run.started, end)


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
    buckets = Buckets(span for span in map(_run_span, data.runs) if all(map(math.isfinite, span)))
    tally = Tally(buckets)
    tally.take(data.attempts)
    requests, answered, kinds, per_run = tally.requests, tally.answered, tally.kinds, tally.per_run

    tokens = 0
    for t, n in data.tokens:
        tokens += n
        buckets.add_tokens(t, n)
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
            "start": iso(min(starts)) if starts else None,
            "end": iso(max(ends + starts)) if starts else None,
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
            "retry_share": share(retries, requests),
            "sending_s": round(sending_s, 3),
            "per_s": round(requests / sending_s, 3) if sending_s else None,
            "answered_per_s": round(answered / sending_s, 3) if sending_s else None,
            "tokens": tokens,
            "tokens_per_s": round(tokens / sending_s, 3) if sending_s else None,
        },
        "latency_ms": latency(tally.latencies),
        "errors": [
            {
                "kind": name,
                "count": k.count,
                "share": share(k.count, requests),
                "first": iso(k.first),
                "last": iso(k.last),
                # Masked before it is cut: a cut could leave half a secret the patterns miss.
                "example": shorten(k.example, EXAMPLE_CHARS, "…") if k.example else None,
            }
            for name, k in sorted(kinds.items(), key=lambda nk: (-nk[1].count, nk[0]))
        ],
        "series": buckets.series(),
        "rate": {
            "changes": [
                {"t": c.t, "time": iso(c.t), "rate": c.rate, "reason": redact(c.reason)}
                for c in rates
            ],
            "current": rates[-1].rate if rates else None,
            "min": min(c.rate for c in rates) if rates else None,
            "max": max(c.rate for c in rates) if rates else None,
        },
        "breaker": {
            # A trip opens the breaker, or ends the run when patience is out ("gave-up").
            "trips": sum(e.event in ("open", "gave-up") for e in events),
            "gave_up": any(e.event == "gave-up" for e in events),
            "events": [{"t": e.t, "time": iso(e.t), "event": e.event} for e in events],
        },
        "runs": [_run(r, per_run.get(r.id)) for r in runs],
        "definitions": {
            "retries": "requests - rows attempted (each run's rows sent, summed): attempts "
            "beyond a row's first in its run (each sample of --repeat a row of its own)",
            "throughput": "per second of sending: each run's first attempt start to last end",
            "latency": "answered attempts; nearest-rank percentiles (an observed value)",
            "times": "unix seconds and ISO 8601 UTC; series buckets by attempt start",
        },
    }


def _run(run: RunRecord, tally: RunTally | None) -> dict[str, Any]:
    return {
        "id": run.id,
        "started": iso(run.started),
        "started_t": run.started,
        "ended": iso(run.ended) if run.ended is not None else None,
        "duration_s": round(run.ended - run.started, 3) if run.ended is not None else None,
        "rows_sent": run.rows_sent,
        "requests": tally.requests if tally else 0,
        "answered": tally.answered if tally else 0,
        "exit_code": run.exit_code,
        "options": _options(run.options),
    }
