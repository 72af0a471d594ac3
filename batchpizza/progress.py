"""What the user sees while a run goes: a tqdm bar on a terminal, a timestamped line every minute
in a log file (batchpizza.runlog writes the lines), and a dry run's plan.

The core calls `Progress.announce/start/advance/close` and never imports tqdm; the counts come
from the runner's Counters and the run's Control (rate, what the run is waiting for). The bar is
redrawn on a timer as well as when rows finish, so that it moves (the elapsed time, what the run
waits for) while no row finishes, and at most a few times a second so a fast run does not pay.

tqdm, not rich: tqdm is already a dependency (and draws the notebook widget), and its dynamic
width (`dynamic_ncols`) is all the bar needs; the fields are fitted to that width here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from batchpizza.records import Tally
from batchpizza.redact import redact
from batchpizza.runlog import (
    RunStart,
    Snapshot,
    clock,
    log,
    log_progress,
    log_start,
    setup_logging,
    summary_line,
)

__all__ = ["Bar", "Lines", "Progress", "bar_parts", "choose", "setup_logging", "summary_line"]

if TYPE_CHECKING:
    from batchpizza.records import Plan

_MASKED_HEADERS = ("authorization", "x-api-key", "proxy-authorization")
REDRAW_S = 0.5  # the bar's timer: at least this often, whether rows finish or not


class Progress:
    """No bar: the interface, and what runs with --no-progress or -q. The start line is still
    logged (a log level of ERROR, under -q, drops it)."""

    start_info: RunStart | None = None

    def announce(self, start: RunStart) -> None:
        """Called once the plan is known, before `start`: the log's start line."""
        self.start_info = start
        log_start(start)

    def start(self, total: int, done: int, counters: Any, control: Any = None) -> None:
        pass

    def advance(self, _result: object) -> None:
        pass

    def close(self) -> None:
        pass

    def _begin(self, total: int, done: int, counters: Any, control: Any) -> None:
        self.total, self.done_before = total, done
        self.counters, self.control = counters, control
        self._started = time.monotonic()

    def snapshot(self) -> Snapshot:
        """Where the run stands: rows over the whole output (those kept from earlier runs and
        this run's), requests this run."""
        c = self.counters
        invalid = self.start_info.invalid if self.start_info is not None else 0
        answered_before = self.done_before - invalid  # every other row not to send is answered
        return Snapshot(
            rows=self.total,
            done=self.done_before + c.rows_done,
            answered=answered_before + c.answered,
            failed=c.failed,
            misuse=c.misuse,
            invalid=invalid,
            finished_this_run=c.rows_done,
            requests=c.requests,
            retries=c.retries,
            in_flight=c.in_flight,
            elapsed_s=time.monotonic() - self._started,
            rate=getattr(self.control, "rate", None),
            waiting=getattr(self.control, "waiting", None),
            tokens=getattr(c, "input_tokens", 0) + getattr(c, "output_tokens", 0),
            spent=_spent(self.control),
        )


def _spent(control: Any) -> float | None:
    budget = getattr(getattr(control, "meter", None), "budget", None)
    return None if budget is None else float(budget.spent)


