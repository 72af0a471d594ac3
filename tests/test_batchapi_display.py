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
from tests.batchapi_raw import KEY, RawServer
from tests.batchapi_shared import LIMITS, rows
from tests.conftest import write_jsonl


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
    out = tmp_path / "out.jsonl"
    with RawServer() as raw:
        raw.hooks["upload"] = _second_upload_refused
        done = CliRunner().invoke(cli, [
            "run", str(inp), "-o", str(out), "--provider", "openai", "--base-url",
            f"{raw.base_url}/v1", "--no-progress", "--via", "batch",
        ])  # fmt: skip
    assert done.exit_code == 2, done.output
    assert len(raw.batches) == 1

    shown = CliRunner().invoke(cli, ["status", str(out)])
    assert shown.exit_code == 0, shown.output
    assert "40 requests are in batches still out, which --via batch collects" in shown.output
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
