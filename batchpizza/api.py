"""The Python API over rows held in memory: `answer` / `aanswer` (the same type back, with the
result columns) and `stream` (results as rows finish).

In-memory data goes through the very run a file goes through: it is spooled to a private
temporary folder (Parquet for Arrow-backed data, JSONL for a list of dicts), run with the same
pacing, retries, breaker and checkpoint, and the result columns are read back and joined to the
caller's own object, whose types, index and metadata `tables.restore` keeps. The spool costs a
write and a read of the data (measured in RESULTS.md); in return every guarantee of a run holds,
and `checkpoint=PATH` makes the same call resumable after a kernel crash. Without a checkpoint,
nothing is left on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from batchpizza import jsoncodec
from batchpizza.config import RunConfig
from batchpizza.errors import UsageError
from batchpizza.job.stages import Job, run_loop
from batchpizza.records import Result
from batchpizza.sinks.values import json_default, result_columns
from batchpizza.tables import InMemory, from_data

LABEL = "<data>"


@contextlib.contextmanager
def _spooled(mem: InMemory) -> Iterator[tuple[Path, Path]]:
    """(input file, output file) in a private folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="batchpizza-") as folder:
        base = Path(folder)
        if mem.kind == "rows":
            path = base / "input.jsonl"
            with path.open("wb") as handle:
                for row in mem.rows:
                    handle.write(jsoncodec.dumps(row, json_default) + b"\n")
            yield path, base / "output.jsonl"
            return
        import pyarrow.parquet as pq

        path = base / "input.parquet"
        writer: pq.ParquetWriter | None = None
        try:
            for batch in mem.batches():
                if writer is None:
                    writer = pq.ParquetWriter(path, batch.schema, compression="none")
                writer.write_batch(batch)
            if writer is None:  # no rows at all: an empty file with the columns
                writer = pq.ParquetWriter(path, mem.schema, compression="none")
        finally:
            if writer is not None:
                writer.close()
        yield path, base / "output.parquet"


def _config(input: Path, output: Path, options: dict[str, Any]) -> RunConfig:
    options.setdefault("checkpoint", str(output) + ".checkpoint")
    options.setdefault("input_label", LABEL)
    # A notebook's stderr is no terminal, yet it shows a bar (tqdm's notebook widget) well.
    options.setdefault("progress", True if "ipykernel" in sys.modules else None)
    return RunConfig.from_options(str(input), str(output), **options)


def _read_results(output: Path, extra: tuple[str, ...], mem: InMemory) -> Any:
    names = list(result_columns(extra))
    if mem.kind == "rows":
        with output.open("rb") as handle:
            return [
                {name: row.get(name) for name in names}
                for row in map(jsoncodec.loads, handle)
                if row
            ]
    import pyarrow.parquet as pq

    if mem.kind == "stream":  # the input is gone once read: its columns come from the output
        return pq.read_table(output, columns=[*mem.schema.names, *names])
    return pq.read_table(output, columns=names)


async def aanswer(data: Any, **options: Any) -> Any:
    """`data` (pandas or polars DataFrame, pyarrow Table or RecordBatchReader, datasets.Dataset,
    list of dicts) with the result columns added, as the same type, rows in the same order; the
    input is not changed. Options as on the command line (`prompt_field=`, `rate=`,
    `concurrency=`, `skip_bad_rows=`, `checkpoint=PATH` to make it resumable, ...). Bad rows raise
    InputError naming the row, unless skip_bad_rows=True. Use inside a running event loop."""
    mem = from_data(data)
    if "output" in options:
        raise UsageError("answer() returns its result; use batchpizza.run() to write a file")
    with _spooled(mem) as (input_path, output):
        config = _config(input_path, output, dict(options))
        await Job(config).run()
        extra = ("prompt_tokens", "completion_tokens") if config.provider == "openai" else ()
        results = _read_results(output, extra, mem)
    return mem.restore(results)


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
    with contextlib.ExitStack() as stack:
        if isinstance(data, (str, os.PathLike)):
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="batchpizza-")))
            input_path, output = Path(data), folder / "output.jsonl"
            options = {**options}
        else:
            mem = from_data(data)
            input_path, output = stack.enter_context(_spooled(mem))
            output = output.with_suffix(".jsonl")
        config = _config(input_path, output, dict(options))
        job = Job(config, on_row=lambda pos, result: queue.put_nowait((pos, result)))
        task = asyncio.ensure_future(job.run())
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (item := await queue.get()) is not None:
                pos, result = item
                seen.add(pos)
                yield _row(pos, result)
            await task  # raises what the run raised
            with output.open("rb") as handle:
                for pos, line in enumerate(handle):
                    if pos not in seen:
                        row = jsoncodec.loads(line)
                        yield {"id": row["id"], "position": pos, **_results_of(row)}
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task


def _results_of(row: dict[str, Any]) -> dict[str, Any]:
    return {name: row.get(name) for name in result_columns(()) if name in row}


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
    }
