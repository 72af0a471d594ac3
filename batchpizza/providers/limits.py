"""What an OpenAI-compatible server says of its limits in reply headers: the request limit
(x-ratelimit-*-requests) and how long to wait (retry-after-ms, Retry-After)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from batchpizza.providers.http import parse_retry_after
from batchpizza.records import RateInfo

# Go's time.Duration text, as OpenAI's x-ratelimit-reset-* headers carry it: "1s", "6m0s", "20ms".
_DURATION = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h|d))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # micro sign, as Go prints it
    "μs": 1e-6,  # Greek mu, which some servers send instead
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def parse_duration(value: str | None) -> float | None:
    """Seconds in OpenAI's duration text ("1s", "6m0s", "1.5s", "20ms", "1h2m3s") or a bare number
    of seconds; None when absent or unreadable."""
    if not value:
        return None
    text = value.strip().lower()
    plain = _number(text)
    if plain is not None:
        return plain
    if not _DURATION.fullmatch(text):
        return None
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


def parse_rate_info(headers: Mapping[str, str]) -> RateInfo | None:
    """The request and token limits a reply announces in x-ratelimit-{limit,remaining,reset}-
    {requests,tokens}; None when it announces none. A value missing or unreadable is None.
    (`headers` should be case-insensitive, as aiohttp's are.)"""
    info = RateInfo(
        limit=_number(_header(headers, "limit-requests")),
        remaining=_number(_header(headers, "remaining-requests")),
        reset_s=parse_duration(_header(headers, "reset-requests")),
        limit_tokens=_number(_header(headers, "limit-tokens")),
        remaining_tokens=_number(_header(headers, "remaining-tokens")),
        reset_tokens_s=parse_duration(_header(headers, "reset-tokens")),
    )
    return None if info == RateInfo() else info


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """x-ratelimit-`name`, else the upstream's as LiteLLM's proxy passes it on (it forwards
    some of them under their own name, the resets only as llm_provider-x-ratelimit-...)."""
    value = headers.get(f"x-ratelimit-{name}")
    return value if value is not None else headers.get(f"llm_provider-x-ratelimit-{name}")


def retry_after_of(headers: Mapping[str, str]) -> float | None:
    """How long the server asks us to wait, in seconds: `retry-after-ms` when present (OpenAI's
    more precise header, preferred as openai-python does), else `Retry-After` (seconds or date)."""
    millis = _number(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    return parse_retry_after(headers.get("Retry-After"))
