"""--repeat N / samples=N: each request asked N times on purpose, each sample kept, resumed and
written as a row of its own (with its `sample`), on the command line and from Python."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Generator, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import FAST, read_jsonl, write_jsonl

import batchpizza
from batchpizza.cli import cli
from batchpizza.errors import UsageError
from batchpizza.mock.replies import mock_answer
from batchpizza.mock.server import ThreadedMockServer
from batchpizza.records import Prompt
from batchpizza.sampling import sampled


def prompts(path: Path, n: int) -> Path:
    rows = [{"id": f"q{i}", "prompt": f"question {i}", "topic": f"t{i % 3}"} for i in range(n)]
    return write_jsonl(path, rows)


def cli_run(server: ThreadedMockServer, inp: Path, out: Path, *extra: str) -> Any:
    args = ["run", str(inp), "-o", str(out), "--rate", "0", "--no-progress"]
    return CliRunner().invoke(cli, [*args, "--base-url", server.base_url, *extra])


def test_repeat_3_on_100_rows_sends_300_writes_300_rows_and_a_rerun_sends_none(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    inp, out = prompts(tmp_path / "in.jsonl", 100), tmp_path / "out.jsonl"

    first = cli_run(mock_api, inp, out, "--repeat", "3")

    assert first.exit_code == 0, first.output
    assert mock_api.stats.requests == 300
    rows = read_jsonl(out)
    assert [(r["id"], r["sample"]) for r in rows] == [
        (f"q{i}", s) for i in range(100) for s in range(3)
    ]
    # The sample right after the row's carried fields, before the result columns.
    assert list(rows[0])[:5] == ["id", "prompt", "topic", "sample", "answer"]
    assert all(r["answer"] == mock_answer(r["prompt"]) for r in rows)

    rerun = cli_run(mock_api, inp, out, "--repeat", "3")

    assert rerun.exit_code == 0, rerun.output
    assert mock_api.stats.requests == 300
    assert read_jsonl(out) == rows
    assert "300 rows: 0 to send" in rerun.stderr


def test_status_says_the_input_rows_and_their_samples_apart(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    inp, out = prompts(tmp_path / "in.jsonl", 40), tmp_path / "out.jsonl"
    assert cli_run(mock_api, inp, out, "--repeat", "3").exit_code == 0

    said = CliRunner().invoke(cli, ["status", str(out)])
    as_json = CliRunner().invoke(cli, ["status", str(out), "--json"])

    assert "(40 rows, 3 samples each: 120 output rows)" in said.output, said.output
    info = json.loads(as_json.output)
    assert (info["rows"], info["samples"], info["answered"]) == (120, 3, 120)


def test_without_repeat_the_output_has_no_sample_column_and_its_answers_are_sample_0(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    inp, out = prompts(tmp_path / "in.jsonl", 10), tmp_path / "out.parquet"
    assert cli_run(mock_api, inp, out).exit_code == 0
    assert "sample" not in pq.read_table(out).column_names

    more = cli_run(mock_api, inp, out, "--repeat", "3", "--dry-run")
    assert "  to send     20: 20 new rows" in more.stdout, more.output

    assert cli_run(mock_api, inp, out, "--repeat", "3").exit_code == 0
    assert mock_api.stats.requests == 10 + 20  # samples 1 and 2 of each row
    table = pq.read_table(out)
    assert table.column_names.index("sample") == table.column_names.index("topic") + 1
    assert table.column("sample").to_pylist() == [0, 1, 2] * 10
    back = cli_run(mock_api, inp, out)  # and back: sample 0 is the request itself
    assert back.exit_code == 0 and mock_api.stats.requests == 30


def test_an_input_field_named_sample_is_refused_under_repeat_before_anything_is_sent(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # It held the input's own value: Parquet got two `sample` columns (which pyarrow then
    # refuses to read), JSONL the sample number in its place, answer() a ValueError once paid.
    rows = [{"id": "q0", "prompt": "question 0", "sample": 7}]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    assert cli_run(mock_api, inp, tmp_path / "plain.jsonl").exit_code == 0  # sample 7 carried
    assert read_jsonl(tmp_path / "plain.jsonl")[0]["sample"] == 7
    for name in ("in.jsonl", "in.parquet"):  # the plain run's scan does not let it through
        refused = cli_run(mock_api, tmp_path / name, tmp_path / "plain.jsonl", "--repeat", "2")
        assert refused.exit_code == 2, refused.output
        assert (
            "'sample'" in refused.output and "like the output's `sample` column" in refused.output
        )
    assert mock_api.stats.requests == 1
    with pytest.raises(batchpizza.InputError, match="'sample'"):
        batchpizza.answer(rows, **FAST, base_url=mock_api.base_url, samples=2)
    assert mock_api.stats.requests == 1


def test_each_sample_is_kept_on_its_own_so_a_run_stopped_midway_resumes_the_rest(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    inp, out = prompts(tmp_path / "in.jsonl", 4), tmp_path / "out.jsonl"
    assert cli_run(mock_api, inp, out, "--repeat", "3").exit_code == 0
    with sqlite3.connect(f"{out}.checkpoint") as conn:  # lose two samples' answers
        conn.execute(
            "DELETE FROM results WHERE rowid IN (SELECT rowid FROM results WHERE id = 'q1' "
            "ORDER BY rowid LIMIT 2)"
        )
        # As a stop leaves it: the slots of q1 (row 1) still in the kept to-do set.
        conn.executemany("INSERT OR IGNORE INTO todo VALUES (?)", [(3,), (4,), (5,)])
    conn.close()

    rerun = cli_run(mock_api, inp, out, "--repeat", "3")

    assert rerun.exit_code == 0, rerun.output
    assert mock_api.stats.requests == 12 + 2
    assert [(r["id"], r["sample"]) for r in read_jsonl(out)] == [
        (f"q{i}", s) for i in range(4) for s in range(3)
    ]


def test_a_sample_left_by_a_run_stopped_after_a_model_change_is_sent_for_the_change(
    mock_api: ThreadedMockServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Model a answered both samples of every row; a run of model b was killed after answering
    # sample 0 of q1 but not its sample 1. The rerun told that sample "1 new rows" beside
    # "3 new model (a -> b)": the rows and the samples were the same, only the model changed.
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    inp, out = prompts(tmp_path / "in.jsonl", 2), tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"
    openai = ["--provider", "openai", "--repeat", "2", "--summary-json", str(summary)]
    openai += ["--base-url", f"{mock_api.base_url}/v1"]  # the last --base-url wins
    assert cli_run(mock_api, inp, out, *openai, "--model", "a").exit_code == 0
    assert cli_run(mock_api, inp, out, *openai, "--model", "b").exit_code == 0
    with sqlite3.connect(f"{out}.checkpoint") as conn:  # as the kill left it
        conn.execute(
            "DELETE FROM results WHERE id = 'q1' AND ident = (SELECT ident FROM results "
            "ORDER BY updated DESC LIMIT 1) AND digest != (SELECT digest FROM scan WHERE id = "
            "'q1')"
        )
        conn.execute("INSERT OR IGNORE INTO todo VALUES (3)")  # q1's sample 1, still to do
    conn.close()

    rerun = cli_run(mock_api, inp, out, *openai, "--model", "b")

    assert rerun.exit_code == 0, rerun.output
    plan = json.loads(summary.read_text())["plan"]
    assert (plan["new"], plan["identity"], plan["change"]) == (0, 1, "new model (a -> b)")


def test_samples_from_python_answer_and_stream(mock_api: ThreadedMockServer) -> None:
    options: dict[str, Any] = {**FAST, "base_url": mock_api.base_url, "samples": 2}

    answered = batchpizza.answer([{"prompt": "a", "n": 1}, {"prompt": "b", "n": 2}], **options)

    assert [(r["prompt"], r["n"], r["sample"]) for r in answered] == [
        ("a", 1, 0), ("a", 1, 1), ("b", 2, 0), ("b", 2, 1)
    ]  # fmt: skip
    assert mock_api.stats.requests == 4

    async def streamed() -> list[dict[str, Any]]:
        return [row async for row in batchpizza.stream(["x", "y", "z"], **options)]

    found = asyncio.run(streamed())
    assert sorted((r["position"], r["sample"]) for r in found) == [
        (p, s) for p in range(3) for s in range(2)
    ]
    assert mock_api.stats.requests == 4 + 6


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--repeat", "2", "--format", "openai-batch"], "--repeat with --format openai-batch"),
        (["--repeat", "0"], "--repeat"),
    ],
)
def test_repeat_refuses_what_it_cannot_do(
    mock_api: ThreadedMockServer, tmp_path: Path, extra: list[str], message: str
) -> None:
    inp, out = prompts(tmp_path / "in.jsonl", 2), tmp_path / "out.jsonl"
    done = cli_run(mock_api, inp, out, *extra)
    assert done.exit_code == 2 and message in done.output
    assert mock_api.stats.requests == 0
    with pytest.raises(UsageError, match="--repeat must be from 1"):
        batchpizza.answer(["a"], samples=0)


def test_sampled_reads_each_row_once_and_hands_on_a_prompt_per_slot() -> None:
    asked: list[int] = []

    def prompts_of(wanted: Iterable[int]) -> Generator[tuple[int, Prompt], None, None]:
        for pos in wanted:
            asked.append(pos)
            yield pos, Prompt(f"r{pos}", f"text {pos}", ({"role": "user", "content": "x"},))

    got = [(slot, p.id, p.sample) for slot, p in sampled(prompts_of, [1, 2, 4, 5, 9], 3)]

    assert got == [(1, "r0", 1), (2, "r0", 2), (4, "r1", 1), (5, "r1", 2), (9, "r3", 0)]
    assert asked == [0, 1, 3]
