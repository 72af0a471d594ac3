"""What the user sees while a run goes and when it ends: a tqdm bar, the summary line and JSON.

The core calls `Progress.start/advance/close` and never imports tqdm; the bar's counts come from
the runner's Counters, refreshed at most a few times a second so a fast run does not pay for it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from batchpizza.errors import OutputError
from batchpizza.redact import RedactingFilter

log = logging.getLogger("batchpizza")


class Progress:
    """No bar: the interface, and what runs when stderr is not a terminal or --no-progress."""

    def start(self, total: int, done: int, counters: Any) -> None:
        pass

    def advance(self, _result: object) -> None:
        pass

    def close(self) -> None:
        pass


class Bar(Progress):
    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.bar: Any = None
        self._shown = 0.0

    def start(self, total: int, done: int, counters: Any) -> None:
        from tqdm import tqdm

        self.counters = counters
        self.bar = tqdm(
            total=total,
            initial=done,
            file=self.stream,
            unit="row",
            dynamic_ncols=True,
            mininterval=0.25,
            smoothing=0.05,
        )
        self._started = time.monotonic()

    def advance(self, _result: object) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        now = time.monotonic()
        if now - self._shown >= 0.5:
            self._shown = now
            self.bar.set_postfix_str(self._postfix(now), refresh=False)

    def _postfix(self, now: float) -> str:
        c = self.counters
        rate = c.requests / max(now - self._started, 1e-9)
        return (
            f"ok={c.answered} failed={c.failed} misuse={c.misuse} "
            f"req/s={rate:.1f} retries={c.retries}"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(self._postfix(time.monotonic()), refresh=False)
            self.bar.close()
            self.bar = None


def choose(progress: bool | None, quiet: bool) -> Progress:
    if quiet or progress is False:
        return Progress()
    if progress is None and not sys.stderr.isatty():
        return Progress()
    return Bar()


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever sys.stderr is at the time, not the one of the first run in this process
    (test runners and notebooks swap and close it between runs)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def setup_logging(quiet: bool, verbose: bool) -> None:
    """One stderr handler for the package's logger, every record passing the redacting filter."""
    logger = logging.getLogger("batchpizza")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("batchpizza: %(message)s"))
        handler.addFilter(RedactingFilter())
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING)


def summary_line(summary: dict[str, Any]) -> str:
    s = summary
    head = "interrupted" if s.get("interrupted") else "done"
    parts = [
        f"{s['answered']} answered",
        f"{s['failed']} failed",
        f"{s['misuse']} misuse",
        f"{s['invalid']} invalid",
    ]
    if s.get("pending"):
        parts.append(f"{s['pending']} pending")
    where = f" -> {s['output']}" if not s.get("interrupted") else ""
    return (
        f"batchpizza: {head}: {s['rows']} rows: {', '.join(parts)}; {s['requests']} requests, "
        f"{s['retries']} retries in {s['elapsed_s']:.1f}s{where} (exit {s['exit_code']})"
    )


def write_summary_json(path: str, summary: dict[str, Any]) -> None:
    target = Path(path)
    tmp = target.with_name(f".{target.name}.partial")
    try:
        tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write the summary {path}: {exc.strerror or exc}") from None
