"""The sending stage of a job: this run's controls (pacing, the learned rate, the breaker) and the
engine's runner over the rows the plan left to send, stopped early at the deadline or when the
breaker runs out of patience, its requests in flight given the grace period."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

import aiohttp

from batchpizza.batchapi.display import requests_out
from batchpizza.checkpoint import Checkpoint
from batchpizza.config import RunConfig
from batchpizza.controls.control import Control
from batchpizza.controls.gate import Gatekeeper
from batchpizza.controls.retrying import RetryPolicy
from batchpizza.controls.stop import Stop
from batchpizza.engine.runner import PendingRow, Runner
from batchpizza.job.metering import make_meter
from batchpizza.providers import Provider
from batchpizza.records import Result
from batchpizza.rows import request_key

if TYPE_CHECKING:
    from batchpizza.batchapi.flow import BatchFlow

log = logging.getLogger("batchpizza")


class Sending:
    """One run's sending: `send` the rows, `stop_early` or `interrupt` it from outside."""

    def __init__(
        self,
        config: RunConfig,
        provider: Provider,
        checkpoint: Checkpoint,
        run: int,
        stop: Stop,
        *,
        on_result: Callable[[int, Result], None],
        gatekeeper: Gatekeeper | None = None,
        session: aiohttp.ClientSession | None = None,
        deadline_at: float | None = None,
    ) -> None:
        self.config = config
        self.stop = stop
        self.checkpoint = checkpoint
        # An online run at an OpenAI-compatible server collects the batches that ended first.
        collects = collects_at_start(config, checkpoint)
        self.control = Control(
            rate=config.rate_per_s,
            auto_max=config.auto_max,
            learned=checkpoint.learned_rate(),
            patience=config.patience_s,
            retry_after_cap=config.retry_after_cap,
            timeout=config.timeout,
            on_give_up=functools.partial(self.stop_early, "refusals"),
            stop_signal=stop.wait,
            meter=make_meter(config, checkpoint, collects=collects),
            on_stop=self.stop_now,
        )
        checkpoint.begin_spend(run, config.price_per_m, config.via != "online" or collects)
        # A Ray actor's gate to the cluster's one controller stands in for this run's Control.
        self.runner = Runner(
            provider,
            checkpoint,
            RetryPolicy.from_config(config),
            gatekeeper or self.control,
            concurrency=config.concurrency,
            stop=stop,
            run=run,
            on_result=on_result,
            session=session,
        )
        self._task: asyncio.Task[None] | None = None
        self.key = request_key(provider)
        self.batches: BatchFlow | None = None  # --via batch / auto: the Batch API's flow
        self.collecting: BatchFlow | None = None  # an online run's collection at its start
        if config.via != "online" or collects:
            from batchpizza.batchapi.flow import BatchFlow

            flow = BatchFlow(
                config, provider, checkpoint, run, stop, self.runner.counters,  # type: ignore[arg-type]
                key=self.key, on_result=on_result, session=session,
                deadline_at=deadline_at, online=self.runner.run if config.via == "auto" else None,
                meter=self.control.meter,  # one budget for the batches and the rows sent online
            )  # fmt: skip
            if collects:
                self.collecting = flow
            else:
                self.batches = flow
        elif out := requests_out(checkpoint):
            _say_out(out)

    @property
    def flow(self) -> BatchFlow | None:
        """The run's Batch API flow: --via batch / auto's, or an online run's collection."""
        return self.batches or self.collecting

    async def collect(self) -> None:
        """An online run's collection (batchapi/collecting.py), before its start line: what the
        batches that ended answered leaves the plan that line is made from."""
        if self.collecting is not None and not self.stop.sending_stopped:
            await self._as_task(self._collect())

    async def send(self, rows: Iterator[PendingRow]) -> None:
        """Send every row; returns after a stop once the grace period is over."""
        if self.stop.sending_stopped:
            return
        sending = self.runner.run if self.batches is None else self.batches.run
        await self._as_task(sending(rows))

    async def _as_task(self, work: Coroutine[Any, Any, None]) -> None:
        """`work` as the task a stop cancels after the grace period."""
        self._task = asyncio.create_task(work)
        try:
            await self._task
        except asyncio.CancelledError:
            if not self.stop.sending_stopped:
                raise  # cancelled by our caller, not by our own grace timer

    async def _collect(self) -> None:
        from batchpizza.batchapi.budget import off_the_cap
        from batchpizza.batchapi.collecting import collect_at_start

        assert self.collecting is not None
        await collect_at_start(self.collecting)
        meter = self.control.meter
        if meter is not None and meter.budget is not None:
            off_the_cap(meter, self.checkpoint)  # what is still out will be billed
        if out := requests_out(self.checkpoint):
            _say_out(out)

    @property
    def batches_out(self) -> int:
        """Batches still out, or files waiting to be submitted, when the run ended (--via
        batch): it stops "batches", exit 4."""
        return 0 if self.batches is None else self.batches.out + self.batches.waiting

    def stop_early(self, reason: str) -> None:
        """A planned stop (the deadline, the breaker out of patience): no new request, those in
        flight get the grace period, then the output is written with the rest pending."""
        if not self.stop.sending_stopped:
            self.stop.stop_sending(reason)
            self.cancel_after_grace()

    def stop_now(self, reason: str, message: str) -> None:
        """A stop of the run's own (the budget, a quota, nothing can succeed): no new request,
        those in flight finish (their cost is counted), then the output is written."""
        if not self.stop.sending_stopped:
            log.warning("stopping: %s", message)
            self.stop.stop_sending(reason)

    def cancel_after_grace(self) -> None:
        task = self._task
        if task is not None and not task.done():
            asyncio.get_running_loop().call_later(self.config.grace, task.cancel)

    def save(self, checkpoint: Checkpoint, run: int) -> None:
        """The rate history and breaker trips for the report, and the learned rate for the next
        run to start from; on every way out of the run."""
        control = self.control
        with contextlib.suppress(Exception):  # never mask the error the run is ending with
            checkpoint.record_events(run, control.take_events())
            if control.adaptive is not None:
                checkpoint.set_meta(learned_rate=control.adaptive.rate)
            pacer = control.meter.pacer if control.meter is not None else None
            if pacer is not None and pacer.limit_per_s:
                checkpoint.set_meta(learned_tpm=pacer.limit_per_s * 60.0)


def collects_at_start(config: RunConfig, checkpoint: Checkpoint) -> bool:
    """Does this online run look for finished Batch API batches first: the OpenAI provider and
    a checkpoint recording batches still out (its own model's or another's)."""
    if config.via != "online" or config.provider != "openai" or checkpoint.path is None:
        return False
    return bool(checkpoint.open_files() or checkpoint.open_files(others=True))


def _say_out(out: int) -> None:
    log.warning(
        "%d of these requests are in Batch API batches still out, which --via batch "
        "collects (billed when they end: those sent online are paid twice)", out
    )  # fmt: skip
