"""The report's latency figures: exact nearest-rank percentiles of the answered attempts and a
histogram whose bins a reader can add up, from samples kept as one 8-byte float each and sorted
by pyarrow, so that millions of answers cost no Python float apiece.
"""

from __future__ import annotations

import itertools
import math
from array import array
from typing import Any

PERCENTILES = (50, 90, 99)
HISTOGRAM_BINS = 40


def _nice(x: float) -> int:
    """The smallest of 1, 2, 5 x 10^k (at least 1) not below x: bin widths a reader can add up."""
    magnitude = 1
    while True:
        for step in (1, 2, 5):
            if step * magnitude >= x:
                return step * magnitude
        magnitude *= 10


def latency(samples: array[float]) -> dict[str, Any] | None:
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
