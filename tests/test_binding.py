"""checkpoint/binding.py: the usual rows bound lean (NULLs in the statement, digests as
bytearrays) are stored exactly as the same rows bound as they are; order and the one-row
fallback for a value SQLite cannot bind are kept."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from batchpizza.checkpoint import Checkpoint
from batchpizza.checkpoint.binding import ATTEMPT_SQL, result_runs, result_sql, split_attempts
from batchpizza.records import Attempt, Result
from batchpizza.rows import prompt_digest


def results_of(path: Path) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return conn.execute("SELECT * FROM results ORDER BY id").fetchall()


def mixed() -> list[Result]:
    def r(row_id: str, **kw: object) -> Result:
        base = dict(id=row_id, digest=prompt_digest(row_id), finish_reason="stop",
                    answer=f"answer {row_id}", error=None, attempts=1, latency_ms=3.5,
                    model="m", prompt_tokens=11, completion_tokens=7)  # fmt: skip
        return Result(**{**base, **kw})  # type: ignore[arg-type]

    return [
        r("a", tokens_estimated=True),  # Pizzagpt's: lean
        r("b"),  # lean, no estimate
        r("c", response_id="resp-1", request_id="req-1", body=b'{"x": 1}'),  # an OpenAI reply
        r("d", finish_reason="error", answer=None, error="HTTP 500", model=None),
        r("e", tokens_estimated=False, prompt_tokens=None, completion_tokens=None),
    ]


def test_lean_rows_are_stored_exactly_as_rows_bound_as_they_are(tmp_path: Path) -> None:
    rows = mixed()
    store = Checkpoint.open(tmp_path / "lean.checkpoint")
    store.write(rows)
    store.close()
    # The same rows each bound whole, the way every row was before.
    whole = tmp_path / "whole.checkpoint"
    plain = Checkpoint.open(whole)
    full_sql, _ = result_sql("results")
    plain._conn.executemany(full_sql, [(b"", *r, 1.0) for r in rows])
    plain._conn.commit()
    plain.close()
    lean_rows, whole_rows = results_of(tmp_path / "lean.checkpoint"), results_of(whole)
    assert len(lean_rows) == len(rows) == len(whole_rows)
    updated = next(i for i, c in enumerate(_columns(whole)) if c == "updated")
    for got, want in zip(lean_rows, whole_rows, strict=True):
        # Every column alike, in type too (a digest a BLOB, the estimate's flag an integer),
        # but when it was written.
        assert [(type(v), v) for i, v in enumerate(got) if i != updated] == [
            (type(v), v) for i, v in enumerate(want) if i != updated
        ]
    assert [kind for kind, _ in result_runs(b"", rows, 1.0)] == [True, False, True]


def _columns(path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return [row[1] for row in conn.execute("PRAGMA table_info(results)")]


def test_a_later_result_of_a_request_in_the_same_group_wins_whatever_its_binding(
    tmp_path: Path,
) -> None:
    digest = prompt_digest("x")
    failed = Result("x", digest, "error", None, "HTTP 503", 1, 2.0, None)
    answered = Result("x", digest, "stop", "yes", None, 2, 2.0, "m")
    store = Checkpoint.open(tmp_path / "c.checkpoint")
    store.write([failed, answered])  # the error bound whole, the answer lean: order kept
    store.write([answered, failed])
    store.close()
    (row,) = results_of(tmp_path / "c.checkpoint")
    assert row[3] == "error"  # the later of the second group


def test_a_lean_row_that_cannot_be_bound_fails_alone(tmp_path: Path) -> None:
    rows = [Result(i, prompt_digest(i), "stop", f"answer {i}", None, 1, 1.0, "m") for i in "abc"]
    rows[1] = rows[1]._replace(answer="broken \ud800 text")  # a lone surrogate: UTF-8 refuses it
    store = Checkpoint.open(tmp_path / "c.checkpoint")
    store.write(rows)
    store.close()
    got = {row[2]: row for row in results_of(tmp_path / "c.checkpoint")}
    assert set(got) == {"a", "b", "c"}
    assert got["a"][4] == "answer a" and got["c"][4] == "answer c"
    assert got["b"][3] == "stop" and got["b"][4] is not None and "\ud800" not in got["b"][4]


def test_attempts_are_stored_alike_lean_or_whole(tmp_path: Path) -> None:
    attempts = [
        Attempt("a", 10.0, 1.5, "answered"),
        Attempt("b", 11.0, 2.5, "http", 503, "HTTP 503"),
        Attempt("c", 12.0, 3.5, "timeout", None, "no reply"),
    ]
    lean, rest = split_attempts(7, attempts)
    assert len(lean) == 1 and len(rest) == 2
    path = tmp_path / "c.checkpoint"
    store = Checkpoint.open(path)
    store.write([], attempts, run=7)
    store.close()
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        got = conn.execute("SELECT * FROM attempts ORDER BY row_id").fetchall()
    assert got == [(7, *a) for a in attempts]
    assert ATTEMPT_SQL.count("?") == 7
