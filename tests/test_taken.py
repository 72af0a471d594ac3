"""The answers rows took from other rows of the same request (checkpoint/taken.py): kept when a new
scan replaces the one that said the rows' requests, for the rows it changes only, each looked up
by the results' key. What the plan says of such rows is tested in tests/test_fingerprint.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import write_jsonl

from batchpizza.checkpoint import Checkpoint, ScanIndex
from batchpizza.config import RunConfig
from batchpizza.identities import identity_of
from batchpizza.records import Result
from batchpizza.rows import Fields, prompt_digest
from batchpizza.sources import open_source

SAME = [
    {"id": "q0", "prompt": "same"},
    {"id": "q1", "prompt": "same"},
    {"id": "q2", "prompt": "own"},
]
EDITED = [SAME[0], {"id": "q1", "prompt": "edited"}, {"id": "q2", "prompt": "edited too"}]


def scan_of(tmp_path: Path, rows: list[dict[str, Any]]) -> tuple[ScanIndex, str | None]:
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    fields = Fields.from_config(RunConfig(input=str(inp), output="out.jsonl"), extra_reserved=())
    source = open_source(str(inp), fields, None, None)
    scan = ScanIndex(None)
    scan.scan(source.scan(None), source.unit, source.names)
    return scan, source.input_key()


def adopt(store: Checkpoint, tmp_path: Path, rows: list[dict[str, Any]]) -> None:
    scan, key = scan_of(tmp_path, rows)
    store.adopt_scan(scan, key, {"total": scan.total, "bad": 0})
    scan.close()


def answered(tmp_path: Path) -> Checkpoint:
    """A checkpoint whose scan is SAME, q0's and q2's requests answered: q1 took q0's answer."""
    store = Checkpoint.open(tmp_path / "out.jsonl.checkpoint")
    store.use_identity(identity_of("pizzagpt", None, {}))
    adopt(store, tmp_path, SAME)
    store.write(
        [
            Result(row["id"], prompt_digest(row["prompt"]), "stop", "a", None, 1, 5.0, "m")
            for row in (SAME[0], SAME[2])
        ]
    )
    return store


def taken(store: Checkpoint) -> list[tuple[str, bytes]]:
    return sorted(store._conn.execute("SELECT id, digest FROM taken"))


def test_a_new_scan_keeps_the_answer_an_edited_row_took_and_none_of_rows_unchanged_or_added(
    tmp_path: Path,
) -> None:
    store = answered(tmp_path)

    adopt(store, tmp_path, [*SAME, {"id": "q3", "prompt": "same"}])
    assert taken(store) == []  # q1 still asks what it asked: kept once that changes
    adopt(store, tmp_path, [*EDITED, {"id": "q3", "prompt": "same"}])

    # q2 asked its own request; q3, which took q0's answer too, is unchanged.
    assert taken(store) == [("q1", prompt_digest("same"))]
    store.close()


def test_the_answers_rows_took_are_looked_up_by_the_results_key_not_read_whole(
    tmp_path: Path,
) -> None:
    store = answered(tmp_path)
    statements: list[str] = []
    scan, key = scan_of(tmp_path, EDITED)

    store._conn.set_trace_callback(statements.append)
    store.adopt_scan(scan, key, {"total": scan.total, "bad": 0})
    store._conn.set_trace_callback(None)

    recorded = [s for s in statements if s.startswith("INSERT OR IGNORE INTO taken")]
    assert recorded
    store._conn.execute("ATTACH DATABASE ? AS scanned", (scan.uri,))
    for statement in recorded:
        steps = [row[3] for row in store._conn.execute(f"EXPLAIN QUERY PLAN {statement}")]
        assert any(s.startswith("SEARCH c USING INDEX") for s in steps), steps
        assert not any(s.startswith("SCAN c") for s in steps), steps
    store._conn.execute("DETACH DATABASE scanned")
    scan.close()
    store.close()
