"""What an OpenAI-compatible server says of its limits in reply headers, as read."""

from __future__ import annotations

import pytest

from batchpizza.controls.tokens import learned_rate
from batchpizza.providers.limits import parse_duration, parse_rate_info, retry_after_of
from batchpizza.records import RateInfo


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("1.5s", 1.5),
        ("20ms", 0.02),
        ("2m59.56s", 179.56),
        ("1h2m3.5s", 3723.5),
        ("100us", 1e-4),
        ("100µs", 1e-4),
        ("0s", 0.0),
        (" 17ms ", 0.017),
        ("0.5", 0.5),
        ("12", 12.0),
        ("1d", 86400.0),
        (".5s", 0.5),
    ],
)
def test_parse_duration_reads_openai_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "s", "abc", "1x", "-1s", "1s-", "1 s", "nan", "inf"])
def test_parse_duration_gives_none_for_what_it_cannot_read(text: str | None) -> None:
    assert parse_duration(text) is None


def test_parse_rate_info() -> None:
    assert parse_rate_info({}) is None
    # The token limit is read beside the request limit, never mistaken for it.
    assert parse_rate_info({"x-ratelimit-limit-tokens": "5"}) == RateInfo(limit_tokens=5)
    assert parse_rate_info({"x-ratelimit-remaining-requests": "3"}) == RateInfo(remaining=3)
    assert parse_rate_info(
        {
            "x-ratelimit-limit-requests": "soon",
            "x-ratelimit-remaining-requests": "-1",
            "x-ratelimit-reset-requests": "20ms",
        }
    ) == RateInfo(reset_s=0.02)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),  # missing
        (
            {"x-ratelimit-limit-tokens": "0", "x-ratelimit-remaining-tokens": "0"},
            RateInfo(limit_tokens=0, remaining_tokens=0),
        ),
        (
            {"x-ratelimit-limit-tokens": "lots", "x-ratelimit-reset-tokens": "soonish"},
            None,  # garbage reads as nothing said
        ),
        (
            {"x-ratelimit-limit-tokens": "30000", "x-ratelimit-reset-tokens": "6m0s"},
            RateInfo(limit_tokens=30000, reset_tokens_s=360.0),
        ),
        (
            {"x-ratelimit-remaining-tokens": "12", "x-ratelimit-reset-tokens": "1.5s"},
            RateInfo(remaining_tokens=12, reset_tokens_s=1.5),
        ),
    ],
)
def test_token_headers_with_odd_values(headers: dict[str, str], expected: RateInfo | None) -> None:
    assert parse_rate_info(headers) == expected


# LiteLLM's proxy passes the upstream's headers on as llm_provider-x-ratelimit-*; its own
# x-ratelimit-* are the upstream's passed on, or its own limits for a key that has some.
KEYED = {
    "x-ratelimit-limit-tokens": "10000",
    "x-ratelimit-remaining-tokens": "9000",
    "llm_provider-x-ratelimit-limit-tokens": "3000",
    "llm_provider-x-ratelimit-remaining-tokens": "2952",
    "llm_provider-x-ratelimit-reset-tokens": "1s",
}


@pytest.mark.parametrize(
    ("headers", "expected", "learned"),
    [
        pytest.param(
            # LiteLLM (1.108) sends the upstream's x-ratelimit-limit/remaining-tokens, but its
            # reset only as llm_provider-x-ratelimit-reset-tokens: --tpm auto took the window
            # for a minute, 45 tokens/s against an upstream allowing 600 (3,000 a 5 s window).
            {
                "x-ratelimit-limit-tokens": "3000",
                "x-ratelimit-remaining-tokens": "2952",
                "llm_provider-x-ratelimit-limit-tokens": "3000",
                "llm_provider-x-ratelimit-remaining-tokens": "2952",
                "llm_provider-x-ratelimit-reset-tokens": "0.080s",
                "llm_provider-x-ratelimit-reset-requests": "1s",
            },
            RateInfo(reset_s=1.0, limit_tokens=3000, remaining_tokens=2952, reset_tokens_s=0.08),
            600.0,
            id="passed-on-resets-fill-in",
        ),
        pytest.param(
            # The proxy's own headers win where it sends both.
            {"x-ratelimit-limit-tokens": "10", "llm_provider-x-ratelimit-limit-tokens": "99"},
            RateInfo(limit_tokens=10),
            10 / 60,
            id="proxys-own-win",
        ),
        pytest.param(
            # With limits on the key LiteLLM sends the key's (a minute's) as x-ratelimit-*, the
            # upstream's as llm_provider-x-ratelimit-*: its reset (of a 5 s window) beside the
            # key's limit made a 10 s window, 60,000 tokens a minute learned for a key allowed
            # 10,000.
            KEYED,
            RateInfo(limit_tokens=10000, remaining_tokens=9000),
            10000 / 60,
            id="key-limit-not-with-upstream-reset",
        ),
        pytest.param(
            # Only the upstream's: all of them.
            {k: v for k, v in KEYED.items() if k.startswith("llm_provider")},
            RateInfo(limit_tokens=3000, remaining_tokens=2952, reset_tokens_s=1.0),
            48.0,
            id="upstreams-only",
        ),
    ],
)
def test_the_headers_litellm_sends(
    headers: dict[str, str], expected: RateInfo, learned: float
) -> None:
    info = parse_rate_info(headers)
    assert info == expected
    assert learned_rate(info.limit_tokens, info.remaining_tokens, info.reset_tokens_s) == (
        pytest.approx(learned)
    )


def test_retry_after_of() -> None:
    assert retry_after_of({}) is None
    assert retry_after_of({"Retry-After": "3"}) == 3.0
    assert retry_after_of({"retry-after-ms": "250", "Retry-After": "3"}) == 0.25
    assert retry_after_of({"retry-after-ms": "soon", "Retry-After": "3"}) == 3.0
