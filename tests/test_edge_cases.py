"""Edge cases found in review: each test pins a promise that once broke."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import FAST, read_jsonl, write_jsonl

import batchpizza
import batchpizza.sinks
from batchpizza.checkpoint import RunLock
from batchpizza.cli import cli
from batchpizza.errors import InputChanged, InputError, LockedError, OutputError
from batchpizza.mock.replies import mock_answer
from batchpizza.mock.server import ThreadedMockServer


def run(server: ThreadedMockServer, source: Path, out: Path, **options: Any) -> dict[str, Any]:
    return batchpizza.run(source, out, **{**FAST, "base_url": server.base_url, **options})


def test_a_lone_surrogate_escape_is_a_bad_row_found_before_sending(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"id": "a", "prompt": "fine"}\n'
        '{"id": "b", "prompt": "bad \\ud800 half"}\n'
        '{"id": "c", "prompt": "fine too", "note": "x\\udc00"}\n'
        '{"id": "d", "prompt": "caf\\u00e9 is fine"}\n'
    )
    with pytest.raises(InputError) as caught:
        run(mock_api, source, tmp_path / "out.parquet")
    assert caught.value.total_bad == 2
    assert "surrogate" in caught.value.message and ":2:" in caught.value.message
    assert mock_api.stats.requests == 0

    summary = run(mock_api, source, tmp_path / "out.parquet", skip_bad_rows=True)
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["finish_reason"] for r in rows] == ["stop", "invalid", "invalid", "stop"]
    assert rows[3]["answer"] == mock_answer("café is fine")
    assert summary["exit_code"] == 3


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_skipped_rows_without_a_readable_id_have_none(
    mock_api: ThreadedMockServer, tmp_path: Path, suffix: str
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "a", "prompt": "p"}\n{not json\n[1, 2]\n{"id": 1.5, "prompt": "q"}\n')
    out = tmp_path / f"out{suffix}"
    run(mock_api, source, out, skip_bad_rows=True)
    rows = pq.read_table(out).to_pylist() if suffix == ".parquet" else read_jsonl(out)
    assert [r["id"] for r in rows] == ["a", None, None, None]
    assert [r["finish_reason"] for r in rows] == ["stop", "invalid", "invalid", "invalid"]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("in.csv", "id,prompt\n0,hello\nx,too,many\n1,world\n"),
        ("in.jsonl", '{"id": "0", "prompt": "hello"}\n{not json\n{"id": "1", "prompt": "world"}\n'),
    ],
)
def test_a_skipped_row_without_a_readable_id_never_takes_another_rows_id(
    mock_api: ThreadedMockServer, tmp_path: Path, name: str, text: str
) -> None:
    # It got its position, "1": the output had two rows with id 1, one of them invalid.
    source = tmp_path / name
    source.write_text(text)
    out = tmp_path / "out.jsonl"
    run(mock_api, source, out, skip_bad_rows=True)
    rows = read_jsonl(out)
    assert [(r["id"], r["finish_reason"]) for r in rows] == [
        ("0", "stop"),
        (None, "invalid"),
        ("1", "stop"),
    ]


def test_skipped_rows_without_a_readable_id_have_distinct_batch_line_ids(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # Their line ids were derived from no id at all: every such line had the same one.
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "a", "prompt": "x"}\n{not json\n{"id": null, "prompt": "y"}\n')
    out = tmp_path / "out.jsonl"
    run(mock_api, source, out, skip_bad_rows=True, format="openai-batch")
    lines = read_jsonl(out)
    assert [line["custom_id"] for line in lines] == ["a", None, None]
    assert len({line["id"] for line in lines}) == 3
    run(mock_api, source, out, skip_bad_rows=True, format="openai-batch")
    assert read_jsonl(out) == lines  # the same results make the same file


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_a_skipped_row_holding_output_column_names_does_not_collide_with_them(
    mock_api: ThreadedMockServer, tmp_path: Path, suffix: str
) -> None:
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"key": "a", "prompt": "p", "topic": "x"},
            {"key": "b", "prompt": "q", "answer": "sneaky", "id": "zzz"},
        ],
    )
    out = tmp_path / f"out{suffix}"
    run(mock_api, source, out, skip_bad_rows=True, id_field="key")
    if suffix == ".parquet":
        table = pq.read_table(out)
        assert table.column_names.count("answer") == 1
        assert table.column_names.count("id") == 1
        rows = table.to_pylist()
    else:
        rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["a", "b"]
    assert rows[0]["answer"] == mock_answer("p")
    assert rows[1]["answer"] is None and rows[1]["finish_reason"] == "invalid"


def test_rows_appended_during_a_run_wait_for_the_next_run(
    mock_api: ThreadedMockServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_jsonl(
        tmp_path / "in.jsonl", [{"id": str(i), "prompt": f"q{i}"} for i in range(5)]
    )
    real_write = batchpizza.sinks.write_output

    def append_then_write(*args: Any, **kwargs: Any) -> None:
        with source.open("a") as handle:
            handle.write(json.dumps({"id": "late", "prompt": "late row"}) + "\n")
        real_write(*args, **kwargs)

    monkeypatch.setattr(batchpizza.sinks, "write_output", append_then_write)
    out = tmp_path / "out.jsonl"
    summary = run(mock_api, source, out)
    assert summary["exit_code"] == 0
    assert [r["id"] for r in read_jsonl(out)] == ["0", "1", "2", "3", "4"]

    monkeypatch.setattr(batchpizza.sinks, "write_output", real_write)
    again = run(mock_api, source, out)
    assert again["requests"] == 1
    assert [r["id"] for r in read_jsonl(out)][-1] == "late"


def test_a_prompt_edited_in_place_during_a_run_is_never_paired_with_the_old_answer(
    mock_api: ThreadedMockServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [{"id": str(i), "prompt": f"q{i}"} for i in range(5)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    real_write = batchpizza.sinks.write_output

    def edit_then_write(*args: Any, **kwargs: Any) -> None:
        rows[2]["prompt"] = "Q2"  # same length, same row count
        write_jsonl(source, rows)
        real_write(*args, **kwargs)

    monkeypatch.setattr(batchpizza.sinks, "write_output", edit_then_write)
    out = tmp_path / "out.jsonl"
    with pytest.raises(InputChanged) as caught:
        run(mock_api, source, out)
    assert caught.value.exit_code == 1
    assert not out.exists()

    monkeypatch.setattr(batchpizza.sinks, "write_output", real_write)
    summary = run(mock_api, source, out)
    assert summary["requests"] == 1  # only the edited row
    assert read_jsonl(out)[2]["answer"] == mock_answer("Q2")


def test_parquet_files_with_clashing_columns_are_refused_before_sending(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(
        pa.table({"prompt": ["a"], "topic": pa.array([1], pa.int64())}), folder / "a.parquet"
    )
    pq.write_table(pa.table({"prompt": ["b"], "topic": pa.array([[1]])}), folder / "b.parquet")
    with pytest.raises(InputError, match="clashing"):
        run(mock_api, folder, tmp_path / "out.parquet")
    assert mock_api.stats.requests == 0


@pytest.mark.parametrize("name", ["run#1.jsonl", "run%231.jsonl", "what?.jsonl"])
def test_outputs_whose_names_hold_uri_characters_run_and_resume(
    mock_api: ThreadedMockServer, tmp_path: Path, name: str
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "one"}, {"prompt": "two"}])
    out = tmp_path / name
    assert run(mock_api, source, out)["requests"] == 2
    assert run(mock_api, source, out)["requests"] == 0
    result = CliRunner().invoke(cli, ["status", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["answered"] == 2


def test_a_mock_run_and_a_real_run_cannot_share_an_output(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "one"}])
    out = tmp_path / "out.jsonl"
    with RunLock(out, Path(f"{out}.mock-checkpoint")), pytest.raises(LockedError):
        run(mock_api, source, out)
    assert mock_api.stats.requests == 0


def test_a_missing_output_folder_is_an_error_and_nothing_is_created(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "one"}])
    with pytest.raises(OutputError, match="does not exist"):
        run(mock_api, source, tmp_path / "new" / "sub" / "out.jsonl")
    assert not (tmp_path / "new").exists()
    assert mock_api.stats.requests == 0


def test_status_finds_the_checkpoint_of_an_offline_mock_run(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "one"}, {"prompt": "two"}])
    out = tmp_path / "out.jsonl"
    batchpizza.run(source, out, mock=True, rate=0, quiet=True, progress=False)
    result = CliRunner().invoke(cli, ["status", str(out), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["answered"] == 2
    assert info["checkpoint"].endswith(".mock-checkpoint")


@pytest.mark.slow
def test_a_jsonl_job_never_loads_pyarrow(tmp_path: Path) -> None:
    # Start-up cost: pyarrow takes about a tenth of a second to import; only Parquet needs it.
    import subprocess
    import sys

    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "one"}, {"prompt": "two"}])
    script = (
        "import sys, batchpizza\n"
        f"s = batchpizza.run({str(source)!r}, {str(tmp_path / 'out.jsonl')!r}, mock=True, rate=0,"
        " quiet=True, progress=False)\n"
        "assert s['answered'] == 2, s\n"
        "print('pyarrow' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
