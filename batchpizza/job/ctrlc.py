"""Ctrl-C in a script that called the blocking doors (`run()`, `answer()` outside a running loop).

Left to asyncio's runner, the first Ctrl-C cancels the job: the requests in flight are dropped
with their answers (paid for, and sent again by the next call) and `run()` writes no summary.
Here it stops the job as SIGINT stops the command line's run instead: no new rows, those in
flight given their grace, what finished committed and said. A second Ctrl-C is out at once,
as KeyboardInterrupt (the checkpoint is consistent anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from batchpizza.job.stages import Job

T = TypeVar("T")


class CtrlC:
    """Made before the loop starts (so that it sees the handler a script left in place), told of
    the job as it starts (`started`), and around the job's run (`guarding`)."""

    def __init__(self) -> None:
        # Only where Python's own handler is in place, in the main thread: a script's own
        # SIGINT handler (or SIG_IGN) is the script's to keep.
        self.active = (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        )
        self.job: Job | None = None
        self.stopped = False  # a Ctrl-C stopped the job (its Interrupted is this one's)

    def started(self, job: Job) -> None:
        self.job = job

    async def guarding(self, work: Awaitable[T]) -> T:
        if not self.active:
            return await work
        loop = asyncio.get_running_loop()
        previous = signal.getsignal(signal.SIGINT)  # the runner's, which cancels its task
        try:
            loop.add_signal_handler(signal.SIGINT, self._on_sigint, previous)
        except (NotImplementedError, RuntimeError, ValueError):  # no such handlers here
            return await work
        try:
            return await work
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            signal.signal(signal.SIGINT, previous)

    def _on_sigint(self, previous: Callable[[int, Any], Any] | int | None) -> None:
        job = self.job
        if job is not None and (self.stopped or job.stop.signum is not None):
            # A second Ctrl-C: out of the loop at once, as Python's own handler would be (the
            # runner then cancels what is left; the checkpoint is consistent anyway).
            raise KeyboardInterrupt
        if job is None:  # nothing to stop yet: what the runner does with a Ctrl-C
            if callable(previous):
                previous(signal.SIGINT, None)
                return
            raise KeyboardInterrupt
        self.stopped = True
        first_stop(job, signal.SIGINT, "Ctrl-C", " (Ctrl-C again to stop at once)")


def stop_signals() -> tuple[int, ...]:
    """The signals that stop a command line's run as Ctrl-C does: SIGINT, SIGTERM (cron's, a
    container's stop), and SIGHUP (the terminal it ran in closed) where SIGHUP still has its
    default action: ignored, as `nohup` leaves it, the run was asked to outlive its terminal,
    and a handler of a script's own is the script's. Left to the default, SIGHUP killed the run
    on the spot: the requests in flight lost (paid for, and sent again by the next run) and no
    summary JSON written."""
    hup = getattr(signal, "SIGHUP", None)  # none on Windows
    if hup is None or signal.getsignal(hup) != signal.SIG_DFL:
        return (signal.SIGINT, signal.SIGTERM)
    return (signal.SIGINT, signal.SIGTERM, hup)


def first_stop(job: Job, signum: int, said: str, hint: str = "") -> None:
    """The first stopping signal (`stop_signals`), in a script (above) and on the command line
    alike: said on stderr (`said`: what came; `hint`: what a second one does) unless --quiet,
    then the job is stopped: no new rows, those in flight given their grace, what finished committed and said.
    A second one is its caller's: KeyboardInterrupt in a script, exit 130 for the command."""
    if not job.config.quiet:
        # A closed stderr (its reader gone, a hung-up terminal) must not lose the stop.
        with contextlib.suppress(OSError, ValueError):
            print(
                f"\nbatchpizza: {said}: finishing requests in flight, then saving{hint}...",
                file=sys.stderr,
                flush=True,
            )
    job.interrupt(signum)
