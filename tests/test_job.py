"""The job's stages as a user meets them: what is checked before anything is read or sent, the
lock, what a run leaves on disk, dry runs, --limit and --deadline.

Every run goes through the command line (click's CliRunner, in this process) against the local
fake API; files are compared byte for byte before and after where a run must change nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from conftest import FAST, read_jsonl, write_jsonl

import batchpizza
from batchpizza import redact
from batchpizza.checkpoint import RunLock
from batchpizza.cli import cli
from batchpizza.config import RunConfig
from batchpizza.engine import loop as loop_module
from batchpizza.errors import BatchpizzaError
from batchpizza.job import stages as job_module
from batchpizza.job.reading import scan_path
from batchpizza.mock.faults import MockConfig
from batchpizza.mock.replies import mock_answer
from batchpizza.mock.server import ThreadedMockServer

RESULT_COLUMNS = ("answer", "finish_reason", "misuse", "error", "attempts", "latency_ms", "model")


@pytest.fixture(autouse=True)
def _forget_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets registered for masking by an earlier test would hide a leak in this one."""
    monkeypatch.setattr(redact, "_known", set())


# -- helpers -----------------------------------------------------------------------------------


def invoke(args: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, args, env=env)


def run_cli(server: ThreadedMockServer, inp: Path | str, out: Path | str, *extra: str) -> Result:
    args = ["run", str(inp), "-o", str(out), "--base-url", server.base_url, "--rate", "0"]
    return invoke([*args, "--no-progress", *extra])


