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
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

from batchpizza.config import RunConfig
from batchpizza.errors import Interrupted, UsageError
from batchpizza.job import Job, run_loop
from batchpizza.job.ctrlc import CtrlC
from batchpizza.records import TOKEN_COLUMNS, OutputRow, Result, answered_row
from batchpizza.sinks.values import result_columns
from batchpizza.structured.columns import ParsedColumns, check_flatten
from batchpizza.tables import InMemory, from_data

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from batchpizza.options import Options

LABEL = "<data>"


def _config(options: dict[str, Any]) -> RunConfig:
    if "output" in options:
        raise UsageError("answer() returns its result; use batchpizza.run() to write a file")
    options.setdefault("input_label", LABEL)
    # A notebook's stderr is no terminal, yet it shows a bar (tqdm's notebook widget) well.
    options.setdefault("progress", True if "ipykernel" in sys.modules else None)
    return RunConfig.from_options(**options)


def _results(
    mem: InMemory,
    rows: list[OutputRow],
    extra: tuple[str, ...],
    built: tuple[str, list[str | None]] | None = None,
    samples: int = 1,
    parsed: ParsedColumns | None = None,
) -> Any:
    """The result columns of `rows` as `mem.restore` takes them: dicts for a list, else Arrow;
    `built`, the built prompts' column (name, a value per input row), first where prompts were
    built; with samples, `rows` holds each input row's samples one after another."""
    names = result_columns(extra, samples)
    if built is not None and samples > 1:
        built = (built[0], [text for text in built[1] for _ in range(samples)])
    if mem.kind == "rows":
        out = [{name: getattr(row, name) for name in names} for row in rows]
        if parsed is not None:  # --schema: the answer's value (or its properties) as objects
            out = [{**values, **parsed.objects(row)} for values, row in zip(out, rows, strict=True)]
        if built is not None:
            texts = built[1][: len(out)]  # --limit
            out = [{built[0]: text, **row} for text, row in zip(texts, out, strict=True)]
        return out
    import pyarrow as pa

    from batchpizza.sinks.values import fields_of

    fields = list(fields_of(names))
    arrays = [pa.array([getattr(r, f.name) for r in rows], f.type) for f in fields]
    if parsed is not None:
        fields += parsed.fields()
        arrays += parsed.arrays(rows)
    if built is not None:
        fields.insert(0, pa.field(built[0], pa.string()))
        arrays.insert(0, pa.array(built[1][: len(rows)], pa.string()))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _built(mem: InMemory, config: RunConfig) -> tuple[str, list[str | None]] | None:
    """The output's column of built prompts (--template, prompt=), or None."""
    from batchpizza.rows import Fields

    fields = Fields.from_config(config)
    if fields.build is None:
        return None
    from batchpizza.sinks.built import built_prompt
    from batchpizza.sources.memory import MemorySource

    source = MemorySource(mem, fields, config.input_label or LABEL)
    texts = [
        None if isinstance(obj, str) else built_prompt(fields, obj) for _, obj in source.objects()
    ]
    return fields.prompt, texts


def _prompts_as_rows(data: Any, field: str) -> Any:
    """A list of prompt strings as the rows it stands for ({field: prompt} each); else `data`.
    A list with strings and no dict is one of prompts, some of them not strings (None, a
    number): each such row is then bad for its prompt, not every string one for being no dict."""
    if (
        isinstance(data, list)
        and any(isinstance(item, str) for item in data)
        and not any(isinstance(item, Mapping) for item in data)
    ):
        return [{field: item} for item in data]
    return data


