"""What an attempt's outcome is called in the attempts log, as the report groups them."""

from __future__ import annotations

from collections.abc import Iterable

from batchpizza.errors import (
    BadReply,
    HTTPStatusError,
    MisuseDetected,
    RedirectRefused,
    RequestTimeout,
)
from batchpizza.providers.pooled import Resend
from batchpizza.records import Attempt

ANSWERED = "answered"
REFUSAL = "refusal"
STOPPED = "stopped"  # an attempt cut off by a stop


def outcome_of(error: BaseException | None) -> str:
    """An attempt's outcome kind, as the report groups them."""
    if error is None:
        return ANSWERED
    if isinstance(error, MisuseDetected):
        return REFUSAL
    if isinstance(error, HTTPStatusError):
        return "http"
    if isinstance(error, RequestTimeout):
        return "timeout"
    if isinstance(error, BadReply):
        return "bad_reply"
    if isinstance(error, RedirectRefused):
        return "redirect"
    return "transport"


def resent_attempts(attempt_id: str, resent: Iterable[Resend]) -> list[Attempt]:
    """The attempts log's record of the sends that failed on a stale pooled connection and were
    sent again at once: requests, and the report counts them so, but the server read none."""
    return [
        Attempt(attempt_id, r.started, r.duration_ms, "transport", None, r.error) for r in resent
    ]
