"""batchpizza: send thousands to millions of prompts through the Pizzagpt web API, crash-safely.

from batchpizza import run
summary = run("prompts.jsonl", "out.parquet", concurrency=16, rate="5/s")
"""

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
from batchpizza.rows import format_prompt

__all__ = [
    "BatchpizzaError",
    "FinishReason",
    "InputChanged",
    "InputError",
    "Interrupted",
    "LockedError",
    "MisuseDetected",
    "OutputError",
    "Pizzagpt",
    "ProviderError",
    "UsageError",
    "arun",
    "format_prompt",
    "run",
]
__version__ = "0.1.0"
