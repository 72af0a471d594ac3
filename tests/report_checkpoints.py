"""A checkpoint of many kinds of attempts for the report: answers of varied latency, failures of
every outcome, retries, a killed run and two that ended, learned-rate and breaker events, and
answers with and without tokens written over time. Used by tests/test_report_counted.py and, at a
million attempts, to compare the report's outputs by hand (`python tests/report_checkpoints.py
N PATH`)."""

from __future__ import annotations

import random
import sqlite3
import sys
from pathlib import Path

from batchpizza.checkpoint import Checkpoint
from batchpizza.identities import identity_of
from batchpizza.records import Attempt, Result

T0 = 1_714_557_600.0  # 2024-05-01T10:00:00Z
# (outcome, status, error) of a failed attempt; the password in the first one is masked.
FAILURES = [
    ("http", 503, "HTTP 503 from https://user:hunter2@api.local/v1: overloaded"),
    ("http", 429, "HTTP 429 Too Many Requests"),
    ("http", 500, "HTTP 500 Internal Server Error"),
    ("http", None, None),
    ("timeout", None, "no reply within 30 s"),
    ("transport", None, "Connection reset by peer"),
    ("bad_reply", None, "reply is not JSON: '<html>'"),
    ("refusal", 403, "HTTP 403 Forbidden"),
    ("refusal", None, "Misuse detected."),
    ("redirect", None, "redirect to another host"),
    ("stopped", None, None),
]


def varied_checkpoint(
    path: Path, n: int, *, spacing: float, gap: float = 86400.0, seed: int = 1
) -> None:
    """About `n` attempts over three runs, one every ~`spacing` seconds within a run; the second
    run `gap` seconds after the first, the third 1/24 of the gap after the second (a short gap:
    runs that overlap)."""
    rng = random.Random(seed)
    store = Checkpoint.open(path)
    store.use_identity(identity_of("pizzagpt", None, {}))
    written: list[tuple[float, str]] = []
    spans: list[tuple[float, float | None, int]] = []
    row = 0
    # Run 1 killed (no end), run 2 gave up, run 3 ended well.
    for start, exit_code in [(T0, None), (T0 + gap, 3), (T0 + gap * 25 / 24, 0)]:
        run = store.begin_run({"provider": "pizzagpt", "model": None, "concurrency": 8})
        t, sent = start + rng.random(), 0
        events: list[tuple[float, str, float, str]] = [(t, "rate", 4.0, "start")]
        while sent < n // 3:
            results, attempts = [], []
            for _ in range(min(5000, n // 3 - sent)):
                row_id, tries = f"r{row}", rng.choice((1, 1, 1, 1, 2, 3))
                row += 1
                for attempt in range(tries):
                    t += rng.expovariate(1 / spacing)
                    if rng.random() < 0.001:
                        t = float(int(t) + 1)  # on a whole second: a bucket's edge
                    answered = attempt == tries - 1 and rng.random() < 0.9
                    ms = rng.lognormvariate(6, 0.7) if rng.random() < 0.98 else 60000.0
                    if answered:
                        attempts.append(Attempt(row_id, t, ms, "answered"))
                    else:
                        outcome, status, error = rng.choice(FAILURES)
                        attempts.append(Attempt(row_id, t, ms, outcome, status, error))
                    sent += 1
                if answered:
                    tokens = (None, None) if rng.random() < 0.2 else (rng.randint(5, 50), 9)
                    digest = rng.randbytes(16)
                    results.append(
                        Result(row_id, digest, "stop", "ok", None, tries, ms, "m", *tokens)
                    )
                    written.append((t + ms / 1000, row_id))
                if rng.random() < 0.002:
                    why = "HTTP 429: slowing down"
                    events.append((t, "rate", round(rng.uniform(0.5, 8), 3), why))
                if rng.random() < 0.0005:
                    events.append((t, "breaker", 0.0, rng.choice(("open", "probe", "closed"))))
            store.write(results, attempts, run)
        store.record_events(run, events)
        if exit_code is not None:
            store.end_run(run, rows_sent=sent, exit_code=exit_code)
        spans.append((start, None if exit_code is None else t + 61, run))
    store.close()
    # When each run began and ended and each answer was written, as they would have been (the
    # checkpoint stamps them with today's time).
    with sqlite3.connect(path) as conn:
        conn.executemany("UPDATE runs SET started = ?, ended = ? WHERE id = ?", spans)
        conn.executemany("UPDATE results SET updated = ? WHERE id = ?", written)
    conn.close()


if __name__ == "__main__":
    varied_checkpoint(Path(sys.argv[2]), int(sys.argv[1]), spacing=0.004)
