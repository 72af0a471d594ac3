"""What the user sees while a run goes and when it ends: a tqdm bar on a terminal, a timestamped
line every minute in a log file, the summary line, and a dry run's plan.

The core calls `Progress.start/advance/close` and never imports tqdm; the counts come from the
runner's Counters and the run's Control (rate, what the run is waiting for), refreshed at most a
few times a second so a fast run does not pay for it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from batchpizza.records import Tally
from batchpizza.redact import RedactingFilter, inert, redact

if TYPE_CHECKING:
    from batchpizza.checkpoint.plan import Plan

log = logging.getLogger("batchpizza")
_MASKED_HEADERS = ("authorization", "x-api-key", "proxy-authorization")


class Progress:
    """No bar: the interface, and what runs with --no-progress or -q."""

    def start(self, total: int, done: int, counters: Any, control: Any = None) -> None:
        pass

    def advance(self, _result: object) -> None:
        pass

    def close(self) -> None:
        pass


def _status(counters: Any, control: Any, elapsed: float) -> str:
    """answered / failed / misuse, requests per second, retries, in flight, rate, waiting."""
    c = counters
    parts = [
        f"ok={c.answered} fail={c.failed} misuse={c.misuse}",
        f"{c.requests / max(elapsed, 1e-9):.1f}req/s",
        f"retry={c.retries}",
        f"fly={c.in_flight}",
    ]
    rate = getattr(control, "rate", None)
    if rate:
        parts.append(f"rate={rate:.3g}/s")
    waiting = getattr(control, "waiting", None)
    if waiting:
        parts.append(f"WAIT {waiting}")
    return " ".join(parts)


class Bar(Progress):
    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.bar: Any = None
        self._shown = 0.0
        self._redirect: Any = None

    def start(self, total: int, done: int, counters: Any, control: Any = None) -> None:
        from tqdm.contrib.logging import logging_redirect_tqdm

        if "ipykernel" in sys.modules:  # a notebook: its widget bar
            from tqdm.auto import tqdm
        else:
            from tqdm import tqdm

        self.counters, self.control = counters, control
        self.bar = tqdm(
            total=total,
            initial=done,
            file=self.stream,
            unit="row",
            ncols=80,  # fits a standard terminal; the postfix is trimmed rather than wrapped
            mininterval=0.25,
            smoothing=0.05,
            bar_format="{percentage:3.0f}%|{bar:12}| {n_fmt}/{total_fmt} {elapsed}<{remaining} {postfix}",
        )
        # -v retry lines go through tqdm.write, above the bar, instead of tearing it.
        self._redirect = logging_redirect_tqdm([log])
        self._redirect.__enter__()
        self._started = time.monotonic()

    def advance(self, _result: object) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        now = time.monotonic()
        if now - self._shown >= 0.5:
            self._shown = now
            self.bar.set_postfix_str(
                _status(self.counters, self.control, now - self._started), refresh=False
            )

    def close(self) -> None:
        if self.bar is not None:
            elapsed = time.monotonic() - self._started
            self.bar.set_postfix_str(_status(self.counters, self.control, elapsed), refresh=False)
            self.bar.close()
            self.bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None


class Lines(Progress):
    """For a log file or cron: a timestamped progress line every `every` seconds."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._task: Any = None

    def start(self, total: int, done: int, counters: Any, control: Any = None) -> None:
        import asyncio

        self.total, self.done, self.counters, self.control = total, done, counters, control
        self._started = time.monotonic()
        with contextlib.suppress(RuntimeError):  # no running loop: no periodic lines
            self._task = asyncio.get_running_loop().create_task(self._tick())

    def advance(self, _result: object) -> None:
        self.done += 1

    async def _tick(self) -> None:
        import asyncio

        while True:
            await asyncio.sleep(self.every)
            elapsed = time.monotonic() - self._started
            status = _status(self.counters, self.control, elapsed)
            log.warning("progress: %d/%d rows; %s", self.done, self.total, status)

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


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever sys.stderr is at the time, not the one of the first run in this process
    (test runners and notebooks swap and close it between runs); a closed stderr loses the line
    rather than failing the run."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass

    def handleError(self, record: logging.LogRecord) -> None:
        pass


