"""What each actor of a cluster run does: batchpizza's own Job over one Arrow batch at a time,
its attempts paced by slots leased from the cluster's controller, its answers written to the
shared checkpoint before its workers send again.

`ClusterGate` is the runner's Gatekeeper (`token = await enter()`, then `finished(...)`): it
keeps a small queue of leased slots, refilled by one lease call at a time, and sends what the
attempts did back to the controller in batches (at once after a failure, else every
REPORT_EVERY_S). `Answerer` turns a batch into a Job, on the actor's one event loop and one
session, kept from batch to batch: the rows already answered (by an earlier run, or by an earlier
attempt at this batch on an actor that died) are taken from the checkpoint, the rest spooled to a
private folder and run, and the batch comes back with the result columns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import tempfile
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from batchpizza.config import RunConfig
from batchpizza.distributed.budget import SLOT_TOLERANCE, Lease, News, Report
from batchpizza.distributed.parts import DIGEST, ID, PartStore, key_of
from batchpizza.errors import ProviderError
from batchpizza.job import Job
from batchpizza.ratelimit import Sleep
from batchpizza.records import RateInfo, Result, is_answered
from batchpizza.rows import Fields, RowProblem, interpret, prompt_digest
from batchpizza.runner import Gatekeeper, Stopped, new_session
from batchpizza.sinks.values import result_columns, result_fields
from batchpizza.tables import from_data

if TYPE_CHECKING:
    import aiohttp
    import pyarrow as pa

log = logging.getLogger("batchpizza")

REPORT_EVERY_S = 0.25  # clean outcomes wait this long to travel together; a failure goes at once
# A slot leased longer ago than this is checked with the controller just before it is used: the
# breaker may have tripped or the run stopped while it waited (a Retry-After, a slow rate).
REVALIDATE_AFTER_S = 1.0
REVALIDATE_LEAD_S = 0.05  # ... that long before its time, so the answer does not make it late


class Controller(Protocol):
    """The cluster's budget as an actor sees it (batchpizza.ray wraps the Ray actor handle)."""

    async def lease(self, want: int, reports: Sequence[Report]) -> Lease: ...

    async def record(self, reports: Sequence[Report]) -> Lease: ...

    async def admits(self, epoch: int, probe: bool) -> bool: ...

    async def news(self, known: int) -> News: ...


