"""The typed records that travel between the stages: what a row asks, what a provider answers,
how a row ended. Frozen and slotted, so a stage cannot change what another one handed it."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class Outcome(str, enum.Enum):
    """How a row ended, as the `finish_reason` column says it. A provider may add its own reasons
    for an answered row (OpenAI's "length", "content_filter"): those travel as plain strings."""

    STOP = "stop"
    ERROR = "error"
    MISUSE = "misuse"
    INVALID = "invalid"
    PENDING = "pending"

    def __str__(self) -> str:
        return self.value


# A finish reason outside these is an answer (stop, length, content_filter, ...).
UNANSWERED = frozenset({Outcome.ERROR, Outcome.MISUSE, Outcome.INVALID, Outcome.PENDING})


def is_answered(finish_reason: str) -> bool:
    return finish_reason not in UNANSWERED


@dataclass(frozen=True, slots=True)
class Prompt:
    """One row as a provider sends it."""

    id: str
    text: str  # the formatted prompt: a prompt row's text, or format_prompt(messages)
    messages: tuple[Mapping[str, str], ...]  # a prompt row is one user message
    body: Mapping[str, Any] | None = None  # an OpenAI Batch line's body, less its messages


@dataclass(frozen=True, slots=True)
class RateInfo:
    """What a server announced of its request limit (OpenAI's x-ratelimit-* headers)."""

    limit: float | None = None  # requests per window
    remaining: float | None = None
    reset_s: float | None = None  # seconds until `remaining` is back to `limit`


@dataclass(frozen=True, slots=True)
class Answer:
    """A provider's answer to one prompt."""

    text: str
    finish_reason: str = "stop"
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    response_id: str | None = None
    request_id: str | None = None
    rate: RateInfo | None = None
