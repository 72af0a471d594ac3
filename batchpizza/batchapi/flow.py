"""One run through the Batch API: launch what an earlier run left unlaunched, put the new rows in
files, upload them and create their batches, then poll, download and commit, resubmitting what
failed or expired; with --via auto, rows still out near the deadline go online.

Never the same rows twice: a file's lines are recorded before it is uploaded, its id once the
upload returned, the batch's id once it is created (checkpoint/batches.py). After a kill, a file
recorded without an id is looked for on the server by its name, and a batch by its file, before
anything is uploaded or created again; and a batch whose creation failed without a reply is
looked for before it is created again. Rows in a batch, or waiting to be resubmitted, are never
put in a new file. Each answer is committed through the checkpoint as an online answer is (the
same parsing of the same reply body, the same result row), with its line marked "answered";
spent at the batch price, --max-cost reserved per line before it is submitted (budget.py)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any

import aiohttp

from batchpizza.batchapi import creating
from batchpizza.batchapi.auto import rows_going_online
from batchpizza.batchapi.budget import BatchBudget
from batchpizza.batchapi.client import BatchClient, Halted
from batchpizza.batchapi.display import files_left
from batchpizza.batchapi.download import results_of, said_collected
from batchpizza.batchapi.dropping import dropped, still_asked
from batchpizza.batchapi.files import Line, build_lines, split
from batchpizza.batchapi.lost import Lost
from batchpizza.batchapi.others import Others
from batchpizza.batchapi.quota import held_back, over_enqueued_limit, waits_for_room
from batchpizza.batchapi.results import Judge
from batchpizza.batchapi.settings import Limits, near_deadline
from batchpizza.batchapi.statuses import Statuses
from batchpizza.checkpoint import Checkpoint
from batchpizza.checkpoint.batches import BatchFile, BatchLine
from batchpizza.config import RunConfig
from batchpizza.controls.metering import Meter
from batchpizza.controls.stop import Stop
from batchpizza.engine.runner import Counters, PendingRow
from batchpizza.engine.session import new_session
from batchpizza.errors import BatchAPIError, ProviderError
from batchpizza.providers.openai import OpenAIAPI
from batchpizza.records import Attempt, Outcome, Prompt, Result

log = logging.getLogger("batchpizza")


class BatchFlow:
    def __init__(
        self,
        config: RunConfig,
        provider: OpenAIAPI,
        checkpoint: Checkpoint,
        run: int,
        stop: Stop,
        counters: Counters,
        *,
        key: Callable[[Prompt], bytes],
        on_result: Callable[[int, Result], None] | None = None,
        session: aiohttp.ClientSession | None = None,
        deadline_at: float | None = None,
        online: Callable[[Iterator[PendingRow]], Awaitable[None]] | None = None,
        meter: Meter | None = None,
    ) -> None:
        self.config = config
        self.provider = provider
        self.checkpoint = checkpoint
        self.run_id = run
        self.stop = stop
        self.counters = counters
        self.key = key
        self.on_result = on_result
        self._session = session
        self.deadline_at = deadline_at  # time.monotonic() of --deadline
        self.online = online  # --via auto: sends rows online (the Runner)
        self.limits = Limits.from_env()
        self.judge = Judge(provider, config.max_retries)
        self.money = BatchBudget(meter, counters)  # tokens, and --max-cost at the batch price
        self.others = Others(provider, checkpoint, run, stop, config.max_retries, self.money)
        self.client: BatchClient | None = None
        self.fatal: BatchAPIError | None = None
        self.lost = Lost()  # batches the server answered 404 for (lost.py)
        self.missing = Lost()  # and their output or error files, likewise
        self.statuses = Statuses()  # (statuses.py)
        self.out = self.waiting = 0  # batches out, files waiting to be submitted, at the end
        self.sent_online = 0  # --via auto: rows sent (and finished) online instead
        self.lines_sent = 0  # lines submitted by this run (resubmissions too)
        self.resubmitted = 0
        self.collected = 0  # answers and failed rows committed from batches by this run
        # --via auto: the rows of this run's batches, to send online if they are cancelled.
        self._held: dict[bytes, PendingRow] = {}
        self._started = time.monotonic()
        # An online run's collection at its start (collecting.py): the rows its batches failed
        # are sent online by this run, and counted (progress, stream()) when they finish there.
        self.failed_go_online = False

    @contextlib.asynccontextmanager
    async def opened(self) -> AsyncIterator[BatchClient]:
        """The run's client of the Batch API, over the caller's session or one of its own."""
        async with contextlib.AsyncExitStack() as owned:
            session = self._session
            if session is None:
                session = await owned.enter_async_context(new_session(4))
            self.client = BatchClient.of(session, self.provider, self.stop, self.config)
            yield self.client

    async def run(self, rows: Iterator[PendingRow]) -> None:
        async with self.opened() as client:
            try:
                await self.others.collect(client)  # before their batches are held
                self.money.reserve_every_out(self.checkpoint)
                await self._launch_left(client)
                await self._submit(rows)
                await self._follow()
            except Halted:
                pass
            finally:  # every way out: an upload that failed for good leaves its file waiting
                self.out, self.waiting = files_left(self.checkpoint)
        if self.fatal is not None:
            raise self.fatal

    # -- submitting ---------------------------------------------------------------------------

    async def _launch_left(self, client: BatchClient) -> None:
        """Files an earlier run recorded but did not see through, launched (or found) now;
        dropped where their requests are no longer the plan's (dropping.py)."""
        checkpoint = self.checkpoint
        for f in self.others.here():
            if self.stop.sending_stopped:
                return
            if f.batch_id is not None or creating.answered_since(checkpoint, self.money, f):
                continue
            if not await dropped(client, checkpoint, self.money, f):  # (the input changed)
                content = b"".join(line.line or b"" for line in checkpoint.file_lines(f.seq))
                await self._launch(f, content, fresh=False)

    async def _submit(self, rows: Iterator[PendingRow]) -> None:
        skip = self.checkpoint.out_keys()
        if self.online is not None:
            rows = self._holding(rows)
        rows = self.money.fitting(rows, skip, self.key)
        lines = build_lines(rows, self.provider.body, self.key, skip, self.checkpoint.next_tries())
        for chunk in split(lines, self.limits):
            if self.stop.sending_stopped:
                return
            await self._send_file(chunk)

    def _holding(self, rows: Iterator[PendingRow]) -> Iterator[PendingRow]:
        for row in rows:
            self._held[self.key(row[1])] = row
            yield row

    async def _send_file(
        self, chunk: list[Line], resubmitted: list[tuple[int, str]] | None = None
    ) -> None:
        f = self.checkpoint.intend_file(chunk, resubmitted or ())
        await self._launch(f, b"".join(line[5] for line in chunk), fresh=True)
        # Counted once submitted: lines whose upload or create never succeeded went nowhere.
        self.lines_sent += len(chunk)
        self.counters.requests += len(chunk)
        if resubmitted:
            self.counters.retries += len(chunk)
            self.resubmitted += len(chunk)

    async def _launch(self, f: BatchFile, content: bytes, *, fresh: bool) -> None:
        """Upload file `f` and create its batch, each recorded as soon as it returns; looked for
        first unless `f` was recorded in this run (it cannot be on the server yet)."""
        client = self.client
        assert client is not None
        file_id = f.file_id
        if file_id is None:
            file_id = await creating.find_or_make(
                client,
                self.config.max_retries + 1,
                lambda: client.find_file(f.name),
                lambda: client.upload(f.name, content),
                not fresh,
            )
            self.checkpoint.set_file_id(f.seq, file_id)  # (a recorded one: its state stands)
        batch = await creating.find_or_make(
            client,
            self.config.max_retries + 1,
            lambda: creating.find(client, self.checkpoint, f, file_id),
            lambda: creating.create(client, self.checkpoint, f, file_id),
            not fresh or f.file_id is not None,
        )
        self.checkpoint.set_batch(f.seq, batch)
        log.info("batch %s: %d requests (%s)", batch.get("id"), f.lines, f.name)

    # -- following ----------------------------------------------------------------------------

    async def _follow(self) -> None:
        """Poll every open batch, collect those that ended, resubmit what failed or expired;
        again after a pause while --wait (or --via auto) keeps the run waiting."""
        delay = self.limits.poll_first
        # A --mock run's server and its batches, or a checkpoint in memory, end with the run:
        # nothing to come back to.
        keep_waiting = (
            self.config.wait
            or self.config.mock
            or self.checkpoint.path is None
            or self.online is not None
        )
        client = self.client
        assert client is not None
        first = True
        while not self.stop.sending_stopped:
            if not first:  # (the run's start collected them once already)
                await self.others.collect(client)  # those that ended while it waited
            first = False
            await self._poll_all(client)
            submitted = self.lines_sent
            await self._resubmit()
            await self._more()
            if self.lines_sent != submitted:
                # A batch just made is polled soon (a small tail can end in seconds), not after
                # the backoff the ones before it grew to.
                delay = self.limits.poll_first
            if self.fatal is not None or not keep_waiting or not self.others.here():
                return
            if self.online is not None and near_deadline(self.deadline_at, self._started, delay):
                await self._go_online()
                return
            await self.stop.sleep(delay)
            delay = min(self.limits.poll_cap, delay * 1.5)

    async def _poll_all(self, client: BatchClient) -> None:
        for f in self.others.here():
            if self.stop.sending_stopped:
                return
            if f.batch_id is None:
                continue  # its launch failed in this run; the next run looks for it
            try:
                batch = await client.get(f.batch_id)
            except BatchAPIError as exc:
                if exc.status == 404 and self.lost.gone(f):
                    # The server does not know it (deleted, another project's key): its lines
                    # are resubmitted, as an expired batch's.
                    log.warning("%s; its requests are submitted again", exc.message)
                    await self.collect_file(f, {"id": f.batch_id, "status": "lost"})
                    continue
                if exc.exit_code == 2 and exc.status != 404:  # a 404 not yet lost for good
                    raise
                self.statuses.poll_failed(f, exc, "polled again later")
                continue
            self.lost.known(f)
            self.checkpoint.set_batch(f.seq, batch)
            if self.statuses.ended(f, batch):
                await self.collect_file(f, batch)

    async def collect_file(self, f: BatchFile, batch: dict[str, Any]) -> list[str] | None:
        """The results of a batch that ended, committed; its lines marked. Their outcomes
        (answered, error, failed, expired); None when its results cannot be read now."""
        client = self.client
        assert client is not None
        status = why = str(batch.get("status"))
        lines = {line.custom_id: line for line in self.checkpoint.file_lines(f.seq)}
        if status == "failed":
            if not over_enqueued_limit(batch):
                self._failed_whole(f, batch, lines)
                return ["error"] * len(lines)
            why = held_back(batch, len(lines))
        seen = await results_of(client, batch, lines, lambda: self.missing.file_gone(f, batch))
        if seen is None:
            return None
        results: list[tuple[int, Result]] = []
        attempts: list[Attempt] = []
        fatal: ProviderError | None = None
        outcomes: list[tuple[str, str]] = []
        started, took = f.created, (time.time() - f.created) * 1000.0
        for cid, line in lines.items():
            found = seen.get(cid)
            verdict = (
                self.judge.unanswered(line, why) if found is None else self.judge.judge(line, found)
            )
            outcome, result, attempt = verdict.outcome, verdict.result, verdict.attempt
            fatal = fatal or verdict.fatal
            outcomes.append((cid, outcome))
            if attempt is not None:
                attempts.append(attempt._replace(started=started, duration_ms=took))
            if result is not None:
                results.append((line.pos, result))
        done = (f.seq, outcomes, status)  # in the results' commit: a kill keeps both or neither
        self.checkpoint.write([r for _, r in results], attempts, self.run_id, True, done)
        self.money.settle([(lines[c].digest, o) for c, o in outcomes], (r for _, r in results))
        said_collected(batch, status, [o for _, o in outcomes])
        self._count_all(r for _, r in results)
        if fatal is not None and self.fatal is None:
            # As online: an unknown model, a wrong URL fails every request alike.
            self.fatal = BatchAPIError(
                f"batch {batch.get('id')}: {fatal.message}; its rows are recorded as failed: fix "
                "the cause and rerun to send them again.",
                wrong=True,
            )
        return [o for _, o in outcomes]

    def _failed_whole(
        self, f: BatchFile, batch: dict[str, Any], lines: dict[str, BatchLine]
    ) -> None:
        """A batch the server refused as a whole (a bad file): its rows without an answer failed,
        the run exits with the server's errors."""
        checkpoint = self.checkpoint
        checkpoint.set_batch(f.seq, batch)
        errors = next((b.errors for b in checkpoint.batch_files() if b.seq == f.seq), None)
        had = checkpoint.answered_lines(f.seq)
        results, self.fatal = self.judge.refused(f, batch, lines, errors, had)
        done = (f.seq, [(cid, "error") for cid in lines], "failed")
        checkpoint.write([r for _, r in results], (), self.run_id, True, done)
        self.money.settle([(line.digest, "error") for line in lines.values()], ())
        self._count_all(r for _, r in results)

    async def _resubmit(self) -> None:
        """Lines that failed or expired, in new files: never a line already answered."""
        if self.fatal is not None:
            return
        waiting = [line for line in self.checkpoint.to_resubmit() if line.line is not None]
        if self.others.here():  # the enqueued-token limit's lines wait for room
            held = {f.seq for f in self.checkpoint.batch_files() if waits_for_room(f)}
            waiting = [line for line in waiting if line.seq not in held]
        waiting = still_asked(self.checkpoint, self.money, waiting)  # (the input changed)
        waiting = self.money.resubmittable(waiting)  # --max-cost: those that fit
        if not waiting:
            return
        by_cid = {(line.custom_id, line.pos): line for line in waiting}
        lines: list[Line] = [
            (b.custom_id, b.id, b.pos, b.digest, b.tries + 1, b.line or b"") for b in waiting
        ]
        for chunk in split(lines, self.limits):
            if self.stop.sending_stopped:
                return
            marked = [(by_cid[(c[0], c[2])].seq, c[0]) for c in chunk]
            await self._send_file(chunk, marked)

    async def _more(self) -> None:
        """--max-cost: the rows withheld offered again; the cap reached when something does not
        fit while no batch is out."""
        rows = self.money.take_withheld()
        if rows is not None and self.fatal is None:
            await self._submit(rows)
        if self.money.short and self.fatal is None and not self.others.here():
            self.money.reached(self.stop)
        self.money.short = False

    # -- --via auto ---------------------------------------------------------------------------

    async def _go_online(self) -> None:
        """Cancel the batches still out and send their rows online (full price)."""
        client = self.client
        assert client is not None and self.online is not None
        out = self.others.here()
        rows = await rows_going_online(client, self.checkpoint, out, self.money, self._held)
        if not rows:
            return
        log.warning("--via auto: %d rows still out near the deadline are sent online", len(rows))
        done = self.counters.rows_done
        await self.online(iter(rows))
        self.sent_online = self.counters.rows_done - done  # a stop may leave some unsent

    def info(self) -> dict[str, int]:
        """The summary's `batches`."""
        return {
            "submitted": self.lines_sent,
            "resubmitted": self.resubmitted,
            "collected": self.collected,
            "out": self.out,
            "waiting": self.waiting,
            "online": self.sent_online,
            "others": self.others.collected,
        }

    def _count_all(self, results: Iterable[Result]) -> None:
        """Collected `results`, each told at the slot this run's plan has for its request, not
        at its line's position: the input may have changed since the file was made, and a
        slot told answered leaves the kept to-do set (another row's, it was never sent)."""
        results = list(results)
        slots = self.checkpoint.slots_of(r.digest for r in results)
        for result in results:
            self._count(slots.get(result.digest), result)

    def _count(self, pos: int | None, result: Result) -> None:
        self.collected += 1
        if result.finish_reason == Outcome.ERROR.value:
            if self.failed_go_online:
                return  # not finished: sent online next
            self.counters.failed += 1
        else:
            self.counters.answered += 1
        if self.on_result is not None and pos is not None:
            self.on_result(pos, result)
