"""A Ray Dataset answered by a pool of actors under the cluster's one budget: the controller
actor, the actors' callable, and `answer` / `status` (the door is batchpizza.ray, which the
--ray command uses too). Ray is imported here and in what imports this module, nowhere else."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections.abc import Sequence
from typing import Any

import ray

from batchpizza.config import RunConfig
from batchpizza.distributed.budget import Budget, Lease, News, Report
from batchpizza.distributed.folders import delete_folder
from batchpizza.distributed.kept import CLUSTER_OPTIONS
from batchpizza.distributed.parts import PartStore
from batchpizza.distributed.worker import Answerer, part_schema
from batchpizza.errors import UsageError
from batchpizza.providers.factory import extra_columns

__all__ = ["ControllerActor", "answer", "status"]

log = logging.getLogger("batchpizza")

DEFAULT_ACTORS = 4
DEFAULT_BATCH_SIZE = 256
# The actors wait on the network, not the CPU: a quarter of a CPU each lets four share one core
# and leaves CPUs to Ray Data's read and write tasks.
DEFAULT_ACTOR_CPUS = 0.25
# Each answered Dataset's controller, for `status` (and so that it lives as long as the Dataset).
_controllers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


class ControllerActor:
    """The cluster's one budget, as a Ray async actor (see batchpizza.distributed.budget). With
    a checkpoint, it keeps the learned rate there as it changes (a small file, written in a
    thread, one write at a time), so the next run starts from it, as a single process does."""

    def __init__(self, checkpoint: str | None = None, **budget: Any) -> None:
        self.budget = Budget(**budget)
        self._store = PartStore(checkpoint) if checkpoint else None
        self._kept = budget.get("learned")
        self._keeping: asyncio.Task[None] | None = None

    async def lease(self, want: int, reports: Sequence[Report]) -> Lease:
        lease = await self.budget.lease(want, reports)
        self._keep_rate()
        return lease

    async def record(self, reports: Sequence[Report]) -> Lease:
        lease = self.budget.record(reports)
        self._keep_rate()
        return lease

    def _keep_rate(self) -> None:
        if self._store is None or self.budget.adaptive is None:
            return
        if self.budget.rate != self._kept and (self._keeping is None or self._keeping.done()):
            self._keeping = asyncio.create_task(self._save_rate())

    async def _save_rate(self) -> None:
        # One save at a time, until what it saved is the rate in force: a change made while it
        # wrote (an object store's PUT takes a while) may be the run's last.
        assert self._store is not None
        while (rate := self.budget.rate) != self._kept:
            try:
                await asyncio.to_thread(self._store.save_meta, learned_rate=rate)
            except OSError as exc:  # a lost rate costs a slow start, not the run
                log.warning("could not keep the learned rate in the checkpoint: %s", exc)
                return
            self._kept = rate

    async def admits(self, epoch: int, probe: bool) -> bool:
        return self.budget.admits(epoch, probe)

    async def news(self, known: int) -> News:
        return await self.budget.news(known)

    async def status(self) -> dict[str, object]:
        return self.budget.status()

    async def stop(self, reason: str) -> None:
        self.budget.stop(reason)


class _Remote:
    """The controller's actor handle as batchpizza.distributed.worker.Controller."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def lease(self, want: int, reports: Sequence[Report]) -> Lease:
        lease: Lease = await self._handle.lease.remote(want, list(reports))
        return lease

    async def record(self, reports: Sequence[Report]) -> Lease:
        lease: Lease = await self._handle.record.remote(list(reports))
        return lease

    async def admits(self, epoch: int, probe: bool) -> bool:
        return bool(await self._handle.admits.remote(epoch, probe))

    async def news(self, known: int) -> News:
        news: News = await self._handle.news.remote(known)
        return news


class _RayAnswerer(Answerer):
    """What Ray Data constructs in each actor: the Answerer with the controller's handle."""

    def __init__(self, controller: Any, done: list[Any], **kwargs: Any) -> None:
        # The done table travels as an object in the store, read once per actor.
        super().__init__(_Remote(controller), done=ray.get(done[0]) if done else None, **kwargs)


