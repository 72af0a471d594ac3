"""The report in the terminal: fits 100 columns, readable at a glance."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from batchpizza.redact import inert, shorten
from batchpizza.report.fmt import (
    TEXT_WIDTH,
    Clock,
    bar,
    clip,
    duration,
    int_text,
    ms,
    pct,
    per_s,
    plural,
    share,
    sparkline,
    stamp_text,
    step_values,
)
from batchpizza.report.latency import PERCENTILES
from batchpizza.report.spend import text_spend
from batchpizza.report.structured import text_structured

# --- the terminal ---------------------------------------------------------------------------------

LAST_RATE_CHANGES = 8
LAST_BREAKER_EVENTS = 10
LAST_RUNS = 20


def render_text(numbers: Mapping[str, Any]) -> str:
    """The report for a terminal: sections of aligned tables, no line wider than 100 columns."""
    clock = Clock(numbers["period"])
    head = "batchpizza report"
    if numbers["period"]["start"]:
        head += f"  ·  {plural(len(numbers['runs']), 'run')}  ·  {clock.span(numbers['period'])}"
    sections = [
        [head],
        _text_rows(numbers["rows"]),
        text_structured(numbers.get("structured")),
        text_spend(numbers.get("spend"), numbers.get("restarted")),
        _text_requests(numbers["requests"], numbers["series"]),
        _text_latency(numbers["latency_ms"]),
        _text_errors(numbers["errors"], numbers["requests"]["failed"], clock),
        _text_rate(numbers["rate"], numbers["series"], clock),
        _text_breaker(numbers["breaker"], clock),
        _text_runs(numbers["runs"], numbers.get("restarted")),
    ]
    lines = [line for section in sections if section for line in [*section, ""]]
    # Error examples, finish reasons and rate reasons are the servers' words: made inert here,
    # the one place every line passes on its way to the terminal.
    return "\n".join(inert(line)[:TEXT_WIDTH].rstrip() for line in lines[:-1]) + "\n"


def _text_rows(rows: Mapping[str, Any]) -> list[str]:
    out = ["Rows by finish reason"]
    biggest = max(rows["by_reason"].values(), default=0)
    for reason, count in rows["by_reason"].items():
        drawn = bar(count / biggest, 50) if biggest else ""
        portion = pct(share(count, rows["total"]))
        out.append(f"  {clip(reason, 14):<14}{int_text(count):>12}  {portion:>6}  {drawn}")
    return [*out, f"  {'total':<14}{int_text(rows['total']):>12}"]


def _text_requests(req: Mapping[str, Any], series: Mapping[str, Any]) -> list[str]:
    answered = pct(share(req["answered"], req["total"]))
    out = [
        "Requests",
        f"  {'requests':<14}{int_text(req['total']):>12}  answered {int_text(req['answered'])}"
        f" ({answered}) · failed {int_text(req['failed'])}",
        f"  {'retries':<14}{int_text(req['retries']):>12}  {pct(req['retry_share'])} of requests"
        f" · {plural(req['rows_attempted'], 'row')} attempted",
        f"  {'throughput':<14}{per_s(req['per_s']):>12}  requests · "
        f"{per_s(req['answered_per_s'])} answered · {duration(req['sending_s'])} spent sending",
    ]
    if series["t"]:
        width = series["bucket_s"]
        peak = max(series["requests"]) / width
        spark = sparkline(series["requests"], 56)
        out.append(f"  {'over time':<14}  {spark}  {duration(width)} buckets, peak {per_s(peak)}")
    if req.get("tokens"):
        out.append(
            f"  {'tokens':<14}{int_text(req['tokens']):>12}  of the answers kept · "
            f"{per_s(req['tokens_per_s'])} while sending"
        )
        if series["t"] and any(series["tokens"]):
            spark = sparkline(series["tokens"], 56)
            peak = max(series["tokens"]) / series["bucket_s"]
            out.append(f"  {'tokens/s':<14}  {spark}  peak {per_s(peak)}")
    return out


def _text_latency(lat: Mapping[str, Any] | None) -> list[str]:
    if not lat:
        return []
    cells = [f"p{p} {ms(lat[f'p{p}'])}" for p in PERCENTILES]
    cells += [f"max {ms(lat['max'])}", f"mean {ms(lat['mean'])}"]
    head = f"Latency of answered attempts  (nearest-rank, {plural(lat['count'], 'answer')})"
    return [head, "  " + "   ".join(cells)]


def _text_errors(errors: Sequence[Mapping[str, Any]], failed: int, clock: Clock) -> list[str]:
    out = [f"Errors by kind  ({int_text(failed)} failed attempts)"]
    if not errors:
        return [*out, "  none"]
    out.append(f"  {'kind':<24}{'count':>10}{'share':>8}   {'first':<16}  last")
    for e in errors:
        out.append(
            f"  {clip(e['kind'], 24):<24}{int_text(e['count']):>10}{pct(e['share']):>8}"
            f"   {clock(e['first']):<16}  {clock(e['last'])}"
        )
        if e["example"]:
            out.append(f"      {clip(e['example'], TEXT_WIDTH - 6)}")
    return out


def _text_rate(rate: Mapping[str, Any], series: Mapping[str, Any], clock: Clock) -> list[str]:
    changes = rate["changes"]
    if not changes:
        return ["Rate", "  no changes recorded (a fixed --rate)"]
    # What a reader looks for is why the rate came down: the cuts, or else the latest changes.
    steps = [(before["rate"], c) for before, c in itertools.pairwise(changes)]
    cuts = [(was, c) for was, c in steps if c["rate"] < was]
    shown = cuts or [(None, changes[0]), *steps]
    line = (
        f"  now {per_s(rate['current'])} · min {per_s(rate['min'])} · max "
        f"{per_s(rate['max'])} · {plural(len(changes), 'change')}, {plural(len(cuts), 'cut')}"
    )
    if series["t"]:
        line += "  " + sparkline(step_values(changes, series["t"]), 36)
    out = ["Rate", line]
    if len(shown) > LAST_RATE_CHANGES:
        out.append(f"  … {len(shown) - LAST_RATE_CHANGES} earlier {'cuts' if cuts else 'changes'}")
    for was, c in shown[-LAST_RATE_CHANGES:]:
        step = f"{per_s(was)} → {per_s(c['rate'])}" if was is not None else per_s(c["rate"])
        reason = clip(c["reason"], TEXT_WIDTH - 42)
        out.append(f"  {clock(c['time']):<16}  {step:>18}  {reason}")
    return out


def _text_breaker(breaker: Mapping[str, Any], clock: Clock) -> list[str]:
    events = breaker["events"]
    if not events:
        return ["Breaker", "  no trips"]
    gave_up = " · gave up" if breaker["gave_up"] else ""
    out = ["Breaker", f"  {plural(breaker['trips'], 'trip')}{gave_up}"]
    if len(events) > LAST_BREAKER_EVENTS:
        out.append(f"  … {len(events) - LAST_BREAKER_EVENTS} earlier events")
    out += [f"  {clock(e['time']):<16}  {e['event']}" for e in events[-LAST_BREAKER_EVENTS:]]
    return out


def _text_runs(runs: Sequence[Mapping[str, Any]], restarted: str | None = None) -> list[str]:
    since = (
        f" (since the --restart of {stamp_text(restarted)}; those before it are forgotten)"
        if restarted
        else ""
    )
    out = [
        f"Runs{since}",
        f"  {'run':>5}  {'started':<19}  {'duration':>9}  {'rows sent':>10}"
        f"  {'requests':>10}  {'answered':>10}  {'exit':>4}",
    ]
    if len(runs) > LAST_RUNS:
        out.append(f"  … {len(runs) - LAST_RUNS} earlier runs")
    for r in runs[-LAST_RUNS:]:
        exit_code = "—" if r["exit_code"] is None else str(r["exit_code"])
        out.append(
            f"  {r['id']:>5}  {stamp_text(r['started']):<19}"
            f"  {duration(r['duration_s']):>9}  {int_text(r['rows_sent']):>10}"
            f"  {int_text(r['requests']):>10}  {int_text(r['answered']):>10}  {exit_code:>4}"
        )
        asked = asked_with(r.get("options") or {})
        if asked:
            out.append(f"  {'':>5}  asked with {asked}")
    return out


def asked_with(options: Mapping[str, Any]) -> str:
    """A run's provider, model and parameters (what its answers' fingerprints hold)."""
    if not options.get("provider"):
        return ""  # a run from before batchpizza recorded it
    params = options.get("params")
    said = [
        str(options["provider"]),
        str(options.get("model") or "—"),
        *(f"{k}={json.dumps(v)}" for k, v in (params.items() if isinstance(params, dict) else ())),
    ]
    return shorten(" ".join(said), 80)  # within the report's 100 columns
