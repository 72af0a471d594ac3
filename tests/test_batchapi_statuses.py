"""A batch's status read in any case (batchapi/statuses.py): a gateway that spells OpenAI's
statuses in capitals has its batches collected when they end, not waited on until --deadline;
a word the Batch API does not give is still said, once."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from batchpizza.batchapi.statuses import normalised
from batchpizza.cli import cli
from batchpizza.job import stages
from tests.batchapi_raw import KEY, RawServer, answer_of
from tests.batchapi_shared import LIMITS, rows
from tests.conftest import read_jsonl, write_jsonl

N = 6
UNKNOWN = "not one the Batch API gives"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("BATCHPIZZA_BATCH_LIMITS", LIMITS)
    # --deadline counts from the process's start: this test's run is the process here.
    monkeypatch.setattr(stages, "_PROCESS_START", time.monotonic())


def spelt(how: Callable[[str], str]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A raw server's view of a batch with its status spelt `how`."""
    return lambda batch: {**batch, "status": how(batch["status"])}


def batch_run(tmp_path: Path, raw: RawServer) -> tuple[Result, Path]:
    """A --via batch --wait run, its deadline well past what the batch takes (the way a status
    never read as final used to end it: exit 4, nothing collected)."""
    inp = write_jsonl(tmp_path / "in.jsonl", rows(N))
    out = tmp_path / "out.jsonl"
    done = CliRunner().invoke(cli, [
        "run", str(inp), "-o", str(out), "--provider", "openai", "--base-url",
        f"{raw.base_url}/v1", "--no-progress", "--via", "batch", "--wait", "--deadline", "10s",
    ])  # fmt: skip
    return done, out


@pytest.mark.slow
@pytest.mark.parametrize("how", [str.upper, str.capitalize, lambda s: f" {s.title()} "])
def test_statuses_in_capitals_are_read_as_the_batch_api_s_and_the_batch_collected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: Callable[[str], str]
) -> None:
    with RawServer() as raw:
        raw.statuses = ["in_progress", "finalizing"]
        raw.view = spelt(how)
        with caplog.at_level(logging.INFO, logger="batchpizza"):
            done, out = batch_run(tmp_path, raw)

    assert done.exit_code == 0, done.output
    found = {r["id"]: (r["finish_reason"], r["answer"]) for r in read_jsonl(out)}
    assert found == {f"q{i}": ("stop", answer_of(f"question {i}")) for i in range(N)}
    assert sorted(raw.submitted.values()) == [1] * N
    assert UNKNOWN not in caplog.text  # in_progress, finalizing: known words, in any case


def test_a_status_unknown_in_any_case_is_still_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with RawServer() as raw:
        raw.statuses = ["queued", "queued"]
        raw.view = spelt(str.upper)
        with caplog.at_level(logging.INFO, logger="batchpizza"):
            done, _ = batch_run(tmp_path, raw)

    assert done.exit_code == 0, done.output
    said = [r.getMessage() for r in caplog.records if UNKNOWN in r.getMessage()]
    assert len(said) == 1 and "'queued'" in said[0], said


def test_normalised_leaves_what_is_not_a_status_word_as_it_came() -> None:
    assert normalised({"status": "Completed"}) == {"status": "completed"}
    assert normalised({"status": 3}) == {"status": 3}
    assert normalised({"id": "b"}) == {"id": "b"}
