"""batchpizza: send thousands to millions of prompts through the Pizzagpt web API, crash-safely.

from batchpizza import run
summary = run("prompts.jsonl", "out.parquet", concurrency=16, rate="5/s")
answered = batchpizza.answer(dataframe, prompt_field="question")   # the same type back
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what a type checker and an editor see; at run time, __getattr__ below
    from batchpizza.api import aanswer, answer, stream
    from batchpizza.errors import (
        BatchpizzaError,
        InputChanged,
        InputError,
        Interrupted,
        LockedError,
        MisuseDetected,
        OutputError,
        ProviderError,
        UsageError,
    )
    from batchpizza.job import arun, run
    from batchpizza.messages import format_prompt
    from batchpizza.providers.pizzagpt import FinishReason, Pizzagpt
    from batchpizza.records import Outcome, Summary

# Each public name and the module that holds it, imported on first use: `batchpizza --version`,
# `--help` and `status` need neither aiohttp nor the engine, and the package is imported before
# the command line is read (the console script imports batchpizza.cli).
_HOMES = {
    "aanswer": "batchpizza.api",
    "answer": "batchpizza.api",
    "stream": "batchpizza.api",
    "BatchpizzaError": "batchpizza.errors",
    "InputChanged": "batchpizza.errors",
    "InputError": "batchpizza.errors",
    "Interrupted": "batchpizza.errors",
    "LockedError": "batchpizza.errors",
    "MisuseDetected": "batchpizza.errors",
    "OutputError": "batchpizza.errors",
    "ProviderError": "batchpizza.errors",
    "UsageError": "batchpizza.errors",
    "arun": "batchpizza.job",
    "run": "batchpizza.job",
    "FinishReason": "batchpizza.providers.pizzagpt",
    "Pizzagpt": "batchpizza.providers.pizzagpt",
    "Outcome": "batchpizza.records",
    "Summary": "batchpizza.records",
    "format_prompt": "batchpizza.messages",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return _version()
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'batchpizza' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # The public names and the module's own dunders; not the helpers this module imports.
    return sorted({*_HOMES, "__version__", *(name for name in globals() if name.startswith("__"))})


def _version() -> str:
    from batchpizza.version import version

    globals()["__version__"] = found = version()
    return found


__all__ = [
    "BatchpizzaError",
    "FinishReason",
    "InputChanged",
    "InputError",
    "Interrupted",
    "LockedError",
    "MisuseDetected",
    "Outcome",
    "OutputError",
    "Pizzagpt",
    "ProviderError",
    "Summary",
    "UsageError",
    "aanswer",
    "answer",
    "arun",
    "format_prompt",
    "run",
    "stream",
]