def bar_parts(s: Snapshot, width: int) -> tuple[str, int, str]:
    """The bar's line for `width` columns (tqdm's width: the terminal's less the last column):
    the text before the bar, the bar's width, the text after it. The fields go most important
    first, and only those that fit are shown: done/total, answered/failed, what the run waits for
    and the rate come before the bar itself (which gives way, then the counts shorten to 123k),
    then requests/s, tokens and dollars spent (when counted), elapsed<remaining, in flight,
    retries, misuse, invalid."""
    for count in (str, _si):
        head, essential = _essential(s, count)
        needed = len(head) + 1 + len(essential)
        if needed <= width:
            break
    per_row = s.elapsed_s / s.finished_this_run if s.finished_this_run else None
    remaining = "?" if per_row is None else clock(per_row * s.to_send)
    optional = [
        f"{s.requests_per_s:.1f}req/s",
        *([f"tok={_si(s.tokens)}"] if s.tokens else []),
        *([f"${s.spent:.2f}"] if s.spent is not None else []),
        f"{clock(s.elapsed_s)}<{remaining}",
        f"fly={s.in_flight}",
        f"retry={s.retries}",
        f"misuse={s.misuse}",
        f"invalid={s.invalid}",
    ]
    # Below 120 columns the fields come first; on a wide terminal the bar takes a fifth.
    preferred = 10 if width < 120 else min(width // 5, 40)
    bar = min(preferred, width - needed - 3)  # "|" and "| " around the bar instead of " "
    if bar < 3:
        bar = 0
    used = needed + (bar + 3 if bar else 0)
    tail = [essential]
    for field in optional:
        if used + 1 + len(field) > width:
            break
        tail.append(field)
        used += 1 + len(field)
    return (f"{head}|", bar, f"| {' '.join(tail)}") if bar else (f"{head} ", 0, " ".join(tail))


def _essential(s: Snapshot, count: Callable[[int], str]) -> tuple[str, str]:
    pct = 100.0 * s.done / s.rows if s.rows else 100.0
    head = f"{count(s.done)}/{count(s.rows)} {pct:.0f}%"
    fields = [f"ok={count(s.answered)} fail={count(s.failed)}"]
    if s.waiting:
        fields.append(f"WAIT {s.waiting}")
    fields.append(f"rate={s.rate:.3g}/s" if s.rate else "rate=unlimited")
    return head, " ".join(fields)


def _si(n: int) -> str:
    """A count in at most 4 characters or so: 999, 1.2k, 123k, 1.00M."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


class Bar(Progress):
    """A tqdm bar as wide as the terminal (its width read at every redraw), redrawn when rows
    finish and every REDRAW_S seconds."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.bar: Any = None
        self._redirect: Any = None
        self._timer: asyncio.Task[None] | None = None

    def start(self, total: int, done: int, counters: Any, control: Any = None) -> None:
        from tqdm.contrib.logging import logging_redirect_tqdm

        if "ipykernel" in sys.modules:  # a notebook: its widget bar
            from tqdm.auto import tqdm
        else:
            from tqdm import tqdm

        self._begin(total, done, counters, control)
        snapshot = self.snapshot

        class StatusBar(tqdm):  # type: ignore[misc]
            """tqdm's bar between our fields, fitted to the width tqdm measured just now."""

            @property
            def format_dict(self) -> dict[str, Any]:
                d: dict[str, Any] = super().format_dict
                head, width, tail = bar_parts(snapshot(), d.get("ncols") or 80)
                d["bar_format"] = f"{{head}}{{bar:{width}}}{{tail}}" if width else "{head}{tail}"
                return {**d, "head": head, "tail": tail}

        self.bar = StatusBar(
            total=total,
            initial=self.snapshot().done,  # with the rows an online run collected first
            file=self.stream,
            unit="row",
            dynamic_ncols=True,
            mininterval=REDRAW_S,
            smoothing=0.05,
        )
        # -v retry lines go through tqdm.write, above the bar, instead of tearing it.
        self._redirect = logging_redirect_tqdm([log])
        self._redirect.__enter__()
        with contextlib.suppress(RuntimeError):  # no running loop: redrawn as rows finish only
            self._timer = asyncio.get_running_loop().create_task(self._redraw())

    async def _redraw(self) -> None:
        while True:
            await asyncio.sleep(REDRAW_S)
            if self.bar is not None:
                self.bar.refresh()

    def advance(self, _result: object) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.bar is not None:
            self.bar.close()  # drawn once more, with the final counts
            self.bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None


class Lines(Progress):
    """For a log file or cron: a timestamped progress line every `every` seconds."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._task: asyncio.Task[None] | None = None

    def start(self, total: int, done: int, counters: Any, control: Any = None) -> None:
        self._begin(total, done, counters, control)
        with contextlib.suppress(RuntimeError):  # no running loop: no periodic lines
            self._task = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            log_progress(self.snapshot())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


def choose(progress: bool | None, quiet: bool, every: float = 60.0) -> Progress:
    if quiet or progress is False:
        return Progress()
    try:
        terminal = sys.stderr.isatty()
    except (AttributeError, ValueError):
        terminal = False
    if progress is None and not terminal:
        return Lines(every)
    return Bar()


def dry_run_report(
    config: Any,
    tally: Tally,
    plan: Plan,
    previews: Sequence[tuple[str, dict[str, str], bytes]],
    learned_rate: float | None,
    costs: Sequence[str] = (),
) -> str:
    """What a run would do: the counts, how long sending should take, the first requests."""
    todo = plan.to_send
    kept_refused = 0 if config.retry_refused else tally.misuse  # not planned: not sent again
    # Rows that wait on an identical request (plan.reused) are no more answered than it is.
    answered = tally.rows - tally.invalid - plan.unanswered - plan.reused - kept_refused
    rate = config.rate_per_s
    if config.auto_max is not None:
        rate = learned_rate or 1.0
    lines = [
        "batchpizza: dry run: nothing sent, nothing written",
        f"  rows        {tally.rows}",
        f"  answered    {answered} (kept, not sent again)",
        # "30: 30 new rows", not "30 to send: 30 new rows" after the label
        f"  to send     {plan.reasons(retry_refused=config.retry_refused).replace(' to send', '', 1)}",
        f"  invalid     {tally.invalid}",
        f"  time        {_time_line(config, todo, rate)}",
        *costs,  # tokens, cost, the cap (job/metering.py)
    ]
    if not config.retry_refused:
        lines.insert(
            4, f"  refused     {kept_refused} (misuse before, kept; --retry-refused sends them)"
        )
    # Through the Batch API, each request is a line of a file, its body as shown.
    as_line = " (a line of a Batch API file)" if config.via != "online" else ""
    for i, (url, headers, body) in enumerate(previews, 1):
        lines.append(f"  request {i}{as_line}: POST {redact(url)}")
        for name, value in headers.items():
            shown = "***" if name.lower() in _MASKED_HEADERS else value
            lines.append(f"    {name}: {redact(shown)}")
        lines.append(f"    {redact(body.decode('utf-8', 'replace'))}")
    return "\n".join(lines)


def _time_line(config: Any, todo: int, rate: float) -> str:
    """The dry run's `time`: sending at the rate, or the Batch API's window (--via)."""
    online = sending_time(todo, rate, config.concurrency, config.auto_max is not None)
    if todo == 0 or config.via == "online":
        return online
    window = "through the Batch API, within its 24 h window (--wait waits, up to --deadline)"
    if config.via == "batch":
        return window
    return f"{window}; what is still out near --deadline goes online: {online}"


def sending_time(todo: int, rate: float, concurrency: int, auto: bool) -> str:
    """How long sending `todo` rows should take, as a dry run says it."""
    if todo == 0:
        return "nothing to send"
    if rate <= 0:
        return f"as fast as the server answers {concurrency} at a time"
    seconds = todo / rate
    what = "the learned rate" if auto else "the rate"
    return f"about {dt.timedelta(seconds=round(seconds))} at {rate:.3g}/s ({what}), if the server keeps up"
