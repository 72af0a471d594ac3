"""--via and the Batch API's limits and timings, apart from RunConfig (which only calls
`check_via`), read once per run."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from batchpizza.errors import UsageError
from batchpizza.numbers import decimal, strip, whole

VIA = ("online", "batch", "auto")
# OpenAI's limits on one batch's input file (its Batch API guide).
MAX_LINES = 50_000
MAX_BYTES = 200 * 1024 * 1024
COMPLETION_WINDOW = "24h"
# How often a batch is polled: from the first interval, 1.5 times longer each time, up to the
# last; a batch takes minutes to hours, and every poll is a request against the key's limits.
POLL_FIRST = 5.0
POLL_CAP = 60.0
# --via auto: rows still out this long before --deadline are cancelled and sent online.
AUTO_MARGIN = 0.25  # of the time left when the batches were submitted, at least AUTO_MIN
AUTO_MIN = 5.0


@dataclass(frozen=True)
class Limits:
    max_lines: int = MAX_LINES
    max_bytes: int = MAX_BYTES
    poll_first: float = POLL_FIRST
    poll_cap: float = POLL_CAP

    @classmethod
    def from_env(cls) -> Limits:
        """The limits, smaller where BATCHPIZZA_BATCH_LIMITS says ("LINES,BYTES,POLL,POLL_CAP",
        any left empty): for tests, and for a server with lower limits than OpenAI's."""
        text = os.environ.get("BATCHPIZZA_BATCH_LIMITS", "")
        parts = [strip(p) for p in text.split(",")] if strip(text) else []
        given = [*parts, "", "", "", ""][:4]
        # Read as the options' numbers are (numbers.py): "1_0", other scripts' digits, nan
        # and inf refused (a poll of NaN passed every check below: it compares false).
        lines = whole(given[0]) if given[0] else MAX_LINES
        size = whole(given[1]) if given[1] else MAX_BYTES
        first = decimal(given[2]) if given[2] else POLL_FIRST
        cap = decimal(given[3]) if given[3] else POLL_CAP
        if lines is None or size is None or first is None or cap is None:
            raise UsageError(
                f"BATCHPIZZA_BATCH_LIMITS={text!r}: expected LINES,BYTES,POLL,POLL_CAP numbers "
                "in digits 0-9"
            )
        if lines < 1 or size < 1 or first <= 0 or cap < first:
            raise UsageError(f"BATCHPIZZA_BATCH_LIMITS={text!r}: each must be positive")
        return cls(min(lines, MAX_LINES), min(size, MAX_BYTES), first, cap)


def near_deadline(deadline_at: float | None, started: float, pause: float) -> bool:
    """--via auto: would a pause of `pause` s end within the margin before the deadline (both
    times of time.monotonic())?"""
    if deadline_at is None:
        return False
    margin = max(AUTO_MIN, AUTO_MARGIN * (deadline_at - started))
    return time.monotonic() + pause >= deadline_at - margin


def check_via(via: str, provider: str, schema: bool = False, tpm: bool = False) -> None:
    if via not in VIA:
        raise UsageError(f"--via {via!r}: one of {', '.join(VIA)}")
    if via != "online" and schema:
        # A batch's answers come back hours later, all at once: a re-ask of one that does not
        # fit would be a batch of its own. Until that is built, refused rather than unchecked.
        raise UsageError(
            f"--via {via} with --schema: answers through the Batch API are not validated and "
            "re-asked yet; send online (--via online) to use --schema"
        )
    if via != "online" and provider != "openai":
        raise UsageError(
            f"--via {via}: the Batch API is OpenAI's; use it with --provider openai, or send "
            "online (--via online)"
        )
    if via == "batch" and tpm:
        # --via auto keeps it: it paces the rows sent online near the deadline, as any online run.
        raise UsageError(
            "--via batch with --tpm: the Batch API has no per-minute pacing to do (a batch's "
            "requests are run by the server, within its enqueued-token quota); leave --tpm out, "
            "or send online (--via online, or --via auto for the rows sent online late)"
        )
