"""The Python API over rows held in memory: `answer` / `aanswer` (the same type back, with the
result columns) and `stream` (results as rows finish).

In-memory data is read where it is: the job scans it, plans and sends it as it does a file, with
the same pacing, retries, breaker and checkpoint, and the results are joined to the caller's own
object, whose types, index and metadata `tables.restore` keeps. Without `checkpoint=` the job's
checkpoint lives in memory and nothing is written to disk; with `checkpoint=PATH` the same call
is resumable after a kernel crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

from batchpizza.config import RunConfig
from batchpizza.errors import UsageError
from batchpizza.job import Job, run_loop
from batchpizza.records import OutputRow, Result
from batchpizza.sinks.values import result_columns
from batchpizza.tables import InMemory, from_data

LABEL = "<data>"


def _config(options: dict[str, Any]) -> RunConfig:
    if "output" in options:
        raise UsageError("answer() returns its result; use batchpizza.run() to write a file")
    options.setdefault("input_label", LABEL)
    # A notebook's stderr is no terminal, yet it shows a bar (tqdm's notebook widget) well.
    options.setdefault("progress", True if "ipykernel" in sys.modules else None)
    return RunConfig.from_options(**options)


def _results(mem: InMemory, rows: list[OutputRow], extra: tuple[str, ...]) -> Any:
    """The result columns of `rows` as `mem.restore` takes them: dicts for a list, else Arrow."""
    names = result_columns(extra)
    if mem.kind == "rows":
        return [{name: getattr(row, name) for name in names} for row in rows]
    import pyarrow as pa

    from batchpizza.sinks.values import result_fields

    fields = result_fields(extra)
    arrays = [pa.array([getattr(r, f.name) for r in rows], f.type) for f in fields]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


async def _answered(data: Any, options: dict[str, Any], **hooks: Any) -> tuple[Any, Job]:
    """(the result of `data`'s run as `restore` takes it, the job that ran it)."""
    config = _config(options)
    mem = from_data(data)
    readable = mem
    if mem.kind == "stream":  # read once: its rows are run from memory, its columns given back
        readable = InMemory("arrow", mem.data.read_all())
    job = Job(config, data=readable, **hooks)
    await job.run()
    assert job.output_rows is not None  # a run that returned has its rows
    from batchpizza.providers.factory import extra_columns

    results = _results(readable, job.output_rows, extra_columns(config.provider))
    if mem.kind == "stream":
        table = readable.table
        results = _beside(table, results)
    return mem.restore(results), job


def _beside(table: Any, results: Any) -> Any:
    import pyarrow as pa

    return pa.Table.from_arrays(
        [*table.columns, *results.columns], names=[*table.column_names, *results.column_names]
    )


async def aanswer(data: Any, **options: Any) -> Any:
    """`data` (pandas or polars DataFrame, pyarrow Table or RecordBatchReader, datasets.Dataset,
    list of dicts) with the result columns added, as the same type, rows in the same order; the
    input is not changed. Options as on the command line (`prompt_field=`, `rate=`,
    `concurrency=`, `skip_bad_rows=`, `checkpoint=PATH` to make it resumable, ...). Bad rows raise
    InputError naming the row, unless skip_bad_rows=True. Use inside a running event loop."""
    result, _job = await _answered(data, dict(options))
    return result


def answer(data: Any, **options: Any) -> Any:
    """The blocking form of `aanswer` (see there). Inside a running event loop (Jupyter) use
    `await batchpizza.aanswer(...)`."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run_loop(aanswer(data, **options))
    raise UsageError(
        "answer() cannot run inside a running event loop (a notebook, an async app): "
        "use `await batchpizza.aanswer(data, ...)` there"
    )


async def stream(data: Any, **options: Any) -> AsyncIterator[dict[str, Any]]:
    """Results as rows finish: a dict per row with `id`, `position` (0-based, in the input) and
    the result columns, with the pacing, retries, breaker and checkpoint of a run. `data` as for
    `answer`, or a path as for `run`. Every row is yielded once: those finished in this run as
    they finish, then the rest (answered by an earlier run with the same checkpoint, invalid,
    or pending after an early stop). Breaking out of the loop stops the run; what finished is
    kept in the checkpoint."""
    queue: asyncio.Queue[tuple[int, Result] | None] = asyncio.Queue()
    seen: set[int] = set()
    on_row = lambda pos, result: queue.put_nowait((pos, result))  # noqa: E731
    if isinstance(data, (str, os.PathLike)):  # a file: named by its path in messages
        config = _config({"input_label": None, **options})
        job = Job(dataclasses.replace(config, input=str(data)), on_row=on_row)
    else:
        config = _config(dict(options))
        mem = from_data(data)
        if mem.kind == "stream":
            mem = InMemory("arrow", mem.data.read_all())
        job = Job(config, data=mem, on_row=on_row)
    task = asyncio.ensure_future(job.run())
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        while (item := await queue.get()) is not None:
            pos, result = item
            seen.add(pos)
            yield _row(pos, result)
        await task  # raises what the run raised
        assert job.output_rows is not None  # a run that returned has its rows
        for pos, row in enumerate(job.output_rows):
            if pos not in seen:
                yield {"id": row.id, "position": pos, **_results_of(row)}
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def _results_of(row: OutputRow) -> dict[str, Any]:
    return {name: getattr(row, name) for name in result_columns(())}


def _row(pos: int, result: Result) -> dict[str, Any]:
    return {
        "id": result.id,
        "position": pos,
        "answer": result.answer,
        "finish_reason": result.finish_reason,
        "misuse": result.finish_reason == "misuse",
        "error": result.error,
        "attempts": result.attempts,
        "latency_ms": result.latency_ms,
        "model": result.model,
        "reused_from": None,  # sent for this row (rows reusing it come after the run)
    }
