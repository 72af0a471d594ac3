"""The scan's index (checkpoint/scan.py): every row kept as it was read, many to a statement, and
duplicate ids found however the ids are ordered, in one batch or across batches."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import write_jsonl

import batchpizza.rows as rows_
import batchpizza.sources.base as base
from batchpizza.checkpoint import ScanIndex
from batchpizza.checkpoint.scan import _Ascending
from batchpizza.config import RunConfig
from batchpizza.rows import Fields, GoodRow
from batchpizza.sources import open_source


def scan_of(path: Path) -> ScanIndex:
    fields = Fields.from_config(RunConfig(input=str(path), output="out.jsonl"))
    source = open_source(str(path), fields)
    scan = ScanIndex(None)
    scan.scan(source.scan(None), source.unit, source.names)
    return scan


def kept(scan: ScanIndex) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(scan.uri, uri=True)
    try:
        return conn.execute("SELECT pos, id, bad IS NULL, at FROM rows ORDER BY pos").fetchall()
    finally:
        conn.close()


def good(*ids: str) -> list[GoodRow]:
    return [(i, row_id, b"d" * 16, None, 0, i + 1) for i, row_id in enumerate(ids)]


@pytest.mark.parametrize("messages", [False, True])
@pytest.mark.parametrize("n", [1, 63, 64, 65, 130, 200])
def test_every_row_is_kept_whatever_the_count_of_rows_per_statement(
    tmp_path: Path, n: int, messages: bool
) -> None:
    # Message rows keep a text digest apart from the request's (`said`), prompt rows none.
    system = {"role": "system", "content": "be brief"}
    said = [{"messages": [system, {"role": "user", "content": f"q {i}"}]} for i in range(n)]
    asked = said if messages else [{"prompt": f"question {i}"} for i in range(n)]
    rows = [{"id": f"id-{i}"} | row for i, row in enumerate(asked)]
    scan = scan_of(write_jsonl(tmp_path / "in.jsonl", rows))
    try:
        assert kept(scan) == [(i, f"id-{i}", 1, i + 1) for i in range(n)]
        assert scan.total == n and scan.bad == 0
        conn = sqlite3.connect(scan.uri, uri=True)
        digests = conn.execute("SELECT digest, said FROM rows ORDER BY pos").fetchall()
        conn.close()
        fields = Fields.from_config(RunConfig(input="in.jsonl", output="out.jsonl"))
        expected = [rows_.digests(rows_.interpret(row, fields, i)) for i, row in enumerate(rows)]
        assert digests == expected
        assert [s is None for _, s in digests] == [not messages] * n
        assert all(type(d) is bytes and len(d) == 16 for d, _ in digests)
    finally:
        scan.close()


@pytest.mark.parametrize(
    ("batches", "ascending"),
    [
        ([["1", "2", "9", "10", "11", "100"]], True),  # numbered: shorter first
        ([["r0000001", "r0000002"], ["r0000003"]], True),
        ([["a", "b"], ["b", "c"]], False),  # the same id across a batch's edge
        ([["a", "c", "b"]], False),
        ([["10", "9"]], False),
        ([["x", "x"]], False),
        ([["ab", "b"]], False),  # in text order, not shorter first: the query decides
    ],
)
def test_ids_ascend_only_if_no_two_can_be_the_same(
    batches: list[list[str]], ascending: bool
) -> None:
    seen = _Ascending()
    for ids in batches:
        seen.see(good(*ids))
    assert seen.holds is ascending


@pytest.mark.parametrize("batch_rows", [2, 3, 4096])
@pytest.mark.parametrize(
    ("ids", "duplicates"),
    [
        (["a1", "a2", "a3", "a4", "a3", "a6"], [4]),
        (["1", "2", "3", "4", "5", "5"], [5]),  # ascending but for the last
        (["5", "1", "2", "3", "4", "5"], [5]),
        ([None, None, "0", None], [2]),  # position 0's id is "0"
        ([None, None, None, None], []),
    ],
)
def test_duplicate_ids_are_found_in_any_order_and_at_any_batch_edge(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    batch_rows: int,
    ids: list[str | None],
    duplicates: list[int],
) -> None:
    monkeypatch.setattr(base, "BATCH_ROWS", batch_rows)
    rows = [
        {"prompt": f"q{i}"} | ({} if row_id is None else {"id": row_id})
        for i, row_id in enumerate(ids)
    ]
    scan = scan_of(write_jsonl(tmp_path / "in.jsonl", rows))
    try:
        assert [pos for pos, _id, is_good, _at in kept(scan) if not is_good] == duplicates
        assert [r.pos for r in scan.first_bad] == duplicates
        assert all("duplicate id" in r.problem for r in scan.first_bad)
    finally:
        scan.close()


def test_ids_in_order_are_not_sorted_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> None:
        raise AssertionError("the ids ascend: no query for duplicates needed")

    monkeypatch.setattr(ScanIndex, "_mark_duplicates", refuse)
    rows = [{"prompt": f"q{i}"} for i in range(30)] + [
        {"id": 30 + i, "prompt": "p"} for i in range(90)
    ]
    scan = scan_of(write_jsonl(tmp_path / "in.jsonl", rows))
    assert scan.total == 120 and scan.bad == 0
    scan.close()
