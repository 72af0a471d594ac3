"""The file job: a run from an input file to an output file, and the `run`/`arun` doors."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from batchpizza.config import RunConfig
from batchpizza.engine.loop import run_loop
from batchpizza.job.ctrlc import CtrlC
from batchpizza.job.stages import Job
from batchpizza.records import Summary

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from batchpizza.options import Options

__all__ = ["Job", "arun", "run", "run_loop"]


async def arun(
    input: str | os.PathLike[str], output: str | os.PathLike[str], **options: Unpack[Options]
) -> Summary:
    """Run a batch inside a running event loop; returns the summary. Options as on the command
    line (concurrency=, rate=, max_retries=, ...). Raises BatchpizzaError subclasses on failure."""
    config = RunConfig.from_options(str(input), str(output), **options)
    return await Job(config).run()


def run(
    input: str | os.PathLike[str], output: str | os.PathLike[str], **options: Unpack[Options]
) -> Summary:
    """Run a batch to the end and return its summary (see `arun` inside a running loop). Ctrl-C
    stops it as SIGINT stops the command line's run, and raises Interrupted."""
    ctrl_c = CtrlC()  # here, before the loop's runner puts a handler of its own in place

    async def main() -> Summary:
        job = Job(RunConfig.from_options(str(input), str(output), **options))
        ctrl_c.started(job)
        return await ctrl_c.guarding(job.run())

    return run_loop(main())
