"""The progress bar (batchpizza/progress.py): its line fitted to the terminal's width, most
important fields first; counts over the whole output; redrawn on a timer while no row finishes.

tests/fixtures/progress/ holds what tmux showed of real runs (200 rows each, one run in an 80x24
and one in a 200x50 terminal, both against one `batchpizza mock-server`), captured at 2, 5, 9
and 14 s and after Ctrl-C: `throttled` (a server limiting at 3/s with Retry-After, --rate 5/s
--concurrency 4) and `refused` (a server refusing every request after its first 12 as misuse,
--rate 10/s --concurrency 8: the breaker opens). The tests below check those captures and
rebuild their lines with `bar_parts`.
"""

from __future__ import annotations

import asyncio
import io
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from batchpizza import progress
from batchpizza.engine.runner import Counters
from batchpizza.progress import Bar, Progress, bar_parts
from batchpizza.runlog import RunStart, Snapshot

FIXTURES = Path(__file__).parent / "fixtures" / "progress"
# What tqdm gives a bar in a terminal of 80 and 200 columns: it leaves the last column free, so
# that the line never wraps.
AT_80, AT_200 = 79, 199


def snap(**values: object) -> Snapshot:
    base: dict[str, object] = {
        "rows": 200,
        "done": 6,
        "answered": 6,
        "failed": 0,
        "misuse": 0,
        "invalid": 0,
        "finished_this_run": 6,
        "requests": 13,
        "retries": 0,
        "in_flight": 8,
        "elapsed_s": 1.51,
        "rate": 10.0,
        "waiting": "service refusing: probe in 60s",
    }
    return Snapshot(**{**base, **values})  # type: ignore[arg-type]


def line(s: Snapshot, width: int, glyph: str = "#") -> str:
    head, bar, tail = bar_parts(s, width)
    return head + glyph * bar + tail


def captured_bars(name: str) -> list[tuple[str, str]]:
    """(moment, bar line) of each capture taken while the run went (not after Ctrl-C)."""
    bars = []
    moment = ""
    for text in (FIXTURES / name).read_text(encoding="utf-8").splitlines():
        if text.startswith("--- capture-pane"):
            moment = text
        elif "%|" in text and "after Ctrl-C" not in moment:
            bars.append((moment, text))
    return bars


# -- the line at 80 and 200 columns ------------------------------------------------------------


def test_at_80_columns_the_line_keeps_done_answered_what_it_waits_for_and_the_rate() -> None:
    text = line(snap(), AT_80)

    assert text == (
        "6/200 3%|##########| ok=6 fail=0 WAIT service refusing: probe in 60s rate=10/s"
    )
    assert len(text) <= AT_80


def test_at_200_columns_every_field_shows_and_the_bar_widens() -> None:
    head, bar, tail = bar_parts(snap(), AT_200)

    assert (head, bar) == ("6/200 3%|", 39)
    assert tail == (
        "| ok=6 fail=0 WAIT service refusing: probe in 60s rate=10/s 8.6req/s 0:01<0:48 fly=8 "
        "retry=0 misuse=0 invalid=0"
    )


@pytest.mark.parametrize(
    ("name", "moment", "width", "shown"),
    [
        # Before the breaker opened: room for requests/s, elapsed<remaining, in flight, retries.
        ("tmux-refused-80x24.txt", 0, AT_80, snap(waiting=None, requests=10, elapsed_s=1.01)),
        # While it waits: what it waits for and the rate come before the rest.
        ("tmux-refused-80x24.txt", 1, AT_80, snap(waiting="service refusing: probe in 57s")),
        ("tmux-refused-200x50.txt", 0, AT_200, snap()),
    ],
)
def test_the_captured_lines_are_what_bar_parts_builds(
    name: str, moment: int, width: int, shown: Snapshot
) -> None:
    """Captures rebuilt from the counts they show, the bar's glyphs aside."""
    _, captured = captured_bars(name)[moment]
    head, bar, tail = bar_parts(shown, width)

    assert captured.startswith(head)
    assert captured.endswith(tail)
    assert len(captured) == len(head) + bar + len(tail)