def answer(
    ds: ray.data.Dataset,
    *,
    actors: int = DEFAULT_ACTORS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    checkpoint: str | None = None,
    num_cpus: float = DEFAULT_ACTOR_CPUS,
    **options: Any,
) -> ray.data.Dataset:
    """`ds` with the result columns added to each row (answer, finish_reason, misuse, error,
    attempts, latency_ms, model), computed by `actors` actors under one rate budget. Options as
    for batchpizza.answer (`rate=` fixed or "auto", `concurrency=` for the whole cluster,
    `patience=`, `deadline=`, `max_retries=`, `base_url=`, ...). `checkpoint=` a folder (local,
    network, or an object store URI): answered rows are kept there and a rerun sends only the
    others; it needs an id column (`id_field=`, default "id"); `restart=True` deletes it
    first. `batch_size` rows per batch, `num_cpus` per actor."""
    if actors < 1:
        raise UsageError("actors must be at least 1")
    if "output" in options:
        raise UsageError("answer() returns a Dataset; write it with its write_* methods")
    if options.get("mock"):  # taken by RunConfig, but nothing here starts the mock server
        raise UsageError(
            "mock=True: batchpizza.ray.answer starts no mock server, so the requests would go to "
            "the real service; start one (batchpizza mock-server --port 0) and give its address "
            "as base_url=, or run: batchpizza run INPUT -o OUTPUT --ray --mock"
        )
    # Checked here, on the driver, once: a bad option fails the call, not every actor.
    config = RunConfig.from_options("<ray>.parquet", "<ray>.parquet", **options)
    config.refuse_on_ray()
    share = max(1, math.ceil(config.concurrency / actors))
    extra = extra_columns(config.provider)
    done_ref: list[Any] = []
    learned: float | None = None  # the rate an earlier run under rate="auto" learned
    if checkpoint is not None:
        id_field = config.fields_named[2]
        if id_field not in ds.schema().names:
            raise UsageError(
                f"checkpoint= needs an id column to key the answers by; the dataset has no "
                f"{id_field!r} column (choose one with id_field=)"
            )
        if options.get("restart"):
            # Forget every answer and the learned rate: a new start (in the same folder, which a
            # --ray command holds its lock on).
            delete_folder(checkpoint, keep_folder=True)
        store = PartStore(checkpoint)
        done = store.read_all(part_schema(extra))
        if config.auto_max is not None:
            saved = store.meta().get("learned_rate")
            learned = float(saved) if isinstance(saved, (int, float)) and saved > 0 else None
        if done.num_rows:
            done_ref = [ray.put(done)]
    deadline_at = None if config.deadline_s is None else time.time() + config.deadline_s
    controller = (
        ray.remote(ControllerActor)
        .options(num_cpus=0, max_concurrency=1000)
        .remote(
            rate=config.rate_per_s,
            auto_max=config.auto_max,
            patience=config.patience_s,
            retry_after_cap=config.retry_after_cap,
            timeout=config.timeout,
            deadline_at=deadline_at,
            learned=learned,
            checkpoint=checkpoint,
        )
    )
    actor_options = {k: v for k, v in options.items() if k not in CLUSTER_OPTIONS}
    answered = ds.map_batches(
        _RayAnswerer,
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=num_cpus,
        fn_constructor_kwargs={
            "controller": controller,
            "done": done_ref,
            "options": actor_options,
            "share": share,
            "checkpoint": checkpoint,
        },
    )
    _controllers[answered] = controller
    return answered


def stop(ds: ray.data.Dataset, reason: str = "signal") -> None:
    """Tell the controller of a Dataset from `answer` to send nothing more: its actors finish the
    requests they have in flight (keeping their answers in the checkpoint) and leave the rest
    of each batch `pending`. Returns at once; safe from any thread."""
    _controllers[ds].stop.remote(reason)


def status(ds: ray.data.Dataset) -> dict[str, object]:
    """What the controller of a Dataset from `answer` says now: the rate in force, the breaker's
    state and trips, why it stopped (None while sending), slots handed out, attempts reported,
    and the rate's changes under `rate="auto"` as (unix time, rate, reason)."""
    try:
        controller = _controllers[ds]
    except KeyError:
        raise UsageError("status() takes a Dataset returned by batchpizza.ray.answer") from None
    result: dict[str, object] = ray.get(controller.status.remote())
    return result
