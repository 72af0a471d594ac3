"""One batch job from start to end: lock, scan, plan, send, write, summarise.

The stages run in this order and data flows one way: reader -> plan -> runner (-> provider) ->
checkpoint -> writer. Blocking work (the scan, the output) runs in a worker thread so that the
event loop stays free to notice a signal; both check `stop` between batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from batchpizza.checkpoint import Checkpoint, RunLock
from batchpizza.config import RunConfig
from batchpizza.errors import Interrupted, OutputError
from batchpizza.plan import Plan, Tally
from batchpizza.progress import Progress, choose, setup_logging, summary_line, write_summary_json
from batchpizza.reader import open_source, spool_stdin
from batchpizza.redact import remember_url
from batchpizza.runner import Runner
from batchpizza.writer import write_output

_PROXY_VARIABLES = (
    "BATCHPIZZA_PROXY",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
)


class Job:
    def __init__(
        self, config: RunConfig, *, stdin: IO[bytes] | None = None, progress: Progress | None = None
    ) -> None:
        self.config = config
        self.stdin = stdin
        self.progress = progress or choose(config.progress, config.quiet)
        self.stop = threading.Event()
        self.signum: int | None = None
        self.runner: Runner | None = None
        self._send_task: asyncio.Task[None] | None = None
        self._stopped: asyncio.Event | None = None  # made in run(), inside the loop
        self._plan: Plan | None = None
        self._checkpoint: Checkpoint | None = None

    def interrupt(self, signum: int) -> None:
        """Called on SIGINT / SIGTERM: stop taking rows, give rows in flight `grace` seconds."""
        if self.signum is not None:
            return
        self.signum = signum
        self.stop.set()
        if self._stopped is not None:
            self._stopped.set()
        if self.runner is not None:
            self.runner.stop()
        task = self._send_task
        if task is not None and not task.done():
            asyncio.get_running_loop().call_later(self.config.grace, task.cancel)

    async def run(self) -> dict[str, Any]:
        config = self.config
        setup_logging(config.quiet, config.verbose)
        for url in (config.proxy, config.base_url, *map(os.environ.get, _PROXY_VARIABLES)):
            remember_url(url)
        started = time.monotonic()
        self._stopped = asyncio.Event()
        if self.signum is not None:
            self._stopped.set()
        # Folders first (a missing one is an error, not created), then the lock, before
        # anything is read, so that a second run changes nothing.
        _check_writable(Path(config.output).parent, "output")
        _check_writable(config.checkpoint_path.parent, "checkpoint")
        lock = RunLock(Path(config.output), config.checkpoint_path)
        lock.acquire()
        try:
            if not config.mock:
                return await self._run_locked(started)
            # Imported here: aiohttp.web is only needed for the offline demo.
            from batchpizza.mock_server import MockConfig, MockServer

            async with MockServer(MockConfig()) as server:
                self.config = dataclasses.replace(config, base_url=server.base_url)
                return await self._run_locked(started)
        finally:
            lock.release()

    async def _run_locked(self, started: float) -> dict[str, Any]:
        """The stages, and what an interrupt at any of them leaves: a saved checkpoint, the
        summary, and a message saying how to resume."""
        with contextlib.ExitStack() as cleanup:
            try:
                return await self._stages(started, cleanup)
            except Interrupted as exc:
                signum = self.signum or signal.SIGINT
                plan = self._plan
                tally = plan.tally() if plan is not None and self._checkpoint is not None else None
                summary = self._summary(tally, started, 128 + signum, interrupted=True)
                self._report(summary)
                saved = (
                    f"finished rows are saved in {self.config.checkpoint_path}"
                    if self._checkpoint is not None
                    else "nothing was sent or changed"
                )
                raise Interrupted(
                    f"{exc.message}; {saved}. Rerun the same command to resume.",
                    signum,
                    summary,
                ) from None

    async def _stages(self, started: float, cleanup: contextlib.ExitStack) -> dict[str, Any]:
        config = self.config
        output = Path(config.output)
        if config.input == "-":
            stdin_copy = await self._spool_stdin()
            cleanup.callback(_discard, stdin_copy)
        else:
            stdin_copy = None
        source = open_source(config, stdin_copy)
        cleanup.callback(source.close)
        self._plan = plan = Plan(source, cache=_scan_cache(config.checkpoint_path))
        cleanup.callback(plan.close)
        if not plan.reuse_cache(config.skip_bad_rows):
            await self._in_thread(plan.scan, self.stop)
            if plan.bad and not config.skip_bad_rows:
                raise plan.input_error()
            if self.stop.is_set():  # a signal during the last batch: still change nothing
                raise Interrupted("interrupted while reading the input", 0)
            plan.keep_cache()
        self._checkpoint = checkpoint = Checkpoint.open(config.checkpoint_path)
        cleanup.callback(checkpoint.close)
        if config.restart:
            checkpoint.forget()
        plan.attach(config.checkpoint_path)
        todo = plan.plan_sends()
        checkpoint.set_meta(input=config.input, rows=plan.total, invalid=plan.bad)
        self.runner = runner = Runner(config, checkpoint, on_result=self.progress.advance)
        self.progress.start(plan.total, plan.total - todo, runner.counters)
        try:
            if todo and self.signum is None:
                self._send_task = asyncio.create_task(
                    runner.run(source.prompts(plan.todo_positions()))
                )
                await self._send_task
        except asyncio.CancelledError:
            if self.signum is None:
                raise  # cancelled by our caller, not by our own grace timer
        finally:
            self.progress.close()
        if self.signum is not None:
            raise Interrupted("interrupted", self.signum)
        await self._in_thread(write_output, source, plan, output, config.output_format, self.stop)
        plan.prune()
        return self._finish(plan.tally(), started)

    async def _spool_stdin(self) -> Path:
        """Standard input to a file beside the checkpoint, in a daemon thread: a read blocked on
        a silent pipe cannot be interrupted, so on a signal the thread is abandoned instead."""
        loop = asyncio.get_running_loop()
        # One name per checkpoint, taken under its lock: a copy left by a killed run is simply
        # overwritten by the next one instead of piling up.
        ck = self.config.checkpoint_path
        dest = ck.with_name(f".{ck.name}.stdin.partial")
        done: asyncio.Future[Any] = loop.create_future()
        read = _stdin_reader(self.stdin)

        def settle(error: BaseException | None) -> None:
            if not done.done():
                done.set_exception(error) if error else done.set_result(None)

        def copy() -> None:
            try:
                spool_stdin(read, dest, self.stop)
            except BaseException as exc:
                loop.call_soon_threadsafe(settle, exc)
            else:
                loop.call_soon_threadsafe(settle, None)

        threading.Thread(target=copy, name="batchpizza-stdin", daemon=True).start()
        assert self._stopped is not None
        stopped: asyncio.Future[Any] = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait([done, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not done.done() or self.stop.is_set():
            _discard(dest)
            raise Interrupted("interrupted while reading standard input", 0)
        try:
            done.result()
        except BaseException:
            _discard(dest)
            raise
        return dest

    async def _in_thread(self, func: Any, *args: Any) -> Any:
        """Blocking work in a thread; on cancellation it is told to stop and waited for."""
        future = asyncio.ensure_future(asyncio.to_thread(func, *args))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            self.stop.set()
            await asyncio.wait([future])
            raise

    def _finish(self, tally: Tally, started: float) -> dict[str, Any]:
        exit_code = 0 if tally.answered == tally.rows else 3
        summary = self._summary(tally, started, exit_code)
        self._report(summary)
        return summary

    def _summary(
        self, tally: Tally | None, started: float, exit_code: int, interrupted: bool = False
    ) -> dict[str, Any]:
        counters = self.runner.counters if self.runner else None
        return {
            "rows": tally.rows if tally else 0,
            "answered": tally.answered if tally else 0,
            "failed": tally.failed if tally else 0,
            "misuse": tally.misuse if tally else 0,
            "invalid": tally.invalid if tally else 0,
            "pending": tally.pending if tally else 0,
            "requests": counters.requests if counters else 0,
            "retries": counters.retries if counters else 0,
            "elapsed_s": round(time.monotonic() - started, 3),
            "output": None if interrupted else self.config.output,
            "checkpoint": str(self.config.checkpoint_path),
            "interrupted": interrupted,
            "exit_code": exit_code,
        }

    def _report(self, summary: dict[str, Any]) -> None:
        if not self.config.quiet:
            print(summary_line(summary), file=sys.stderr, flush=True)
        if self.config.summary_json:
            write_summary_json(self.config.summary_json, summary)


def _stdin_reader(stream: IO[bytes] | None) -> Callable[[int], bytes]:
    if stream is not None:
        return stream.read
    try:
        return functools.partial(os.read, sys.stdin.fileno())
    except (AttributeError, OSError, ValueError):  # replaced by a test runner or a notebook
        return sys.stdin.buffer.read


def _discard(path: Path) -> None:
    path.unlink(missing_ok=True)


def _scan_cache(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".scan")


def _check_writable(folder: Path, what: str) -> None:
    """Fail before sending anything rather than after the whole run."""
    folder = folder if str(folder) else Path()
    if not folder.is_dir():
        raise OutputError(f"the {what} folder {folder} does not exist")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write in the {what} folder {folder}: {exc.strerror}") from None


async def arun(
    input: str | os.PathLike[str], output: str | os.PathLike[str], **options: Any
) -> dict[str, Any]:
    """Run a batch inside a running event loop; returns the summary. Options as on the command line
    (concurrency=, rate=, max_retries=, ...). Raises BatchpizzaError subclasses on failure."""
    config = RunConfig.from_options(str(input), str(output), **options)
    return await Job(config).run()


def run(
    input: str | os.PathLike[str], output: str | os.PathLike[str], **options: Any
) -> dict[str, Any]:
    """Run a batch to the end and return its summary (see `arun` inside a running loop)."""
    return asyncio.run(arun(input, output, **options))
