"""One batch job from start to end: check, lock, read and scan, plan, send, write, summarise.

The stages run in this order and data flows one way: rows (job/reading) -> checkpoint (the scan,
the plan) -> engine (job/sending -> provider) -> checkpoint -> output (job/writing). The rows come
from a file or from memory (a DataFrame), and the checkpoint is a file or, for rows in memory
without one, an in-memory database; every stage is the same either way. Blocking work (the scan,
the output) runs in a worker thread so that the event loop stays free to notice a signal; both
check the stop between batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from batchpizza.batchapi.display import plan_of, positions_of
from batchpizza.checkpoint import Checkpoint, RunLock
from batchpizza.config import RunConfig
from batchpizza.controls.stop import Stop
from batchpizza.errors import BatchpizzaError, Interrupted, LockedError, UsageError, saved_in
from batchpizza.job.metering import estimate_lines, token_fields
from batchpizza.job.paths import check_paths
from batchpizza.job.reading import clear_leftovers, open_rows, reusable, scan_rows, scan_state
from batchpizza.job.sending import Sending
from batchpizza.job.writing import Reporter, check_parsed_names, run_options, write_rows
from batchpizza.progress import Progress, choose, dry_run_report, setup_logging
from batchpizza.providers.factory import make_provider, remember_secrets
from batchpizza.records import TOKEN_COLUMNS, OutputRow, Plan, Result, Summary, Tally
from batchpizza.sampling import sampled

if TYPE_CHECKING:
    import aiohttp

    from batchpizza.checkpoint.batches import BatchFile
    from batchpizza.controls.gate import Gatekeeper
    from batchpizza.providers import Provider
    from batchpizza.sources.base import Rows
    from batchpizza.tables import InMemory

# When the process started (this module is imported at start-up): --deadline counts from here,
# as cron's clock does, so that the time spent validating counts too.
_PROCESS_START = time.monotonic()
# The stops that leave rows pending on purpose (exit 4): the deadline, the breaker out of
# patience, the --max-cost cap, a quota spent, a server that nothing can succeed at.
EARLY_STOPS = ("deadline", "refusals", "budget", "quota", "failing", "batches")
log = logging.getLogger("batchpizza")


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
        # For rows in memory: every row's output row, in input order, once the run has ended.
        self.output_rows: list[OutputRow] | None = None
        self.session = session  # the caller's, kept open; else the run's own
        self.on_row = on_row  # told of each row this run finishes (position, result): stream()
        self.gatekeeper = gatekeeper  # what attempts pass instead of this run's own Control
        self.stdin = stdin
        self.progress = progress or choose(config.progress, config.quiet, config.progress_every)
        self.stop = Stop()
        self.sending: Sending | None = None
        self._checkpoint: Checkpoint | None = None
        self._spent: float | None = None  # a --restart dry run: the spend of the file it set aside
        self._kept_files: list[BatchFile] | None = None  # and its Batch API files still out
        self._reporter = Reporter(config, time.monotonic())
        self._paths_checked = False
        self._begun = False  # the run is recorded in the checkpoint: it may keep answers
        self.plan: Plan | None = None  # what this run sends, and why

    @property
    def signum(self) -> int | None:
        return self.stop.signum

    def interrupt(self, signum: int) -> None:
        """Called on SIGINT / SIGTERM: stop taking rows, give rows in flight `grace` seconds."""
        if self.stop.signum is not None:
            return
        self.stop.interrupt(signum)
        if self.sending is not None:
            self.sending.cancel_after_grace()

    def _finished_row(self, pos: int, result: Result) -> None:
        if self._checkpoint is not None:  # committed: an answered slot leaves the to-do set
            self._checkpoint.answered(pos, result.finish_reason)
        self.progress.advance(result)
        if self.on_row is not None:
            self.on_row(pos, result)

    async def run(self) -> Summary:
        config = self.config
        setup_logging(config.quiet, config.verbose, config.log_format)
        remember_secrets(config)
        self._reporter = Reporter(config, time.monotonic())
        try:
            return await self._locked()
        except BatchpizzaError as exc:
            # Every way out leaves a summary of its own, so a monitor never reads the last
            # run's "exit_code": 0 after a broken one (an interrupt and a lock write theirs);
            # unless the paths were refused: the summary may be the very file in question.
            if self._paths_checked:
                self._report_failure(exc)
            raise

    def _report_failure(self, exc: BatchpizzaError) -> None:
        """The summary of a run that ends with `exc`, unless one was said already."""
        if not self._reporter.reported:
            summary = self._summary(self._tally(), exc.exit_code)
            self._reporter.report(dataclasses.replace(summary, output=None))

    async def _locked(self) -> Summary:
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
                where = {**self._reporter.where(), "output": None}
                self._reporter.report(Summary.of(None, exit_code=75, stopped="locked", **where))
                raise
        try:
            if not config.dry_run:
                clear_leftovers(config, in_memory=self.data is not None)
            if not config.mock:
                return await self._run_locked()
            # Imported here: aiohttp.web is only needed for the offline demo.
            from batchpizza.mock.server import serving

            async with serving() as base_url:
                # The OpenAI-compatible routes (chat, files, batches) are under /v1.
                api = base_url + ("/v1" if config.provider == "openai" else "")
                self.config = dataclasses.replace(config, base_url=api)
                return await self._run_locked()
        finally:
            if lock is not None:
                # A checkpoint this run made and failed before using (a full disk while the
                # first scan was kept) goes, leaving the folder as it was.
                lock.release(discard=not self._begun)

    async def _run_locked(self) -> Summary:
        """The stages, and what an interrupt at any of them leaves: a saved checkpoint, the
        summary, and a message saying how to resume."""
        with contextlib.ExitStack() as cleanup:
            try:
                return await self._stages(cleanup)
            except Interrupted as exc:
                signum = self.stop.signum or 2
                tally, path = self._tally(), self.config.checkpoint_path
                summary = self._summary(tally, 128 + signum, stopped="signal")
                summary = dataclasses.replace(summary, output=None, interrupted=True)
                self._reporter.report(summary)
                if self._checkpoint is None or self.config.dry_run:
                    saved = "nothing was sent or changed"
                elif path is None:
                    saved = "no checkpoint was given, so what finished is not kept"
                else:
                    saved = saved_in(tally, str(path))
                raise Interrupted(
                    f"{exc.message}; {saved}. Rerun the same command to resume.", signum, summary
                ) from None
            except BatchpizzaError as exc:
                # Said here, while the checkpoint is still open, so that it counts the rows as
                # the checkpoint holds them (those answered before a fatal reply), not none.
                self._report_failure(exc)
                raise

    def _tally(self) -> Tally | None:
        if self._checkpoint is None:
            return None
        try:
            return self._checkpoint.tally(self.config.limit)
        except Exception:  # the summary of an interrupt must not fail on a broken checkpoint
            return None

    async def _stages(self, cleanup: contextlib.ExitStack) -> Summary:
        config = self.config
        provider = make_provider(config)
        source = await open_rows(config, TOKEN_COLUMNS, self.data, self.stdin, self.stop, cleanup)
        key = source.input_key()
        scan = await self._scan(source, key, cleanup, reuse=not config.dry_run)
        check_parsed_names(config, source, provider.extra_columns)  # before anything is sent
        if config.dry_run:
            assert scan is not None  # a dry run always scans
            planning = Checkpoint.planning(config.checkpoint_path, scan)
            if config.restart:
                # --restart forgets every answer and the learned rate first (`forget`): planned
                # over none, as the run will send. The checkpoint was opened all the same, to be
                # refused as the run would refuse it (a newer version's, a damaged one). It
                # forgets answers, not money: the cap's line counts what was spent.
                self._spent = planning.spend().dollars
                if config.via != "online":  # batches still out are kept through a restart
                    planning.use_identity(provider.identity, config.samples)  # read-only: no write
                    self._kept_files = [f for f in planning.batch_files() if f.kept_by_restart]
                planning.close()
                planning = Checkpoint.planning(None, scan)
            self._checkpoint = planning
            cleanup.callback(planning.close)
            planning.use_identity(provider.identity, config.samples)
            return await self._dry_run(planning, source, provider)
        path = config.checkpoint_path
        self._checkpoint = checkpoint = (
            Checkpoint.open(path) if path is not None else Checkpoint.in_memory()
        )
        cleanup.callback(checkpoint.close)
        if scan is None and key is not None and not reusable(checkpoint.scan_info(key), config):
            # The peek saw an older state of the file than the one now open: scan after all.
            scan = await self._scan(source, key, cleanup, reuse=False)
        if scan is not None:
            checkpoint.adopt_scan(scan, key, scan_state(config, source, scan))
        if config.restart:
            checkpoint.forget()
        checkpoint.use_identity(provider.identity, config.samples)
        self.plan = plan = plan_of(config, provider, checkpoint)
        planned = plan.unanswered  # (what is collected from batches is finished by this run)
        checkpoint.set_meta(input=config.input or config.input_label)
        run = checkpoint.begin_run(run_options(config))
        self._begun = True
        deadline_at = None if config.deadline_s is None else _PROCESS_START + config.deadline_s
        self.sending = sending = Sending(
            config,
            provider,
            checkpoint,
            run,
            self.stop,
            on_result=self._finished_row,
            gatekeeper=self.gatekeeper,
            session=self.session,
            deadline_at=deadline_at,
        )
        cleanup.callback(sending.save, checkpoint, run)
        runner = sending.runner
        total = checkpoint.rows(config.limit)
        if config.deadline_s is not None:
            remaining = config.deadline_s - (time.monotonic() - _PROCESS_START)
            loop = asyncio.get_running_loop()
            loop.call_later(max(0.0, remaining), sending.stop_early, "deadline")
        if sending.collecting is not None:
            # Collected before the start line, which says what the run will send: the rows the
            # batches answered are not. The bar counts them as this run's, finished.
            await sending.collect()
            self.plan = plan = checkpoint.plan(config.limit, retry_refused=config.retry_refused)
        # The log's start line: what this run is about to send and why (a cron mail opens so).
        left = (
            None
            if config.deadline_s is None
            else config.deadline_s - (time.monotonic() - _PROCESS_START)
        )
        invalid = checkpoint.invalid(config.limit)
        self.progress.announce(
            self._reporter.start_line(plan, total, invalid, sending.control.rate, left)
        )
        # Counted from the plan before any collection: what it collected is this run's.
        self.progress.start(total, total - planned, runner.counters, sending.control)
        todo = plan.to_send
        try:
            # Batches left open by a run killed as it collected them: closed, though no row is
            # left to send; so are other models' batches that ended (batchapi/others.py).
            batches = sending.flow is not None
            if todo or (batches and (checkpoint.open_files() or checkpoint.open_files(True))):
                # Closed here, not by the collector at exit (where it printed a traceback).
                prompts = cleanup.enter_context(
                    contextlib.closing(
                        sampled(source.prompts, checkpoint.todo_positions(), config.samples)
                    )
                )
                await sending.send(prompts)
        finally:
            self.progress.close()
        done = runner.counters.rows_done
        if self.stop.signum is not None:
            checkpoint.end_run(run, rows_sent=done, exit_code=128 + self.stop.signum)
            raise Interrupted("interrupted", self.stop.signum)
        if runner.fatal is not None:
            checkpoint.end_run(run, rows_sent=done, exit_code=2)
            raise UsageError(runner.fatal_message(kept=config.checkpoint_path is not None))
        self.output_rows = await self._in_thread(
            functools.partial(
                write_rows,
                config,
                source,
                checkpoint,
                TOKEN_COLUMNS,
                key,
                self.stop.interrupted,
            )
        )
        if self.stop.signum is not None:  # a signal during the write: the output is whole
            raise Interrupted("interrupted after the output was written", self.stop.signum)
        tally = checkpoint.tally(config.limit)
        # Stopped early only if it left rows unsent: a deadline that found the work done is a
        # finished run.
        reason = "batches" if sending.batches_out else self.stop.reason
        early = reason in EARLY_STOPS and tally.pending > 0
        stopped = reason if early else None
        exit_code = 4 if stopped else 0 if tally.answered == tally.rows else 3
        checkpoint.end_run(run, rows_sent=done, exit_code=exit_code)
        summary = self._summary(tally, exit_code, stopped=stopped, rate=sending.control.rate)
        self._reporter.report(summary)
        return summary

    async def _scan(
        self, source: Rows, key: str | None, cleanup: contextlib.ExitStack, *, reuse: bool
    ) -> Any:
        return await scan_rows(
            self.config,
            source,
            key,
            cleanup,
            reuse=reuse,
            in_memory=self.data is not None,
            in_thread=self._in_thread,
            stop=self.stop,
        )

    async def _dry_run(self, planning: Checkpoint, source: Rows, provider: Provider) -> Summary:
        config = self.config

        def plan() -> tuple[Any, ...]:
            counts = self.plan = plan_of(config, provider, planning)
            tally = planning.tally(config.limit)
            positions = functools.partial(positions_of, config, provider, planning)  # its `to send`
            prompts = sampled(source.prompts, positions(), config.samples)
            with contextlib.closing(prompts):
                firsts = [p for _, (_, p) in zip(range(3), prompts, strict=False)]
            todo = sampled(source.prompts, positions(), config.samples)
            with contextlib.closing(todo):
                costs = estimate_lines(config, (p for _, p in todo), planning, self._spent)
            return counts, tally, firsts, costs

        # In a thread, so that a signal is heard while a large input is planned.
        counts, tally, firsts, costs = await self._in_thread(plan)
        if self.stop.interrupted.is_set():
            raise Interrupted("interrupted while planning", 0)
        previews = [provider.preview(prompt) for prompt in firsts]
        # On stdout, to be piped or saved; the summary line stays on stderr with the logs.
        said = dry_run_report(config, tally, counts, previews, planning.learned_rate(), costs)
        if config.provider == "openai":
            from batchpizza.batchapi.display import dry_run_lines

            said = "\n".join([said, *dry_run_lines(config, planning, provider, self._kept_files)])
        print(said, flush=True)
        return self._summary(tally, 0)

    async def _in_thread(self, func: Callable[[], Any]) -> Any:
        """Blocking work in a thread; on cancellation it is told to stop and waited for."""
        future = asyncio.ensure_future(asyncio.to_thread(func))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            self.stop.interrupted.set()
            await asyncio.wait([future])
            raise

    def _summary(
        self,
        tally: Tally | None,
        exit_code: int,
        *,
        stopped: str | None = None,
        rate: float | None = None,
    ) -> Summary:
        counters = self.sending.runner.counters if self.sending else None
        summary = self._reporter.summary(tally, counters, exit_code, stopped=stopped, rate=rate)
        batched = (0, 0)  # tokens priced at the Batch API's price
        flow = self.sending.flow if self.sending is not None else None
        if flow is not None:
            summary = dataclasses.replace(summary, batches=flow.info())
            batched = flow.money.tokens
        if self.config.structured is not None and self._checkpoint is not None:
            with contextlib.suppress(Exception):  # as _tally: never fail the summary
                fit = self._checkpoint.fit_counts(self.config.limit)
                summary = dataclasses.replace(summary, structured=fit)
        tokens = token_fields(self.config, counters, self._checkpoint, batched)
        if tokens:
            summary = dataclasses.replace(summary, **tokens)
        if self.plan is None:
            return summary
        return dataclasses.replace(summary, plan=self.plan.to_dict())
