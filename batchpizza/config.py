"""Every option of a run, in one frozen object shared by the CLI and the Python API."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from batchpizza.errors import UsageError

DEFAULT_BASE_URL = "https://www.pizzagpt.it"
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_CONCURRENCY = 8
DEFAULT_RATE = "2/s"  # polite to a free service
DEFAULT_MAX_RETRIES = 5
DEFAULT_TIMEOUT = 60.0
DEFAULT_PROMPT_FIELD = "prompt"
DEFAULT_MESSAGES_FIELD = "messages"
DEFAULT_ID_FIELD = "id"
# A misuse refusal is the service asking us to slow down or stop; insisting quickly makes it worse.
DEFAULT_MISUSE_RETRIES = 2
DEFAULT_MISUSE_BACKOFF = 30.0
DEFAULT_BACKOFF_BASE = 0.5
DEFAULT_BACKOFF_CAP = 30.0
DEFAULT_RETRY_AFTER_CAP = 300.0
# On SIGINT/SIGTERM, requests in flight get this long to finish before they are abandoned.
DEFAULT_GRACE = 5.0

OUTPUT_FORMATS = {".parquet": "parquet", ".jsonl": "jsonl"}
_PERIODS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}
_RATE = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?:/\s*(?P<per>[a-z]+))?\s*$", re.IGNORECASE)


def parse_rate(value: str | float | int) -> float:
    """`5`, `5/s`, `300/min`, `1000/h` -> requests per second; 0 means unlimited."""
    if isinstance(value, (int, float)):
        rate = float(value)
    else:
        match = _RATE.match(value)
        per = (match["per"] or "s").lower() if match else ""
        if not match or per not in _PERIODS:
            raise UsageError(
                f"--rate {value!r}: expected a number per s, min or h, e.g. 5/s or 300/min"
            )
        rate = float(match["n"]) / _PERIODS[per]
    if not math.isfinite(rate) or rate < 0:
        raise UsageError(f"--rate {value!r}: must be 0 (unlimited) or a positive rate")
    return rate


def output_format(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise UsageError(f"output {path!r}: the extension must be .parquet or .jsonl")
    return OUTPUT_FORMATS[suffix]


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    input: str
    output: str
    prompt_field: str | None = None  # None: the default, and the user did not choose it
    messages_field: str | None = None
    id_field: str | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    rate: float | str = DEFAULT_RATE
    max_retries: int = DEFAULT_MAX_RETRIES
    timeout: float = DEFAULT_TIMEOUT
    proxy: str | None = None
    base_url: str = DEFAULT_BASE_URL
    checkpoint: str | None = None
    restart: bool = False
    skip_bad_rows: bool = False
    progress: bool | None = None  # None: a bar when stderr is a terminal
    summary_json: str | None = None
    quiet: bool = False
    verbose: bool = False
    misuse_retries: int = DEFAULT_MISUSE_RETRIES
    misuse_backoff: float = DEFAULT_MISUSE_BACKOFF
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_cap: float = DEFAULT_BACKOFF_CAP
    retry_after_cap: float = DEFAULT_RETRY_AFTER_CAP
    grace: float = DEFAULT_GRACE
    mock: bool = False  # answer from the bundled mock server, in-process: the offline demo
    rate_per_s: float = field(init=False)
    output_format: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate_per_s", parse_rate(self.rate))
        object.__setattr__(self, "output_format", output_format(self.output))
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        if self.concurrency < 1:
            raise UsageError("--concurrency must be at least 1")
        if self.max_retries < 0 or self.misuse_retries < 0:
            raise UsageError("--max-retries must be 0 or more")
        if not self.timeout > 0:
            raise UsageError("--timeout must be a positive number of seconds")
        if not self.base_url.lower().startswith(("http://", "https://")):
            raise UsageError(f"--base-url {self.base_url!r}: must start with http:// or https://")
        if self.proxy and not self.proxy.lower().startswith(("http://", "https://")):
            raise UsageError("--proxy: must be an http:// or https:// URL")

    @classmethod
    def from_options(cls, input: str, output: str, **options: Any) -> RunConfig:
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(options) - known)
        if unknown:
            raise UsageError(f"unknown option(s): {', '.join(unknown)}")
        # The same environment defaults as the command line's, so a pipeline behaves alike.
        for name, variable in (("base_url", "BATCHPIZZA_BASE_URL"), ("proxy", "BATCHPIZZA_PROXY")):
            if options.get(name) is None and os.environ.get(variable):
                options[name] = os.environ[variable]
        if options.get("base_url") is None:
            options.pop("base_url", None)
        return cls(input=str(input), output=str(output), **options)

    @property
    def checkpoint_path(self) -> Path:
        if self.checkpoint:
            return Path(self.checkpoint)
        # Mock answers get a checkpoint of their own, so that a later real run on the same
        # output sends every prompt instead of taking the mock's answers as done.
        return Path(self.output + (".mock-checkpoint" if self.mock else ".checkpoint"))

    @property
    def fields_named(self) -> tuple[str, str, str]:
        return (
            self.prompt_field or DEFAULT_PROMPT_FIELD,
            self.messages_field or DEFAULT_MESSAGES_FIELD,
            self.id_field or DEFAULT_ID_FIELD,
        )
