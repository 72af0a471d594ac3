"""What an attempt's outcome is called in the attempts log, as the report groups them."""

from __future__ import annotations

from batchpizza.errors import (
    BadReply,
    HTTPStatusError,
    MisuseDetected,
    RedirectRefused,
    RequestTimeout,
)

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
