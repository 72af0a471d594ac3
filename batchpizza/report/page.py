"""The report as one self-contained page: the numbers as JSON for the charts (uPlot, inlined with
the page's own CSS and script from report_assets/), nothing fetched from anywhere."""

from __future__ import annotations

import functools
import html
import json
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from batchpizza.redact import inert
from batchpizza.report.fmt import (
    Clock,
    duration,
    int_text,
    ms,
    pct,
    per_s,
    plural,
    share,
    stamp_text,
)

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


def _escape(text: str) -> str:
    """Text for the page: HTML-escaped, and no control character a server sent (a NUL, an
    escape sequence) written into the file as it is."""
    return html.escape(inert(text))


# json.dumps escapes C0 controls itself; DEL and C1 controls would go into the page as they are.
_JSON_CONTROLS = {c: f"\\u{c:04x}" for c in range(0x7F, 0xA0)}


def _json_for_script(numbers: Mapping[str, Any]) -> str:
    """The dict as JSON that cannot end its <script> element early, whatever the error texts say,
    with no control character in the file."""
    text = json.dumps(numbers, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text.translate(_JSON_CONTROLS)


def _card(label: str, value: str, note: str) -> str:
    return (
        f'<div class="card"><div class="label">{_escape(label)}</div>'
        f'<div class="value">{_escape(value)}</div>'
        f'<div class="note">{_escape(note)}</div></div>'
    )


def _cards(numbers: Mapping[str, Any]) -> str:
    rows, req, lat = numbers["rows"], numbers["requests"], numbers["latency_ms"]
    errors, breaker, rate = numbers["errors"], numbers["breaker"], numbers["rate"]
    top_error = f"most: {errors[0]['kind']} × {int_text(errors[0]['count'])}" if errors else "none"
    percentiles = f"p90 {ms(lat['p90'])} · p99 {ms(lat['p99'])}" if lat else ""
    trips, opened = breaker["trips"], [e for e in breaker["events"] if e["event"] == "open"]
    breaker_note = f"last {Clock(numbers['period'])(opened[-1]['time'])}" if opened else "never"
    if breaker["gave_up"]:
        breaker_note = "the run gave up"
    if rate["current"] is None:  # never changed: a fixed rate, which the last run's options say
        runs = numbers["runs"]
        rate_value = str(runs[-1]["options"].get("rate") or "—") if runs else "—"
        rate_note = "fixed rate"
    else:
        rate_value = per_s(rate["current"])
        rate_note = f"min {per_s(rate['min'])} · max {per_s(rate['max'])}"
    return "".join(
        [
            _card(
                "Rows",
                int_text(rows["total"]),
                f"{pct(share(rows['answered'], rows['total']))} answered",
            ),
            _card(
                "Requests",
                int_text(req["total"]),
                f"{int_text(req['retries'])} retries ({pct(req['retry_share'])})",
            ),
            _card("Throughput", per_s(req["per_s"]), f"{per_s(req['answered_per_s'])} answered"),
            _card("Latency p50", ms(lat["p50"]) if lat else "—", percentiles),
            _card("Failed attempts", int_text(req["failed"]), top_error),
            _card("Rate now", rate_value, rate_note),
            _card("Breaker trips", int_text(trips), breaker_note),
        ]
    )


def _reasons_panel(rows: Mapping[str, Any]) -> str:
    total, by_reason = rows["total"], rows["by_reason"]
    colours, spare = {}, iter(_PALETTE * (1 + len(by_reason) // len(_PALETTE)))
    for reason in by_reason:
        colours[reason] = _REASON_COLOURS.get(reason) or next(spare)
    stack = "".join(
        f'<span style="width:{100 * count / total:.3f}%;background:{colours[reason]}"'
        f' title="{_escape(reason)}: {int_text(count)}"></span>'
        for reason, count in by_reason.items()
        if total and count
    )
    biggest = max(by_reason.values(), default=0)
    lines = "".join(
        f'<tr><td><span class="swatch" style="background:{colours[reason]}"></span>'
        f"{_escape(reason)}</td>"
        f'<td class="num">{int_text(count)}</td><td class="num">{pct(share(count, total))}</td>'
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
        f'<tfoot><tr><td>total</td><td class="num">{int_text(total)}</td><td></td><td></td></tr>'
        "</tfoot></table>"
    )


def _errors_table(errors: Sequence[Mapping[str, Any]], clock: Clock) -> str:
    if not errors:
        return '<p class="caption">No failed attempts.</p>'
    body = "".join(
        f'<tr><td class="nowrap"><strong>{_escape(e["kind"])}</strong></td>'
        f'<td class="num">{int_text(e["count"])}</td><td class="num">{pct(e["share"])}</td>'
        f'<td class="mono nowrap" title="{_escape(e["first"])}">{clock(e["first"])}</td>'
        f'<td class="mono nowrap" title="{_escape(e["last"])}">{clock(e["last"])}</td>'
        f'<td class="example mono">{_escape(e["example"] or "")}</td></tr>'
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
        f'<td class="mono nowrap">{_escape(r["started"][:19].replace("T", " "))}</td>'
        f'<td class="num">{duration(r["duration_s"])}</td>'
        f'<td class="num">{int_text(r["rows_sent"])}</td><td class="num">{int_text(r["requests"])}</td>'
        f'<td class="num">{int_text(r["answered"])}</td>'
        f'<td class="num">{"—" if r["exit_code"] is None else r["exit_code"]}</td>'
        f'<td class="mono options">{_escape(_options_line(r["options"]))}</td></tr>'
        for r in runs
    )
    return (
        '<table class="data"><thead><tr><th class="num">run</th><th>started (UTC)</th>'
        '<th class="num">duration</th><th class="num">rows sent</th><th class="num">requests</th>'
        '<th class="num">answered</th><th class="num">exit</th><th>options</th></tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


def _structured_panel(fit: Mapping[str, Any] | None) -> str:
    """--schema: answers that fit at once, after a re-ask, or never; the errors heard most."""
    if not fit:
        return ""
    counts = "".join(
        f'<tr><td>{_escape(label)}</td><td class="num">{int_text(fit[key])}</td></tr>'
        for label, key in (
            ("valid", "valid"),
            ("of those, fitted after a re-ask", "reasked"),
            ("invalid_output (re-asks spent)", "invalid"),
            ("answered, not validated (a refusal, tool calls, empty and cut off)", "not_validated"),
        )
        if key in fit
    )
    errors = "".join(
        f'<tr><td class="num">{int_text(e["count"])}</td>'
        f'<td class="example mono">{_escape(e["error"])}</td></tr>'
        for e in fit["errors"]
    )
    return _panel(
        "Structured outputs",
        "Answers against --schema; the validation errors heard most, by attempts.",
        f'<table class="data"><tbody>{counts}</tbody></table>'
        + (
            '<table class="data"><thead><tr><th class="num">attempts</th><th>validation error'
            f"</th></tr></thead><tbody>{errors}</tbody></table>"
            if errors
            else ""
        ),
        wide=True,
    )


def _options_line(options: Mapping[str, object]) -> str:
    return " ".join(f"{k}={v}" for k, v in options.items() if v is not None)


def _panel(title: str, caption: str, inner: str, wide: bool = False) -> str:
    cls = "panel wide" if wide else "panel"
    return (
        f'<section class="{cls}"><h2>{_escape(title)}</h2>'
        f'<p class="caption">{_escape(caption)}</p>{inner}</section>'
    )


def render_html(numbers: Mapping[str, Any]) -> str:
    """One self-contained page: styles, uPlot and the numbers inlined; nothing from the network.

    The tables and headline numbers are HTML written here, readable without JavaScript; the four
    charts are drawn by the inlined script from the same dict, embedded as JSON.
    """
    period, series, lat = numbers["period"], numbers["series"], numbers["latency_ms"]
    clock, req = Clock(period), numbers["requests"]
    when = clock.span(period) if period["start"] else "nothing recorded yet"
    subtitle = f"{plural(len(numbers['runs']), 'run')} · {when}"
    bucket = duration(series["bucket_s"]) if series["t"] else "—"
    sending = f"{duration(req['sending_s'])} spent sending"
    overflow = ""
    if lat and lat["histogram"]["overflow"]:
        h = lat["histogram"]
        overflow = f"; {int_text(h['overflow'])} slower than {ms(h['overflow_from_ms'])} not drawn"
    latency_caption = (
        f"{int_text(lat['count'])} answered attempts, nearest-rank percentiles marked{overflow}"
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
                "Tokens per second",
                f"Input + output tokens of the answers kept, per {bucket} bucket, by when each "
                "was written (Pizzagpt's are estimates).",
                '<div class="chart" id="chart-tokens"></div>',
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
            _structured_panel(numbers.get("structured")),
            _panel(
                "Runs",
                "Each run of the command on this checkpoint"
                + (
                    f" since the --restart of {_escape(stamp_text(numbers['restarted']))} UTC (the runs "
                    "before it were forgotten with their answers)."
                    if numbers.get("restarted")
                    else "."
                ),
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
            f"<title>batchpizza report · {_escape(when)}</title>",
            f"<style>{_asset('uPlot.min.css')}</style><style>{_asset('page.css')}</style></head><body><main>",
            f"<header><h1>batchpizza report</h1><p>{_escape(subtitle)}</p></header>",
            f'<div class="cards">{_cards(numbers)}</div><div class="grid">{panels}</div>',
            "<footer>Made by batchpizza report. Charts: uPlot (MIT), inlined.</footer></main>",
            f'<script id="report-data" type="application/json">{_json_for_script(numbers)}</script>',
            # uPlot's MIT licence travels with every copy of it, so with every page.
            f"<script>/*! uPlot {_asset('uPlot.LICENSE')} */\n{_asset('uPlot.iife.min.js')}</script>",
            f"<script>{_asset('page.js')}</script>",
            "</body></html>\n",
        ]
    )
