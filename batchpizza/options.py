"""The options of a run as the Python API's keyword arguments, each with its type, so that mypy
checks a call: `answer(df, rate="5/s", concurrency=16)`. The names are RunConfig's fields and the
command line's long options with `_` for `-` (a test keeps the three equal); the README's option
table says what each does and its default."""

from __future__ import annotations

import decimal
import numbers
import os
import types
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, TypedDict, Union, get_args, get_origin, get_type_hints

from batchpizza.errors import UsageError


class Options(TypedDict, total=False):
    prompt_field: str | None  # the field holding the prompt (None: "prompt")
    messages_field: str | None  # the field holding a chat message list (None: "messages")
    id_field: str | None  # the field holding the row's id (None: "id"; else the row's position)
    concurrency: int  # requests in flight at most (8)
    rate: float | str | None  # "2/s" (None), "300/min", 0 for unlimited, "auto" or "auto:MAX"
    max_retries: int  # retries after the first attempt (5)
    timeout: float | timedelta  # seconds per attempt (60)
    proxy: str | None  # a proxy URL (else BATCHPIZZA_PROXY / HTTPS_PROXY ...)
    base_url: str | None  # the server (None: Pizzagpt's; else BATCHPIZZA_BASE_URL)
    checkpoint: (
        str | os.PathLike[str] | None
    )  # a checkpoint file: the same call again sends only what is unfinished
    restart: bool  # forget the checkpoint's answers first
    retry_refused: bool  # send again rows refused as misuse by an earlier run
    skip_bad_rows: bool  # run the good rows; bad ones become `invalid` rows
    progress: bool | None  # a progress bar (None: when stderr is a terminal or a notebook)
    summary_json: str | os.PathLike[str] | None  # write the summary as JSON there
    quiet: bool  # errors only
    verbose: bool  # log each retry
    misuse_retries: int  # re-asks of a misuse refusal (2)
    misuse_backoff: float | timedelta  # seconds before a misuse re-ask (30)
    backoff_base: float | timedelta  # first retry wait, seconds, doubling (0.5)
    backoff_cap: float | timedelta  # longest retry wait, seconds (30)
    retry_after_cap: float | timedelta  # longest Retry-After obeyed, seconds (300)
    grace: float | timedelta  # seconds requests in flight get after a stop (5)
    mock: bool  # answer from the bundled mock server (offline)
    deadline: float | str | timedelta | None  # stop sending after this long ("50m"; from start)
    patience: float | str | timedelta  # how long the breaker may wait on a refusing service
    dry_run: bool  # plan and print, send nothing
    limit: int | None  # the first N rows only
    samples: int  # ask each request N times: N answers, N output rows with `sample` (1)
    progress_every: float | timedelta  # seconds between progress lines off a terminal (60)
    provider: str  # "pizzagpt" (default) or "openai"
    model: str | None  # the model (OpenAI-compatible servers)
    params: dict[str, Any] | list[str] | None  # body parameters: a dict, or KEY=VALUE texts
    api_key_env: str  # the variable holding the API key ("OPENAI_API_KEY")
    format: str | None  # the output file's format (run/arun only)
    input_label: str | None  # what messages call the input ("<data>" for rows in memory)
    log_format: str  # "text" or "json"
    system: str | None  # a system message first in every request
    template: str | None  # the prompt built from the row's fields: "Summarise: {title}"
    template_file: (
        str | os.PathLike[str] | None
    )  # a Jinja2 template file (needs batchpizza[templates])
    prompt: Callable[[dict[str, Any]], str] | None  # the row (a dict) -> its prompt (Python only)
    via: str  # "online", "batch" (the Batch API, half price) or "auto" (that, online late)
    wait: bool  # --via batch: wait for the batches, up to the deadline, instead of exit 4
    schema: str | os.PathLike[str] | Mapping[str, Any] | type | None  # path, dict, pydantic class
    schema_retries: int  # re-asks of an answer that does not fit the schema (2)
    flatten: bool  # the schema's top-level properties as columns instead of `parsed`
    tpm: float | str | None  # tokens per minute (20000, "20k") or "auto" (the server's headers)
    max_cost: float | None  # stop before the spend on this checkpoint passes this many dollars
    price: str | None  # "IN,OUT" dollars per million input and output tokens


# Options that name a file: a path object is taken as its text.
PATHS = ("checkpoint", "summary_json", "template_file", "schema")


def plain(options: dict[str, Any]) -> None:
    """numpy's bools as bool, Decimals as float and numpy's numbers as Python's, in place: they
    ran whole calls before the type check (`restart=df.done.any()`, a cap kept as a Decimal),
    and the run computes with, and records (JSON), Python's own (`limit=np.int64(3)` could not
    be recorded)."""
    for name, value in options.items():
        kind = type(value)
        if kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_"):
            options[name] = bool(value)
        elif kind.__module__ == "numpy" and isinstance(value, numbers.Integral):
            options[name] = int(value)
        elif kind.__module__ == "numpy" and isinstance(value, numbers.Real):
            options[name] = float(value)
        elif isinstance(value, decimal.Decimal):
            # A signalling NaN raises in float(): a NaN, then, refused by its option's check.
            options[name] = float("nan") if value.is_snan() else float(value)


def durations_in_seconds(options: dict[str, Any]) -> None:
    """A duration given as a timedelta (`deadline=timedelta(minutes=50)`), in place, as its
    seconds: then checked as that number would be (negative refused; zero where it is)."""
    for name, value in options.items():
        if isinstance(value, timedelta):
            options[name] = value.total_seconds()


def check_types(options: Mapping[str, Any]) -> None:
    """Refuse an option of the wrong type (`concurrency="x"`, `max_cost="lots"`) with its name and
    what it takes, before anything compares or computes with it (a TypeError from deep inside
    said neither). Names that are not options are left to the caller."""
    hints = get_type_hints(Options)
    for name, value in options.items():
        hint = hints.get(name)
        if hint is not None and not _fits(value, hint):
            raise UsageError(
                f"{name}={value!r}: expected {_said(hint)}, not {type(value).__name__}"
            )


def _fits(value: Any, hint: Any) -> bool:
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        return any(_fits(value, arm) for arm in get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    # True is an int to Python, not a count to a user; numpy's numbers are numbers (Integral).
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is type:
        return isinstance(value, type)
    if origin is Callable or hint is Callable:
        return callable(value)
    if origin is list:  # KEY=VALUE texts
        return isinstance(value, list) and all(_fits(v, get_args(hint)[0]) for v in value)
    if origin is not None:  # dict[...], Mapping[...]: the container's kind
        return isinstance(value, origin)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _said(hint: Any) -> str:
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        return " or ".join(_said(arm) for arm in get_args(hint))
    if hint is type(None):
        return "None"
    if origin is Callable or hint is Callable:
        return "a function"
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(hint, "__name__", str(hint))
