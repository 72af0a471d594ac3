"""`batchpizza report` end to end: a run whose faults are known (the mock server's directives),
then the numbers the report gives, as text, JSON and an HTML page."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from conftest import FAST, write_jsonl

import batchpizza
from batchpizza.cli import cli
from batchpizza.mock.faults import MockConfig
from batchpizza.mock.server import ThreadedMockServer


def faulty_run(server: ThreadedMockServer, folder: Path) -> Path:
    rows = [{"id": f"ok{i}", "prompt": f"fine {i}"} for i in range(20)]
    rows += [{"id": f"flaky{i}", "prompt": f"[[fail-first:2]] flaky {i}"} for i in range(5)]
    rows += [{"id": f"refused{i}", "prompt": f"[[misuse]] refused {i}"} for i in range(3)]
    rows += [{"id": f"gone{i}", "prompt": f"[[status:404]] gone {i}"} for i in range(2)]
    inp = write_jsonl(folder / "in.jsonl", rows)
    out = folder / "out.jsonl"
    # patience: 3 refused rows x 3 attempts never reach the breaker's 10 of the last 20.
    summary = batchpizza.run(inp, out, **{**FAST, "base_url": server.base_url, "patience": "1h"})
    assert summary["exit_code"] == 3
    return out


def test_the_report_counts_what_a_run_with_known_faults_did(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    mock_api.config = MockConfig()
    out = faulty_run(mock_api, tmp_path)

    result = CliRunner().invoke(cli, ["report", str(out), "--json"])

    assert result.exit_code == 0, result.output
    numbers = json.loads(result.stdout)
    assert numbers["rows"]["by_reason"] == {"stop": 25, "misuse": 3, "error": 2}
    # 20 clean + 5 x (2 x 503 + 1) + 3 x (1 + 2 misuse retries) + 2 x 404 (not retried)
    assert numbers["requests"]["total"] == 20 + 15 + 9 + 2
    assert numbers["requests"]["retries"] == (20 + 15 + 9 + 2) - 30
    kinds = {e["kind"]: e["count"] for e in numbers["errors"]}
    assert kinds["HTTP 503"] == 10
    assert kinds["HTTP 404"] == 2
    assert sum(count for kind, count in kinds.items() if "refus" in kind or "misuse" in kind) == 9
    assert numbers["latency_ms"]["count"] == 25
    assert numbers["runs"][0]["exit_code"] == 3
    assert mock_api.stats.requests == numbers["requests"]["total"]


def test_the_text_and_the_page_show_the_same_run(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    out = faulty_run(mock_api, tmp_path)
    page = tmp_path / "report.html"

    result = CliRunner().invoke(cli, ["report", str(out), "--html", str(page)])

    assert result.exit_code == 0, result.output
    assert "HTTP 503" in result.stdout
    html = page.read_text(encoding="utf-8")
    assert "<html" in html.lower() and "uPlot" in html
    assert page.stat().st_size < 2 * 1024 * 1024
    assert not list(tmp_path.glob(".report.html.*"))  # written whole, nothing left aside


def test_report_without_a_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "none.parquet")])
    assert result.exit_code == 2
    assert "no checkpoint" in result.stderr


def test_the_samples_of_a_repeat_run_are_requests_not_retries(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # --repeat 3: each of the 10 rows asked 3 times on purpose, none of them retried.
    inp = write_jsonl(
        tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": f"q {i}"} for i in range(10)]
    )
    out = tmp_path / "out.jsonl"
    summary = batchpizza.run(inp, out, **{**FAST, "base_url": mock_api.base_url, "samples": 3})
    assert (summary["exit_code"], summary["retries"]) == (0, 0)

    result = CliRunner().invoke(cli, ["report", str(out), "--json"])

    requests = json.loads(result.stdout)["requests"]
    assert (requests["total"], requests["rows_attempted"], requests["retries"]) == (30, 30, 0)
