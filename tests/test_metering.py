"""Tokens and money end to end, against the mock (mock/tokens.py): totals equal the server's,
--max-cost never passed by the server's own count, a rerun with a higher cap continues, a spent
quota stops the run, --tpm auto keeps the server's window, and the early stops."""

from __future__ import annotations

import asyncio
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
from chat_servers import start_chat_server
from conftest import FAST, read_jsonl, write_jsonl

import batchpizza
from batchpizza.checkpoint.store import Checkpoint
from batchpizza.controls import failing
from batchpizza.mock.faults import MockConfig
from batchpizza.mock.server import ThreadedMockServer
from batchpizza.records import Prompt
from batchpizza.tokencount import input_bound, input_estimate


async def chat_server(chat: Any) -> tuple[Any, int]:
    """A raw server on 127.0.0.1 whose /v1/chat/completions is `chat`: its runner (for
    cleanup) and its port."""
    runner, _ = await start_chat_server(chat)
    return runner, runner.addresses[0][1]


async def byte_counting_server(field: str, content: str) -> tuple[Any, int, list[int]]:
    """A raw chat server (chat_server) that bills one input token a byte of everything the model
    reads, the messages and the body's `field` (what no tokenizer passes), and 5 output tokens,
    answering `content`: its runner, its port, and [input, output] tokens it billed so far."""
    from aiohttp import web

    counted = [0, 0]

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        used = sum(len(m["content"].encode()) for m in body["messages"])
        used += len(json.dumps(body.get(field), separators=(",", ":")).encode())
        counted[0] += used
        counted[1] += 5
        await asyncio.sleep(0.01)  # a few requests in flight at once
        reply = {"choices": [{"message": {"content": content}, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": used, "completion_tokens": 5}}  # fmt: skip
        return web.json_response(reply)

    runner, port = await chat_server(chat)
    return runner, port, counted


def billed_reply(body: dict[str, Any], billed: list[int], content: str) -> dict[str, Any]:
    """A chat reply whose usage is the most a byte-level tokenizer counts for `body`'s messages
    (the worst case the budget reserves) and 10 completion tokens; added to `billed[0]`, the
    server's count at $1 a token, whether or not the client ever reads the reply."""
    used = sum(len(m["content"].encode()) + 8 for m in body["messages"]) + 8
    billed[0] += used + 10
    return {"choices": [{"message": {"content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": used, "completion_tokens": 10}}  # fmt: skip


WORDS = [
    "pizza",
    "oven",
    "dough",
    "tomato",
    "basil",
    "mozzarella",
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "crust",
    "wood",
    "fire",
    "slowly",
    "Naples",
    "margherita",
    "marinara",
    "flour",
    "water",
    "yeast",
    "salt",
    "proofing",
    "temperature",
    "minutes",
    "hours",
    "question",
    "answer",
    "explain",
    "briefly",
    "compare",
    "history",
    "tradition",
    "international",
    "1889",
    "42",
    "3.14",
]
PRICE = "10,20"  # dollars per million: a few hundred rows pass half a dollar


def prompts(n: int, seed: int = 0, longest: int = 300) -> list[dict[str, Any]]:
    """Rows of mixed length: 3 to `longest` words, some with punctuation."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, longest))]
        text = " ".join(words) + rng.choice(("?", ".", "!", ": explain."))
        rows.append({"id": f"r{i}", "prompt": text})
    return rows


def openai(server: ThreadedMockServer, **options: Any) -> dict[str, Any]:
    return {**FAST, "provider": "openai", "base_url": f"{server.base_url}/v1", **options}


def test_every_row_has_its_tokens_and_the_totals_are_the_servers(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", prompts(60))
    out = tmp_path / "out.jsonl"
    summary = batchpizza.run(source, out, **openai(mock_api, concurrency=8))
    rows = read_jsonl(out)
    assert all(r["prompt_tokens"] > 0 and r["completion_tokens"] > 0 for r in rows)
    assert not any(r["tokens_estimated"] for r in rows)  # the server's count
    ledger = mock_api.tokens
    assert summary["tokens"] == {
        "input": ledger.prompt_tokens,
        "output": ledger.completion_tokens,
        "estimated": False,
    }
    assert sum(r["prompt_tokens"] for r in rows) == ledger.prompt_tokens
    assert sum(r["completion_tokens"] for r in rows) == ledger.completion_tokens


def test_pizzagpt_rows_carry_an_estimate_marked_as_one(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", prompts(5))
    out = tmp_path / "out.jsonl"
    summary = batchpizza.run(source, out, **FAST, base_url=mock_api.base_url)
    rows = read_jsonl(out)
    assert all(r["tokens_estimated"] is True and r["prompt_tokens"] > 0 for r in rows)
    assert summary["tokens"]["estimated"] is True
    # The service is free: its tokens cost nothing, whatever gpt-4o-mini costs elsewhere.
    assert summary["cost"] == {"run": 0.0, "total": 0.0, "cap": None, "price_per_million": [0, 0]}
    priced = batchpizza.run(
        source, tmp_path / "priced.jsonl", **FAST, base_url=mock_api.base_url, price="1,2"
    )
    assert priced["cost"]["price_per_million"] == [1.0, 2.0] and priced["cost"]["run"] > 0


def test_a_pizzagpt_estimate_counts_the_schema_instruction_it_sent(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # The question sent ends with the instruction and the schema; the estimate counted the
    # prompt alone (8 tokens for "q 1" under a 170-character instruction).
    from batchpizza.structured.answers import instruction
    from batchpizza.tokencount import text_tokens

    schema = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "q 1"}])
    out = tmp_path / "out.jsonl"
    batchpizza.run(source, out, **FAST, base_url=mock_api.base_url, schema=schema)
    (row,) = read_jsonl(out)
    assert row["prompt_tokens"] > text_tokens(instruction(schema))


def test_a_dry_run_on_free_pizzagpt_says_it_costs_nothing(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from batchpizza.cli import cli

    source = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    dry = CliRunner().invoke(
        cli, ["run", str(source), "-o", str(tmp_path / "o.jsonl"), "--dry-run"]
    )
    assert dry.exit_code == 0, dry.output
    assert "  cost        none: Pizzagpt is free" in dry.output
    assert "  to send     3: 3 new rows" in dry.output  # the count once, then why


def test_a_cap_on_free_pizzagpt_without_a_price_is_a_usage_error(tmp_path: Path) -> None:
    from batchpizza.errors import UsageError

    with pytest.raises(UsageError, match="Pizzagpt is free"):
        batchpizza.run(tmp_path / "in.jsonl", tmp_path / "out.jsonl", max_cost=1.0)


def capped_run(
    server: ThreadedMockServer, tmp_path: Path, cap: float, **options: Any
) -> dict[str, Any]:
    summary = batchpizza.run(
        tmp_path / "in.jsonl",
        tmp_path / "out.jsonl",
        **openai(server, concurrency=32, max_cost=cap, price=PRICE, params=["max_tokens=40"]),
        **options,
    )
    return dict(summary)


def check_cap_then_rerun(server: ThreadedMockServer, tmp_path: Path, seed: int) -> None:
    server.config = MockConfig(seed=seed, latency_ms=6, jitter_ms=5, price_in=10, price_out=20)
    server.reset()
    rows = prompts(700, seed=seed)
    write_jsonl(tmp_path / "in.jsonl", rows)
    first = capped_run(server, tmp_path, 0.50)
    assert server.tokens.cost <= 0.50  # the server's usage, priced
    assert first["exit_code"] == 4 and first["stopped"] == "budget"
    assert first["pending"] > 0 and first["answered"] > 0
    assert first["cost"]["total"] <= 0.50
    # The cap was used, not left half empty: within 32 requests' worst case of it.
    worst = max(input_bound(Prompt(r["id"], r["prompt"], ())) for r in rows) * 10e-6 + 40 * 20e-6
    assert server.tokens.cost > 0.50 - 32 * worst
    answered_first = first["answered"]
    second = capped_run(server, tmp_path, 1.00)
    assert server.tokens.cost <= 1.00
    assert second["answered"] > answered_first
    # Only rows not answered were sent again: no question was answered twice.
    assert max(server.stats.answers.values()) == 1
    assert second["cost"]["total"] == pytest.approx(server.tokens.cost, rel=1e-6)


@pytest.mark.slow
def test_max_cost_is_never_passed_and_a_higher_cap_continues(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    check_cap_then_rerun(mock_api, tmp_path, seed=1)


@pytest.mark.slow
def test_max_cost_holds_over_ten_runs_with_random_latencies(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    for seed in range(10):
        folder = tmp_path / str(seed)
        folder.mkdir()
        check_cap_then_rerun(mock_api, folder, seed=100 + seed)


def test_a_spent_quota_stops_the_run_at_once_and_is_never_retried(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    mock_api.config = MockConfig(seed=1, latency_ms=3, quota_tokens=20_000)
    source = write_jsonl(tmp_path / "in.jsonl", prompts(400))
    summary_path = tmp_path / "summary.json"
    concurrency = 8
    summary = batchpizza.run(
        source,
        tmp_path / "out.jsonl",
        **openai(mock_api, concurrency=concurrency, max_retries=5),
        summary_json=str(summary_path),
    )
    assert summary["exit_code"] == 4 and summary["stopped"] == "quota"
    assert summary["pending"] > 0 and summary["failed"] == 0  # the refused rows wait
    # Within `concurrency` requests of the first insufficient_quota 429: those in flight.
    assert 1 <= mock_api.stats.by_status.get(429, 0) <= concurrency
    assert json.loads(summary_path.read_text())["stopped"] == "quota"


@pytest.mark.slow
def test_tpm_keeps_the_servers_window_with_a_fixed_limit(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # 6,000 tokens a minute, the mock's minute shortened to 2 s: 3,000 tokens a second.
    mock_api.config = MockConfig(seed=1, tpm_limit=6000, token_window=2.0)
    source = write_jsonl(tmp_path / "in.jsonl", prompts(60, longest=60))
    # The run's own --tpm speaks of a minute: 180,000 a minute is 3,000 a second.
    summary = batchpizza.run(source, tmp_path / "out.jsonl", **openai(mock_api, tpm="150k"))
    assert summary["exit_code"] == 0
    assert mock_api.tokens.max_in_window() <= 6000
    assert mock_api.stats.by_status.get(429, 0) == 0


def run_tpm_auto(server: ThreadedMockServer, tmp_path: Path, rows: int) -> dict[str, Any]:
    limit, window = 20_000, 2.0
    server.config = MockConfig(seed=1, latency_ms=20, jitter_ms=15, tpm_limit=limit,
                               token_window=window)  # fmt: skip
    source = write_jsonl(tmp_path / "in.jsonl", prompts(rows, longest=400))
    summary = batchpizza.run(
        source, tmp_path / "out.jsonl", **openai(server, concurrency=32, tpm="auto")
    )
    ledger = server.tokens
    assert ledger.max_in_window() <= limit  # the server's own count, every window
    history = ledger.history
    span = history[-1][0] - history[0][0]
    achieved = sum(n for _, n in history[1:]) / span  # tokens a second once started
    requests = server.stats.requests
    return {
        "summary": dict(summary),
        "share": achieved / (limit / window),
        "429s": server.stats.by_status.get(429, 0) / requests,
    }


@pytest.mark.slow
def test_tpm_auto_learns_the_limit_and_keeps_below_it(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    got = run_tpm_auto(mock_api, tmp_path, 120)
    assert got["summary"]["exit_code"] == 0
    assert got["429s"] < 0.05
    meta = Checkpoint.open(tmp_path / "out.jsonl.checkpoint").meta()
    assert float(meta["learned_tpm"]) == pytest.approx(20_000 * 30, rel=0.02)  # a minute's


@pytest.mark.slow
def test_tpm_auto_achieves_most_of_the_limit(mock_api: ThreadedMockServer, tmp_path: Path) -> None:
    got = run_tpm_auto(mock_api, tmp_path, 700)
    assert got["share"] >= 0.85, got
    assert got["429s"] < 0.05, got


def test_a_parameter_every_first_row_is_refused_for_stops_the_run(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", prompts(200))
    summary = batchpizza.run(
        source,
        tmp_path / "out.jsonl",
        **openai(mock_api, concurrency=4, params=["max_tokens=0"]),  # the mock's 400
    )
    assert summary["exit_code"] == 4 and summary["stopped"] == "failing"
    assert summary["failed"] <= failing.FIRST_ROWS + 4
    assert mock_api.stats.requests <= failing.FIRST_ROWS + 4


def test_a_server_that_goes_down_stops_the_run_after_the_stretch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(failing, "DOWN_FOR", 0.3)
    source = write_jsonl(tmp_path / "in.jsonl", prompts(200))
    with ThreadedMockServer(MockConfig(seed=1)) as server:
        # The mock goes down (every connection refused) once the first rows are answered.
        answered = 0

        def on_row(_pos: int, _result: object) -> None:
            nonlocal answered
            answered += 1
            if answered == 5:
                server.go_down()

        from batchpizza.job.stages import Job

        monkeypatch.setattr(Job, "_finished_row", lambda self, pos, r: on_row(pos, r))
        summary = batchpizza.run(
            source,
            tmp_path / "out.jsonl",
            **{**FAST, "backoff_base": 0.05, "backoff_cap": 0.1},
            provider="openai",
            base_url=f"{server.base_url}/v1",
            concurrency=2,
        )
        requests = server.stats.requests
    assert summary["exit_code"] == 4 and summary["stopped"] == "failing"
    assert summary["answered"] >= 5 and summary["pending"] > 100
    assert requests < 20  # refused connections never reached it


def test_the_estimate_is_within_a_fifth_of_the_mocks_count_and_the_bound_above_it() -> None:
    from batchpizza.mock import tokens

    rows = prompts(500, seed=3)
    estimated = sum(input_estimate(Prompt(r["id"], r["prompt"], ())) for r in rows)
    counted = sum(tokens.prompt_usage([r["prompt"]]) for r in rows)
    assert abs(estimated - counted) / counted < 0.20
    assert all(
        input_bound(Prompt(r["id"], r["prompt"], ())) >= tokens.prompt_usage([r["prompt"]])
        for r in rows
    )


def test_status_and_the_summary_line_show_the_tokens_and_the_spend(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from batchpizza.cli import cli
    from batchpizza.runlog import summary_line

    source = write_jsonl(tmp_path / "in.jsonl", prompts(20))
    out = tmp_path / "out.jsonl"
    summary = batchpizza.run(source, out, **openai(mock_api, price="1,2"))
    ledger = mock_api.tokens
    line = summary_line(summary)
    assert f"{ledger.prompt_tokens:,} tokens in + {ledger.completion_tokens:,} out" in line
    shown = CliRunner().invoke(cli, ["status", str(out), "--json"])
    info = json.loads(shown.output)
    assert info["tokens"] == {
        "input": ledger.prompt_tokens,
        "output": ledger.completion_tokens,
        "estimated": False,
    }
    assert info["spent"] == pytest.approx(ledger.cost, rel=1e-6)  # --price is the mock's own
    text = CliRunner().invoke(cli, ["status", str(out)]).output
    assert "tokens" in text and "spent over all runs" in text


def test_a_small_spend_reads_as_dollars_in_every_text(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from batchpizza.cli import cli
    from batchpizza.runlog import summary_line

    # 20 short prompts at a hundredth of a cent a million tokens: about $0.00001, which the
    # summary line, status and report wrote "$1.2e-05".
    source = write_jsonl(tmp_path / "in.jsonl", prompts(20))
    out = tmp_path / "out.jsonl"
    summary = batchpizza.run(source, out, **openai(mock_api, price="0.01,0.02", max_cost=1))
    spent = summary["cost"]["total"]
    assert 0 < spent < 1e-4
    more = write_jsonl(tmp_path / "more.jsonl", prompts(40))
    texts = {
        "summary": summary_line(summary),
        "status": CliRunner().invoke(cli, ["status", str(out)]).output,
        "report": CliRunner().invoke(cli, ["report", str(out)]).output,
        # The dry run of 20 rows more: its estimate, the spend so far, the cap left.
        "dry run": CliRunner()
        .invoke(
            cli,
            [
                "run",
                str(more),
                "-o",
                str(out),
                "--dry-run",
                "--provider",
                "openai",
                "--base-url",
                f"{mock_api.base_url}/v1",
                "--rate",
                "0",
                "--price",
                "0.01,0.02",
                "--max-cost",
                "1",
            ],
        )
        .output,
    }
    for where, text in texts.items():
        assert re.search(r"\$0\.0000\d", text), (where, text)
        assert not re.search(r"\d\.?\d*e[-+]\d", text), (where, text)


def test_a_dry_runs_price_per_million_is_never_in_exponent_form(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from batchpizza.cli import cli

    # A price of a thousandth of a cent a million tokens read "at $1e-05/$2e-05 per million".
    source = write_jsonl(tmp_path / "in.jsonl", prompts(5))
    argv = ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "--dry-run", "--provider",
            "openai", "--base-url", f"{mock_api.base_url}/v1", "--price", "0.00001,2000000"]  # fmt: skip
    text = CliRunner().invoke(cli, argv).output
    assert "at $0.00001/$2000000 per million" in text, text
    assert not re.search(r"\d\.?\d*e[-+]\d", text), text


def test_a_dry_run_estimates_the_cost_within_a_fifth_and_says_the_cap(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    import re

    from click.testing import CliRunner

    from batchpizza.cli import cli

    mock_api.config = MockConfig(seed=1, price_in=10, price_out=20)
    source = write_jsonl(tmp_path / "in.jsonl", prompts(300, seed=5))
    out = tmp_path / "out.jsonl"
    args = ["run", str(source), "-o", str(out), "--provider", "openai", "--rate", "0",
            "--base-url", f"{mock_api.base_url}/v1", "--price", "10,20", "-q"]  # fmt: skip
    assert CliRunner().invoke(cli, [*args, "--limit", "30"]).exit_code == 0  # a smoke run
    before = mock_api.tokens.cost
    dry = CliRunner().invoke(cli, [*args, "--dry-run", "--max-cost", "1"])
    assert dry.exit_code == 0, dry.output
    estimate = float(re.search(r"cost +about \$([0-9.e-]+)", dry.output)[1])  # type: ignore[index]
    assert "spent on this checkpoint so far" in dry.output
    assert re.search(r"cap +\$1: \$[0-9.]+ left, about [0-9,]+ of the 270 requests fit", dry.output)
    assert CliRunner().invoke(cli, args).exit_code == 0
    real = mock_api.tokens.cost - before
    assert abs(estimate - real) / real < 0.20, (estimate, real)


def test_the_report_totals_the_tokens_and_charts_them_per_second(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from batchpizza.cli import cli

    source = write_jsonl(tmp_path / "in.jsonl", prompts(40))
    out = tmp_path / "out.jsonl"
    batchpizza.run(source, out, **openai(mock_api))
    numbers = json.loads(CliRunner().invoke(cli, ["report", str(out), "--json"]).output)
    assert numbers["requests"]["tokens"] == mock_api.tokens.used
    assert sum(numbers["series"]["tokens"]) == mock_api.tokens.used
    text = CliRunner().invoke(cli, ["report", str(out)]).output
    assert "of the answers kept" in text


def test_the_mock_server_command_takes_the_token_options(mock_process: Any) -> None:
    import urllib.error
    import urllib.request

    server = mock_process("--tpm-limit", "1000", "--token-window", "5", "--quota-tokens", "30",
                          "--price", "3,4")  # fmt: skip
    body = json.dumps({"messages": [{"role": "user", "content": "a rather long question"}]})

    def ask() -> tuple[int, dict[str, str], dict[str, Any]]:
        request = urllib.request.Request(
            server.url + "/v1/chat/completions", body.encode(), {"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request) as reply:
                return reply.status, dict(reply.headers), json.load(reply)
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), json.load(exc)

    status, headers, first = ask()
    assert status == 200 and headers["x-ratelimit-limit-tokens"] == "1000"
    used = first["usage"]["total_tokens"]
    assert int(headers["x-ratelimit-remaining-tokens"]) == 1000 - used
    while status == 200:
        status, _, reply = ask()
    assert status == 429 and reply["error"]["code"] == "insufficient_quota"
    stats = server.stats()
    assert stats["price_per_million"] == {"input": 3.0, "output": 4.0}
    assert stats["prompt_tokens"] + stats["completion_tokens"] >= 30


def test_the_cli_says_why_it_stopped_once_and_exits_4(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from batchpizza.cli import cli

    mock_api.config = MockConfig(seed=1, quota_tokens=2_000)
    source = write_jsonl(tmp_path / "in.jsonl", prompts(100))
    out = tmp_path / "out.jsonl"
    args = ["run", str(source), "-o", str(out), "--provider", "openai", "--rate", "0",
            "--base-url", f"{mock_api.base_url}/v1", "--no-progress"]  # fmt: skip
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 4, done.output
    assert done.output.count("stopping:") == 1
    assert "quota or credit is spent" in done.output and "stopped (quota)" in done.output
    rows = read_jsonl(out)
    assert {r["finish_reason"] for r in rows} <= {"stop", "pending"}


def test_a_restart_dry_run_counts_the_money_spent_as_the_run_will(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # --restart forgets answers, not money, but its dry run said "$0 spent" and the whole cap
    # left, planning over an empty checkpoint.
    import re

    from click.testing import CliRunner

    from batchpizza.cli import cli

    source = write_jsonl(tmp_path / "in.jsonl", prompts(10, seed=2))
    out = tmp_path / "out.jsonl"
    args = ["run", str(source), "-o", str(out), "--provider", "openai", "--rate", "0",
            "--base-url", f"{mock_api.base_url}/v1", "--price", "1000,1000", "-q"]  # fmt: skip
    assert CliRunner().invoke(cli, args).exit_code == 0
    dry = CliRunner().invoke(cli, [*args, "--dry-run", "--restart", "--max-cost", "100"])
    assert dry.exit_code == 0, dry.output
    said = re.search(r"\$([0-9.e-]+) spent on this checkpoint so far", dry.output)
    assert said is not None and float(said[1]) > 0, dry.output
    left = re.search(r"cap +\$100: \$([0-9.e-]+) left", dry.output)
    assert left is not None and float(left[1]) < 100, dry.output


async def test_the_cap_holds_when_the_server_counts_the_schema_as_input(tmp_path: Path) -> None:
    # OpenAI counts a response_format's schema as input tokens. The reservation bounded the
    # messages alone: with a 2 KB schema, a $100 cap was passed 65 times over by the first wave.
    from batchpizza import arun

    runner, port, counted = await byte_counting_server("response_format", '{"label": "x"}')
    described = {"type": "string", "description": "a long description of the label " * 60}
    schema = {"type": "object", "properties": {"label": described}, "required": ["label"]}
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q {i}"} for i in range(30)])
    try:
        for cap in (100.0, 20_000.0):
            summary = await arun(
                str(source), str(tmp_path / f"out{cap}.jsonl"), provider="openai",
                base_url=f"http://127.0.0.1:{port}/v1", model="m", rate=0, concurrency=8,
                schema=schema, max_cost=cap, price="1000000,1000000",
                params=["max_tokens=10"], quiet=True,
            )  # fmt: skip
            assert summary["stopped"] == "budget"
            assert counted[0] + counted[1] <= cap, (counted, cap)  # $1 a token
            counted[:] = [0, 0]
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("via", ["online", "batch lines"])
async def test_the_cap_holds_when_the_server_counts_tools_in_the_body_as_input(
    tmp_path: Path, via: str
) -> None:
    # OpenAI counts the tool definitions sent with a request (--param tools=[...], or a batch
    # input line's own `tools`) as input tokens. The reservation bounded the messages alone:
    # with 2 KB of tools and prompts of a few bytes, a $100 cap was passed several times over.
    from batchpizza import arun

    runner, port, counted = await byte_counting_server("tools", "x")
    tool = {"type": "function", "function": {"name": "label", "parameters": {
        "type": "object", "properties": {"label": {"type": "string", "description": "a label " * 250}},
    }}}  # fmt: skip
    params = ["max_tokens=10"]
    if via == "online":
        rows: list[dict[str, Any]] = [{"prompt": f"q {i}"} for i in range(30)]
        params.append(f"tools={json.dumps([tool])}")
    else:  # OpenAI Batch API request lines, each with its own tools
        rows = [
            {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"messages": [{"role": "user", "content": f"q {i}"}], "tools": [tool]}}
            for i in range(30)
        ]  # fmt: skip
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    try:
        for cap in (100.0, 20_000.0):
            summary = await arun(
                str(source), str(tmp_path / f"out{cap}.jsonl"), provider="openai",
                base_url=f"http://127.0.0.1:{port}/v1", model="m", rate=0, concurrency=8,
                max_cost=cap, price="1000000,1000000", params=params, quiet=True,
            )  # fmt: skip
            assert summary["stopped"] == "budget"
            assert counted[0] + counted[1] <= cap, (counted, cap)  # $1 a token
            counted[:] = [0, 0]
    finally:
        await runner.cleanup()


async def test_worst_cases_charged_without_a_usage_are_kept_and_a_rerun_counts_them(
    tmp_path: Path,
) -> None:
    # A reply without usage (or a timeout, a 2xx without an answer) is charged its worst case
    # in the run, but only results' tokens were kept: each rerun with the same cap spent it
    # all again (three runs at $1000 each: the server's count at $1350 after the third).
    from aiohttp import web

    from batchpizza import arun

    sent = [0]

    async def chat(request: web.Request) -> web.Response:
        sent[0] += 1
        reply = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
                 "usage": None}  # fmt: skip
        return web.json_response(reply)

    runner, port = await chat_server(chat)
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q {i}"} for i in range(40)])
    options: dict[str, Any] = {
        "provider": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "model": "m",
        "rate": 0, "max_cost": 300.0, "price": "1000000,1000000", "params": ["max_tokens=10"],
        "quiet": True,
    }  # fmt: skip
    try:
        first = await arun(str(source), str(tmp_path / "out.jsonl"), **options)
        assert first["stopped"] == "budget" and first["cost"]["run"] > 250
        once = sent[0]
        again = await arun(str(source), str(tmp_path / "out.jsonl"), **options)
        assert again["stopped"] == "budget" and sent[0] == once  # nothing more: the cap is spent
        assert again["cost"]["total"] == first["cost"]["total"] <= 300
    finally:
        await runner.cleanup()


@pytest.mark.slow
async def test_requests_cut_off_after_a_stop_are_charged_and_a_rerun_counts_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Requests still in flight when the grace after a stop ran out (here the deadline's) were cut
    # off with nothing charged, where a timeout is charged its worst case (the server may have
    # done the work): a rerun with the same cap spent the whole cap again.
    import time

    from aiohttp import web

    import batchpizza.job.stages as stages
    from batchpizza import arun

    billed = [0]  # dollars by the server's count, $1 a token
    hang = [True]
    release = asyncio.Event()

    async def chat(request: web.Request) -> web.Response:
        reply = billed_reply(await request.json(), billed, "hi")  # billed if cut off too
        if hang[0]:
            await release.wait()  # worked on, not answered before the run stops
        return web.json_response(reply)

    runner, port = await chat_server(chat)
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q {i}"} for i in range(40)])
    options: dict[str, Any] = {
        "provider": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "model": "m",
        "rate": 0, "concurrency": 4, "max_cost": 300.0, "price": "1000000,1000000",
        "params": ["max_tokens=10"], "grace": 0.05, "quiet": True,
    }  # fmt: skip
    try:
        monkeypatch.setattr(stages, "_PROCESS_START", time.monotonic())
        first = await arun(str(source), str(tmp_path / "out.jsonl"), deadline="1s", **options)
        assert first["stopped"] == "deadline" and billed[0] > 0
        assert first["cost"]["total"] >= billed[0]  # every request cut off, at its worst case
        hang[0] = False
        again = await arun(str(source), str(tmp_path / "out.jsonl"), **options)
        assert again["stopped"] == "budget"
        assert billed[0] <= 300  # the cap, over both runs, by the server's count
    finally:
        release.set()
        await runner.cleanup()


async def test_answers_of_a_row_whose_re_ask_was_stopped_are_kept_in_the_spend(
    tmp_path: Path,
) -> None:
    # --schema: a row answered (and billed), then stopped before its re-ask could go (the cap
    # had no room for it) stays to do, and no result carries that answer: its tokens were kept
    # nowhere, and every rerun with the same cap paid for it again (six runs at a $150 cap: $174
    # by the server's count).
    from aiohttp import web

    from batchpizza import arun

    billed = [0]  # dollars by the server's count, $1 a token

    async def chat(request: web.Request) -> web.Response:
        return web.json_response(billed_reply(await request.json(), billed, "not json"))

    runner, port = await chat_server(chat)
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q {i}"} for i in range(5)])
    options: dict[str, Any] = {
        "provider": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "model": "m",
        "rate": 0, "concurrency": 1, "max_cost": 150.0, "price": "1000000,1000000",
        "params": ["max_tokens=10"], "schema": {"type": "object"}, "quiet": True,
    }  # fmt: skip
    try:
        for _ in range(6):
            summary = await arun(str(source), str(tmp_path / "out.jsonl"), **options)
            assert summary["stopped"] == "budget" and summary["pending"] == 5
            assert summary["cost"]["total"] == billed[0]  # what the server billed, all of it
        assert billed[0] <= 150  # the cap, over every run, by the server's count
    finally:
        await runner.cleanup()


def test_a_dry_run_averages_only_this_models_answers_and_says_so(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from batchpizza.cli import cli

    source = write_jsonl(tmp_path / "in.jsonl", prompts(20))
    out = tmp_path / "out.jsonl"
    args = ["run", str(source), "-o", str(out), "--provider", "openai", "--rate", "0",
            "--base-url", f"{mock_api.base_url}/v1", "-q"]  # fmt: skip
    assert CliRunner().invoke(cli, [*args, "--model", "a", "--limit", "10"]).exit_code == 0
    same = CliRunner().invoke(cli, [*args, "--model", "a", "--dry-run"]).output
    assert "tokens answers here averaged" in same
    # Another model's answers are no guide to this one's length: the guess, said as such (it
    # said "no answer here yet" beside ten answers).
    other = CliRunner().invoke(cli, [*args, "--model", "b", "--dry-run"]).output
    assert "no answer of this model and parameters here yet" in other
