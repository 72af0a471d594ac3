"""What the user sees of a run (the summary, the progress, the log), and a property: whatever the faults, the output is whole and in order."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import FAST, SAMPLES, examples, write_jsonl
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_run import SUMMARY_KEYS, cli_args, output_rows, prompts_file, run

import batchpizza
from batchpizza.cli import cli
from batchpizza.mock.faults import MockConfig
from batchpizza.mock.replies import mock_answer
from batchpizza.mock.server import ThreadedMockServer

# -- what the user sees --------------------------------------------------------------------------


def test_summary_has_its_keys_and_is_written_as_json(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    out = tmp_path / "out.parquet"
    path = tmp_path / "summary.json"
    summary = run(mock_api, SAMPLES / "prompts.jsonl", out, summary_json=str(path))
    assert set(summary) == SUMMARY_KEYS
    assert json.loads(path.read_text()) == summary
    assert summary["rows"] == summary["answered"] == 6
    assert summary["failed"] == summary["misuse"] == summary["invalid"] == 0
    assert summary["requests"] == 6
    assert summary["retries"] == 0
    assert summary["output"] == str(out)
    assert summary["checkpoint"] == str(out) + ".checkpoint"
    assert Path(summary["checkpoint"]).exists()
    assert summary["interrupted"] is False
    assert summary["exit_code"] == 0
    assert isinstance(summary["elapsed_s"], float)
    assert summary["schema_version"] == 1
    started = dt.datetime.fromisoformat(summary["started"].replace("Z", "+00:00"))
    ended = dt.datetime.fromisoformat(summary["ended"].replace("Z", "+00:00"))
    assert summary["ended"].endswith("Z") and started.utcoffset() == dt.timedelta(0)
    assert abs((ended - started).total_seconds() - summary["elapsed_s"]) < 0.01


def test_summary_line_goes_to_stderr(
    mock_api: ThreadedMockServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(mock_api, SAMPLES / "prompts.jsonl", tmp_path / "out.jsonl", quiet=False)
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 2  # the start line, the summary line
    assert "start:" in lines[0] and "6 to send: 6 new rows" in lines[0]
    assert "6 rows" in lines[1]
    assert "6 answered" in lines[1]


def test_quiet_prints_nothing_on_success(
    mock_api: ThreadedMockServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(mock_api, SAMPLES / "prompts.jsonl", tmp_path / "out.jsonl", quiet=True)
    assert capsys.readouterr() == ("", "")
    result = CliRunner().invoke(
        cli, cli_args(mock_api, SAMPLES / "prompts.jsonl", tmp_path / "out2.jsonl", "-q")
    )
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == ""


def test_a_second_run_survives_a_closed_stderr(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # A program that captured stderr around one run and closed the capture (as pytest's capsys and
    # click's CliRunner do) must be able to run again: the second run logs to the stderr of its
    # own time and does not trip over the closed one.
    first = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    with contextlib.redirect_stderr(first):
        run(mock_api, SAMPLES / "prompts.jsonl", tmp_path / "one.jsonl", quiet=False)
    first.flush()
    assert b"6 answered" in first.buffer.getvalue()  # type: ignore[attr-defined]
    first.close()
    second = io.StringIO()
    with contextlib.redirect_stderr(second):
        summary = run(mock_api, SAMPLES / "prompts.jsonl", tmp_path / "two.jsonl", quiet=False)
    assert summary["exit_code"] == 0
    assert "6 answered" in second.getvalue()


def test_cli_prints_summary_line_and_writes_summary_json(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    out = tmp_path / "out.parquet"
    path = tmp_path / "s.json"
    result = CliRunner().invoke(
        cli, cli_args(mock_api, SAMPLES / "prompts.jsonl", out, "--summary-json", str(path))
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    start, last = result.stderr.splitlines()
    assert "start:" in start
    assert "6 answered" in last
    summary = json.loads(path.read_text())
    assert summary["exit_code"] == 0
    assert summary["rows"] == 6
    assert summary["output"] == str(out)


def test_cli_exit_codes(mock_api: ThreadedMockServer, tmp_path: Path) -> None:
    runner = CliRunner()
    good = prompts_file(tmp_path / "good.jsonl", ["a", "b"])
    mixed = prompts_file(tmp_path / "mixed.jsonl", ["a", "[[status:404]] b"])
    result = runner.invoke(cli, cli_args(mock_api, good, tmp_path / "good.parquet", "-q"))
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, cli_args(mock_api, mixed, tmp_path / "mixed.parquet", "-q"))
    assert result.exit_code == 3, result.output
    assert len(output_rows(tmp_path / "mixed.parquet")) == 2
    before = mock_api.stats.requests
    result = runner.invoke(cli, cli_args(mock_api, good, tmp_path / "good.txt", "-q"))
    assert result.exit_code == 2
    assert mock_api.stats.requests == before
    assert "Traceback" not in result.output


# -- property: whatever the faults, the output is whole and in order -----------------------------

_rate = st.floats(min_value=0.0, max_value=0.15)
_prompt = st.text(min_size=1, max_size=30).filter(lambda s: bool(s.strip()) and "[[" not in s)
_rows = st.lists(
    st.tuples(st.text(min_size=1, max_size=8), _prompt), max_size=25, unique_by=lambda r: r[0]
)


@settings(
    max_examples=examples(15),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    rows=_rows,
    error=_rate,
    garbage=_rate,
    drop=_rate,
    empty=_rate,
    misuse=_rate,
    seed=st.integers(0, 2**16),
    fmt=st.sampled_from([".jsonl", ".parquet"]),
)
# Two rows asking the same prompt (found on Python 3.10's draw of examples).
@example(
    rows=[("0", "0"), ("O", "0")],
    **dict.fromkeys(("error", "garbage", "drop", "empty", "misuse"), 0.0),
    seed=0,
    fmt=".jsonl",
)
def test_any_fault_mix_gives_every_id_once_in_order_and_right_answers(
    mock_api: ThreadedMockServer,
    tmp_path: Path,
    rows: list[tuple[str, str]],
    error: float,
    garbage: float,
    drop: float,
    empty: float,
    misuse: float,
    seed: int,
    fmt: str,
) -> None:
    mock_api.config = MockConfig(
        error_rate=error,
        garbage_rate=garbage,
        drop_rate=drop,
        empty_rate=empty,
        misuse_rate=misuse,
        seed=seed,
    )
    mock_api.reset()
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    try:
        source = write_jsonl(folder / "in.jsonl", [{"id": i, "prompt": p} for i, p in rows])
        out = folder / f"out{fmt}"
        summary = run(mock_api, source, out, max_retries=2, misuse_retries=1, concurrency=4)
        result = output_rows(out)
        assert [r["id"] for r in result] == [i for i, _ in rows]
        for row, (_, prompt) in zip(result, rows, strict=True):
            assert row["finish_reason"] in ("stop", "error", "misuse")
            if row["finish_reason"] == "stop":
                assert row["answer"] == mock_answer(prompt)
                assert row["error"] is None
            else:
                assert row["answer"] is None
                assert row["error"]
            assert row["misuse"] is (row["finish_reason"] == "misuse")
        answered = sum(r["finish_reason"] == "stop" for r in result)
        assert summary["answered"] == answered
        assert summary["exit_code"] == (0 if answered == len(rows) else 3)
        # Rows asking the same prompt are one request (identical requests are asked once).
        assert summary["requests"] == len({p for _, p in rows}) + summary["retries"]
        assert summary["requests"] == mock_api.stats.requests
    finally:
        shutil.rmtree(folder)


def test_python_api_honours_the_same_environment_defaults_as_the_cli(
    mock_api: ThreadedMockServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHPIZZA_BASE_URL", mock_api.base_url)
    source = prompts_file(tmp_path / "in.jsonl", ["env one", "env two"])
    options = {k: v for k, v in FAST.items() if k != "base_url"}
    summary = batchpizza.run(source, tmp_path / "out.jsonl", **options)
    assert summary["answered"] == 2
    assert mock_api.stats.requests == 2
