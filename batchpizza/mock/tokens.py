"""The mock's tokens: what a chat request uses, its token limit per window with OpenAI's
x-ratelimit-*-tokens headers, a quota that runs out, and what the usage costs.

Usage is a deterministic stand-in for a tokenizer (`count`, see _TOKEN), plus 3 per message and
3 for the reply, as OpenAI's chat format adds. max_tokens cuts the answer to that many tokens (finish_reason
"length"). batchpizza's own estimate (tokencount.py) never sees this function: the test of its
error measures one against the other.

Limit (MockConfig.tpm_limit over token_window seconds, a minute by default, shorter in tests):
tokens are counted when an answer is made; an answer that would take the last window past the
limit is a 429 rate_limit_exceeded instead, and counts nothing. Every answer and every such 429
carries the limit, what is left of it and how long until it is all back, as OpenAI says it:
reset = used / limit of a window (the window refills as it slides).

Quota (MockConfig.quota_tokens): once that many tokens were used, every chat request is a 429
insufficient_quota, as OpenAI says it when the credit is spent.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from batchpizza.mediasize import wav_seconds

# A run of up to 6 letters, up to 3 digits, or any other character but space: about what the
# GPT tokenizers make of English (a common word is one token, a long one two or three; "The
# quick brown fox jumps over the lazy dog." is 10 tokens here and at gpt-4o; English prose
# comes to about 4 characters a token, OpenAI's rule of thumb), without their vocabulary.
_TOKEN = re.compile(r"\d{1,3}|[^\W\d]{1,6}|[^\w\s]")
PER_MESSAGE = 3
PER_REPLY = 3
QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, read the docs."
)


def count(text: str) -> int:
    return len(_TOKEN.findall(text))


def media_tokens(part: dict[str, Any]) -> int:
    """An image part's tokens: 85 at low detail, else 765 (gpt-4o's for a 1024-px square, any
    size here); audio's: 10 a second of a wav (0 for what is not one); another part's none."""
    inner = part.get(str(part.get("type")))
    if not isinstance(inner, dict):
        return 0
    if part.get("type") == "image_url":
        return 85 if inner.get("detail") == "low" else 765
    data = inner.get("data")
    seconds = (
        wav_seconds(data) if part.get("type") == "input_audio" and isinstance(data, str) else 0
    )
    return math.ceil((seconds or 0.0) * 10)


def prompt_usage(contents: list[str]) -> int:
    return sum(count(c) + PER_MESSAGE for c in contents) + PER_REPLY


def cut(text: str, max_tokens: int) -> str:
    """The longest start of `text` of at most `max_tokens` tokens."""
    tokens = list(_TOKEN.finditer(text))
    if len(tokens) <= max_tokens:
        return text
    return text[: tokens[max_tokens - 1].end()] if max_tokens > 0 else ""


@dataclass
class TokenLedger:
    """What the server counted: every answer's tokens and when, and their price."""

    limit: float = 0.0  # tokens per window; 0: none
    window: float = 60.0
    quota: int | None = None
    price_in: float = 1.0  # dollars per million tokens
    price_out: float = 2.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    limited: int = 0  # 429s for the token limit
    log: deque[tuple[float, int]] = field(default_factory=deque)  # the last window's answers
    history: list[tuple[float, int]] = field(default_factory=list)  # every answer's

    @property
    def used(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost(self) -> float:
        return (self.prompt_tokens * self.price_in + self.completion_tokens * self.price_out) / 1e6

    def quota_gone(self) -> bool:
        return self.quota is not None and self.used >= self.quota

    def _in_window(self, now: float) -> int:
        log = self.log
        while log and log[0][0] <= now - self.window:
            log.popleft()
        return sum(n for _, n in log)

    def admit(self, prompt_tokens: int, completion_tokens: int) -> bool:
        """Count this answer, or False when it would pass the limit (a 429, counting nothing)."""
        now = time.monotonic()
        tokens = prompt_tokens + completion_tokens
        if self.limit > 0 and self._in_window(now) + tokens > self.limit:
            self.limited += 1
            return False
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.log.append((now, tokens))
        self.history.append((now, tokens))
        return True

    def headers(self) -> dict[str, str]:
        if self.limit <= 0:
            return {}
        used = self._in_window(time.monotonic())
        reset = self.window * used / self.limit
        return {
            "x-ratelimit-limit-tokens": f"{self.limit:g}",
            "x-ratelimit-remaining-tokens": str(max(0, int(self.limit - used))),
            "x-ratelimit-reset-tokens": f"{reset:.3f}s",
        }

    def max_in_window(self) -> int:
        """The most tokens any window of the server's held (its own count)."""
        best, lo, total = 0, 0, 0
        hist = self.history
        for t, n in hist:
            total += n
            while hist[lo][0] <= t - self.window:
                total -= hist[lo][1]
                lo += 1
            best = max(best, total)
        return best

    def to_dict(self) -> dict[str, object]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "token_limited": self.limited,
            "max_tokens_in_window": self.max_in_window(),
            "price_per_million": {"input": self.price_in, "output": self.price_out},
            "cost": self.cost,
        }
