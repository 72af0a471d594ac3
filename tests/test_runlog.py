"""What a run writes to its log (batchpizza/runlog.py), as a cron mail or a log collector gets it:
the start line, progress lines, the summary line, each timestamped, counts that mean the same on
every line; --log-format json; the summary's JSON Schema, checked against real runs' summaries."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import signal
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner, Result
from conftest import FAST, write_jsonl

import batchpizza
from batchpizza import redact
from batchpizza.checkpoint import RunLock
from batchpizza.cli import cli
from batchpizza.config import RunConfig
from batchpizza.errors import Interrupted
from batchpizza.job import Job
from batchpizza.mock.server import ThreadedMockServer
from batchpizza.records import Result as RowResult

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d batchpizza: ")
PROGRESS = re.compile(
    r"progress: (?P<done>\d+)/(?P<rows>\d+) rows done \(answered (?P<answered>\d+), "
    r"failed (?P<failed>\d+), misuse (?P<misuse>\d+), invalid (?P<invalid>\d+)\), "
    r"(?P<to_send>\d+) to send; this run: \d+ requests?, \d+ retr(?:y|ies)"
)


@pytest.fixture(autouse=True)
def _forget_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redact, "_known", set())


def rows(n: int, slow_from: int | None = None) -> list[dict[str, Any]]:
    """Rows r0..r{n-1}; from `slow_from` on, each answered after 150 ms, so that a run over them
    lasts long enough for progress lines every 20 ms."""
    out = []
    for i in range(n):
        slow = " [[slow:150]]" if slow_from is not None and i >= slow_from else ""
        out.append({"id": f"r{i}", "prompt": f"question {i}{slow}"})
    return out


def run_cli(server: ThreadedMockServer, source: Path, out: Path, *extra: str) -> Result:
    args = ["run", str(source), "-o", str(out), "--base-url", server.base_url, "--rate", "0"]
    return CliRunner().invoke(cli, [*args, "--progress-every", "0.02", *extra])


def earlier_run(server: ThreadedMockServer, tmp_path: Path) -> tuple[Path, Path]:
    """An output whose checkpoint holds 3 answers and 1 failure, and an input that has grown to
    8 rows since, with row r2 changed: the next run sends 1 failed, 1 changed and 4 new rows."""
    data = rows(8, slow_from=3)
    data[3]["prompt"] += " [[fail-first:1]]"  # fails once, with no retry: answered next time
    source = write_jsonl(tmp_path / "in.jsonl", data[:4])
    out = tmp_path / "out.jsonl"
    assert run_cli(server, source, out, "-q", "--max-retries", "0").exit_code == 3
    data[2]["prompt"] = "question 2, asked another way"
    write_jsonl(source, data)
    return source, out


# -- the text log ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_cron_log_has_a_start_line_timestamps_everywhere_and_cumulative_counts(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source, out = earlier_run(mock_api, tmp_path)

    result = run_cli(mock_api, source, out, "--concurrency", "1", "--deadline", "10h")

    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert all(STAMP.match(line) for line in lines), lines
    start, *progress, last = lines
    assert f"start: batchpizza {_version()}: {source} -> {out}: 8 rows: 6 to send: " in start
    assert "1 prompt changed, 4 new rows, 1 failed before; 2 answered before, 0 invalid" in start
    # The deadline counts from the start of the process (here, of the test session).
    assert re.search(r"; rate unlimited; deadline [-\d]{10} [:\d]{8} \(in \d:\d\d:\d\d\)$", start)
    assert progress, "no progress line in a run of 6 rows at 150 ms each"
    for line in progress:
        counts = PROGRESS.search(line)
        assert counts is not None, line
        n = {k: int(v) for k, v in counts.groupdict().items()}
        # Over the whole output on every line: what the earlier run answered is counted.
        assert n["rows"] == 8 and n["answered"] >= 2
        assert n["done"] == n["answered"] + n["failed"] + n["misuse"] + n["invalid"]
        assert n["to_send"] == n["rows"] - n["done"]
    assert "batchpizza: done: 8 rows: 8 answered, 0 failed" in last
    assert "this run: 6 requests, 0 retries" in last


@pytest.mark.slow
def test_the_start_line_says_the_rate_asked_and_the_one_it_starts_at(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", rows(2))

    fixed = run_cli(mock_api, source, tmp_path / "a.jsonl", "--rate", "50/s")
    auto = run_cli(mock_api, source, tmp_path / "b.jsonl", "--rate", "auto:40/s")

    assert "; rate 50/s; no deadline" in fixed.stderr.splitlines()[0]
    assert "; rate auto:40/s, starting at 1/s; no deadline" in auto.stderr.splitlines()[0]


# -- --log-format json -------------------------------------------------------------------------


def test_json_log_is_one_object_a_line_start_progress_summary(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source, out = earlier_run(mock_api, tmp_path)
    summary_path = tmp_path / "summary.json"

    result = run_cli(
        mock_api, source, out, "--log-format", "json", "--summary-json", str(summary_path)
    )

    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert (events[0]["event"], events[-1]["event"]) == ("start", "summary")
    assert {e["event"] for e in events[1:-1]} == {"progress"}, events
    for event in events:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["time"])
    start = events[0]
    assert (start["rows"], start["to_send"], start["answered"]) == (8, 6, 2)
    assert (start["new"], start["changed"], start["retry"]) == (4, 1, 1)
    assert start["input"] == str(source) and start["deadline"] is None
    for progress in events[1:-1]:
        assert progress["rows"] == 8
        assert progress["done"] == sum(
            progress[k] for k in ("answered", "failed", "misuse", "invalid")
        )
    summary = {k: v for k, v in events[-1].items() if k not in ("time", "event")}
    assert summary == json.loads(summary_path.read_text())
    assert events[-1]["time"] == summary["ended"]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_start_line_masks_a_credential_in_a_file_name(
    mock_api: ThreadedMockServer, tmp_path: Path, log_format: str
) -> None:
    """Every field of a JSON line passes the redaction that text lines pass."""
    source = write_jsonl(tmp_path / "in?token=Sekr3tValue.jsonl", rows(1))
    out = tmp_path / "o.jsonl"

    result = run_cli(mock_api, source, out, "--log-format", log_format, "-v")

    assert result.exit_code == 0, result.output
    assert "Sekr3tValue" not in result.stderr
    assert "token=***" in result.stderr.splitlines()[0]


# -- the summary's JSON Schema -----------------------------------------------------------------


def schema_validator() -> jsonschema.protocols.Validator:
    text = resources.files("batchpizza").joinpath("schemas/summary.schema.json").read_text()
    schema = json.loads(text)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def summary_of(path: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads(path.read_text())
    return summary


def test_real_summaries_validate_against_the_shipped_schema(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    validator = schema_validator()
    source = write_jsonl(tmp_path / "in.jsonl", [*rows(4), {"id": "bad", "prompt": ""}])
    out = tmp_path / "out.jsonl"
    seen: dict[str, dict[str, Any]] = {}

    def run(name: str, *extra: str) -> int:
        path = tmp_path / f"{name}.json"
        result = run_cli(mock_api, source, out, "-q", "--summary-json", str(path), *extra)
        seen[name] = summary_of(path)
        return result.exit_code

    assert run("stopped", "--skip-bad-rows", "--deadline", "0") == 4
    assert run("answered", "--skip-bad-rows") == 3
    with RunLock(out, Path(f"{out}.checkpoint")):
        assert run("locked") == 75
    assert run("bad_input") == 2
    seen["interrupted"] = interrupted_summary(mock_api, tmp_path)

    assert seen["stopped"]["stopped"] == "deadline" and seen["stopped"]["pending"] == 4
    assert seen["answered"]["answered"] == 4 and seen["answered"]["invalid"] == 1
    assert seen["locked"]["stopped"] == "locked"
    assert seen["interrupted"]["interrupted"] is True
    for name, summary in seen.items():
        errors = [e.message for e in validator.iter_errors(summary)]
        assert errors == [], (name, errors)
        assert summary["schema_version"] == 1
        started = dt.datetime.fromisoformat(summary["started"].replace("Z", "+00:00"))
        ended = dt.datetime.fromisoformat(summary["ended"].replace("Z", "+00:00"))
        assert started <= ended, name


def interrupted_summary(server: ThreadedMockServer, tmp_path: Path) -> dict[str, Any]:
    """A run interrupted (SIGINT, as the CLI's handler passes it) once its first row finished."""
    source = write_jsonl(tmp_path / "slow.jsonl", rows(6, slow_from=1))
    path = tmp_path / "interrupted.json"
    options = {**FAST, "concurrency": 1, "summary_json": str(path), "grace": 0.01}
    config = RunConfig.from_options(
        str(source), str(tmp_path / "slow-out.jsonl"), base_url=server.base_url, **options
    )

    def first_row(_pos: int, _result: RowResult) -> None:
        job.interrupt(signal.SIGINT)

    job = Job(config, on_row=first_row)
    with pytest.raises(Interrupted):
        asyncio.run(job.run())
    return summary_of(path)


def test_a_schema_violation_is_caught() -> None:
    """The schema is strict enough to notice a summary that lost a key or gained one."""
    validator = schema_validator()
    from batchpizza.records import Summary

    good = Summary().to_dict()
    assert list(validator.iter_errors(good)) == []
    assert list(validator.iter_errors({k: v for k, v in good.items() if k != "ended"}))
    assert list(validator.iter_errors({**good, "surprise": 1}))
    assert list(validator.iter_errors({**good, "started": "yesterday"}))


def _version() -> str:
    import batchpizza

    return str(batchpizza.__version__)


def test_a_run_refused_for_bad_input_says_it_failed_and_sent_nothing(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # It said "done: 0 rows: 0 answered, ..." after naming the bad rows, even over a checkpoint
    # holding answers: neither done nor zero rows.
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "p"}, {"id": "b"}])
    result = run_cli(mock_api, source, tmp_path / "out.jsonl")
    assert result.exit_code == 2
    last = [
        line for line in result.stderr.splitlines() if "batchpizza: " in line and "(exit" in line
    ]
    assert len(last) == 1 and last[0].endswith("batchpizza: failed: nothing sent (exit 2)"), last


