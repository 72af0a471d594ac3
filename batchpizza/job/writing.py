"""The end of a job: its rows written out (the output file, or for rows in memory their output
rows), and the summary it leaves on every way out (the line on stderr, --summary-json)."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

from batchpizza.checkpoint import Checkpoint
from batchpizza.config import RunConfig
from batchpizza.files import write_atomically
from batchpizza.progress import summary_line
from batchpizza.records import OutputRow, Plan, Summary, Tally
from batchpizza.runlog import RunStart, run_start
from batchpizza.sources.base import Rows


def write_rows(
    config: RunConfig,
    source: Rows,
    checkpoint: Checkpoint,
    extra_columns: tuple[str, ...],
    scan_key: str | None,
    stop: threading.Event,
) -> list[OutputRow] | None:
    """The output, in a worker thread: the file (None returned), or for rows in memory every
    row's output row, in input order."""
    if config.output is None:
        return [row for page in checkpoint.output_rows(config.limit) for row in page]
    from batchpizza.sinks import write_output
    from batchpizza.sinks.values import result_columns
    from batchpizza.sources import Source
    from batchpizza.structured.columns import ParsedColumns

    assert config.output_format is not None  # a file job's output has a format
    write_output(
        cast(Source, source),  # a file's rows: a Source, which also carries its fields
        checkpoint,
        Path(config.output),
        config.output_format,
        results=result_columns(extra_columns, config.samples),
        scan_key=scan_key,
        limit=config.limit,
        samples=config.samples,
        stop=stop,
        parsed=ParsedColumns.of(config.structured, config.flatten),
    )
    return None


def check_parsed_names(config: RunConfig, source: Rows, extra_columns: tuple[str, ...]) -> None:
    """Refuse an output whose parsed columns (--schema, --flatten) clash with other columns (the
    input's are known once it is scanned), and say which places of the schema have no type."""
    if config.structured is None:
        return
    from batchpizza.structured.columns import ParsedColumns, check_flatten, warn_untyped

    warn_untyped(config.structured.schema)
    if config.output is None:
        return  # rows in memory: answer() checks them
    from batchpizza.sinks.built import output_columns
    from batchpizza.sinks.values import result_columns
    from batchpizza.sources import Source

    parsed = ParsedColumns(config.structured, flatten=config.flatten)
    file = cast(Source, source)
    carried = output_columns(file.fields, file.columns()).names
    check_flatten(parsed, ["id", *carried, *result_columns(extra_columns, config.samples)])


def run_options(config: RunConfig) -> dict[str, Any]:
    """The options a run records for its report (secrets are in URLs: those are left out); the
    provider, model and parameters also say which request its answers were asked with."""
    keep = ("concurrency", "rate", "max_retries", "timeout", "provider", "model", "params", "limit",
            "tpm", "max_cost")  # fmt: skip
    return {name: getattr(config, name) for name in keep}


class Reporter:
    """The summary of one run, said once: on stderr unless quiet, and in --summary-json."""

    def __init__(self, config: RunConfig, started: float) -> None:
        self.config = config
        self.started = started
        self.reported = False

    def where(self) -> dict[str, Any]:
        path = self.config.checkpoint_path
        return {
            "elapsed_s": round(time.monotonic() - self.started, 3),
            "output": self.config.output,
            "checkpoint": None if path is None else str(path),
        }

    def start_line(
        self,
        plan: Plan,
        total: int,
        invalid: int,
        rate: float | None,
        deadline_left: float | None,
    ) -> RunStart:
        """The log's first line of a run: what it is about to send and why."""
        return run_start(self.config, plan, total, invalid, rate, deadline_left)

    def summary(
        self,
        tally: Tally | None,
        counters: Any,
        exit_code: int,
        *,
        stopped: str | None = None,
        rate: float | None = None,
    ) -> Summary:
        return Summary.of(
            tally,
            requests=counters.requests if counters else 0,
            retries=counters.retries if counters else 0,
            exit_code=exit_code,
            stopped=stopped,
            # Through the Batch API alone no request waits on the rate: none is in force.
            rate=None if self.config.via == "batch" else rate,
            **self.where(),
        )

    def report(self, summary: Summary) -> None:
        self.reported = True
        if not self.config.quiet:
            with contextlib.suppress(OSError, ValueError):  # a closed stderr must not fail a run
                print(summary_line(summary, self.config.log_format), file=sys.stderr, flush=True)
        if self.config.summary_json and not self.config.dry_run:
            write_atomically(Path(self.config.summary_json), summary.to_json())
