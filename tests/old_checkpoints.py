"""Checkpoints as the batchpizza of schema 1 and 2 wrote them (before request fingerprints): their
DDL, from the versions that wrote them, and a varied one for the tests of reading them
(tests/test_old_checkpoints.py) and, at 100,000 or 1,000,000 answers, for measuring `status` and
`report` on one (`python tests/old_checkpoints.py SCHEMA N PATH`)."""

from __future__ import annotations

import json
import random
import sqlite3
import sys
from pathlib import Path

from batchpizza.rows import prompt_digest

# The first batchpizza's: answers by row id, and meta.
SCHEMA_1 = """
CREATE TABLE results (id TEXT PRIMARY KEY, digest BLOB NOT NULL, finish_reason TEXT NOT NULL,
    answer TEXT, error TEXT, attempts INTEGER NOT NULL, latency_ms REAL, model TEXT,
    updated REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
INSERT INTO meta VALUES ('schema', '1');
"""
# The second wave's: the answers' tokens and ids, every attempt, the runs, the learned rate's
# and the breaker's events, and the scan of the last input (without the request digest).
SCHEMA_2 = """
CREATE TABLE results (id TEXT PRIMARY KEY, digest BLOB NOT NULL, finish_reason TEXT NOT NULL,
    answer TEXT, error TEXT, attempts INTEGER NOT NULL, latency_ms REAL, model TEXT,
    updated REAL NOT NULL, prompt_tokens INTEGER, completion_tokens INTEGER, response_id TEXT,
    request_id TEXT) WITHOUT ROWID;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE attempts (run INTEGER, row_id TEXT, started REAL, duration_ms REAL, outcome TEXT,
    status INTEGER, error TEXT);
CREATE TABLE runs (id INTEGER PRIMARY KEY, started REAL, ended REAL, rows_sent INTEGER,
    exit_code INTEGER, options TEXT);
CREATE TABLE events (run INTEGER, t REAL, kind TEXT, value REAL, detail TEXT);
CREATE TABLE scan (pos INTEGER PRIMARY KEY, id TEXT, digest BLOB, bad TEXT, file INTEGER,
    at INTEGER);
INSERT INTO meta VALUES ('schema', '2');
"""
T0 = 1_714_557_600.0  # 2024-05-01T10:00:00Z
SPAN = 7200.0  # seconds over which the answers were written
# Run 1 a Pizzagpt run (its answers' request is known), run 2 an OpenAI-compatible one that
# recorded no parameters (not known), killed.
RUNS = [
    (1, T0, T0 + 3000, 3, {"provider": "pizzagpt", "model": None}),
    (2, T0 + 3600, None, None, {"provider": "openai", "model": "m"}),
]
_OUTCOMES = ["stop"] * 8 + ["length", "error", "misuse", "invalid_output"]
_FAILURES = [(503, "HTTP 503 from https://user:hunter2@api.local/v1"), (429, ""), (None, None)]


def old_checkpoint(path: Path, schema: str, n: int, *, seed: int = 1) -> None:
    """A checkpoint of `schema` ("1" or "2") with `n` answers of every finish reason written over
    SPAN seconds (about half under each run), with and without tokens; in schema 2 also an attempt
    or two for each, both runs, events, and the scan of the last input's first rows. Every
    prompt differs: answers of one prompt by one identity are one request in schema 3."""
    rng = random.Random(seed)
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_1 if schema == "1" else SCHEMA_2)
    meta = {"version": "0.1.0", "input": "in.jsonl", "rows": str(n + 10)}
    meta["updated"] = str(T0 + SPAN)
    conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
    if schema != "1":
        conn.executemany(
            "INSERT INTO runs VALUES (?, ?, ?, 5, ?, ?)",
            [(i, started, ended, code, json.dumps(o)) for i, started, ended, code, o in RUNS],
        )
        events = [(1, T0 + 5, "rate", 4.0, "start"), (1, T0 + 50, "breaker", 0.0, "open")]
        conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", events)
    results: list[tuple[object, ...]] = []
    attempts: list[tuple[object, ...]] = []
    for i in range(n):
        t = T0 + i * SPAN / n
        reason = rng.choice(_OUTCOMES)
        answered = reason not in ("error", "misuse")
        row = (f"r{i}", prompt_digest(f"question {i}"), reason, f"answer {i}" if answered else None)
        row += ("boom" if reason == "error" else None, 1, 10.0, "m", t)
        if schema != "1":
            tokens = (rng.randint(5, 50), 9) if rng.random() < 0.8 else (None, None)
            row += (*tokens, f"resp{i}", None)
            run = 1 if t < RUNS[1][1] else 2
            if not answered or rng.random() < 0.1:  # a failed try first
                status, error = rng.choice(_FAILURES)
                attempts.append((run, f"r{i}", t - 2, 300.0, "http", status, error))
            outcome = "answered" if answered else "refusal"
            attempts.append(
                (run, f"r{i}", t - 0.5, rng.lognormvariate(6, 0.7), outcome, None, None)
            )
        results.append(row)
        if len(results) == 10_000 or i == n - 1:
            conn.executemany(f"INSERT INTO results VALUES ({', '.join('?' * len(row))})", results)
            if attempts:
                conn.executemany("INSERT INTO attempts VALUES (?, ?, ?, ?, ?, ?, ?)", attempts)
            results, attempts = [], []
    if schema != "1":
        scanned = [(i, f"r{i}", prompt_digest(f"question {i}"), i) for i in range(min(n, 100))]
        conn.executemany("INSERT INTO scan VALUES (?, ?, ?, NULL, 0, ?)", scanned)
    conn.commit()
    conn.close()


if __name__ == "__main__":
    old_checkpoint(Path(sys.argv[3]), sys.argv[1], int(sys.argv[2]))
