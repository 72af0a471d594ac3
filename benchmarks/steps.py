"""A one-row `batchpizza run` with its steps timed from inside, for bench.py's start-up scenario:

    python benchmarks/steps.py TIMINGS.json run INPUT -o OUTPUT ...

It imports as little as it can before batchpizza (time first, for the moment the interpreter
reached this file), wraps the methods that do each step, runs the command line in this process
and writes the timings as JSON; the wall clock of the parent brackets the whole process.
"""

from __future__ import annotations

import time

REACHED = time.time()

import contextlib  # noqa: E402 - after the first clock reading, on purpose
import json  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402


def main(timings_path: str, argv: list[str]) -> int:
    """A one-row `batchpizza run` with its steps timed from inside: the imports the command line
    makes before a run (batchpizza.cli, then the engine), the checkpoint's creation, the scan
    of the input, the sending and the output, each timed by wrapping the method that does it;
    "the whole run command" holds the last four and what lies between them."""
    started = time.perf_counter()
    timings: dict[str, float] = {"reached": REACHED}
    import batchpizza.cli

    timings["import batchpizza.cli"] = time.perf_counter() - started
    mark = time.perf_counter()
    from batchpizza.checkpoint import Checkpoint
    from batchpizza.engine.runner import Runner
    from batchpizza.job import stages

    timings["import the engine (aiohttp, providers, checkpoint)"] = time.perf_counter() - mark

    def timed_sync(owner: Any, name: str, step: str, kind: str = "method") -> None:
        original = getattr(owner, name)
        func = original.__func__ if kind == "classmethod" else original

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            mark = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                timings[step] = timings.get(step, 0.0) + time.perf_counter() - mark

        setattr(owner, name, classmethod(wrapper) if kind == "classmethod" else wrapper)

    def timed_async(owner: Any, name: str, step: str) -> None:
        original = getattr(owner, name)

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            mark = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                timings[step] = timings.get(step, 0.0) + time.perf_counter() - mark

        setattr(owner, name, wrapper)

    # Private names of the job's stages: a step that is renamed is left out, not fatal.
    with contextlib.suppress(AttributeError):
        timed_sync(Checkpoint, "open", "checkpoint creation", "classmethod")
    with contextlib.suppress(AttributeError):
        timed_async(stages.Job, "_scan", "the scan (validation)")
    with contextlib.suppress(AttributeError):
        timed_async(Runner, "run", "sending (one request)")
    with contextlib.suppress(AttributeError):
        timed_sync(stages, "write_rows", "the output")
    mark = time.perf_counter()
    try:
        batchpizza.cli.cli.main(argv, prog_name="batchpizza")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    else:
        code = 0
    timings["the whole run command"] = time.perf_counter() - mark
    timings["finished"] = time.time()
    with open(timings_path, "w", encoding="utf-8") as handle:  # noqa: PTH123 - no pathlib import
        json.dump(timings, handle)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