class _InertFormatter(logging.Formatter):
    """Log lines carry what servers said (a retry's error): shown, never obeyed by the terminal."""

    def format(self, record: logging.LogRecord) -> str:
        return inert(super().format(record), lines=True)


def setup_logging(quiet: bool, verbose: bool) -> None:
    """One stderr handler for the package's logger, every record passing the redacting filter,
    each line with a timestamp (cron logs are read hours later)."""
    logger = logging.getLogger("batchpizza")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(
            _InertFormatter("%(asctime)s batchpizza: %(message)s", "%Y-%m-%d %H:%M:%S")
        )
        handler.addFilter(RedactingFilter())
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING)


def summary_line(s: Mapping[str, Any]) -> str:
    head = (
        "interrupted"
        if s.get("interrupted")
        else f"stopped ({s['stopped']})"
        if s.get("stopped")
        else "done"
    )
    parts = [
        f"{s['answered']} answered",
        f"{s['failed']} failed",
        f"{s['misuse']} misuse",
        f"{s['invalid']} invalid",
    ]
    if s.get("pending"):
        parts.append(f"{s['pending']} pending")
    where = f" -> {s['output']}" if s.get("output") and not s.get("interrupted") else ""
    rate = f" at {s['rate']:.3g}/s" if s.get("rate") else ""
    return (
        f"batchpizza: {head}: {s['rows']} rows: {', '.join(parts)}; {s['requests']} requests, "
        f"{s['retries']} retries in {s['elapsed_s']:.1f}s{rate}{where} (exit {s['exit_code']})"
    )


def dry_run_report(
    config: Any,
    tally: Tally,
    plan: Plan,
    previews: Sequence[tuple[str, dict[str, str], bytes]],
    learned_rate: float | None,
) -> str:
    """What a run would do: the counts, how long sending should take, the first requests."""
    todo = plan.to_send
    kept_refused = 0 if config.retry_refused else tally.misuse  # not planned: not sent again
    answered = tally.rows - tally.invalid - todo - kept_refused
    rate = config.rate_per_s
    if config.auto_max is not None:
        rate = learned_rate or 1.0
    lines = [
        "batchpizza: dry run: nothing sent, nothing written",
        f"  rows        {tally.rows}",
        f"  answered    {answered} (kept, not sent again)",
        f"  to send     {plan.reasons(retry_refused=config.retry_refused)}",
        f"  invalid     {tally.invalid}",
        f"  time        {sending_time(todo, rate, config.concurrency, config.auto_max is not None)}",
    ]
    if not config.retry_refused:
        lines.insert(
            4, f"  refused     {kept_refused} (misuse before, kept; --retry-refused sends them)"
        )
    for i, (url, headers, body) in enumerate(previews, 1):
        lines.append(f"  request {i}: POST {redact(url)}")
        for name, value in headers.items():
            shown = "***" if name.lower() in _MASKED_HEADERS else value
            lines.append(f"    {name}: {redact(shown)}")
        lines.append(f"    {redact(body.decode('utf-8', 'replace'))}")
    return "\n".join(lines)


def sending_time(todo: int, rate: float, concurrency: int, auto: bool) -> str:
    """How long sending `todo` rows should take, as a dry run says it."""
    if todo == 0:
        return "nothing to send"
    if rate <= 0:
        return f"as fast as the server answers {concurrency} at a time"
    seconds = todo / rate
    what = "the learned rate" if auto else "the rate"
    return f"about {dt.timedelta(seconds=round(seconds))} at {rate:.3g}/s ({what}), if the server keeps up"
