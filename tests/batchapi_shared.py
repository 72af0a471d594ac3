"""What the Batch API tests share (their mock, the `server` fixture, is in conftest.py): small
request files, fast polls, and the rows they send."""

from __future__ import annotations

LIMITS = "40,,0.05,0.2"  # LINES,BYTES,POLL,POLL_CAP: small files, fast polls
KEY = "sk-test-batch-key-123"


def rows(n: int) -> list[dict[str, str]]:
    return [{"id": f"q{i}", "prompt": f"question {i}"} for i in range(n)]
