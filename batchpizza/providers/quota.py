"""Is an error reply the server saying the account's money or quota is gone (stop), rather than
asking us to slow down (retry)? Both come as 429 at OpenAI; only the body tells them apart.

    OpenAI         429 {"error": {"code": "insufficient_quota", "type": "insufficient_quota",
                   "message": "You exceeded your current quota, please check your plan and
                   billing details..."}}
    Azure OpenAI   429/403 "... quota ..." with code "InsufficientQuota"
    OpenRouter     402 "Insufficient credits" / "requires more credits"
    Anthropic      400 "Your credit balance is too low to access the Anthropic API"
    DeepSeek       402 "Insufficient Balance"
    Groq, Mistral, Together: 429/402 with "quota exceeded" or "billing" in the text

A plain rate limit ("Rate limit reached for ... tokens per min") is not one: it names no quota,
credit, balance or billing.

Nor does a limit of zero come back: a 429 announcing `x-ratelimit-limit-tokens: 0` (or
`-requests: 0`) says this key may send nothing at all. LiteLLM's proxy refuses every request of
a key, team or model whose tpm_limit or rpm_limit is 0 (a limit not set is not sent at all), so
a zero there is a quota of zero, never "unknown". In an answer, where it cannot be that (the
request passed), controls/tokens.py reads it as no limit announced; and a server that announced
it in an answer sends a placeholder, so its 429s saying the same are rate limits, retried.
"""

from __future__ import annotations

import re
from collections.abc import Container, Mapping
from typing import Any

from batchpizza.providers.limits import parse_rate_info
from batchpizza.records import RateInfo

QUOTA_CODES = frozenset({"insufficient_quota", "InsufficientQuota", "billing_hard_limit_reached"})
_QUOTA_TEXT = re.compile(
    r"(?i)insufficient[_ ](?:quota|credits?|balance|funds)|exceeded your current quota"
    r"|quota (?:has been )?exceeded|credit balance is too low|(?:more|out of) credits"
    r"|billing (?:details|hard limit)|payment required"
)


def quota_exhausted(status: int, error: Mapping[str, Any], message: str) -> bool:
    if status not in (400, 402, 403, 429):
        return False
    if error.get("code") in QUOTA_CODES or error.get("type") in QUOTA_CODES:
        return True
    if status == 402:
        return True  # Payment Required: nothing else is meant by it
    return bool(_QUOTA_TEXT.search(message))


def quota_spent(
    status: int,
    error: Mapping[str, Any],
    message: str,
    headers: Mapping[str, str],
    placeholders: Container[str] = (),
) -> str | None:
    """Why no later request can pass, when an error reply says so; else None. `placeholders`:
    the kinds ("tokens", "requests") whose limit of 0 this server announced in an answer: its
    0 is no limit there, so its 429s saying the same are rate limits (retried)."""
    if quota_exhausted(status, error, message):
        return "the account's quota or credit is spent"
    rate = parse_rate_info(headers) if status == 429 else None
    zeros = [] if rate is None else zero_limits(rate)
    zeros = [kind for kind in zeros if kind not in placeholders]
    if zeros:
        kind = zeros[0]
        return (
            f"the server allows this key nothing (x-ratelimit-limit-{kind}: 0); ask for a "
            "limit, or use another key"
        )
    return None


def zero_limits(rate: RateInfo) -> list[str]:
    """The kinds of limit ("tokens", "requests") `rate` announces as 0."""
    return [kind for kind, limit in (("tokens", rate.limit_tokens), ("requests", rate.limit))
            if limit == 0]  # fmt: skip
