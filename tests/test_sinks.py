"""The writer: the output appears whole or not at all, as an ordinary file, even for no rows."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import FAST

import batchpizza
from batchpizza.cli import cli
from batchpizza.errors import OutputError
from batchpizza.files import atomic_file
from batchpizza.mock.server import ThreadedMockServer

RESULT_COLUMNS = [
    *("answer", "finish_reason", "misuse", "error", "attempts", "latency_ms", "model"),
    "reused_from",
]
# Every output's token counts, after them (Pizzagpt's estimated, and marked so).
TOKEN_COLUMNS = ["prompt_tokens", "completion_tokens", "tokens_estimated"]


@pytest.fixture
def umask() -> Iterator[int]:
    """A umask other than the usual 022, restored afterwards."""
    old = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


def test_result_columns_are_the_documented_ones() -> None:
    assert list(RESULT_COLUMNS) == RESULT_COLUMNS


# -- atomic_file ----------------------------------------------------------------------------------


def test_atomic_file_writes_the_whole_file_and_leaves_nothing_aside(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    with atomic_file(target) as handle:
        handle.write(b"line 1\n")
        handle.write(b"line 2\n")
        assert not target.exists()  # nothing at the final name until it is complete
    assert target.read_bytes() == b"line 1\nline 2\n"
    assert leftovers(tmp_path) == []


def test_atomic_file_keeps_the_old_output_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_bytes(b"the old, complete output\n")
    with pytest.raises(RuntimeError, match="boom"), atomic_file(target) as handle:
        handle.write(b"half a new out")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"the old, complete output\n"
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_atomic_file_leaves_no_file_when_there_was_none(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    with pytest.raises(KeyboardInterrupt), atomic_file(target) as handle:
        handle.write(b"PAR1")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_an_os_error_while_writing_is_an_output_error_and_keeps_the_old_file(
    tmp_path: Path,
) -> None:
    target = tmp_path / "out.jsonl"
    target.write_bytes(b"old\n")
    with pytest.raises(OutputError, match="No space left"), atomic_file(target) as handle:
        handle.write(b"new")
        raise OSError(28, "No space left on device")
    assert target.read_bytes() == b"old\n"
    assert leftovers(tmp_path) == []


def test_atomic_file_in_a_missing_folder_is_an_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError), atomic_file(tmp_path / "nope" / "out.jsonl"):
        pass


def test_a_new_output_gets_an_ordinary_files_mode(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "out.jsonl"
    with atomic_file(target) as handle:
        handle.write(b"x\n")
    assert mode(target) == 0o666 & ~umask  # 0o640 here; mkstemp's 0o600 would be wrong


def test_a_replaced_output_keeps_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_bytes(b"old\n")
    target.chmod(0o604)
    with atomic_file(target) as handle:
        handle.write(b"new\n")
    assert target.read_bytes() == b"new\n"
    assert mode(target) == 0o604


# -- through a run --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_a_runs_output_has_an_ordinary_files_mode(
    mock_api: ThreadedMockServer, tmp_path: Path, umask: int, suffix: str
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "hello"}\n')
    out = tmp_path / f"out{suffix}"
    batchpizza.run(source, out, **FAST, base_url=mock_api.base_url)
    assert mode(out) == 0o666 & ~umask
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_an_empty_jsonl_input_gives_an_empty_output_with_all_result_columns(
    mock_api: ThreadedMockServer, tmp_path: Path, content: str
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(content)
    out = tmp_path / "out.parquet"
    summary = batchpizza.run(source, out, **FAST, base_url=mock_api.base_url)
    table = pq.read_table(out)
    assert table.num_rows == 0
    assert table.schema.names == ["id", *RESULT_COLUMNS, *TOKEN_COLUMNS]
    assert table.schema.field("misuse").type == pa.bool_()
    assert table.schema.field("attempts").type == pa.int64()
    assert summary["exit_code"] == 0
    assert summary["rows"] == 0
    assert mock_api.stats.requests == 0
    jsonl_out = tmp_path / "out.jsonl"
    summary = batchpizza.run(source, jsonl_out, **FAST, base_url=mock_api.base_url)
    assert jsonl_out.read_bytes() == b""
    assert summary["exit_code"] == 0


def test_an_empty_parquet_input_keeps_its_columns_in_the_output(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = tmp_path / "in.parquet"
    schema = pa.schema([("id", pa.string()), ("prompt", pa.string()), ("topic", pa.string())])
    pq.write_table(schema.empty_table(), source)
    out = tmp_path / "out.parquet"
    summary = batchpizza.run(source, out, **FAST, base_url=mock_api.base_url)
    table = pq.read_table(out)
    assert table.num_rows == 0
    assert table.schema.names == ["id", "prompt", "topic", *RESULT_COLUMNS, *TOKEN_COLUMNS]
    assert summary["exit_code"] == 0


def test_an_empty_input_exits_0_on_the_command_line(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("")
    out = tmp_path / "out.parquet"
    summary_path = tmp_path / "s.json"
    result = CliRunner().invoke(
        cli,
        [
            "run",
            str(source),
            "-o",
            str(out),
            "--base-url",
            mock_api.base_url,
            "--no-progress",
            "-q",
            "--summary-json",
            str(summary_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert pq.read_schema(out).names == ["id", *RESULT_COLUMNS, *TOKEN_COLUMNS]
    assert json.loads(summary_path.read_text())["rows"] == 0


def test_a_failed_run_leaves_an_earlier_output_in_place(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "a", "prompt": "hello"}\n')
    out = tmp_path / "out.jsonl"
    batchpizza.run(source, out, **FAST, base_url=mock_api.base_url)
    before = out.read_bytes()
    # A bad row refuses the run before anything is sent: the earlier output is left alone.
    source.write_text('{"id": "a", "prompt": "hello"}\n{"id": "a", "prompt": "again"}\n')
    with pytest.raises(batchpizza.InputError):
        batchpizza.run(source, out, **FAST, base_url=mock_api.base_url)
    assert out.read_bytes() == before
    assert leftovers(tmp_path) == []