def no_traceback(result: Result) -> None:
    """The run ended through the CLI's own exit, not an uncaught exception."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative name -> bytes)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def rows(n: int, label: str = "r") -> list[dict[str, Any]]:
    return [{"id": f"{label}{i}", "prompt": f"{label} question {i}", "n": i} for i in range(n)]


def extra_answers(server: ThreadedMockServer) -> int:
    """How many answers the server gave to a question it had answered before."""
    return sum(max(0, count - 1) for count in server.stats.answers.values())


# -- refused before anything is read (exit 2, nothing sent, nothing written) -------------------


def _same_input_and_output(tmp: Path) -> list[str]:
    return ["same.jsonl", "-o", "same.jsonl"]


def _checkpoint_is_the_output(tmp: Path) -> list[str]:
    return ["in.jsonl", "-o", "out.jsonl", "--checkpoint", "out.jsonl"]


def _summary_is_the_input(tmp: Path) -> list[str]:
    return ["in.jsonl", "-o", "out.jsonl", "--summary-json", "in.jsonl"]


def _summary_is_the_checkpoint(tmp: Path) -> list[str]:
    return ["in.jsonl", "-o", "out.jsonl", "--summary-json", "out.jsonl.checkpoint"]


def _summary_is_a_chosen_checkpoint(tmp: Path) -> list[str]:
    return ["in.jsonl", "-o", "out.jsonl", "--checkpoint", "ck.db", "--summary-json", "./ck.db"]


def _same_file_spelled_two_ways(tmp: Path) -> list[str]:
    return ["same.jsonl", "-o", "./sub/../same.jsonl"]


def _checkpoint_is_the_input(tmp: Path) -> list[str]:
    return ["in.jsonl", "-o", "out.jsonl", "--checkpoint", "in.jsonl"]


def _summary_is_the_output(tmp: Path) -> list[str]:
    return ["in.jsonl", "-o", "out.jsonl", "--summary-json", "out.jsonl"]


def _output_is_a_hard_link_to_the_input(tmp: Path) -> list[str]:
    (tmp / "hard.jsonl").hardlink_to(tmp / "in.jsonl")
    return ["in.jsonl", "-o", "hard.jsonl"]


def _output_is_a_link_to_the_input(tmp: Path) -> list[str]:
    (tmp / "link.jsonl").symlink_to(tmp / "in.jsonl")
    return ["in.jsonl", "-o", "link.jsonl"]


def _output_inside_the_parquet_folder(tmp: Path) -> list[str]:
    return ["parts", "-o", "parts/out.parquet"]


def _output_in_a_subfolder_of_the_parquet_folder(tmp: Path) -> list[str]:
    (tmp / "parts" / "sub").mkdir()
    return ["parts", "-o", "parts/sub/out.jsonl"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "make_args",
    [
        _same_input_and_output,
        _same_file_spelled_two_ways,
        _checkpoint_is_the_output,
        _checkpoint_is_the_input,
        _summary_is_the_input,
        _summary_is_the_output,
        _summary_is_the_checkpoint,
        _summary_is_a_chosen_checkpoint,
        _output_is_a_link_to_the_input,
        _output_is_a_hard_link_to_the_input,
        _output_inside_the_parquet_folder,
        _output_in_a_subfolder_of_the_parquet_folder,
    ],
)
def test_paths_that_would_overwrite_one_another_are_refused_before_reading_anything(
    mock_api: ThreadedMockServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_args: Any,
) -> None:
    # Each input holds a bad row: had it been read, the error would be about that row instead.
    bad = [{"id": "a", "prompt": "fine"}, {"id": "b"}]
    write_jsonl(tmp_path / "in.jsonl", bad)
    write_jsonl(tmp_path / "same.jsonl", bad)
    (tmp_path / "parts").mkdir()
    (tmp_path / "sub").mkdir()
    pq.write_table(
        pa.table({"id": ["a", "b"], "prompt": ["fine", None]}), tmp_path / "parts/a.parquet"
    )
    # A checkpoint from an earlier run, so that a refusal that wrote to it would show.
    monkeypatch.chdir(tmp_path)
    earlier = write_jsonl(tmp_path / "earlier.jsonl", [{"id": "a", "prompt": "fine"}])
    assert run_cli(mock_api, earlier, tmp_path / "out.jsonl").exit_code == 0
    (tmp_path / "out.jsonl").unlink()
    assert run_cli(mock_api, earlier, tmp_path / "x.jsonl", "--checkpoint", "ck.db").exit_code == 0
    mock_api.reset()
    args = make_args(tmp_path)
    before = snapshot(tmp_path)

    result = run_cli(mock_api, args[0], args[2], *args[3:])

    assert result.exit_code == 2, result.output
    no_traceback(result)
    assert "bad row" not in result.stderr
    assert "same file" in result.stderr or "inside the input folder" in result.stderr
    assert mock_api.stats.requests == 0
    assert snapshot(tmp_path) == before


# -- checked before the first request ----------------------------------------------------------


def test_a_summary_in_a_missing_folder_is_refused_before_the_first_request(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", rows(5))
    summary = tmp_path / "missing" / "summary.json"

    result = run_cli(mock_api, source, tmp_path / "out.jsonl", "--summary-json", str(summary))

    assert result.exit_code in (1, 2), result.output
    no_traceback(result)
    assert "missing" in result.stderr
    assert mock_api.stats.requests == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_an_output_naming_an_existing_folder_is_a_usage_error_before_the_first_request(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", rows(5))
    (tmp_path / "out.jsonl").mkdir()

    result = run_cli(mock_api, source, tmp_path / "out.jsonl")

    assert result.exit_code == 2, result.output
    no_traceback(result)
    assert "directory" in result.stderr
    assert mock_api.stats.requests == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


@pytest.mark.slow
def test_a_run_with_stderr_closed_succeeds_and_writes_its_summary(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # cron with 2>&- : stderr is not a file at all. Not -q: the run tries to say things.
    data = rows(20)
    source = write_jsonl(tmp_path / "in.jsonl", data)
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    command = [
        sys.executable,
        "-m",
        "batchpizza",
        "run",
        str(source),
        "-o",
        str(out),
        "--base-url",
        mock_api.base_url,
        "--rate",
        "0",
        "--summary-json",
        str(summary),
    ]
    proc = subprocess.run(
        ["sh", "-c", 'exec "$@" 2>&-', "sh", *command],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=False,
        stdout=subprocess.PIPE,
        timeout=60,
        check=False,
    )

    assert proc.returncode == 0, proc.stdout
    report = json.loads(summary.read_text())
    assert report["exit_code"] == 0
    assert report["answered"] == report["rows"] == 20
    written = read_jsonl(out)
    assert [r["finish_reason"] for r in written] == ["stop"] * 20
    assert [r["answer"] for r in written] == [mock_answer(r["prompt"]) for r in data]


@pytest.mark.slow
def test_bad_input_with_stderr_closed_exits_2_and_sends_nothing(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [*rows(3), {"id": "bad"}])
    command = [sys.executable, "-m", "batchpizza", "run", str(source), "-o", "out.jsonl"]
    command += ["--base-url", mock_api.base_url, "--rate", "0"]

    proc = subprocess.run(
        ["sh", "-c", 'exec "$@" 2>&-', "sh", *command],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        timeout=60,
        check=False,
    )

    assert proc.returncode == 2, proc.stdout
    assert b"Traceback" not in proc.stdout
    assert mock_api.stats.requests == 0
    assert [p.name for p in tmp_path.iterdir()] == ["in.jsonl"]


def test_a_summary_naming_an_existing_folder_is_refused_before_the_first_request(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", rows(3))
    (tmp_path / "summary").mkdir()
    options = {"base_url": mock_api.base_url, "rate": 0, "quiet": True, "progress": False}

    with pytest.raises(BatchpizzaError):
        batchpizza.run(source, tmp_path / "out.jsonl", summary_json=tmp_path / "summary", **options)

    assert mock_api.stats.requests == 0


def test_a_checkpoint_naming_an_existing_folder_fails_before_the_first_request(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", rows(3))
    (tmp_path / "ck").mkdir()

    result = run_cli(mock_api, source, tmp_path / "out.jsonl", "--checkpoint", str(tmp_path / "ck"))

    assert result.exit_code in (1, 2), result.output
    no_traceback(result)
    assert "ck" in result.stderr
    assert mock_api.stats.requests == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "in.jsonl"]


# -- stale partial files -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["out.jsonl", "out.parquet"])
def test_partial_files_left_by_killed_writes_are_removed_by_the_next_run(
    mock_api: ThreadedMockServer, tmp_path: Path, name: str
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", rows(3))
    stale = [tmp_path / f".{name}.{tag}.partial" for tag in ("k1lled", "abc_123", "zz")]
    for path in stale:
        path.write_bytes(b"half a file")
    unrelated = [
        tmp_path / ".other.jsonl.k1lled.partial",
        tmp_path / f"{name}.notes.partial",
        tmp_path / "notes.txt",
    ]
    for path in unrelated:
        path.write_bytes(b"keep me")

    result = run_cli(mock_api, source, tmp_path / name)

    assert result.exit_code == 0, result.output
    assert not [p for p in stale if p.exists()]
    assert all(p.read_bytes() == b"keep me" for p in unrelated)


# -- another run holds the lock (exit 75) ------------------------------------------------------


def status_json(out: Path) -> dict[str, Any]:
    result = invoke(["status", str(out), "--json"])
    assert result.exit_code == 0, result.output
    info: dict[str, Any] = json.loads(result.stdout)
    return info


def test_a_locked_output_exits_75_writes_only_its_summary_and_status_says_running(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", rows(5))
    out = tmp_path / "out.jsonl"
    ck = Path(f"{out}.checkpoint")
    assert run_cli(mock_api, source, out).exit_code == 0
    write_jsonl(source, rows(8))  # more to do: a run that was not refused would send
    mock_api.reset()
    summary = tmp_path / "summary.json"
    assert status_json(out)["running"] is False
    # The holder's output being written: the refused run must not clear it as stale.
    live = tmp_path / ".out.jsonl.live0001.partial"

    with RunLock(out, ck):
        live.write_bytes(b"being written by the run that holds the lock")
        assert status_json(out)["running"] is True
        before = snapshot(tmp_path)
        result = run_cli(mock_api, source, out, "--summary-json", str(summary))
        after = snapshot(tmp_path)
        assert status_json(out)["running"] is True

    assert result.exit_code == 75, result.output
    no_traceback(result)
    assert "try again later" in result.stderr
    assert mock_api.stats.requests == 0
    report = json.loads(summary.read_text())
    assert report["stopped"] == "locked"
    assert report["exit_code"] == 75
    assert after.pop("summary.json")
    assert after == before
    assert status_json(out)["running"] is False


def test_status_leaves_nothing_beside_the_checkpoint(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", rows(3))
    out = tmp_path / "out.jsonl"
    assert run_cli(mock_api, source, out).exit_code == 0
    before = snapshot(tmp_path)

    assert status_json(out)["answered"] == 3
    assert invoke(["status", str(out)]).exit_code == 0

    assert snapshot(tmp_path) == before


# -- at rest: the input, the output and one checkpoint -----------------------------------------


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system temporary folder, made private to the test: what a run leaves there shows."""
    folder = tmp_path / "systmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_at_rest_the_folder_holds_the_input_the_output_and_one_checkpoint(
    mock_api: ThreadedMockServer, tmp_path: Path, private_tmp: Path, suffix: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    source = write_jsonl(work / "in.jsonl", rows(30))
    out = work / f"out{suffix}"

    assert run_cli(mock_api, source, out).exit_code == 0
    assert sorted(p.name for p in work.iterdir()) == sorted(
        ["in.jsonl", out.name, f"{out.name}.checkpoint"]
    )
    assert list(private_tmp.iterdir()) == []

    # A rerun that fails validation leaves the same three files, unchanged.
    before = snapshot(work)
    with source.open("a") as handle:
        handle.write('{"id": "bad", "prompt": 5}\n')
    before["in.jsonl"] = source.read_bytes()
    result = run_cli(mock_api, source, out)
    assert result.exit_code == 2, result.output
    assert snapshot(work) == before
    assert list(private_tmp.iterdir()) == []


