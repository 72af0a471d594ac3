"""Numbers and pictures of what a run did: the rendering half of `batchpizza report`.

The checkpoint hands over a `ReportData` (its attempts counted in SQL, see report/tally.py; a
list or stream of attempts gives the same numbers); `summarize` turns it into one JSON-ready dict,
and `render_text` / `render_html` only draw that dict, so the terminal, `--json` and the page
always show the same numbers.

Definitions (also written into the dict, under "definitions"):
- requests: every attempt recorded, whatever its outcome ("stopped" ones included: they were sent).
- retries: requests minus the rows attempted, where the rows attempted are the sum over runs of
  `RunRecord.rows_sent` (the distinct rows that got at least one attempt in that run; each sample
  of `--repeat` a row of its own, as its attempts are recorded apart). So a retry is
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

Memory: one pass over the attempts (or over the checkpoint's counts of them per run and second)
keeps a few counters per run, per error kind and per bucket (at most MAX_POINTS of them), plus one
8-byte float per answered attempt for the exact percentiles; the samples are sorted by pyarrow
(already a dependency) without a Python float object per sample.

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

from batchpizza.report.numbers import (
    AttemptCounts,
    AttemptRecord,
    BreakerEvent,
    RateChange,
    ReportData,
    RunRecord,
    summarize,
)
from batchpizza.report.page import render_html
from batchpizza.report.series import MAX_POINTS
from batchpizza.report.text import render_text

__all__ = [
    "MAX_POINTS",
    "AttemptCounts",
    "AttemptRecord",
    "BreakerEvent",
    "RateChange",
    "ReportData",
    "RunRecord",
    "render_html",
    "render_text",
    "summarize",
]
