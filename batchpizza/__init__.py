"""batchpizza: send thousands to millions of prompts through the Pizzagpt web API, crash-safely.

from batchpizza import run
summary = run("prompts.jsonl", "out.parquet", concurrency=16, rate="5/s")
"""

from importlib.metadata import PackageNotFoundError, version

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
from batchpizza.providers.pizzagpt import FinishReason, Pizzagpt
from batchpizza.records import Outcome, Summary
from batchpizza.rows import format_prompt

try:
    __version__ = version("batchpizza")
except PackageNotFoundError:  # pragma: no cover - run from a source tree that is not installed
    __version__ = "0.0.0"

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
    "__version__",
    "arun",
    "format_prompt",
    "run",
]
