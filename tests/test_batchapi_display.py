"""What `status` (and --dry-run) say of a checkpoint's batches (batchapi/display.py): the batches
still out, which a rerun with --via batch collects, apart from the files recorded but never
made a batch of, which it submits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp import web
from click.testing import CliRunner

from batchpizza.cli import cli
from batchpizza.mock.server import ThreadedMockServer
from tests.batchapi_raw import KEY, RawServer
from tests.batchapi_shared import LIMITS, rows
from tests.conftest import write_jsonl
from tests.test_runlog import schema_validator


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("BATCHPIZZA_BATCH_LIMITS", LIMITS)  # 40 lines a file


async def _second_upload_refused(request: web.Request, n: int) -> web.StreamResponse | None:
    if n == 0:
        return None
    return web.json_response({"error": {"message": "no more files today"}}, status=400)


def test_status_counts_a_file_never_uploaded_as_waiting_not_as_a_batch_out(
    tmp_path: Path,
) -> None:
    # 50 rows, two files: the first made a batch (still out), the second's upload refused, so
    # it stays recorded (`intended`) with no batch on the server. Was: all 50 requests said to
    # be "in batches still out".
    inp = write_jsonl(tmp_path / "in.jsonl", rows(50))
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    with RawServer() as raw:
        raw.hooks["upload"] = _second_upload_refused
        done = CliRunner().invoke(cli, [
            "run", str(inp), "-o", str(out), "--provider", "openai", "--base-url",
            f"{raw.base_url}/v1", "--no-progress", "--via", "batch", "--summary-json", str(summary),
        ])  # fmt: skip
    assert done.exit_code == 2, done.output
    assert len(raw.batches) == 1
    # The run's summary says it as status does (was: 2 out).
    said = json.loads(summary.read_text())["batches"]
    assert (said["out"], said["waiting"]) == (1, 1)

    shown = CliRunner().invoke(cli, ["status", str(out)])
    assert shown.exit_code == 0, shown.output
    assert (
        "40 of these requests are in batches still out, which --via batch collects" in shown.output
    )
    assert "10 are in files waiting to be submitted, which --via batch submits" in shown.output
    assert (
        "batches    1 out (40 requests), 1 file waiting to be submitted (10 requests), "
        "0 collected" in shown.output
    )
    assert "(not created yet)  intended" in shown.output
    info = json.loads(CliRunner().invoke(cli, ["status", str(out), "--json"]).output)["batches"]
    assert (info["lines_out"], info["lines_waiting"], info["collected"]) == (40, 10, 0)
    assert [f["state"] for f in info["out"]] == ["validating"]
    assert [f["state"] for f in info["waiting"]] == ["intended"]


def _run(server: ThreadedMockServer, inp: Path, out: Path, summary: Path) -> int:
    done = CliRunner().invoke(cli, [
        "run", str(inp), "-o", str(out), "--provider", "openai", "--base-url",
        f"{server.base_url}/v1", "--no-progress", "--via", "batch", "--max-retries", "0",
        "--summary-json", str(summary),
    ])  # fmt: skip
    return done.exit_code


def _fifty_out_five_new(server: ThreadedMockServer, tmp_path: Path) -> tuple[Path, Path, Path]:
    """50 rows in 2 Batch API batches still out (a run that ended waiting, exit 4), then the input
    grown to 55 rows: its path, the output's and the summary's."""
    server.batches.seconds = 3600.0
    inp = write_jsonl(tmp_path / "in.jsonl", rows(50))
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    assert _run(server, inp, out, summary) == 4
    write_jsonl(inp, rows(55))
    return inp, out, summary


def _status(out: Path) -> str:
    shown = CliRunner().invoke(cli, ["status", str(out)])
    assert shown.exit_code == 0, shown.output
    return shown.output


def test_the_summary_counts_files_waiting_to_be_submitted_apart_from_batches_out(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    # The bundled mock's Batch API: 50 rows, 40 a file. The first run's upload fails for good
    # (exit 1), its file recorded and never submitted: waiting, none out (was: 0 out and no
    # word of it, or 1 out when the run stopped otherwise). The second run submits it and the
    # rest, and exits 4 with both batches out, as status says.
    server.batches.seconds = 3600.0
    server.batches.upload_fail = 1
    inp = write_jsonl(tmp_path / "in.jsonl", rows(50))
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    validator = schema_validator()

    assert _run(server, inp, out, summary) == 1
    said = json.loads(summary.read_text())
    validator.validate(said)
    assert (said["batches"]["out"], said["batches"]["waiting"]) == (0, 1)
    assert "0 out (0 requests), 1 file waiting to be submitted (40 requests)" in _status(out)

    assert _run(server, inp, out, summary) == 4
    said = json.loads(summary.read_text())
    validator.validate(said)
    assert said["stopped"] == "batches"
    assert (said["batches"]["out"], said["batches"]["waiting"]) == (2, 0)
    assert "batches    2 out (50 requests), 0 collected" in _status(out)


@pytest.mark.slow
def test_a_batch_run_claims_no_rate_on_its_start_and_summary_lines(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    # A --via batch run sends nothing at the rate, and said "rate 2/s" when it started and
    # "... in 1.1s at 2/s" when done.
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows(2)), tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"
    done = CliRunner().invoke(cli, [
        "run", str(inp), "-o", str(out), "--provider", "openai", "--base-url",
        f"{server.base_url}/v1", "--no-progress", "--via", "batch", "--wait",
        "--summary-json", str(summary),
    ])  # fmt: skip
    assert done.exit_code == 0, done.output
    start, last = (
        next(line for line in done.stderr.splitlines() if f"batchpizza: {what}:" in line)
        for what in ("start", "done")
    )
    assert "; through the Batch API (no rate); no deadline" in start and "rate 2/s" not in start
    assert "/s" not in last and ": 2 rows: 2 answered," in last, last
    assert json.loads(summary.read_text())["rate"] is None


@pytest.mark.slow
def test_a_dry_run_and_the_start_line_count_rows_in_batches_out_as_collected_not_sent(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    # Both said "55 to send: 55 new rows" while the run submitted 5: the other 50 sat in
    # batches still out, which it collects.
    inp, out, summary = _fifty_out_five_new(server, tmp_path)
    argv = ["run", str(inp), "-o", str(out), "--provider", "openai", "--base-url",
            f"{server.base_url}/v1", "--no-progress", "--via", "batch"]  # fmt: skip

    dry = CliRunner().invoke(cli, [*argv, "--dry-run"])

    assert dry.exit_code == 0, dry.output
    assert "  to send     5 (55 without an answer: 55 new rows; 50 of them" in dry.stdout
    assert "  answered    0 (kept, not sent again)" in dry.stdout

    assert _run(server, inp, out, summary) == 4
    done = json.loads(summary.read_text())
    assert done["batches"]["submitted"] == 5 and done["requests"] == 5
    assert done["plan"]["new"] == 55 and done["plan"]["out"] == 50
    again = CliRunner().invoke(cli, [*argv, "--dry-run"])
    assert "  to send     0 (55 without an answer: 55 new rows; 55 of them" in again.stdout
    # status counts the rerun's requests in batches out as the dry run does
    assert "; 55 of these requests are in batches still out, which --via batch" in _status(out)


def _line(said: str, label: str) -> str:
    return next(line for line in said.splitlines() if line.startswith(f"  {label} "))


@pytest.mark.slow
def test_a_dry_runs_tokens_cost_and_requests_are_of_the_rows_it_sends_not_of_batches_out(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    # 50 rows in batches still out, 5 new: the tokens and cost lines counted all 55 (the run
    # sends 5), and with every row out said tokens to send beside "time nothing to send".
    inp, out, summary = _fifty_out_five_new(server, tmp_path)
    new = write_jsonl(tmp_path / "new.jsonl", rows(55)[50:])

    def dry(path: Path, output: Path) -> str:
        done = CliRunner().invoke(cli, [
            "run", str(path), "-o", str(output), "--provider", "openai", "--base-url",
            f"{server.base_url}/v1", "--no-progress", "--via", "batch", "--price", "1,2",
            "--dry-run",
        ])  # fmt: skip
        assert done.exit_code == 0, done.output
        return done.stdout

    said, alone = dry(inp, out), dry(new, tmp_path / "new-out.jsonl")

    assert _line(said, "to send").startswith("  to send     5 (55 without an answer")
    for label in ("tokens", "cost"):
        assert _line(said, label).split(";")[0] == _line(alone, label).split(";")[0]
    assert 'question 50"' in said and 'question 0"' not in said  # the first request it sends
    assert _run(server, inp, out, summary) == 4  # the 5 submitted: all 55 out
    nothing = dry(inp, out)
    assert _line(nothing, "time") == "  time        nothing to send"
    assert _line(nothing, "tokens").startswith("  tokens      about 0 in + 0 out")
    assert "request 1" not in nothing


@pytest.mark.slow
def test_a_batch_runs_start_line_says_what_it_sends_beside_what_it_collects(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    server.batches.seconds = 3600.0
    inp = write_jsonl(tmp_path / "in.jsonl", rows(50))
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    assert _run(server, inp, out, summary) == 4
    write_jsonl(inp, rows(55))

    done = CliRunner().invoke(cli, [
        "run", str(inp), "-o", str(out), "--provider", "openai", "--base-url",
        f"{server.base_url}/v1", "--no-progress", "--via", "batch",
    ])  # fmt: skip

    assert done.exit_code == 4, done.output
    assert (
        ": 55 rows: 5 to send (55 without an answer: 55 new rows; 50 of them in Batch API "
        "batches still out: collected, not sent); 0 answered before" in done.stderr
    )
