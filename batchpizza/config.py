"""Every option of a run, in one frozen object shared by the CLI and the Python API."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchpizza.batchapi.settings import check_via
from batchpizza.budgeting import check_cost, parse_tpm
from batchpizza.errors import UsageError
from batchpizza.numbers import check_seconds
from batchpizza.options import PATHS, check_types, durations_in_seconds, plain
from batchpizza.parsing import (
    check_params,
    check_url,
    output_format,
    parse_duration,
    parse_params,
    parse_rate_option,
)
from batchpizza.pricing import Price

if TYPE_CHECKING:
    from batchpizza.structured import Structured

DEFAULT_BASE_URL = "https://www.pizzagpt.it"
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_CONCURRENCY = 8
DEFAULT_RATE = "2/s"  # polite to a free service
# --mock without --rate: the bundled mock is no one's free service, and the README's demo should
# not take minutes.
DEFAULT_MOCK_RATE = "20/s"
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
# On SIGINT/SIGTERM or at the deadline, requests in flight get this long to finish before they
# are abandoned.
DEFAULT_GRACE = 5.0
DEFAULT_PATIENCE = "10m"  # how long the breaker may keep the run waiting on a refusing service
DEFAULT_PROGRESS_EVERY = 60.0  # seconds between progress lines when stderr is not a terminal
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
PROVIDERS = ("pizzagpt", "openai")
LOG_FORMATS = ("text", "json")
FORMATS = ("parquet", "jsonl", "openai-batch")
MAX_SAMPLES = 10_000  # --repeat: samples of each request at most
# The options that are a number of seconds (besides --deadline and --patience, read as text too).
# Each as an error names it: the Python-only ones by their keyword.
SECONDS = {
    "timeout": "--timeout",
    "progress_every": "--progress-every",
    "misuse_backoff": "misuse_backoff",
    "backoff_base": "backoff_base",
    "backoff_cap": "backoff_cap",
    "retry_after_cap": "retry_after_cap",
    "grace": "grace",
}


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    # The input and output files; None for rows held in memory (answer(), a Ray actor's batch).
    input: str | None = None
    output: str | None = None
    prompt_field: str | None = None  # None: the default, and the user did not choose it
    messages_field: str | None = None
    id_field: str | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    rate: float | str | None = None  # None: DEFAULT_RATE, or DEFAULT_MOCK_RATE under mock
    max_retries: int = DEFAULT_MAX_RETRIES
    timeout: float = DEFAULT_TIMEOUT
    proxy: str | None = None
    base_url: str = DEFAULT_BASE_URL
    checkpoint: str | None = None
    restart: bool = False
    # Rows refused as misuse by an earlier run are kept as misuse unless asked: the service
    # judged those prompts, and asking every rerun again only spends its patience.
    retry_refused: bool = False
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
    deadline: float | str | None = None  # seconds from the start of the process
    patience: float | str = DEFAULT_PATIENCE
    dry_run: bool = False
    limit: int | None = None
    samples: int = 1  # each request asked this many times (--repeat): an output row per sample
    progress_every: float = DEFAULT_PROGRESS_EVERY
    provider: str = "pizzagpt"
    model: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    api_key_env: str = DEFAULT_API_KEY_ENV
    format: str | None = None  # None: from the output's extension
    input_label: str | None = None  # what messages call the input (in-memory data: "<data>")
    log_format: str = "text"  # of the log lines on stderr: "text", or "json" (one object a line)
    system: str | None = None  # a system message first in every request
    template: str | None = None  # builds each row's prompt from its fields: "Q: {title}"
    template_file: str | None = None  # a Jinja2 template file doing the same
    prompt: Callable[[dict[str, Any]], str] | None = None  # Python only: the row -> its prompt
    via: str = "online"  # "batch": through the Batch API at half price; "auto": that, online late
    wait: bool = False  # --via batch: wait for the batches (up to --deadline) instead of exit 4
    schema: Any = None  # --schema: a JSON Schema's path; in Python also a dict or pydantic class
    schema_retries: int = 2  # re-asks of an answer that does not fit the schema
    flatten: bool = False  # the schema's top-level properties as columns, instead of `parsed`
    tpm: float | str | None = None  # tokens per minute: a number, or "auto" (budgeting.py)
    max_cost: float | None = None  # US dollars, counted across runs on the checkpoint
    price: str | None = None  # "IN,OUT" dollars per million tokens (else pricing.PRICES)
    rate_per_s: float = field(init=False)
    auto_max: float | None = field(init=False)  # set under --rate auto: the learned rate's ceiling
    output_format: str | None = field(init=False)  # None: no output file
    deadline_s: float | None = field(init=False)
    patience_s: float = field(init=False)
    # --template-file's (name, text), read once here, so that every process (a Ray actor too)
    # builds from the same text.
    template_source: tuple[str, str] | None = field(init=False)
    structured: Structured | None = field(init=False)  # the checked schema, None without one
    tpm_per_s: float | None = field(init=False)  # tokens per second under --tpm N
    tpm_auto: bool = field(init=False)
    price_per_m: Price | None = field(init=False)  # the price charged, where one is known

    def __post_init__(self) -> None:
        if self.rate is None:
            object.__setattr__(self, "rate", DEFAULT_MOCK_RATE if self.mock else DEFAULT_RATE)
        assert self.rate is not None
        rate, auto_max = parse_rate_option(self.rate)
        object.__setattr__(self, "rate_per_s", rate)
        object.__setattr__(self, "auto_max", auto_max)
        fmt = None if self.output is None else output_format(self.output, self.format)
        object.__setattr__(self, "output_format", fmt)
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        deadline = None if self.deadline is None else parse_duration(self.deadline, "--deadline")
        object.__setattr__(self, "deadline_s", deadline)
        object.__setattr__(self, "patience_s", parse_duration(self.patience, "--patience"))
        if self.limit is not None and self.limit < 0:
            raise UsageError("--limit must be 0 or more")
        if not 1 <= self.samples <= MAX_SAMPLES:
            raise UsageError(f"--repeat must be from 1 to {MAX_SAMPLES:,}")
        if self.samples > 1 and fmt == "openai-batch":
            raise UsageError(
                "--repeat with --format openai-batch: a batch file has one line per custom_id; "
                "write .jsonl or .parquet (each sample a row with its `sample`)"
            )
        if self.provider not in PROVIDERS:
            raise UsageError(f"--provider {self.provider!r}: one of {', '.join(PROVIDERS)}")
        if self.provider == "pizzagpt" and self.model not in (None, DEFAULT_MODEL):
            raise UsageError(f"--model {self.model!r}: Pizzagpt serves only {DEFAULT_MODEL}")
        if self.provider == "pizzagpt" and self.params:
            # Its request is the question alone: a parameter would be dropped, and the answers
            # reused as if it had been sent.
            raise UsageError(
                f"--param {', '.join(sorted(self.params))}: Pizzagpt's requests carry the question "
                "alone, so no parameter would be sent; drop --param, or use --provider openai"
            )
        if self.log_format not in LOG_FORMATS:
            raise UsageError(f"--log-format {self.log_format!r}: one of {', '.join(LOG_FORMATS)}")
        for name in SECONDS:
            check_seconds(getattr(self, name), SECONDS[name])
        if self.progress_every <= 0:
            raise UsageError("--progress-every must be a positive number of seconds")
        if self.concurrency < 1:
            raise UsageError("--concurrency must be at least 1")
        if self.max_retries < 0 or self.misuse_retries < 0:
            raise UsageError("--max-retries must be 0 or more")
        if not self.timeout > 0:
            raise UsageError("--timeout must be a positive number of seconds")
        check_params(self.params or {})
        from batchpizza.structured.options import structured_of

        structured = structured_of(self.schema, self.schema_retries, self.flatten, self.params)
        object.__setattr__(self, "structured", structured)
        object.__setattr__(self, "template_source", self._check_building())
        tpm_per_s, tpm_auto = parse_tpm(self.tpm)
        object.__setattr__(self, "tpm_per_s", tpm_per_s)
        object.__setattr__(self, "tpm_auto", tpm_auto)
        price = check_cost(self.max_cost, self.price, self.provider, self.model)
        object.__setattr__(self, "price_per_m", price)
        check_url(self.base_url, "--base-url")
        check_via(
            self.via, self.provider, self.schema is not None, tpm_per_s is not None or tpm_auto
        )
        if self.proxy:
            check_url(self.proxy, "--proxy")

    def _check_building(self) -> tuple[str, str] | None:
        """A usage error for options that cannot build prompts; --template-file's text."""
        chosen = [
            n for n in ("template", "template_file", "prompt") if getattr(self, n) is not None
        ]
        if len(chosen) > 1:
            shown = " and ".join("--" + n.replace("_", "-") for n in chosen)
            raise UsageError(f"{shown}: give one way to build the prompt")
        if self.system is not None and not self.system.strip():
            raise UsageError("--system is empty; give the system message's text, or leave it out")
        if self.prompt is not None and not callable(self.prompt):
            raise UsageError("prompt= must be a function taking the row (a dict) to its prompt")
        if chosen and self.messages_field is not None:
            raise UsageError(
                f"--messages-field: the prompt is built by --{chosen[0].replace('_', '-')}; "
                "rows need no messages"
            )
        if self.template is not None:
            from batchpizza.prompts import FormatTemplate

            FormatTemplate(self.template)  # a usage error now, not a bad row per row
        if self.template_file is None:
            return None
        try:
            text = Path(self.template_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or exc
            raise UsageError(f"--template-file {self.template_file}: cannot read: {why}") from None
        from batchpizza.prompts import JinjaTemplate

        JinjaTemplate(text, self.template_file)  # a syntax error is a usage error
        return self.template_file, text

    @classmethod
    def from_options(
        cls, input: str | None = None, output: str | None = None, **options: Any
    ) -> RunConfig:
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(options) - known)
        if unknown:
            raise UsageError(f"unknown option(s): {', '.join(unknown)}")
        if isinstance(options.get("params"), tuple):  # the command line's repeated --param
            options["params"] = list(options["params"])
        plain(options)
        check_types(options)
        durations_in_seconds(options)
        if "params" in options and options["params"] is None:
            del options["params"]  # no parameters, as before the type check
        for name in PATHS:
            if isinstance(options.get(name), os.PathLike):
                options[name] = os.fspath(options[name])
        if isinstance(options.get("params"), list):
            options["params"] = parse_params(options["params"])
        # The same environment defaults as the command line's, so a pipeline behaves alike.
        for name, variable in (("base_url", "BATCHPIZZA_BASE_URL"), ("proxy", "BATCHPIZZA_PROXY")):
            if options.get(name) is None and os.environ.get(variable):
                options[name] = os.environ[variable]
        if options.get("base_url") is None:
            options.pop("base_url", None)
        return cls(
            input=None if input is None else str(input),
            output=None if output is None else str(output),
            **options,
        )

    @property
    def checkpoint_path(self) -> Path | None:
        """The checkpoint's file; None for rows in memory without one (kept in memory)."""
        if self.checkpoint:
            return Path(self.checkpoint)
        if self.output is None:
            return None
        # Mock answers get a checkpoint of their own, so that a later real run on the same
        # output sends every prompt instead of taking the mock's answers as done.
        return Path(self.output + (".mock-checkpoint" if self.mock else ".checkpoint"))

    def refuse_on_ray(self) -> None:
        """Prompts built or given a system message, --schema, token pacing and a money cap are
        not run on a Ray cluster yet."""
        if self.via != "online":
            raise UsageError(f"--via {self.via}: not with --ray; the Batch API needs no cluster")
        named = [
            n
            for n in ("system", "template", "template_file", "prompt", "schema")
            if getattr(self, n)
        ]
        named += [n for n in ("tpm", "max_cost") if getattr(self, n) is not None]
        if named:
            shown = ", ".join("--" + n.replace("_", "-") for n in named)
            raise UsageError(f"{shown}: not with --ray yet (batchpizza.ray); run without it")

    @property
    def fields_named(self) -> tuple[str, str, str]:
        return (
            self.prompt_field or DEFAULT_PROMPT_FIELD,
            self.messages_field or DEFAULT_MESSAGES_FIELD,
            self.id_field or DEFAULT_ID_FIELD,
        )
