"""batchpizza: send thousands to millions of prompts through the Pizzagpt web API, crash-safely.

from batchpizza import run
summary = run("prompts.jsonl", "out.parquet", concurrency=16, rate="5/s")
answered = batchpizza.answer(dataframe, prompt_field="question")   # the same type back
"""

from importlib import metadata as _metadata

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
from batchpizza.providers.pizzagpt import FinishReason, Pizzagpt
from batchpizza.records import Outcome, Summary
from batchpizza.rows import format_prompt

try:
    __version__ = _metadata.version("batchpizza")
except _metadata.PackageNotFoundError:  # pragma: no cover - a source tree not installed
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
    "aanswer",
    "answer",
    "arun",
    "format_prompt",
    "run",
    "stream",
]