async def _answered(
    data: Any, options: dict[str, Any], started: Callable[[Job], None] | None = None
) -> tuple[Any, Job]:
    """(the result of `data`'s run as `restore` takes it, the job that ran it); `started` is
    told of the job before it runs (so another thread can interrupt it)."""
    config = _config(options)
    mem = from_data(_prompts_as_rows(data, config.fields_named[0]))
    readable = mem
    if mem.kind == "stream":  # read once: its rows are run from memory, its columns given back
        readable = InMemory("arrow", mem.data.read_all())
    if config.limit is not None:  # a smoke run: the first rows only, and those come back
        readable = readable.head(config.limit)
        mem = readable if mem.kind != "stream" else mem
    from batchpizza.providers.factory import extra_columns

    parsed = ParsedColumns.of(config.structured, config.flatten)
    if parsed is not None:  # before anything is sent
        check_flatten(parsed, [*_names(readable), *result_columns(extra_columns(config.provider))])
    job = Job(config, data=readable)
    if started is not None:
        started(job)
    summary = await job.run()
    if config.dry_run:  # the plan was said; no row ran, so there are no results to give
        return summary, job
    assert job.output_rows is not None  # a run that returned has its rows

    samples = config.samples
    built = _built(readable, config)
    extra = extra_columns(config.provider)
    results = _results(readable, job.output_rows, extra, built, samples, parsed)
    if mem.kind == "stream":
        table = readable.repeated(samples).table
        results = _beside(table, results)
        return mem.restore(results), job
    # With samples, each row once per sample (the caller's type, with the result columns).
    return mem.repeated(samples).restore(results), job


def _names(mem: InMemory) -> list[str]:
    if mem.kind == "rows":
        return list({key: None for row in mem.rows if isinstance(row, dict) for key in row})
    return mem.names


def _beside(table: Any, results: Any) -> Any:
    import pyarrow as pa

    return pa.Table.from_arrays(
        [*table.columns, *results.columns], names=[*table.column_names, *results.column_names]
    )


async def aanswer(data: Any, **options: Unpack[Options]) -> Any:
    """`data` (pandas or polars DataFrame, pyarrow Table or RecordBatchReader, datasets.Dataset,
    any table with `__arrow_c_stream__`, a list of dicts or of prompt strings) with the result
    columns added, as the same type (a pyarrow RecordBatchReader for other Arrow streams, a list
    of dicts for a list), rows in the same order; the input is not changed. Options as on the
    command line (`prompt_field=`, `rate=`, `concurrency=`, `skip_bad_rows=`, `checkpoint=PATH`
    to make it resumable, ...; see batchpizza.options.Options). Bad rows raise InputError naming
    the row, unless skip_bad_rows=True. With dry_run=True, nothing is sent: the plan is printed
    and the run's Summary returned (its `plan`: what would be sent, and why)."""
    result, _job = await _answered(data, dict(options))
    return result