@pytest.mark.parametrize(
    ("name", "width", "waits_for"),
    [
        ("tmux-throttled-80x24.txt", 80, "WAIT Retry-After "),
        ("tmux-throttled-200x50.txt", 200, "WAIT Retry-After "),
        ("tmux-refused-80x24.txt", 80, "WAIT service refusing: probe in "),
        ("tmux-refused-200x50.txt", 200, "WAIT service refusing: probe in "),
    ],
)
def test_every_captured_bar_fits_its_terminal_and_shows_the_essentials(
    name: str, width: int, waits_for: str
) -> None:
    bars = captured_bars(name)

    assert len(bars) == 4
    for moment, text in bars:
        assert len(text) < width, (moment, text)
        assert re.match(r"\d+/200 \d+%\|", text), text
        assert re.search(r"ok=\d+ fail=\d+", text) and "rate=" in text, text
        if width == 200:
            assert "req/s" in text and "fly=" in text and "invalid=" in text, text
    assert any(waits_for in text for _, text in bars)


def test_the_captured_breaker_wait_counts_down_while_no_row_finishes() -> None:
    """The refused run answered nothing from 2 s on: the bar moved all the same."""
    waits = [
        int(m.group(1))
        for _, text in captured_bars("tmux-refused-80x24.txt")
        if (m := re.search(r"probe in (\d+)s", text))
    ]

    assert len(waits) >= 3 and waits == sorted(waits, reverse=True) and waits[0] > waits[-1]


def test_a_narrow_terminal_drops_the_bar_before_an_essential_field() -> None:
    wide = snap(rows=10_000, done=1_234, answered=1_200, failed=34)
    big = snap(rows=1_000_000, done=123_456, answered=120_000, failed=3_456)

    no_bar = line(wide, AT_80)
    shortened = line(big, AT_80)

    assert no_bar == (
        "1234/10000 12% ok=1200 fail=34 WAIT service refusing: probe in 60s rate=10/s"
    )
    assert len(no_bar) <= AT_80
    assert (
        shortened == "123k/1M 12% ok=120k fail=3.46k WAIT service refusing: probe in 60s rate=10/s"
    )
    assert len(shortened) <= AT_80


def test_without_a_wait_the_room_goes_to_the_next_fields() -> None:
    text = line(snap(waiting=None, rate=None), AT_80)

    assert "WAIT" not in text
    assert "rate=unlimited 8.6req/s 0:01<0:48 fly=8" in text
    assert len(text) <= AT_80


# -- the counts --------------------------------------------------------------------------------


def start(invalid: int) -> RunStart:
    return RunStart(
        version="x",
        input="in.jsonl",
        output="out.jsonl",
        rows=10,
        to_send=5,
        why="5 to send: 5 new rows",
        new=5,
        changed=0,
        retry=0,
        renewed=0,
        reused=0,
        answered=10 - 5 - invalid,
        refused=0,
        invalid=invalid,
        rate="2/s",
        rate_per_s=2.0,
        deadline=None,
    )


def test_the_counts_are_over_the_whole_output() -> None:
    counters = Counters(requests=4, answered=2, failed=1, in_flight=1)
    shown = Progress()
    shown.start_info = start(invalid=1)
    shown._begin(10, 5, counters, None)

    s = shown.snapshot()

    # 5 rows done before this run: 4 answered (kept) and 1 invalid; this run 2 answered, 1 failed.
    assert (s.done, s.answered, s.failed, s.invalid, s.to_send) == (8, 6, 1, 1, 2)
    assert (s.finished_this_run, s.requests) == (3, 4)


# -- the timer ---------------------------------------------------------------------------------


@dataclass
class FakeControl:
    rate: float | None = 2.0
    waiting: str | None = None


async def test_the_bar_is_redrawn_while_no_row_finishes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "REDRAW_S", 0.01)
    stream = io.StringIO()
    control = FakeControl()
    bar = Bar(stream)
    bar.start(10, 0, Counters(), control)
    try:
        control.waiting = "Retry-After 30s"  # a 429 arrives; no row finishes meanwhile
        for _ in range(500):  # up to 5 s, checked every 10 ms
            if "WAIT Retry-After 30s" in stream.getvalue():
                break
            await asyncio.sleep(0.01)
    finally:
        bar.close()

    assert "WAIT Retry-After 30s" in stream.getvalue()
    assert "0/10 0%|" in stream.getvalue()
