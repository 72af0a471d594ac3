"""Fault injection for the mock: the options that make it misbehave (`MockConfig`), the state one
config drives (a seeded RNG, the rate-limit window), and the directives a prompt carries to script
its own row. Both routes draw on this module, so that each fault is decided in one place and only
worded per API (see replies.py).

Faults come from two sources. Directives embedded in a question (or in a chat's messages, read
as their formatted prompt) script that row deterministically and switch random faults (and the
rate limit) off for it; otherwise ``MockConfig`` rates drive a seeded RNG. Directives, applied in
this order:

    [[slow:MS]]          sleep MS ms first, then carry on with the rest
    [[status:NNN]]       reply NNN with an error body (429/503 add Retry-After: 1)
    [[redirect:URL]]     307 to URL, unless the request's query has r=1
    [[retry-after:S]]    first request for this question: 429 with Retry-After: S verbatim
    [[fail-first:N]]     first N requests for this question: 503 with Retry-After: 0
    [[misuse]] [[botcheck]] [[garbage]] [[empty]] [[drop]] [[hang]]   that fault, always
    [[shape:wrong]]      200 {"answer": ["not", "an", "object"]} (chat: {"choices": []})
    [[big:N]]            answer content of exactly N bytes
    [[shape:content]]    answer as top-level {"content": ...} (chat: as content parts)

On the chat route "empty" is a null content and "garbage" a truncated chat.completion.
A bad argument (e.g. ``[[status:abc]]``) gets a 400; unknown ``[[names]]`` are plain text.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections import deque
from dataclasses import dataclass

from batchpizza.mock.tokens import TokenLedger

_DIRECTIVE = re.compile(r"\[\[([a-z-]+)(?::([^\]]*))?\]\]")
TERMINAL_FAULTS = ("misuse", "botcheck", "garbage", "empty", "drop", "hang")
_KNOWN = frozenset(
    (*TERMINAL_FAULTS, "status", "fail-first", "retry-after", "shape", "redirect", "big", "slow")
)


@dataclass(frozen=True, kw_only=True)
class MockConfig:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    error_rate: float = 0.0
    rate_limit: float = 0.0
    retry_after: str = "1"
    misuse_rate: float = 0.0
    garbage_rate: float = 0.0
    drop_rate: float = 0.0
    hang_rate: float = 0.0
    empty_rate: float = 0.0
    seed: int | None = None
    secret: str = "Marinara"
    # Pizzagpt route: every request after this many (counted from start, reset or a new config)
    # is refused as misuse, as a service that has had enough of us.
    misuse_after: int | None = None
    # Chat route: the Bearer key required (None: none), and the models served (empty: any).
    api_key: str | None = None
    models: tuple[str, ...] = ()
    # Chat route: answers that depend on the model and the temperature too, not only the prompt
    # (what a real server's do): "<answer> [model M, temperature T]".
    by_request: bool = False
    # Schema-bound requests (--schema): the share answered with valid JSON as it is; of the rest,
    # half wrapped (fenced or after prose), half not fitting (mock/structured.py).
    structured_valid: float = 0.70
    # Chat route (mock/tokens.py): a token limit per window (0: none), the window in seconds (a
    # minute, as OpenAI's; shorter in tests), a quota of tokens after which every request is
    # refused as insufficient_quota, and the price per million input and output tokens.
    tpm_limit: float = 0.0
    token_window: float = 60.0
    quota_tokens: int | None = None
    price_in: float = 1.0
    price_out: float = 2.0


class Live:
    """All state derived from one config, swapped as a unit so handlers see a consistent view."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        # Separate stream so enabling jitter doesn't change which requests get which fault.
        self.jitter_rng = random.Random(config.seed)
        self.window: deque[float] = deque()
        bounds: list[tuple[float, str]] = []
        total = 0.0
        for kind, rate in (
            ("error", config.error_rate),
            ("misuse", config.misuse_rate),
            ("garbage", config.garbage_rate),
            ("drop", config.drop_rate),
            ("hang", config.hang_rate),
            ("empty", config.empty_rate),
        ):
            total += rate
            bounds.append((total, kind))
        self.bounds = tuple(bounds) if total > 0 else ()
        self.pizza_arrivals = 0  # for misuse_after
        self.tokens = TokenLedger(
            limit=config.tpm_limit,
            window=config.token_window,
            quota=config.quota_tokens,
            price_in=config.price_in,
            price_out=config.price_out,
        )

    def arrive(self, now: float) -> bool:
        """Record an arrival; True if it exceeds the rate limit."""
        limit = self.config.rate_limit
        if limit <= 0:
            return False
        window = self.window
        window.append(now)
        while window[0] <= now - 1.0:
            window.popleft()
        return len(window) > limit


async def delay(live: Live) -> None:
    cfg = live.config
    if cfg.latency_ms or cfg.jitter_ms:
        pause = cfg.latency_ms + live.jitter_rng.uniform(-cfg.jitter_ms, cfg.jitter_ms)
        if pause > 0:
            await asyncio.sleep(pause / 1000)


def directives(question: str) -> dict[str, str]:
    if "[[" not in question:
        return {}
    return {m[1]: m[2] or "" for m in _DIRECTIVE.finditer(question) if m[1] in _KNOWN}


def draw(live: Live) -> str:
    """Which random fault (or "answer") this request gets."""
    if not live.bounds:
        return "answer"
    roll = live.rng.random()
    return next((k for bound, k in live.bounds if roll < bound), "answer")
