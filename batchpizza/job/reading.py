"""The reading stage of a job: where its rows come from (input files, standard input copied
aside, or rows in memory) and the scan that validates every row before anything is sent.

A file's scan is written beside the checkpoint before it is adopted, so that what a killed scan
leaves is cleared by the next run; a scan of rows in memory (or of a run without a checkpoint
file) lives in memory and leaves nothing anywhere.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from batchpizza.checkpoint import Checkpoint, ScanIndex
from batchpizza.config import RunConfig
from batchpizza.controls.stop import Stop
from batchpizza.errors import InputError, Interrupted
from batchpizza.files import clear_partials, scratch_folder
from batchpizza.rows import Fields
from batchpizza.sources.base import Rows, describe

if TYPE_CHECKING:
    from batchpizza.tables import InMemory

InThread = Callable[[Callable[[], Any]], Awaitable[Any]]


def scan_path(config: RunConfig, in_memory: bool) -> Path | None:
    """Where a file's scan is written before it is adopted (named apart from the output's
    partials); None (in memory) for rows in memory or a run without a checkpoint file."""
    ck = config.checkpoint_path
    if ck is None or in_memory:
        return None
    return ck.with_name(f".scan-{ck.name}.partial")


def clear_leftovers(config: RunConfig, in_memory: bool) -> None:
    """What killed writes and scans left beside the output and the checkpoint (call it holding
    the run's lock: a live writer of the same path would otherwise lose its file)."""
    ck = config.checkpoint_path
    if ck is None:
        return
    if config.output is not None:
        clear_partials(Path(config.output))
    clear_partials(ck)
    path = scan_path(config, in_memory)
    if path is not None:
        path.unlink(missing_ok=True)


async def open_rows(
    config: RunConfig,
    extra_columns: tuple[str, ...],
    data: InMemory | None,
    stdin: IO[bytes] | None,
    stop: Stop,
    cleanup: contextlib.ExitStack,
) -> Rows:
    """The rows to run: the data in memory, or the input file(s) (standard input copied aside
    first, so it can be read twice). File-level problems raise InputError."""
    fields = Fields.from_config(config, extra_reserved=extra_columns)
    if data is not None:
        from batchpizza.sources.memory import MemorySource

        return MemorySource(data, fields, config.input_label or "<data>")
    from batchpizza.sources import open_source

    assert config.input is not None  # a RunConfig for a file job names its input
    stdin_copy = None
    if config.input == "-":
        from batchpizza.sources.stdin import spool_stdin_aside

        # One name per checkpoint, taken under its lock: a copy left by a killed run is simply
        # overwritten by the next one instead of piling up.
        ck = config.checkpoint_path
        assert ck is not None  # standard input is a file job's, which has an output
        dest = ck.with_name(f".{ck.name}.stdin.partial")
        stdin_copy = await spool_stdin_aside(stdin, dest, stop)
        cleanup.callback(stdin_copy.unlink, missing_ok=True)
    source = open_source(config.input, fields, stdin_copy, config.input_label)
    cleanup.callback(source.close)
    return source


def scan_state(config: RunConfig, source: Rows, scan: ScanIndex) -> dict[str, Any]:
    """What the checkpoint keeps of a scan for the next run: the source's own state, the
    counts, and the --limit that cut it short (None: the whole input was read)."""
    limit = config.limit if config.limit is not None and scan.total >= config.limit else None
    return {**source.scan_state(), "total": scan.total, "bad": scan.bad, "limit": limit}


def reusable(info: dict[str, Any] | None, config: RunConfig) -> bool:
    """May this run use the kept scan `info` instead of reading its input again? Only if it
    read every row this run runs (a scan cut by --limit N covers runs of N rows or fewer; one
    kept before the limit was recorded read the whole input), and holds no bad row unless
    this run skips them."""
    if info is None or (info["bad"] and not config.skip_bad_rows):
        return False
    cut = info.get("limit")
    return cut is None or (config.limit is not None and config.limit <= cut)


async def scan_rows(
    config: RunConfig,
    source: Rows,
    key: str | None,
    cleanup: contextlib.ExitStack,
    *,
    reuse: bool,
    in_memory: bool,
    in_thread: InThread,
    stop: Stop,
) -> ScanIndex | None:
    """Validate the input (its first --limit rows only), or reuse the last run's scan when the
    input files are unchanged and it covers this run's rows; None when reused. Bad rows raise
    InputError, having changed nothing."""
    path = config.checkpoint_path
    if reuse and key is not None and path is not None and path.exists():
        info = Checkpoint.peek_scan(path, key)
        if reusable(info, config):
            assert info is not None
            source.restore(info)
            return None
    where = scan_path(config, in_memory)
    if config.dry_run and where is not None:
        # Not beside the checkpoint: a dry run takes no lock, and a run going on writes its
        # own scan at that path (replaced, it adopted the dry run's or none).
        where = Path(cleanup.enter_context(scratch_folder())) / where.name
    scan = ScanIndex(where)
    cleanup.callback(scan.close)
    batches = source.scan(config.limit)
    await in_thread(
        functools.partial(scan.scan, batches, source.unit, source.names, stop.interrupted)
    )
    if scan.bad and not config.skip_bad_rows:
        rows = describe(source, scan.first_bad)
        raise InputError.of_rows(rows, scan.bad)
    if stop.interrupted.is_set():  # a signal during the last batch: change nothing
        raise Interrupted("interrupted while reading the input", 0)
    return scan
