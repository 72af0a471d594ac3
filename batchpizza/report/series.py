"""The report's time series: requests, answers, errors, mean latency and tokens (of the answers,
by when each was written) per time bucket, in one
pass over the attempts in any order and at most MAX_POINTS buckets, by a ladder of bucket widths
in which each divides the next (see `Buckets`). Kept apart from the other numbers because its
folding is the one subtle part of the pass, best read on its own.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from typing import Any

MAX_POINTS = 300  # time-series buckets at most: a chart's width in pixels has no use for more
# Each width divides the next (ratios 2, 5, 2, 3, 2, 5, 2, 3, 2, 3, 2, 2, 2, 7), see Buckets.
_WIDTHS = (1, 2, 10, 20, 60, 120, 600, 1200, 3600, 7200, 21600, 43200, 86400, 172800, 604800)


class Buckets:
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
        self.cells: dict[
            int, list[float]
        ] = {}  # index -> [requests, answered, errors, lat sum, tokens]
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

    def _cell(self, t: float) -> list[float]:
        index = math.floor(t / self.width)
        cell = self.cells.get(index)
        if cell is None:
            cell = self.cells[index] = [0.0, 0.0, 0.0, 0.0, 0.0]
            self._outside += not self._in_run(index)
        return cell

    def _fit(self) -> None:
        while self._in_runs + self._outside > MAX_POINTS:
            self._coarsen()

    def add(self, t: float, answered: bool, latency_ms: float) -> None:
        cell = self._cell(t)
        cell[0] += 1
        if answered:
            cell[1] += 1
            cell[3] += latency_ms
        else:
            cell[2] += 1
        self._fit()

    def add_cell(self, second: int, requests: int, answered: int, latency_ms: float) -> None:
        """The attempts started within one whole second, counted: as many `add`s, since a bucket
        starts on a whole second (its latency sum added in another order, which can move only
        the last bits of a mean that is shown to 0.1 ms)."""
        cell = self._cell(second)
        cell[0] += requests
        cell[1] += answered
        cell[2] += requests - answered
        cell[3] += latency_ms
        self._fit()

    def add_tokens(self, t: float, tokens: int) -> None:
        """Tokens of answers (one, or those written within a whole second), at the time written."""
        self._cell(t)[4] += tokens
        self._fit()

    def _coarsen(self) -> None:
        self._level += 1
        wider = _WIDTHS[self._level] if self._level < len(_WIDTHS) else self.width * 2
        factor = wider // self.width
        merged: dict[int, list[float]] = {}
        for index, cell in self.cells.items():
            into = merged.setdefault(index // factor, [0.0, 0.0, 0.0, 0.0, 0.0])
            for i in range(5):
                into[i] += cell[i]
        self.cells, self.width = merged, wider
        self._index_runs()

    def series(self) -> dict[str, Any]:
        kept = set(self.cells)
        for lo, hi in self._runs:
            kept.update(range(lo, hi + 1))
        indexes = sorted(kept)
        cells = [self.cells.get(i, [0.0, 0.0, 0.0, 0.0, 0.0]) for i in indexes]
        return {
            "bucket_s": self.width,
            "t": [i * self.width for i in indexes],  # bucket starts; a jump is idle time left out
            "requests": [int(c[0]) for c in cells],
            "answered": [int(c[1]) for c in cells],
            "errors": [int(c[2]) for c in cells],
            "latency_ms_mean": [round(c[3] / c[1], 1) if c[1] else None for c in cells],
            "tokens": [int(c[4]) for c in cells],  # of answers, by when each was written
        }