def test_at_rest_after_reading_standard_input_only_the_output_and_checkpoint_remain(
    mock_api: ThreadedMockServer, tmp_path: Path, private_tmp: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    text = "".join(json.dumps(r) + "\n" for r in rows(10))
    args = ["run", "-", "-o", str(work / "out.jsonl"), "--base-url", mock_api.base_url]

    result = CliRunner().invoke(cli, [*args, "--rate", "0", "--no-progress"], input=text)

    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in work.iterdir()) == ["out.jsonl", "out.jsonl.checkpoint"]
    assert list(private_tmp.iterdir()) == []
    assert len(read_jsonl(work / "out.jsonl")) == 10


def test_a_first_run_that_fails_validation_leaves_only_the_input(
    mock_api: ThreadedMockServer, tmp_path: Path, private_tmp: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    source = write_jsonl(work / "in.jsonl", [*rows(3), {"id": "bad"}])

    result = run_cli(mock_api, source, work / "out.parquet")

    assert result.exit_code == 2, result.output
    assert [p.name for p in work.iterdir()] == ["in.jsonl"]
    assert list(private_tmp.iterdir()) == []
    assert mock_api.stats.requests == 0


# -- dry runs ----------------------------------------------------------------------------------


def dry_run_setup(server: ThreadedMockServer, tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint from an earlier run (8 answered, 2 failed), then an input with 1 row changed,
    2 new and 1 invalid: 13 rows, 7 answered, 5 to send (2 new, 1 changed, 2 failed), 1 invalid."""
    data = rows(10)
    data[8]["prompt"] += " [[status:400]]"
    data[9]["prompt"] += " [[status:400]]"
    source = write_jsonl(tmp_path / "in.jsonl", data)
    out = tmp_path / "out.jsonl"
    assert run_cli(server, source, out).exit_code == 3
    data[0]["prompt"] = "a new question for r0"
    data += [*rows(12)[10:], {"id": "bad", "prompt": ""}]
    write_jsonl(source, data)
    server.reset()
    return source, out


def test_dry_run_prints_the_plan_and_the_first_three_requests_and_sends_nothing(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source, out = dry_run_setup(mock_api, tmp_path)
    before = snapshot(tmp_path)

    extra = ["--dry-run", "--skip-bad-rows", "--concurrency", "3", "--rate", "2/s"]
    result = run_cli(mock_api, source, out, *extra)

    assert result.exit_code == 0, result.output
    no_traceback(result)
    assert mock_api.stats.requests == 0
    assert (tmp_path / "out.jsonl").read_bytes() == before["out.jsonl"]
    err = result.stdout  # the plan goes to stdout, to be piped
    assert "to send" not in result.stderr
    lines = [" ".join(line.split()) for line in err.splitlines()]
    assert "rows 13" in lines
    assert any(line.startswith("answered 7") for line in lines), err
    assert any(
        line.startswith("to send 5:")
        and "2 new rows" in line
        and "1 prompt changed" in line
        and "2 failed before" in line
        for line in lines
    ), err
    assert "invalid 1" in lines
    # 5 requests at 2/s: about 2 seconds.
    assert any(line.startswith("time about 0:00:0") and "2/s" in line for line in lines), err
    assert err.count("x-secret: Marinara") == 3
    for i in (1, 2, 3):
        assert f"request {i}: POST {mock_api.base_url}/api/chatx-completion" in err
    assert "request 4" not in err
    # The first three rows to send, in input order: r0 (changed), r8 and r9 (failed before).
    assert '"a new question for r0"' in err
    assert "r question 8" in err
    assert "r question 9" in err


def test_dry_run_counts_rows_refused_before_as_kept_unless_retry_refused(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    data = rows(6)
    for row in data[4:]:
        row["prompt"] += " [[misuse]]"
    source = write_jsonl(tmp_path / "in.jsonl", data)
    out = tmp_path / "out.jsonl"
    first = batchpizza.run(source, out, **FAST, base_url=mock_api.base_url)
    assert (first["exit_code"], first["misuse"]) == (3, 2)
    mock_api.reset()

    def plan(*extra: str) -> list[str]:
        result = run_cli(mock_api, source, out, "--dry-run", *extra)
        assert result.exit_code == 0, result.output
        return [" ".join(line.split()) for line in result.stdout.splitlines()]

    kept = plan()
    assert any(line.startswith("answered 4") for line in kept), kept
    assert any(line.startswith("to send 0") for line in kept), kept
    assert any(line.startswith("refused 2") and "--retry-refused" in line for line in kept), kept
    asked = plan("--retry-refused")
    assert any(line.startswith("answered 4") for line in asked), asked
    assert any(line.startswith("to send 2") and "2 failed or refused" in line for line in asked)
    assert not any(line.startswith("refused") for line in asked), asked
    assert mock_api.stats.requests == 0


def test_a_dry_run_counts_rows_waiting_on_an_identical_request_as_to_answer_not_answered(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # 6 rows asking 2 distinct questions, nothing asked yet: 2 requests answer all 6.
    data = [{"id": f"r{i}", "prompt": f"question {i % 2}"} for i in range(6)]
    source = write_jsonl(tmp_path / "in.jsonl", data)

    result = run_cli(mock_api, source, tmp_path / "out.jsonl", "--dry-run")

    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert "answered 0 (kept, not sent again)" in lines, lines
    assert any(line.startswith("to send 2:") and "4 rows reuse" in line for line in lines), lines
    assert mock_api.stats.requests == 0


def test_dry_run_over_an_existing_checkpoint_changes_no_byte(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source, out = dry_run_setup(mock_api, tmp_path)
    before = snapshot(tmp_path)

    result = run_cli(mock_api, source, out, "--dry-run", "--skip-bad-rows")

    assert result.exit_code == 0, result.output
    assert snapshot(tmp_path) == before


def test_dry_run_without_a_checkpoint_creates_nothing(
    mock_api: ThreadedMockServer, tmp_path: Path, private_tmp: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    source = write_jsonl(work / "in.jsonl", rows(4))
    before = snapshot(work)

    result = run_cli(mock_api, source, work / "out.parquet", "--dry-run", "--rate", "2/s")

    assert result.exit_code == 0, result.output
    assert snapshot(work) == before
    assert list(private_tmp.iterdir()) == []
    assert mock_api.stats.requests == 0
    assert "to send" in result.stdout
    assert "rows" in result.stdout


def test_a_dry_run_leaves_the_scan_of_a_run_going_on_alone(
    mock_api: ThreadedMockServer, tmp_path: Path, private_tmp: Path
) -> None:
    # A dry run takes no lock. It wrote its scan where the run going on writes its own, beside
    # the checkpoint: replaced, then removed, that run adopted the dry run's scan or none.
    source, out = dry_run_setup(mock_api, tmp_path)
    going_on = scan_path(RunConfig.from_options(str(source), str(out)), in_memory=False)
    assert going_on is not None
    going_on.write_bytes(b"the scan of a run going on")

    result = run_cli(mock_api, source, out, "--dry-run", "--skip-bad-rows")

    assert result.exit_code == 0, result.output
    assert going_on.read_bytes() == b"the scan of a run going on"
    assert list(private_tmp.iterdir()) == []  # its own, in the temp folder, is gone


def test_dry_run_with_restart_plans_what_the_restart_sends_and_changes_nothing(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", rows(20))
    out = tmp_path / "out.jsonl"
    assert run_cli(mock_api, source, out).exit_code == 0
    mock_api.reset()
    before = snapshot(tmp_path)

    dry = run_cli(mock_api, source, out, "--dry-run", "--restart")

    assert dry.exit_code == 0, dry.output
    assert snapshot(tmp_path) == before
    assert mock_api.stats.requests == 0
    lines = [" ".join(line.split()) for line in dry.stdout.splitlines()]
    assert any(line.startswith("answered 0") for line in lines), dry.stdout
    assert any(line.startswith("to send 20: 20 new rows") for line in lines), dry.stdout
    # What the same command without --dry-run then does.
    real = run_cli(mock_api, source, out, "--restart")
    assert real.exit_code == 0, real.output
    assert mock_api.stats.requests == 20


@pytest.mark.parametrize("variable", ["OPENAI_API_KEY", "MY_GATEWAY_KEY"])
def test_dry_run_for_openai_masks_the_key_everywhere(
    mock_api: ThreadedMockServer, tmp_path: Path, variable: str
) -> None:
    key = "sk-dryrun-Zq8KeyThatMustNotShow"
    source = write_jsonl(tmp_path / "in.jsonl", rows(5))
    before = snapshot(tmp_path)
    args = ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "--provider", "openai"]
    args += ["--base-url", f"{mock_api.base_url}/v1", "--model", "m", "--dry-run", "-v"]
    args += ["--api-key-env", variable]

    result = invoke([*args, "--no-progress"], env={variable: key})

    assert result.exit_code == 0, result.output
    assert key not in result.stdout
    assert key not in result.stderr
    assert key[3:12] not in result.output
    assert "authorization: ***" in result.stdout.lower()
    assert result.stdout.count("request ") >= 3
    assert snapshot(tmp_path) == before
    assert mock_api.stats.requests == 0


# -- --limit -----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_limit_writes_and_sends_exactly_the_first_n_rows(
    mock_api: ThreadedMockServer, tmp_path: Path, suffix: str
) -> None:
    data = rows(20)
    source = write_jsonl(tmp_path / "in.jsonl", data)
    out = tmp_path / f"out{suffix}"

    result = run_cli(mock_api, source, out, "--limit", "5")

    assert result.exit_code == 0, result.output
    written = read_jsonl(out) if suffix == ".jsonl" else pq.read_table(out).to_pylist()
    assert [r["id"] for r in written] == [f"r{i}" for i in range(5)]
    assert all(r["finish_reason"] == "stop" for r in written)
    assert mock_api.stats.requests == 5
    assert set(mock_api.stats.answers) == {r["prompt"] for r in data[:5]}


def test_limit_zero_writes_an_empty_output_and_sends_nothing(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", rows(5))
    out = tmp_path / "out.parquet"

    result = run_cli(mock_api, source, out, "--limit", "0")

    assert result.exit_code == 0, result.output
    assert pq.read_table(out).num_rows == 0
    assert set(RESULT_COLUMNS) <= set(pq.read_schema(out).names)
    assert mock_api.stats.requests == 0


def test_a_run_after_a_limited_run_sends_only_the_rest(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    data = rows(20)
    source = write_jsonl(tmp_path / "in.jsonl", data)
    out = tmp_path / "out.jsonl"
    assert run_cli(mock_api, source, out, "--limit", "5").exit_code == 0
    mock_api.reset()

    result = run_cli(mock_api, source, out)

    assert result.exit_code == 0, result.output
    assert mock_api.stats.requests == 15
    assert set(mock_api.stats.answers) == {r["prompt"] for r in data[5:]}
    assert [r["id"] for r in read_jsonl(out)] == [r["id"] for r in data]


def good_rows_then_a_bad_one(folder: Path, suffix: str, good: int = 20_000) -> Path:
    """`good` good rows, then a bad one (an empty prompt; in CSV a row with too many fields)."""
    data: list[dict[str, Any]] = [{"id": f"r{i}", "prompt": f"q {i}"} for i in range(good)]
    path = folder / f"in{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, [*data, {"id": "bad", "prompt": ""}])
    elif suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist([*data, {"id": "bad", "prompt": ""}]), path)
    else:
        lines = ["id,prompt", *(f"{r['id']},{r['prompt']}" for r in data), "bad,x,y"]
        path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv"])
def test_limit_checks_only_the_first_n_rows_and_a_later_full_run_checks_them_all(
    mock_api: ThreadedMockServer, tmp_path: Path, suffix: str
) -> None:
    source = good_rows_then_a_bad_one(tmp_path, suffix)
    out = tmp_path / "out.jsonl"

    smoke = run_cli(mock_api, source, out, "--limit", "5")

    assert smoke.exit_code == 0, smoke.output
    assert mock_api.stats.requests == 5
    assert len(read_jsonl(out)) == 5
    # The checkpoint keeps the scan of 5 rows: the whole input is scanned again, and refused.
    whole = run_cli(mock_api, source, out)
    assert whole.exit_code == 2, whole.output
    assert "1 bad row in the input" in whole.output
    assert mock_api.stats.requests == 5


def test_a_bigger_limit_checks_the_rows_a_smaller_one_did_not(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = good_rows_then_a_bad_one(tmp_path, ".jsonl", good=7)
    out = tmp_path / "out.jsonl"
    assert run_cli(mock_api, source, out, "--limit", "5").exit_code == 0
    assert run_cli(mock_api, source, out, "--limit", "3").exit_code == 0  # within the scan

    bigger = run_cli(mock_api, source, out, "--limit", "8")

    assert bigger.exit_code == 2, bigger.output
    assert "in.jsonl:8:" in bigger.output
    assert mock_api.stats.requests == 5


async def test_limit_on_rows_in_memory_checks_only_the_first_n(
    mock_api: ThreadedMockServer,
) -> None:
    data: list[Any] = [{"id": f"r{i}", "prompt": f"q {i}"} for i in range(20_000)]
    data.append("not a row")
    options: dict[str, Any] = {**FAST, "base_url": mock_api.base_url, "quiet": True}

    streamed = [row async for row in batchpizza.stream(data, **options, limit=5)]

    assert sorted(row["position"] for row in streamed) == list(range(5))
    assert mock_api.stats.requests == 5
    with pytest.raises(BatchpizzaError, match="bad row"):
        [row async for row in batchpizza.stream(data, **options)]


# -- --deadline --------------------------------------------------------------------------------


def _deadline_run(
    server: ThreadedMockServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    n: int,
    deadline: str,
    latency_ms: float,
) -> None:
    data = rows(n)
    source = write_jsonl(tmp_path / "in.jsonl", data)
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    server.config = MockConfig(seed=1, latency_ms=latency_ms)
    extra = ["--concurrency", "4", "--summary-json", str(summary)]
    # The deadline counts from the start of the process: here, from now.
    monkeypatch.setattr(job_module, "_PROCESS_START", time.monotonic())

    result = run_cli(server, source, out, *extra, "--deadline", deadline)

    assert result.exit_code == 4, result.output
    report = json.loads(summary.read_text())
    assert report["stopped"] == "deadline"
    assert report["exit_code"] == 4
    written = read_jsonl(out)
    assert [r["id"] for r in written] == [r["id"] for r in data]
    reasons = [r["finish_reason"] for r in written]
    assert set(reasons) == {"stop", "pending"}
    assert reasons.count("pending") == report["pending"] > 0
    assert reasons.count("stop") == report["answered"] > 0
    assert all(set(RESULT_COLUMNS) <= set(r) for r in written)
    names = ["in.jsonl", "out.jsonl", "out.jsonl.checkpoint", "summary.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # at rest after stopping early

    # The rerun, without the deadline (and a faster server), finishes the job.
    server.config = MockConfig(seed=1)
    result = run_cli(server, source, out, *extra)

    assert result.exit_code == 0, result.output
    assert json.loads(summary.read_text())["stopped"] is None
    written = read_jsonl(out)
    assert [r["answer"] for r in written] == [mock_answer(r["prompt"]) for r in data]
    assert set(server.stats.answers) == {r["prompt"] for r in data}
    assert extra_answers(server) <= 4  # at most the rows in flight at the deadline


@pytest.mark.slow
def test_deadline_stops_early_with_every_row_written_and_the_rerun_completes(
    mock_api: ThreadedMockServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _deadline_run(mock_api, tmp_path, monkeypatch, n=400, deadline="600ms", latency_ms=50)


@pytest.mark.slow
def test_deadline_of_2s_on_2000_slow_rows_exits_4_and_the_rerun_completes(
    mock_api: ThreadedMockServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _deadline_run(mock_api, tmp_path, monkeypatch, n=2000, deadline="2s", latency_ms=100)


def test_deadline_counts_from_the_start_of_the_process(
    mock_api: ThreadedMockServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # cron's clock: a process that started long ago is already past a short deadline.
    source = write_jsonl(tmp_path / "in.jsonl", rows(50))
    monkeypatch.setattr(job_module, "_PROCESS_START", time.monotonic() - 3600)

    result = run_cli(mock_api, source, tmp_path / "out.jsonl", "--deadline", "1m")

    assert result.exit_code == 4, result.output
    written = read_jsonl(tmp_path / "out.jsonl")
    assert len(written) == 50
    assert mock_api.stats.requests <= 8  # at most what was already started (the concurrency)
    assert (tmp_path / "out.jsonl.checkpoint").exists()


# --- the event loop ------------------------------------------------------------------------------


async def _loop_kind() -> str:
    import asyncio

    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_run_loop_uses_uvloop_when_installed_and_asyncio_when_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("uvloop")
    monkeypatch.delenv("BATCHPIZZA_LOOP", raising=False)
    assert loop_module.run_loop(_loop_kind()) == "uvloop"
    monkeypatch.setenv("BATCHPIZZA_LOOP", "asyncio")
    assert loop_module.run_loop(_loop_kind()) == "asyncio"


def test_run_loop_falls_back_to_asyncio_with_a_standard_descriptor_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # libuv aborts the process when a standard descriptor is closed (cron's 2>&-).
    monkeypatch.delenv("BATCHPIZZA_LOOP", raising=False)
    monkeypatch.setattr(loop_module, "_std_fds_open", lambda: False)
    assert loop_module.run_loop(_loop_kind()) == "asyncio"
