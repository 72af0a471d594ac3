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

A limit of zero says this key may send nothing at all only where nothing else is said: a 429
announcing `x-ratelimit-limit-tokens: 0` (or `-requests: 0`) with `-remaining-` 0 and no
`-reset-` (no window that would refill) is a quota of zero, and stops the run at once. LiteLLM's
proxy refuses every request of a key, team or model whose tpm_limit or rpm_limit is 0 (a limit
not set is not sent at all). But some servers send 0 as a placeholder for "no limit
configured": a zero beside a reset, or without a remaining of 0, is ambiguous. Such a 429 is
retried as any other, and only a row that got ZERO_LIMIT_TRIES of them in a row concludes the
quota is zero (`concluded`): a few requests spent, not a run stopped by a placeholder's first
429. In an answer, where a zero cannot be a limit (the request passed), controls/tokens.py reads
it as no limit announced; and a server that announced it in an answer sends a placeholder, so
its 429s saying the same are rate limits, retried.
"""

from __future__ import annotations

import re
from collections.abc import Container, Mapping, Sequence
from typing import Any

from batchpizza.errors import ProviderError, QuotaExhausted
from batchpizza.providers.limits import parse_rate_info
from batchpizza.records import Attempt, RateInfo

# 429s announcing a limit of 0 that may be a placeholder (`zero_unsure`), in a row for one row,
# after which the quota is taken as zero: its first try and two retries.
ZERO_LIMIT_TRIES = 3

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
    """Why no later request can pass, when an error reply says so for sure; else None.
    `placeholders`: the kinds ("tokens", "requests") whose limit of 0 this server announced in
    an answer: its 0 is no limit there, so its 429s saying the same are rate limits (retried)."""
    if quota_exhausted(status, error, message):
        return "the account's quota or credit is spent"
    rate = parse_rate_info(headers) if status == 429 else None
    if rate is None:
        return None
    for kind in zero_limits(rate):
        if kind not in placeholders and _never_refills(rate, kind):
            return nothing_allowed(kind)
    return None


def zero_unsure(
    status: int, headers: Mapping[str, str], placeholders: Container[str] = ()
) -> str | None:
    """The kind whose limit a 429 announces as 0 without saying it never refills (a reset
    beside it, or no remaining of 0): a placeholder or a quota of zero; None if none."""
    rate = parse_rate_info(headers) if status == 429 else None
    if rate is None:
        return None
    kinds = [kind for kind in zero_limits(rate) if kind not in placeholders]
    return kinds[0] if kinds else None


def concluded(
    error: ProviderError, attempts: Sequence[Attempt], max_retries: int
) -> QuotaExhausted | None:
    """A quota of zero after all: the row's last ZERO_LIMIT_TRIES replies (`error` the last,
    not yet in `attempts`) were 429s, the last announcing a limit of 0 (`zero_unsure`). Under
    a --max-retries that allows fewer tries, all of them: else the row failed as rate limited
    and the next was sent, every row of the run tried against a quota of zero."""
    kind = error.zero_limit
    if kind is None or error.status is None:
        return None
    before = 0
    for attempt in reversed(attempts):
        if attempt.status != 429:
            break
        before += 1
    if before + 1 < min(ZERO_LIMIT_TRIES, max_retries + 1):
        return None
    tries = before + 1
    said = f"{tries} such replies in a row" if tries > 1 else "the only try --max-retries allows"
    return QuotaExhausted(error.status, f"{error.message} [{nothing_allowed(kind)}: {said}]")


def nothing_allowed(kind: str) -> str:
    return (
        f"the server allows this key nothing (x-ratelimit-limit-{kind}: 0); ask for a "
        "limit, or use another key"
    )


def _never_refills(rate: RateInfo, kind: str) -> bool:
    """No window to wait for: nothing remains and no reset is announced."""
    if kind == "tokens":
        return rate.remaining_tokens == 0 and rate.reset_tokens_s is None
    return rate.remaining == 0 and rate.reset_s is None


def zero_limits(rate: RateInfo) -> list[str]:
    """The kinds of limit ("tokens", "requests") `rate` announces as 0."""
    return [kind for kind, limit in (("tokens", rate.limit_tokens), ("requests", rate.limit))
            if limit == 0]  # fmt: skip