def answer(data: Any, **options: Unpack[Options]) -> Any:
    """The blocking form of `aanswer` (see there). It works anywhere: inside a running event
    loop (a notebook cell, an async app) the job runs on a worker thread of its own and the call
    blocks until it ends; an interrupt (Ctrl-C, the notebook's stop button) stops the job as
    SIGINT does, with what finished saved in the checkpoint, and is raised again."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return _on_a_thread(data, dict(options))
    ctrl_c = CtrlC()  # a script's Ctrl-C stops the job as the notebook's does
    try:
        result, _job = run_loop(ctrl_c.guarding(_answered(data, dict(options), ctrl_c.started)))
    except Interrupted as exc:
        if ctrl_c.stopped:
            raise KeyboardInterrupt(exc.message) from exc
        raise
    return result


def _on_a_thread(data: Any, options: dict[str, Any]) -> Any:
    """`answer` from inside a running event loop: on a thread with its own loop, blocking."""
    outcome: dict[str, Any] = {}
    running: list[tuple[Job, asyncio.AbstractEventLoop]] = []

    def started(job: Job) -> None:
        running.append((job, asyncio.get_running_loop()))

    finished = threading.Event()

    def work() -> None:
        try:
            outcome["result"], _ = run_loop(_answered(data, options, started))
        except BaseException as exc:  # handed to the caller's thread, which raises it
            outcome["error"] = exc
        finally:
            finished.set()

    threading.Thread(target=work, name="batchpizza-answer", daemon=True).start()
    # An Event, not Thread.join: a join interrupted by KeyboardInterrupt may take the thread for
    # ended while it still runs (CPython's lock bookkeeping), and the job would be left behind.
    try:
        while not finished.wait(0.1):  # short waits: this thread must hear KeyboardInterrupt
            pass
    except KeyboardInterrupt:
        for job, loop in running:
            with contextlib.suppress(RuntimeError):  # its loop closed meanwhile
                loop.call_soon_threadsafe(job.interrupt, signal.SIGINT)
        finished.wait()
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


async def stream(data: Any, **options: Unpack[Options]) -> AsyncIterator[dict[str, Any]]:
    """Results as rows finish: a dict per row with `id`, `position` (0-based, in the input),
    with `samples=N` (N > 1) one per sample with its `sample` (0..N-1), and the result columns, with the pacing, retries, breaker and checkpoint of a run. `data` as for
    `answer`, or a path as for `run`. Every row is yielded once: those finished in this run as
    they finish, then the rest (answered by an earlier run with the same checkpoint, invalid,
    or pending after an early stop). Closing the generator stops the run; what finished is kept
    in the checkpoint. A `break` alone does not close a generator a variable still holds: iterate
    inside `contextlib.aclosing`, or `await rows.aclose()`, or the run sends every row."""
    queue: asyncio.Queue[tuple[int, Result] | None] = asyncio.Queue()
    seen: set[int] = set()
    on_row = lambda pos, result: queue.put_nowait((pos, result))  # noqa: E731
    if isinstance(data, (str, os.PathLike)):  # a file: named by its path in messages
        config = _config({"input_label": None, **options})
        job = Job(dataclasses.replace(config, input=str(data)), on_row=on_row)
    else:
        config = _config(dict(options))
        mem = from_data(_prompts_as_rows(data, config.fields_named[0]))
        if mem.kind == "stream":
            mem = InMemory("arrow", mem.data.read_all())
        job = Job(config, data=mem, on_row=on_row)
    task = asyncio.ensure_future(job.run())
    task.add_done_callback(lambda _: queue.put_nowait(None))
    parsed = ParsedColumns.of(config.structured, config.flatten)  # --schema: parsed too
    try:
        samples = config.samples
        while (item := await queue.get()) is not None:
            slot, result = item  # with samples, slot = position * samples + sample
            seen.add(slot)
            found = _row(slot, result, samples)
            yield found if parsed is None else {**found, **parsed.objects(answered_row(result))}
        await task  # raises what the run raised
        if config.dry_run:  # the plan was said, and no row ran
            return
        assert job.output_rows is not None  # a run that returned has its rows
        for slot, row in enumerate(job.output_rows):
            if slot not in seen:
                found = {"id": row.id, **_where(slot, samples), **_results_of(row)}
                yield found if parsed is None else {**found, **parsed.objects(row)}
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def _results_of(row: OutputRow) -> dict[str, Any]:
    return {name: getattr(row, name) for name in result_columns(TOKEN_COLUMNS)}


def _where(slot: int, samples: int) -> dict[str, int]:
    """A row's position in the input, and with samples which sample it is."""
    if samples == 1:
        return {"position": slot}
    position, sample = divmod(slot, samples)
    return {"position": position, "sample": sample}


def _row(slot: int, result: Result, samples: int = 1) -> dict[str, Any]:
    return {
        "id": result.id,
        **_where(slot, samples),
        "answer": result.answer,
        "finish_reason": result.finish_reason,
        "misuse": result.finish_reason == "misuse",
        "error": result.error,
        "attempts": result.attempts,
        "latency_ms": result.latency_ms,
        "model": result.model,
        "reused_from": None,  # sent for this row (rows reusing it come after the run)
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "tokens_estimated": None
        if result.prompt_tokens is None and result.completion_tokens is None
        else bool(result.tokens_estimated),
    }