def test_a_run_that_failed_midway_says_failed_with_its_counts() -> None:
    from batchpizza.runlog import summary_line

    summary = {
        "rows": 10, "answered": 4, "failed": 0, "misuse": 0, "invalid": 0, "pending": 6,
        "requests": 4, "retries": 0, "elapsed_s": 1.0, "exit_code": 1, "output": None,
    }  # fmt: skip
    line = summary_line(summary)
    assert (
        "batchpizza: failed: 10 rows: 4 answered, 0 failed, 0 misuse, 0 invalid, 6 pending" in line
    )
    assert line.endswith("(exit 1)")
    assert "batchpizza: done: 10 rows" in summary_line({**summary, "exit_code": 3})


def test_rows_refused_before_are_not_counted_as_answered_on_the_start_line(
    mock_api: ThreadedMockServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Rows refused as misuse by an earlier run, and not sent again without --retry-refused,
    # were counted among the rows "answered before".
    data = [{"id": f"r{i}", "prompt": f"p{i}" + (" [[misuse]]" if i < 2 else "")} for i in range(5)]
    source, out = write_jsonl(tmp_path / "in.jsonl", data), tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"
    opts = {**FAST, "base_url": mock_api.base_url, "quiet": False, "summary_json": str(summary)}

    def start_line(**more: Any) -> str:
        capsys.readouterr()
        batchpizza.run(source, out, **opts, **more)
        said = capsys.readouterr().err.splitlines()
        return next(line for line in said if "batchpizza: start:" in line)

    start_line()
    start = start_line()
    assert "0 to send; 3 answered before, 2 refused before (not sent again), 0 invalid" in start
    assert json.loads(summary.read_text())["plan"]["refused"] == 2
    start = start_line(retry_refused=True)
    assert "2 to send: 2 failed or refused before; 3 answered before, 0 invalid" in start


def test_the_log_imports_where_logging_handlers_are_not_generic() -> None:
    # Python 3.10's logging.StreamHandler cannot be subscripted (3.11 made it generic): a base
    # class written StreamHandler[TextIO] failed every `batchpizza run` there at import.
    code = (
        "import logging\n"
        "if '__class_getitem__' in vars(logging.StreamHandler):\n"
        "    del logging.StreamHandler.__class_getitem__\n"
        "import batchpizza.runlog\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_a_count_of_one_takes_the_singular_on_every_line_a_user_reads(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # "1 rows", "1 new rows", "1 rows reuse", "1 requests", "kept 1 answers in all".
    source, out = (
        write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "p"}]),
        tmp_path / "o.jsonl",
    )
    first = run_cli(mock_api, source, out)
    assert first.exit_code == 0, first.output
    assert ": 1 row: 1 to send: 1 new row; 0 answered before" in first.stderr
    assert "batchpizza: done: 1 row: 1 answered" in first.stderr
    assert "this run: 1 request, 0 retries in " in first.stderr
    status = CliRunner().invoke(cli, ["status", str(out)])
    assert "(1 row)" in status.output and "  kept       1 answer in all" in status.output
    # b and c ask the same: c takes b's answer instead of being sent.
    more = [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "q"}, {"id": "c", "prompt": "q"}]
    write_jsonl(source, more)
    dry = run_cli(mock_api, source, out, "--dry-run")
    said = "  to send     1: 1 new row; 1 row reuses the answer of an identical request"
    assert said in dry.stdout, dry.stdout


def test_a_count_meets_its_noun_one_way_everywhere() -> None:
    from batchpizza.plurals import noun, plural

    assert [plural(n, "row") for n in (0, 1, 2)] == ["0 rows", "1 row", "2 rows"]
    assert (
        plural(1, "retry", "retries") == "1 retry" and plural(3, "retry", "retries") == "3 retries"
    )
    assert plural(1234, "answer", grouped=True) == "1,234 answers"
    assert (noun(1, "is", "are"), noun(2, "is", "are")) == ("is", "are")
