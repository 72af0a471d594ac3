"""The same job over a Ray Dataset, with one rate budget for the whole cluster.

    import ray, batchpizza.ray
    ds = ray.data.read_parquet("s3://lake/prompts/")
    out = batchpizza.ray.answer(ds, rate="40/s", concurrency=16, actors=4,
                                checkpoint="s3://lake/prompts.checkpoint/")
    out.write_parquet("s3://lake/answers/")

`answer` maps the dataset's batches (as Arrow tables) over a pool of `actors` actors; each runs
the engine (batchpizza.engine.batch) over its batch with its share of `concurrency`. One controller actor
(`ControllerActor`, on no CPU) owns the budget: the send slots, `rate="auto"`, the breaker and the
deadline (batchpizza.distributed.budget). Failures are rows (`finish_reason`); a stop (the breaker
out of patience, the deadline) leaves the rest "pending", never a failed Ray task.

The result is lazy, as Ray Datasets are: requests are sent when it is consumed, and consumed
twice it is computed twice (with a checkpoint, batches already done are not sent again; without,
they are): `materialize()` it if you need it more than once. `deadline` counts from the call.

Ray is imported only here: `pip install 'batchpizza[ray]'`.
"""

from __future__ import annotations

from batchpizza.distributed.dataset import ControllerActor, answer, status

__all__ = ["ControllerActor", "answer", "status"]
