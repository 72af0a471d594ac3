"""The send stage: one session, a fixed pool of workers, pacing, retries, group commits.

`concurrency` workers each pull the next row from the reader only when they are free, so rows are
read as slots open (backpressure) and no task is created per row. A worker holds its row, and so
its slot, until the row's result is committed: at any moment at most `concurrency` rows are sent
but not yet saved, which bounds what a kill -9 can make us send twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import aiohttp

from batchpizza.checkpoint import Checkpoint, Result
from batchpizza.config import DEFAULT_MODEL, RunConfig
from batchpizza.errors import MisuseDetected, ProviderError, describe
from batchpizza.providers.http import env_proxy
from batchpizza.providers.pizzagpt import api_url, ask, headers_for
from batchpizza.ratelimit import Clock, Gate, Sleep
from batchpizza.retrying import RetryPolicy
from batchpizza.rows import prompt_digest

log = logging.getLogger("batchpizza")

PendingRow = tuple[int, str, str]  # (position, id, formatted prompt)


class _Stopped(Exception):
    """A worker about to send (a row or a retry) when the run was told to stop: the row is left
    uncommitted, to be sent again by the next run."""


@dataclass
class Counters:
    """What this run did so far; read by the progress bar and the summary."""

    requests: int = 0
    retries: int = 0
    answered: int = 0
    failed: int = 0
    misuse: int = 0


class Committer:
    """Collects finished results and commits them in groups: the commit on the loop (a write to
    the log, no fsync), the once-a-second sync in a thread."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self._checkpoint = checkpoint
        self._waiting: list[tuple[Result, asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self._closed = False
        self._syncing: asyncio.Future[None] | None = None
        self._task = asyncio.create_task(self._loop(), name="batchpizza-committer")

    async def save(self, result: Result) -> None:
        """Returns once `result` is committed: safe from a crash of this process (and from power
        loss after the next sync, within a second)."""
        if self._task.done():
            self._task.result()  # a failed commit surfaces in every worker, not only one
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((result, future))
        self._wakeup.set()
        # No shield needed: if this worker is cancelled, the result stays queued and is still
        # committed (the committer skips futures that are already done).
        await future

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._waiting = self._waiting, []
            if batch:
                try:
                    # On the loop itself: without an fsync a group commit is a write() of a few
                    # pages, cheaper than the hop to a thread (measured).
                    self._checkpoint.write([r for r, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    raise
                for _, future in batch:  # committed: their workers may take the next rows
                    if not future.done():
                        future.set_result(None)
                if self._checkpoint.sync_due():
                    # The periodic fsync in a thread, shielded so that it finishes even if we are
                    # being cancelled; no new group is written meanwhile.
                    self._syncing = asyncio.ensure_future(asyncio.to_thread(self._checkpoint.sync))
                    await asyncio.shield(self._syncing)
            if self._closed and not self._waiting:
                return

    async def close(self) -> None:
        """Commit whatever is still waiting, then stop."""
        self._closed = True
        self._wakeup.set()
        try:
            await self._task
        finally:
            if self._syncing is not None:  # the connection must not close under a sync thread
                await asyncio.wait([self._syncing])


class Runner:
    def __init__(
        self,
        config: RunConfig,
        checkpoint: Checkpoint,
        *,
        on_result: Callable[[Result], None] | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.config = config
        self.checkpoint = checkpoint
        self.counters = Counters()
        self.on_result = on_result
        self._clock = clock
        self._sleep = sleep
        self._stopping = False
        self._policy = RetryPolicy.from_config(config)
        self._headers = headers_for(config.base_url)
        self._proxy: str | None = None

    def stop(self) -> None:
        """Take no new rows; rows in flight go on."""
        self._stopping = True

    async def run(self, rows: Iterator[PendingRow]) -> None:
        """Send every row. After stop(), returns once the rows in flight are done; if cancelled,
        abandons them. Either way every finished result is committed before it returns."""
        config = self.config
        self.gate = Gate(config.rate_per_s, clock=self._clock, sleep=self._sleep)
        connector = aiohttp.TCPConnector(
            limit=config.concurrency, limit_per_host=config.concurrency
        )
        self._proxy = config.proxy or env_proxy(api_url(config.base_url))
        # trust_env stays off: the proxy is resolved above, once, instead of for every request.
        async with aiohttp.ClientSession(connector=connector) as session:
            committer = Committer(self.checkpoint)
            workers = [
                asyncio.create_task(self._work(session, rows, committer), name=f"worker-{i}")
                for i in range(config.concurrency)
            ]
            try:
                await asyncio.gather(*workers)
            finally:
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                await committer.close()

    async def _work(
        self, session: aiohttp.ClientSession, rows: Iterator[PendingRow], committer: Committer
    ) -> None:
        while not self._stopping:
            row = next(rows, None)
            if row is None:
                return
            try:
                result = await self._send(session, row)
            except _Stopped:
                return
            await committer.save(result)
            self._count(result)

    async def _send(self, session: aiohttp.ClientSession, row: PendingRow) -> Result:
        _pos, row_id, prompt = row
        config, counters = self.config, self.counters
        attempts = 0
        latency = None

        def on_retry(exc: BaseException, delay: float) -> None:
            counters.retries += 1
            retry_after = getattr(exc, "retry_after", None)
            if retry_after is not None:
                self.gate.pause.hold(min(retry_after, config.retry_after_cap))
            log.info(
                "retry %s after attempt %d: %s; next in %.1fs",
                row_id,
                attempts,
                describe(exc),
                delay,
            )

        async def attempt() -> str:
            nonlocal attempts, latency
            await self.gate.enter()
            if self._stopping:
                raise _Stopped  # after a signal nothing more is sent; the row stays to do
            attempts += 1
            counters.requests += 1
            started = self._clock()
            try:
                return await ask(
                    session,
                    prompt,
                    base_url=config.base_url,
                    timeout=config.timeout,
                    proxy=self._proxy,
                    headers=self._headers,
                )
            finally:
                latency = (self._clock() - started) * 1000.0

        digest = prompt_digest(prompt)
        try:
            text = await self._policy.call(attempt, on_retry, sleep=self._sleep)
        except MisuseDetected as exc:
            return Result(
                row_id, digest, "misuse", None, exc.text, attempts, latency, DEFAULT_MODEL
            )
        except ProviderError as exc:
            plural = "attempt" if attempts == 1 else "attempts"
            error = f"{describe(exc)} after {attempts} {plural}"
            return Result(row_id, digest, "error", None, error, attempts, latency, DEFAULT_MODEL)
        return Result(row_id, digest, "stop", text, None, attempts, latency, DEFAULT_MODEL)

    def _count(self, result: Result) -> None:
        counters = self.counters
        if result.finish_reason == "stop":
            counters.answered += 1
        elif result.finish_reason == "misuse":
            counters.misuse += 1
        else:
            counters.failed += 1
        if self.on_result is not None:
            self.on_result(result)
