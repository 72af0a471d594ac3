"""The spend table (checkpoint/spend.py): tokens kept with the answers that carry them, summed
over runs at each run's price, and a schema 4 checkpoint given the table on open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from test_checkpoint import result

from batchpizza.checkpoint.store import Checkpoint


def test_the_spend_counts_every_runs_answers_at_that_runs_price(tmp_path: Path) -> None:
    path = tmp_path / "ck"
    store = Checkpoint.open(path)
    store.use_identity({"provider": "openai", "model": "m"})
    store.begin_spend(store.begin_run({}), (1.0, 2.0))
    store.write([result("a")._replace(prompt_tokens=1000, completion_tokens=500)])
    store.write([result("b", "error")])  # no usage, nothing spent
    store.begin_spend(store.begin_run({}), (10.0, 20.0))
    store.write(
        [result("c")._replace(prompt_tokens=100, completion_tokens=50, tokens_estimated=True)]
    )
    spent = store.spend()
    assert (spent.prompt_tokens, spent.completion_tokens) == (1100, 550)
    assert spent.dollars == pytest.approx((1000 + 2 * 500 + 10 * 100 + 20 * 50) / 1e6)
    assert spent.estimated
    assert store.spend(this_run=True).prompt_tokens == 100
    store.forget()  # --restart forgets answers, not money
    assert store.spend().prompt_tokens == 1100
    assert store.mean_output() is None
    store.close()


def test_a_schema_4_checkpoint_gets_the_spend_table_and_keeps_its_answers(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ck"
    store = Checkpoint.open(path)
    store.write([result("a")])
    store.close()
    with sqlite3.connect(path) as conn:  # as batchpizza wrote it before the table
        conn.execute("DROP TABLE spend")
        conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema'")
    conn.close()
    reader = Checkpoint.open(path, create=False, readonly=True)
    assert reader.spend().dollars == 0  # read as it is, table or not
    reader.close()
    store = Checkpoint.open(path)
    assert store.meta()["schema"] == "5"
    assert store.spend().prompt_tokens == 0
    assert store.status()["answered"] == 1
    store.close()


def test_a_reader_of_a_file_from_before_tokens_estimated_sees_its_staged_answers(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ck"
    store = Checkpoint.open(path)
    store.write([result("a")._replace(prompt_tokens=3, completion_tokens=4)])
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the staged row stays staged
    store._conn.close()  # as a run killed before its fold leaves it
    with sqlite3.connect(path) as conn:  # written by a batchpizza without the column
        for table in ("results", "staged"):
            conn.execute(f"ALTER TABLE {table} DROP COLUMN tokens_estimated")
        conn.execute("DROP TABLE spend")
        conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema'")
    conn.close()
    reader = Checkpoint.open(path, create=False, readonly=True)
    assert reader.status()["answered"] == 1
    assert reader.spend().prompt_tokens == 0  # no table: nothing recorded
    reader.close()


def test_usage_counts_that_sum_past_64_bits_saturate_instead_of_failing_the_write(
    tmp_path: Path,
) -> None:
    # Each count fits in 64 bits (a server may send it), but two in one group did not: the
    # OverflowError failed the group's transaction and the run, the same again on every rerun.
    big = 2**62 + 7
    store = Checkpoint.open(tmp_path / "ck")
    store.use_identity({"provider": "openai", "model": "m"})
    for n in range(2):  # two runs: their sum past 64 bits as well
        store.begin_spend(store.begin_run({}), (1.0, 2.0))
        store.write(
            [
                result(f"a{n}")._replace(prompt_tokens=big, completion_tokens=big),
                result(f"b{n}")._replace(prompt_tokens=big, completion_tokens=3),
            ]
        )
    assert store.status()["answered"] == 4
    spent = store.spend()
    assert spent.prompt_tokens == spent.completion_tokens == 2**63 - 1
    assert spent.dollars > 1e13
    store.close()
