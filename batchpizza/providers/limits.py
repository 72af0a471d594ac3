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
    limit, remaining, reset = _announced(headers, "requests")
    limit_tokens, remaining_tokens, reset_tokens = _announced(headers, "tokens")
    info = RateInfo(
        limit=_number(limit),
        remaining=_number(remaining),
        reset_s=parse_duration(reset),
        limit_tokens=_number(limit_tokens),
        remaining_tokens=_number(remaining_tokens),
        reset_tokens_s=parse_duration(reset_tokens),
    )
    return None if info == RateInfo() else info


def _announced(headers: Mapping[str, str], kind: str) -> tuple[str | None, ...]:
    """x-ratelimit-{limit,remaining,reset}-`kind`, else the upstream's as LiteLLM's proxy passes
    them on (llm_provider-x-ratelimit-...). Never a mix of two limits: the proxy sends its own
    limit for a key with limits (a minute's), and the upstream's reset (of a window of its own)
    beside it made a window of neither; the upstream's reset fills in only when the proxy's
    limit and remaining are the upstream's passed on (it drops the resets)."""
    own = [headers.get(f"x-ratelimit-{what}-{kind}") for what in ("limit", "remaining", "reset")]
    upstream = [
        headers.get(f"llm_provider-x-ratelimit-{what}-{kind}")
        for what in ("limit", "remaining", "reset")
    ]
    if all(value is None for value in own):
        return tuple(upstream)
    passed_on = all(o is None or o == u for o, u in zip(own[:2], upstream[:2], strict=True))
    if own[2] is None and passed_on:
        return own[0], own[1], upstream[2]
    return tuple(own)


def retry_after_of(headers: Mapping[str, str]) -> float | None:
    """How long the server asks us to wait, in seconds: `retry-after-ms` when present (OpenAI's
    more precise header, preferred as openai-python does), else `Retry-After` (seconds or date)."""
    millis = _number(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    return parse_retry_after(headers.get("Retry-After"))