class ClusterGate(Gatekeeper):
    def __init__(
        self,
        controller: Controller,
        *,
        share: int,
        before_send: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._controller = controller
        self._share = share
        self._before_send = before_send
        self._clock = clock
        self._sleep = sleep
        # (slot, epoch, probe, when it was received, when the controller issued it)
        self._queue: deque[tuple[float, int, bool, float, float]] = deque()
        self._leasing: asyncio.Future[None] | None = None
        self._reports: list[Report] = []
        self._urgent: asyncio.Event | None = None
        self._reporter: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._epoch = 0
        self._news = 0  # the version of the controller's news heard last
        self._hold_until = -math.inf  # from the news: what voids leased slots
        self._cut_at = -math.inf
        self.stopped: str | None = None  # why the cluster stopped sending, once it did
        self.forfeited = 0  # slots this actor woke too late for
        self.voided = 0  # slots the news voided (a Retry-After, a cut, a trip)
        self.rate = 0.0

    async def enter(self) -> object:
        if self._before_send is not None:
            await self._before_send()  # this worker's last answer is durable before it sends
        self._start_tasks()
        while True:
            if self.stopped is not None:
                raise Stopped
            if not self._queue:
                await self._refill()
                continue
            slot, epoch, probe, got, issued = self._queue.popleft()
            if self._void(slot, epoch, issued):
                continue
            if slot - got > REVALIDATE_AFTER_S:
                await self._sleep_until(slot - REVALIDATE_LEAD_S)
                if not await self._controller.admits(epoch, probe):
                    continue
            await self._sleep_until(slot)
            if self.stopped is not None:
                raise Stopped
            if self._void(slot, epoch, issued):
                self.voided += 1  # the news came while this worker slept for its slot
                continue
            if not probe and self._clock() - slot > SLOT_TOLERANCE:
                # Woken too late: sent now it could crowd a window with another actor's slot.
                # (A probe is alone on the wire, and a lost probe would hold the breaker.)
                self.forfeited += 1
                continue
            return (epoch, probe, issued)

    def finished(
        self,
        token: object,
        started: float,
        outcome: str,
        error: ProviderError | None,
        rate: RateInfo | None = None,
    ) -> None:
        wall = self._clock() - (time.monotonic() - started)  # the runner's clock is monotonic
        epoch, probe, issued = token if isinstance(token, tuple) else (self._epoch, False, wall)
        self._reports.append(
            Report.of(wall, error, issued=issued, epoch=int(epoch), probe=bool(probe))
        )
        if error is not None:
            if error.retry_after is not None:
                self._queue.clear()  # this actor holds at once; the others at their next lease
            if self._urgent is not None:
                self._urgent.set()

    async def close(self) -> None:
        """Stop the reporter and the listener, and send what the reporter still holds."""
        for task in (self._reporter, self._listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._reports:
            reports, self._reports = self._reports, []
            with contextlib.suppress(Exception):  # a lost controller must not fail the batch
                self._hear(await self._controller.record(reports))

    async def _sleep_until(self, when: float) -> None:
        delay = when - self._clock()
        if delay > 0:
            await self._sleep(delay)

    async def _refill(self) -> None:
        # One lease call at a time; the other waiting workers share it. Shielded: one worker
        # cancelled must not cancel the lease the others wait for.
        if self._leasing is None or self._leasing.done():
            self._leasing = asyncio.ensure_future(self._fetch())
        await asyncio.shield(self._leasing)

    async def _fetch(self) -> None:
        reports, self._reports = self._reports, []
        try:
            lease = await self._controller.lease(self._share, reports)
        except Exception as exc:  # the controller is gone: nothing may be sent any more
            log.error("the rate controller is unreachable (%s); sending stops", exc)
            self.stopped = "controller lost"
            return
        self._hear(lease)
        got = self._clock()
        self._queue.extend(
            (slot, lease.epoch, lease.probe, got, lease.issued) for slot in lease.slots
        )

    def _hear(self, lease: Lease) -> None:
        self.rate = lease.rate
        if lease.stop is not None:
            self.stopped = lease.stop
            self._queue.clear()
        if lease.epoch > self._epoch:
            self._epoch = lease.epoch

    def _void(self, slot: float, epoch: int, issued: float) -> bool:
        """Whether the news voided this slot since it was leased."""
        return epoch < self._epoch or slot < self._hold_until or issued < self._cut_at

    def _start_tasks(self) -> None:
        if self._reporter is None:
            self._urgent = asyncio.Event()
            self._reporter = asyncio.create_task(self._report_loop(self._urgent))
            self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        """One `news` call always waiting at the controller, so what voids leased slots reaches
        this actor in a message's time, not at its next lease."""
        while self.stopped is None:
            try:
                news = await self._controller.news(self._news)
            except Exception as exc:
                log.error("the rate controller is unreachable (%s); sending stops", exc)
                self.stopped = "controller lost"
                return
            self._hear_news(news)

    def _hear_news(self, news: News) -> None:
        self._news = max(self._news, news.version)
        self._hold_until = max(self._hold_until, news.hold_until)
        self._cut_at = max(self._cut_at, news.cut_at)
        self._epoch = max(self._epoch, news.epoch)
        if news.stop is not None:
            self.stopped = news.stop
            self._queue.clear()
            return
        kept = [entry for entry in self._queue if not self._void(entry[0], entry[1], entry[4])]
        self.voided += len(self._queue) - len(kept)
        self._queue = deque(kept)

    async def _report_loop(self, urgent: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(urgent.wait(), REPORT_EVERY_S)
            urgent.clear()
            if self._reports:
                reports, self._reports = self._reports, []
                try:
                    self._hear(await self._controller.record(reports))
                except Exception as exc:
                    log.error("the rate controller is unreachable (%s); sending stops", exc)
                    self.stopped = "controller lost"


class PartWriter:
    """Answered results of one batch, written to the checkpoint as parts: `add` is the Job's
    on_row, `flush` the gate's before_send, so a worker's answer is durable before it sends
    again and a crash re-sends at most what was in flight."""

    def __init__(self, store: PartStore, key: str, schema: pa.Schema) -> None:
        self._store = store
        self._key = key
        self._schema = schema
        self._buffer: list[Result] = []
        self._lock = asyncio.Lock()

    def add(self, pos: int, result: Result) -> None:
        if is_answered(result.finish_reason):
            self._buffer.append(result)

    async def flush(self) -> None:
        async with self._lock:
            if self._buffer:
                rows, self._buffer = self._buffer, []
                table = results_table(rows, self._schema)
                await asyncio.to_thread(self._store.write_part, self._key, table)


def part_schema(extra: tuple[str, ...] = ()) -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [pa.field(ID, pa.string()), pa.field(DIGEST, pa.binary()), *result_fields(extra)]
    )


def results_table(results: Sequence[Result], schema: pa.Schema) -> pa.Table:
    import pyarrow as pa

    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    for r in results:
        row = {
            ID: r.id,
            DIGEST: r.digest,
            "answer": r.answer,
            "finish_reason": r.finish_reason,
            "misuse": r.finish_reason == "misuse",
            "error": r.error,
            "attempts": r.attempts,
            "latency_ms": r.latency_ms,
            "model": r.model,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
        }
        for name, values in columns.items():
            values.append(row[name])
    return pa.table(columns, schema=schema)


class Answerer:
    """The callable Ray Data constructs in each actor: batch in, batch with results out."""

    def __init__(
        self,
        controller: Controller,
        *,
        options: dict[str, Any],
        share: int,
        checkpoint: str | None = None,
        done: pa.Table | None = None,
    ) -> None:
        self._controller = controller
        # Checked on the driver; per actor: its share of the concurrency, no pacing of its own
        # (the controller's slots are the pacing), and bad rows as rows, never a failed task.
        self._options = {
            **options,
            "concurrency": share,
            "rate": 0,
            "skip_bad_rows": True,
            "quiet": True,
            "progress": False,
            "input_label": "<ray batch>",
        }
        probe = RunConfig.from_options("in.parquet", "out.parquet", **self._options)
        self._id_field = probe.fields_named[2]
        self._extra = ("prompt_tokens", "completion_tokens") if probe.provider == "openai" else ()
        self._fields = Fields.from_config(probe, self._extra)
        self._share = share
        self._store = PartStore(checkpoint) if checkpoint else None
        self._schema = part_schema(self._extra)
        # (id, prompt digest) -> the answered row; digest None for parts from before digests
        self._done: dict[tuple[str, bytes | None], dict[str, Any]] = {}
        if done is not None:
            self._remember(done)
        self._loop: asyncio.AbstractEventLoop | None = None  # a thread's, for the actor's life
        self._session: aiohttp.ClientSession | None = None

    def __call__(self, batch: pa.Table) -> pa.Table:
        # Ray Data calls this once per batch; the actor's loop and session outlive the call, so
        # connections are kept open from one batch to the next.
        future = asyncio.run_coroutine_threadsafe(self.answer_batch(batch), self._actor_loop())
        return future.result()

    async def close(self) -> None:
        """Close the actor's session (a Ray actor's process ending closes it anyway)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _actor_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="batchpizza-actor", daemon=True).start()
            self._loop = loop
        return self._loop

    def _actor_session(self) -> aiohttp.ClientSession:
        """The actor's one session, for every batch it answers: at most its share of the
        cluster's concurrency in connections."""
        if self._session is None or self._session.closed:
            self._session = new_session(self._share)
        return self._session

    async def answer_batch(self, batch: pa.Table) -> pa.Table:
        ids = self._ids(batch)
        digests = self._digests(batch)
        key = key_of(ids)
        if self._store is not None:
            earlier = await asyncio.to_thread(self._store.read_batch, key, self._schema)
            self._remember(earlier)
        done = [self._answered(row_id, d) for row_id, d in zip(ids, digests, strict=True)]
        todo = [i for i, row in enumerate(done) if row is None]
        fresh: dict[int, dict[str, Any]] = {}
        if todo:
            results = await self._run(batch.take(todo), key)
            fresh = dict(zip(todo, results.to_pylist(), strict=True))
        names = list(result_columns(self._extra))
        rows = [fresh.get(i) or done[i] or {} for i in range(len(ids))]
        import pyarrow as pa

        table = pa.Table.from_pylist(
            [{name: row.get(name) for name in names} for row in rows],
            schema=pa.schema(result_fields(self._extra)),
        )
        if self._store is not None:
            answered = [
                {ID: row_id, DIGEST: digest, **row}
                for row_id, digest, row in zip(ids, digests, rows, strict=True)
                if is_answered(row["finish_reason"])
            ]
            sealed = pa.Table.from_pylist(
                [{n: r.get(n) for n in self._schema.names} for r in answered], schema=self._schema
            )
            await asyncio.to_thread(self._store.seal, key, sealed)
        result: pa.Table = from_data(batch).restore(table)
        return result

    async def _run(self, todo: pa.Table, key: str) -> pa.Table:
        import pyarrow.parquet as pq

        writer = PartWriter(self._store, key, self._schema) if self._store is not None else None
        with tempfile.TemporaryDirectory(prefix="batchpizza-ray-") as folder:
            source, output = Path(folder) / "input.parquet", Path(folder) / "output.parquet"
            pq.write_table(todo, source)
            config = RunConfig.from_options(str(source), str(output), **self._options)
            gate = ClusterGate(
                self._controller,
                share=self._share,
                before_send=writer.flush if writer is not None else None,
            )
            job = Job(
                config,
                gatekeeper=gate,
                on_row=writer.add if writer is not None else None,
                session=self._actor_session(),
            )
            try:
                await job.run()
            finally:
                await gate.close()
                if writer is not None:
                    await writer.flush()
            return pq.read_table(output, columns=list(result_columns(self._extra)))

    def _ids(self, batch: pa.Table) -> list[str]:
        if self._id_field not in batch.column_names:
            return [str(i) for i in range(batch.num_rows)]
        return [str(v) for v in batch.column(self._id_field).to_pylist()]

    def _digests(self, batch: pa.Table) -> list[bytes | None]:
        """Each row's prompt digest, as the scan computes it; None for a row that is not valid
        (the Job then reports it)."""
        out: list[bytes | None] = []
        for pos, obj in enumerate(batch.to_pylist()):
            try:
                out.append(prompt_digest(interpret(obj, self._fields, pos)[1]))
            except RowProblem:
                out.append(None)
        return out

    def _answered(self, row_id: str, digest: bytes | None) -> dict[str, Any] | None:
        """The answer kept for this id and prompt (or for this id, from a part without digests)."""
        if digest is None:
            return None
        return self._done.get((row_id, digest)) or self._done.get((row_id, None))

    def _remember(self, answered: pa.Table) -> None:
        for row in answered.to_pylist():
            self._done.setdefault((row.pop(ID), row.pop(DIGEST, None)), row)
