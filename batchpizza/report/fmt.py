"""Numbers and times as the report shows them, in the terminal and on the page."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from batchpizza.plurals import plural as counted
from batchpizza.report.numbers import TEXT_WIDTH, clip, iso, share

__all__ = [  # the text and the page import these from here
    "TEXT_WIDTH",
    "Clock",
    "bar",
    "clip",
    "duration",
    "int_text",
    "iso",
    "ms",
    "pct",
    "per_s",
    "plural",
    "share",
    "sparkline",
    "step_values",
]

_SPARK = "▁▂▃▄▅▆▇█"
_EIGHTHS = " ▏▎▍▌▋▊▉"


def int_text(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def pct(share: float | None) -> str:
    return "—" if share is None else f"{share * 100:.1f}%"


def ms(x: float | None) -> str:
    if x is None:
        return "—"
    if x >= 10_000:
        return f"{x / 1000:,.1f} s"
    return f"{x:,.0f} ms" if x >= 100 else f"{x:.1f} ms"


def per_s(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:,.0f}/s" if x >= 100 else f"{x:.2f}/s"


def duration(s: float | None) -> str:
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


def bar(fraction: float, width: int) -> str:
    """A horizontal bar in eighths of a character."""
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    return "█" * (eighths // 8) + (_EIGHTHS[eighths % 8] if eighths % 8 else "")


def sparkline(values: Sequence[float], width: int) -> str:
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


def step_values(changes: Sequence[Mapping[str, Any]], times: Sequence[float]) -> list[float]:
    """The rate in force at each time (0 before the first change)."""
    values, i, rate = [], 0, 0.0
    for t in times:
        while i < len(changes) and changes[i]["t"] <= t:
            rate = float(changes[i]["rate"])
            i += 1
        values.append(rate)
    return values


class Clock:
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


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    return counted(n, noun, nouns, grouped=True)


def stamp_text(stamp: str) -> str:
    """An ISO time as the report's tables show it: to the second, a space before the time."""
    return stamp[:19].replace("T", " ")
