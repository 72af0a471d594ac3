"""One batch job from start to end: check, lock, scan, plan, send, write, summarise.

The stages run in this order and data flows one way: source -> checkpoint (the scan, the plan)
-> engine (-> provider) -> checkpoint -> sink. The rows come from a file or from memory (a
DataFrame, a Ray batch), and the checkpoint is a file or, for rows in memory without one, an
in-memory database; every stage is the same either way. Blocking work (the scan, the output)
runs in a worker thread so that the event loop stays free to notice a signal; both check the
stop between batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from batchpizza.checkpoint import Checkpoint, RunLock, ScanIndex
from batchpizza.config import RunConfig
from batchpizza.controls.control import Control
from batchpizza.controls.gate import Gatekeeper
from batchpizza.controls.retrying import RetryPolicy
from batchpizza.controls.stop import Stop
from batchpizza.engine.runner import Runner
from batchpizza.errors import BatchpizzaError, InputError, Interrupted, LockedError, UsageError
from batchpizza.files import clear_partials, write_atomically
from batchpizza.job.paths import check_paths
from batchpizza.progress import Progress, choose, dry_run_report, setup_logging, summary_line
from batchpizza.providers import Provider
from batchpizza.providers.factory import make_provider, remember_secrets
from batchpizza.records import OutputRow, Result, Summary, Tally
from batchpizza.rows import Fields
from batchpizza.runlog import run_start
from batchpizza.sources.base import Rows, describe

if TYPE_CHECKING:
    import aiohttp

    from batchpizza.tables import InMemory

# When the process started (this module is imported at start-up): --deadline counts from here,
# as cron's clock does, so that the time spent validating counts too.
_PROCESS_START = time.monotonic()


class Job:
    def __init__(
        self,
        config: RunConfig,
        *,
        data: InMemory | None = None,
        stdin: IO[bytes] | None = None,
        progress: Progress | None = None,
        on_row: Callable[[int, Result], None] | None = None,
        gatekeeper: Gatekeeper | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.config = config
        self.data = data  # rows in memory, instead of config.input's file
        # For rows in memory: every row's result, in input order, once the run has ended.
        self.output_rows: list[OutputRow] | None = None
        self.session = session  # the caller's, kept open (a Ray actor's); else the run's own
        self.on_row = on_row  # told of each row this run finishes (position, result): stream()
        # What every attempt passes instead of this run's own Control (pacing, breaker): a Ray
        # actor's gate to the cluster's one rate controller (batchpizza.distributed).
        self.gatekeeper = gatekeeper
        self.stdin = stdin
        self.progress = progress or choose(config.progress, config.quiet, config.progress_every)
        self.stop = Stop()
        self.runner: Runner | None = None
        self._send_task: asyncio.Task[None] | None = None
        self._checkpoint: Checkpoint | None = None
        self._limit: int | None = None
        self._reported = False
        self._paths_checked = False

    @property
    def signum(self) -> int | None:
        return self.stop.signum

    def interrupt(self, signum: int) -> None:
        """Called on SIGINT / SIGTERM: stop taking rows, give rows in flight `grace` seconds."""
        if self.stop.signum is not None:
            return
        self.stop.interrupt(signum)
        self._cancel_after_grace()

    def _scan_path(self) -> Path | None:
        """Where the scan is written before it is adopted: beside the checkpoint, so that what a
        killed scan leaves is cleared by the next run (named apart from the output's partials);
        None (in memory) for rows in memory, which are scanned anew every time."""
        ck = self.config.checkpoint_path
        if ck is None or self.data is not None:
            return None
        return ck.with_name(f".scan-{ck.name}.partial")

    def _finished_row(self, pos: int, result: Result) -> None:
        self.progress.advance(result)
        if self.on_row is not None:
            self.on_row(pos, result)

    @staticmethod
    def _save_control(checkpoint: Checkpoint, run: int, control: Control) -> None:
        """The rate history and breaker trips for the report, and the learned rate for the next
        run to start from; on every way out of the run."""
        with contextlib.suppress(Exception):  # never mask the error the run is ending with
            checkpoint.record_events(run, control.take_events())
            if control.adaptive is not None:
                checkpoint.set_meta(learned_rate=control.adaptive.rate)

    def _stop_early(self, reason: str) -> None:
        """A planned stop (the deadline, the breaker out of patience): no new request, those in
        flight get the grace period, then the output is written with the rest pending."""
        if not self.stop.sending_stopped:
            self.stop.stop_sending(reason)
            self._cancel_after_grace()

    def _cancel_after_grace(self) -> None:
        task = self._send_task
        if task is not None and not task.done():
            asyncio.get_running_loop().call_later(self.config.grace, task.cancel)

    async def run(self) -> Summary:
        config = self.config
        setup_logging(config.quiet, config.verbose, config.log_format)
        remember_secrets(config)
        started = time.monotonic()
        try:
            return await self._locked(started)
        except BatchpizzaError as exc:
            # Every way out leaves a summary of its own, so a monitor never reads the last
            # run's "exit_code": 0 after a broken one (an interrupt and a lock write theirs);
            # unless the paths were refused: the summary may be the very file in question.
            if not self._reported and self._paths_checked:
                summary = self._summary(self._tally(), started, exc.exit_code)
                self._report(dataclasses.replace(summary, output=None))
            raise

    async def _locked(self, started: float) -> Summary:
        config = self.config
        check_paths(config)
        self._paths_checked = True
        checkpoint = config.checkpoint_path
        # Rows in memory without a checkpoint share nothing on disk with another run.
        lock = None
        if checkpoint is not None:
            lock = RunLock(Path(config.output) if config.output else checkpoint, checkpoint)
        if lock is not None and not config.dry_run:  # a dry run changes nothing: no turn needed
            try:
                lock.acquire()
            except LockedError:
                where = {**self._where(started), "output": None}
                self._report(Summary.of(None, exit_code=75, stopped="locked", **where))
                raise
        try:
            if checkpoint is not None and not config.dry_run:  # under the lock: what killed
                if config.output is not None:  # writes and scans left
                    clear_partials(Path(config.output))
                clear_partials(checkpoint)
                scan_path = self._scan_path()
                if scan_path is not None:
                    scan_path.unlink(missing_ok=True)
            if not config.mock:
                return await self._run_locked(started)
            # Imported here: aiohttp.web is only needed for the offline demo.
            from batchpizza.mock.faults import MockConfig
            from batchpizza.mock.server import MockServer

            async with MockServer(MockConfig()) as server:
                self.config = dataclasses.replace(config, base_url=server.base_url)
                return await self._run_locked(started)
        finally:
            if lock is not None:
                lock.release()

    async def _run_locked(self, started: float) -> Summary:
        """The stages, and what an interrupt at any of them leaves: a saved checkpoint, the
        summary, and a message saying how to resume."""
        with contextlib.ExitStack() as cleanup:
            try:
                return await self._stages(started, cleanup)
            except Interrupted as exc:
                signum = self.stop.signum or 2
                summary = self._summary(self._tally(), started, 128 + signum, stopped="signal")
                summary = dataclasses.replace(summary, output=None, interrupted=True)
                self._report(summary)
                path = self.config.checkpoint_path
                if self._checkpoint is None or self.config.dry_run:
                    saved = "nothing was sent or changed"
                elif path is None:
                    saved = "no checkpoint was given, so what finished is not kept"
                else:
                    saved = f"finished rows are saved in {path}"
                raise Interrupted(
                    f"{exc.message}; {saved}. Rerun the same command to resume.", signum, summary
                ) from None

    def _tally(self) -> Tally | None:
        if self._checkpoint is None:
            return None
        try:
            return self._checkpoint.tally(self._limit)
        except Exception:  # the summary of an interrupt must not fail on a broken checkpoint
            return None

    async def _stages(self, started: float, cleanup: contextlib.ExitStack) -> Summary:
        config = self.config
        provider = make_provider(config)
        fields = Fields.from_config(config, extra_reserved=provider.extra_columns)
        source = await self._open_source(fields, cleanup)
        key = source.input_key()
        scan = await self._scan(source, key, cleanup, reuse=not config.dry_run)
        if config.dry_run:
            assert scan is not None  # a dry run always scans
            self._checkpoint = planning = Checkpoint.planning(config.checkpoint_path, scan)
            cleanup.callback(planning.close)
            return await self._dry_run(planning, source, provider, started)
        path = config.checkpoint_path
        self._checkpoint = checkpoint = (
            Checkpoint.open(path) if path is not None else Checkpoint.in_memory()
        )
        cleanup.callback(checkpoint.close)
        if scan is None and key is not None and checkpoint.scan_info(key) is None:
            # The peek saw an older state of the file than the one now open: scan after all.
            scan = await self._scan(source, key, cleanup, reuse=False)
        if scan is not None:
            state = {**source.scan_state(), "total": scan.total, "bad": scan.bad}
            checkpoint.adopt_scan(scan, key, state)
        if config.restart:
            checkpoint.forget()
        self._limit = config.limit
        plan = checkpoint.plan(config.limit)
        todo = sum(plan.values())
        checkpoint.set_meta(input=config.input or config.input_label)
        run = checkpoint.begin_run(_options(config))
        control = Control(
            rate=config.rate_per_s,
            auto_max=config.auto_max,
            learned=checkpoint.learned_rate(),
            patience=config.patience_s,
            retry_after_cap=config.retry_after_cap,
            timeout=config.timeout,
            on_give_up=functools.partial(self._stop_early, "refusals"),
            stop_signal=self.stop.wait,
        )
        cleanup.callback(self._save_control, checkpoint, run, control)
        self.runner = runner = Runner(
            provider,
            checkpoint,
            RetryPolicy.from_config(config),
            self.gatekeeper or control,
            concurrency=config.concurrency,
            stop=self.stop,
            run=run,
            on_result=self._finished_row,
            session=self.session,
        )
        total = checkpoint.rows(config.limit)
        # The log's start line: what this run is about to send and why (a cron mail opens so).
        left = (
            None
            if config.deadline_s is None
            else config.deadline_s - (time.monotonic() - _PROCESS_START)
        )
        invalid = checkpoint.tally(config.limit).invalid
        self.progress.announce(run_start(config, plan, total, invalid, control.rate, left))
        self.progress.start(total, total - todo, runner.counters, control)
        if config.deadline_s is not None:
            remaining = config.deadline_s - (time.monotonic() - _PROCESS_START)
            asyncio.get_running_loop().call_later(max(0.0, remaining), self._stop_early, "deadline")
        try:
            if todo and not self.stop.sending_stopped:
                # Closed here, not by the collector at exit (where it printed a traceback).
                prompts = cleanup.enter_context(
                    contextlib.closing(source.prompts(checkpoint.todo_positions()))
                )
                self._send_task = asyncio.create_task(runner.run(prompts))
                await self._send_task
        except asyncio.CancelledError:
            if not self.stop.sending_stopped:
                raise  # cancelled by our caller, not by our own grace timer
        finally:
            self.progress.close()
        if self.stop.signum is not None:
            checkpoint.end_run(
                run, rows_sent=runner.counters.rows_done, exit_code=128 + self.stop.signum
            )
            raise Interrupted("interrupted", self.stop.signum)
        if runner.fatal is not None:
            checkpoint.end_run(run, rows_sent=runner.counters.rows_done, exit_code=2)
            raise UsageError(
                f"{runner.fatal.message}; stopped after {runner.counters.requests} request(s). "
                "Answers so far are kept in the checkpoint: fix the cause and rerun."
            )
        await self._in_thread(functools.partial(self._write, source, checkpoint, provider, key))
        if self.stop.signum is not None:  # a signal during the write: the output is whole
            raise Interrupted("interrupted after the output was written", self.stop.signum)
        tally = checkpoint.tally(config.limit)
        # Stopped early only if it left rows unsent: a deadline that found the work done is a
        # finished run.
        early = self.stop.reason in ("deadline", "refusals") and tally.pending > 0
        stopped = self.stop.reason if early else None
        exit_code = 4 if stopped else 0 if tally.answered == tally.rows else 3
        checkpoint.end_run(run, rows_sent=runner.counters.rows_done, exit_code=exit_code)
        summary = self._summary(tally, started, exit_code, stopped=stopped, rate=control.rate)
        self._report(summary)
        return summary

    async def _open_source(self, fields: Fields, cleanup: contextlib.ExitStack) -> Rows:
        """The rows to run: the data in memory, or the input file(s) (standard input copied
        aside first, so it can be read twice)."""
        config = self.config
        if self.data is not None:
            from batchpizza.sources.memory import MemorySource

            return MemorySource(self.data, fields, config.input_label or "<data>")
        from batchpizza.sources import open_source

        assert config.input is not None  # a RunConfig for a file job names its input
        stdin_copy = None
        if config.input == "-":
            stdin_copy = await self._spool_stdin()
            cleanup.callback(stdin_copy.unlink, missing_ok=True)
        source = open_source(config.input, fields, stdin_copy, config.input_label)
        cleanup.callback(source.close)
        return source

    def _write(
        self, source: Rows, checkpoint: Checkpoint, provider: Provider, key: str | None
    ) -> None:
        """The output, in a worker thread: the file, or for rows in memory their results."""
        config = self.config
        if config.output is None:
            self.output_rows = [r for page in checkpoint.output_rows(config.limit) for r in page]
            return
        from batchpizza.sinks import write_output
        from batchpizza.sinks.values import result_columns
        from batchpizza.sources import Source

        assert config.output_format is not None  # a file job's output has a format
        write_output(
            cast(Source, source),  # a file's rows: a Source, which also carries its fields
            checkpoint,
            Path(config.output),
            config.output_format,
            results=result_columns(provider.extra_columns),
            scan_key=key,
            limit=config.limit,
            stop=self.stop.interrupted,
        )

    async def _scan(
        self, source: Rows, key: str | None, cleanup: contextlib.ExitStack, *, reuse: bool
    ) -> ScanIndex | None:
        """Validate the input, or reuse the last run's scan when the input files are unchanged;
        None when reused. Bad rows raise InputError, having changed nothing."""
        config = self.config
        path = config.checkpoint_path
        if reuse and key is not None and path is not None and path.exists():
            info = Checkpoint.peek_scan(path, key)
            if info is not None and (config.skip_bad_rows or not info["bad"]):
                source.restore(info)
                return None
        scan = ScanIndex(self._scan_path())
        cleanup.callback(scan.close)
        await self._in_thread(
            functools.partial(
                scan.scan, source.scan(), source.unit, source.names, self.stop.interrupted
            )
        )
        if scan.bad and not config.skip_bad_rows:
            rows = describe(source, scan.first_bad)
            raise InputError(f"{scan.bad} bad row(s) in the input:", rows, scan.bad)
        if self.stop.interrupted.is_set():  # a signal during the last batch: change nothing
            raise Interrupted("interrupted while reading the input", 0)
        return scan

    async def _dry_run(
        self, planning: Checkpoint, source: Rows, provider: Provider, started: float
    ) -> Summary:
        config = self.config

        def plan() -> tuple[Any, ...]:
            counts = planning.plan(config.limit)
            tally = planning.tally(config.limit)
            prompts = source.prompts(planning.todo_positions())
            with contextlib.closing(prompts):
                firsts = [p for _, (_, p) in zip(range(3), prompts, strict=False)]
            return counts, tally, firsts

        # In a thread, so that a signal is heard while a large input is planned.
        counts, tally, firsts = await self._in_thread(plan)
        if self.stop.interrupted.is_set():
            raise Interrupted("interrupted while planning", 0)
        previews = [provider.preview(prompt) for prompt in firsts]
        # On stdout, to be piped or saved; the summary line stays on stderr with the logs.
        print(dry_run_report(config, tally, counts, previews, planning.learned_rate()), flush=True)
        return self._summary(tally, started, 0)

    async def _spool_stdin(self) -> Path:
        # One name per checkpoint, taken under its lock: a copy left by a killed run is simply
        # overwritten by the next one instead of piling up.
        from batchpizza.sources.stdin import spool_stdin_aside

        ck = self.config.checkpoint_path
        assert ck is not None  # standard input is a file job's, which has an output
        dest = ck.with_name(f".{ck.name}.stdin.partial")
        return await spool_stdin_aside(self.stdin, dest, self.stop)

    async def _in_thread(self, func: Callable[[], Any]) -> Any:
        """Blocking work in a thread; on cancellation it is told to stop and waited for."""
        future = asyncio.ensure_future(asyncio.to_thread(func))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            self.stop.interrupted.set()
            await asyncio.wait([future])
            raise

    def _where(self, started: float) -> dict[str, Any]:
        path = self.config.checkpoint_path
        return {
            "elapsed_s": round(time.monotonic() - started, 3),
            "output": self.config.output,
            "checkpoint": None if path is None else str(path),
        }

    def _summary(
        self,
        tally: Tally | None,
        started: float,
        exit_code: int,
        *,
        stopped: str | None = None,
        rate: float | None = None,
    ) -> Summary:
        counters = self.runner.counters if self.runner else None
        return Summary.of(
            tally,
            requests=counters.requests if counters else 0,
            retries=counters.retries if counters else 0,
            exit_code=exit_code,
            stopped=stopped,
            rate=rate,
            **self._where(started),
        )

    def _report(self, summary: Summary) -> None:
        self._reported = True
        if not self.config.quiet:
            with contextlib.suppress(OSError, ValueError):  # a closed stderr must not fail a run
                line = summary_line(summary, self.config.log_format)
                print(line, file=sys.stderr, flush=True)
        if self.config.summary_json and not self.config.dry_run:
            write_atomically(Path(self.config.summary_json), summary.to_json())


def _options(config: RunConfig) -> dict[str, Any]:
    """The options a run records for its report (secrets are in URLs: those are left out)."""
    keep = ("concurrency", "rate", "max_retries", "timeout", "provider", "model", "limit")
    return {name: getattr(config, name) for name in keep}


async def arun(
    input: str | os.PathLike[str], output: str | os.PathLike[str], **options: Any
) -> Summary:
    """Run a batch inside a running event loop; returns the summary. Options as on the command
    line (concurrency=, rate=, max_retries=, ...). Raises BatchpizzaError subclasses on failure."""
    config = RunConfig.from_options(str(input), str(output), **options)
    return await Job(config).run()


def run(input: str | os.PathLike[str], output: str | os.PathLike[str], **options: Any) -> Summary:
    """Run a batch to the end and return its summary (see `arun` inside a running loop)."""
    from batchpizza.job.loop import run_loop

    return run_loop(arun(input, output, **options))
