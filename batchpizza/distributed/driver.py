"""What the driver of a cluster run needs besides Ray: SIGINT and SIGTERM as an interrupt that
unwinds the run, the mock server (--mock) in a process of its own, and what Ray says that no
user can act on kept from a quiet run's standard error."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from types import FrameType
from typing import Any

from batchpizza.errors import BatchpizzaError
from batchpizza.job.ctrlc import stop_signals

_MOCK_STOP_S = 5.0
_PUMP_STOP_S = 5.0
# Ray Core logs this error for every actor of Ray Data's actor pools: their constructor takes
# the map function as an object in the store (ray.put by Ray Data itself, whatever the function's
# arguments), and they restart (max_restarts=-1, Ray Data's default, which a batch run relies on
# to go on after an actor died). Nothing a user can do about it (ray-project/ray#53727, #57733).
RAY_ACTOR_ARGS_LINE = b"has constructor arguments in the object store and max_restarts > 0"
# Ray Data appends this to the message of an exception its task raised (ray.data._internal.util:
# _annotate_exception_with_retry_context), a user's wrong API key too: advice about Ray Data's
# retries, which no batchpizza user can follow.
_RAY_RETRY_NOTE = re.compile(r"\nFailed to .*? after \d+/\d+ attempts \(total backoff ")


class Signals:
    """SIGINT, SIGTERM and SIGHUP (`stop_signals`) raised in the main thread as KeyboardInterrupt
    (which Ray's own code lets through, where an `except Exception` might not), so the run ends through its `finally`s:
    the cluster shut down, the folder written aside removed, the lock released, the summary
    written. A second SIGINT exits at once, as without --ray.

    Once the cluster runs, `grace(stop, seconds)`: the first signal then calls `stop` (the
    controller tells every actor to send nothing more) and the interrupt waits until the run
    calls `check()` (every batch came back, the answers in flight kept) or `seconds` pass, as
    a single process gives its requests in flight a grace. Without it they were cut off by the
    cluster's shutdown: paid for, their answers never kept."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._stop: Callable[[], object] | None = None
        self._grace_s = 0.0
        self._over = threading.Event()  # the run has raised the interrupt, or left the block
        self._release = False  # set by the grace's thread when its time is up
        self._raised = False
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Signals:
        self.trap()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._over.set()
        if self._thread is not None:
            self._thread.join(_PUMP_STOP_S)  # so that it interrupts nothing after this block
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def grace(self, stop: Callable[[], object], seconds: float) -> None:
        """From now on a first signal calls `stop` and leaves the run `seconds` to end."""
        self._stop, self._grace_s = stop, seconds

    def check(self) -> None:
        """Raise the interrupt of a signal the run outlived in its grace (before its output);
        a signal after this interrupts at once again (writing the output, nothing is in flight)."""
        self._stop = None
        if self.signum is not None and not self._raised:
            self._raised = True
            self._over.set()
            raise KeyboardInterrupt

    def trap(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers: a caller's thread keeps its own
        for signum in stop_signals():
            previous = signal.signal(signum, self._on_signal)
            self._previous.setdefault(signum, previous)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._release:  # the grace is over: the interrupt, unless the run raised it already
            self._release = False
            if not self._raised:
                self._raised = True
                raise KeyboardInterrupt
            return
        if self.signum is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C: the user wants out now
                with contextlib.suppress(OSError, ValueError):  # out even if stderr is not
                    print("batchpizza: interrupted again; exiting now", file=sys.stderr, flush=True)
                os._exit(130)
            return
        self.signum = signum
        if self._stop is not None:
            self._thread = threading.Thread(
                target=self._give_grace, name="batchpizza-grace", daemon=True
            )
            self._thread.start()
            return
        self._raised = True
        raise KeyboardInterrupt

    def _give_grace(self) -> None:
        assert self._stop is not None and self.signum is not None
        with contextlib.suppress(Exception):  # a lost controller: the time runs out, that is all
            self._stop()
        if not self._over.wait(self._grace_s):
            self._release = True
            # A signal to the main thread, which runs _on_signal there (interrupt_main would
            # not wake a main thread blocked in a wait).
            main = threading.main_thread().ident
            if main is not None:
                signal.pthread_kill(main, self.signum)


@contextlib.contextmanager
def mock_server_process() -> Iterator[str]:
    """The bundled mock API in a process of its own, for --mock; its base URL. Stopped on the
    way out whatever happens, and on Linux when this process dies (even by SIGKILL)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "batchpizza", "mock-server", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # "batchpizza mock server listening on URL"
        if not line.strip():
            raise BatchpizzaError("the mock server did not start (try: batchpizza mock-server)")
        yield line.split()[-1]
    finally:
        process.terminate()
        try:
            process.wait(timeout=_MOCK_STOP_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _die_with_parent() -> None:
    """In the mock server's process, before it runs: SIGTERM when its parent dies."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


@contextlib.contextmanager
def quiet_ray() -> Iterator[None]:
    """A quiet run's standard error without what Ray says that no user can act on: Ray Core's
    line about actor arguments, and Ray's Python warnings (Ray Data warns of an operator with
    fewer blocks than actors: an input under about 1,000 rows, as the README says)."""
    with dropped_lines(RAY_ACTOR_ARGS_LINE), warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"ray(\.|$)")
        yield


def without_ray_notes(error: BatchpizzaError) -> BatchpizzaError:
    """`error` with its message as batchpizza wrote it, without the advice Ray Data appended."""
    found = _RAY_RETRY_NOTE.search(error.message)
    if found is not None:
        error.args = (error.message[: found.start()], *error.args[1:])
    return error


def user_error(exc: BaseException) -> BatchpizzaError | None:
    """The batchpizza error a Ray task failed with (a wrong API key stops the run so), if that
    is what `exc` wraps: Ray keeps it as a RayTaskError's `cause`, Ray Data chains it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        inner = getattr(current, "cause", None)
        if isinstance(inner, BaseException):
            current = inner
        elif isinstance(current, BatchpizzaError):
            return without_ray_notes(current)
        else:
            current = current.__cause__ or current.__context__
    return None


def deadline_left(
    options: Mapping[str, Any], deadline_s: float | None, started: float
) -> dict[str, Any]:
    """`options` with --deadline as what is left of it now (monotonic `started`): it counts from
    the command's start, as without --ray, not from the cluster's (which took 2 to 30 s to
    start here, so that a cron run overran its deadline by as much)."""
    if deadline_s is None:
        return dict(options)
    return {**options, "deadline": max(0.0, deadline_s - (time.monotonic() - started))}


@contextlib.contextmanager
def dropped_lines(needle: bytes) -> Iterator[None]:
    """Standard error (the file descriptor, which Ray's C++ core writes to) through a pipe for
    the block, every line holding `needle` dropped and the rest passed on as it comes."""
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                *lines, pending = (pending + chunk).split(b"\n")
                kept = b"".join(line + b"\n" for line in lines if needle not in line)
                if kept:
                    os.write(saved, kept)
        if pending and needle not in pending:
            os.write(saved, pending)

    thread = threading.Thread(target=pump, name="batchpizza-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe ends once no process holds its write end any more
        # A cluster started here holds it until it stops (ray.shutdown, inside the block).
        thread.join(_PUMP_STOP_S)
        if not thread.is_alive():
            os.close(saved)
