"""Money through the Batch API (batchapi/budget.py): answers collected from batches priced at the
batch price in the spend, the summary, status, report and --dry-run; --max-cost reserved at that
price per line before a file is submitted, never passed by the server's usage; --tpm refused."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from test_checkpoint import result

from batchpizza.batchapi.budget import BatchBudget, off_the_cap
from batchpizza.batchapi.display import requests_out
from batchpizza.checkpoint import Checkpoint
from batchpizza.checkpoint.batches import BatchLine
from batchpizza.config import RunConfig
from batchpizza.controls.budget import Budget
from batchpizza.controls.metering import Meter
from batchpizza.engine.runner import Counters
from batchpizza.errors import UsageError
from batchpizza.job.metering import token_fields
from batchpizza.mock.server import ThreadedMockServer
from batchpizza.pricing import Price, cost
from batchpizza.records import Prompt
from batchpizza.tokencount import input_bound, messages_bound
from tests.batchapi_shared import rows
from tests.conftest import read_jsonl, write_jsonl

PRICE = Price(1.0, 2.0)


def run(inp: Path, out: Path, base_url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = ["run", str(inp), "-o", str(out), "--provider", "openai", "--base-url",
            f"{base_url}/v1", "--no-progress", "--price", "1,2", *extra]  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "batchpizza", *argv], capture_output=True, text=True, timeout=120
    )


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchpizza", *argv], capture_output=True, text=True, timeout=120
    )


def served_usage(server: ThreadedMockServer) -> tuple[int, int]:
    """The usage the mock reported on the result lines of every batch: the server's count."""
    prompt = completion = 0
    for file_id, f in server.batches.files.items():
        if f["purpose"] != "batch_output":
            continue
        for raw in server.batches.contents[file_id].splitlines():
            body = (json.loads(raw).get("response") or {}).get("body") or {}
            usage = body.get("usage") or {}
            prompt += usage.get("prompt_tokens", 0)
            completion += usage.get("completion_tokens", 0)
    return prompt, completion


def output_tokens(out: Path) -> tuple[int, int]:
    lines = [r for r in read_jsonl(out) if r["prompt_tokens"] is not None]
    return sum(r["prompt_tokens"] for r in lines), sum(r["completion_tokens"] for r in lines)


def spend_rows(checkpoint: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{checkpoint}?mode=ro", uri=True) as conn:
        return conn.execute(
            "SELECT run, batch, price_in, price_out, prompt_tokens, completion_tokens FROM "
            "spend ORDER BY rowid"
        ).fetchall()


# -- half price -------------------------------------------------------------------------------


@pytest.mark.slow
def test_batch_answers_are_spent_at_half_price_in_the_summary_status_and_report(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", rows(50))
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    online, online_summary = tmp_path / "online.jsonl", tmp_path / "online.json"

    done = run(inp, out, server.base_url, "--via", "batch", "--wait",
               "--summary-json", str(summary))  # fmt: skip
    assert done.returncode == 0, done.stderr
    same = run(inp, online, server.base_url, "--rate", "0", "--summary-json", str(online_summary))
    assert same.returncode == 0, same.stderr

    used = output_tokens(out)
    assert used == served_usage(server) and used == output_tokens(online)
    half = cost(PRICE, *used) / 2
    said = json.loads(summary.read_text())
    assert said["tokens"]["input"] == used[0] and said["tokens"]["output"] == used[1]
    assert said["cost"]["run"] == pytest.approx(half, abs=1e-6)
    assert said["cost"]["batch"] == pytest.approx(half, abs=1e-6)
    assert said["cost"]["total"] == pytest.approx(half, abs=1e-6)
    # The same answers sent online cost twice as much.
    full = json.loads(online_summary.read_text())["cost"]
    assert full["run"] == pytest.approx(2 * said["cost"]["run"], abs=1e-6)
    assert "batch" not in full
    # The spend: the run's online row empty, its batch row at half the price.
    checkpoint = Path(f"{out}.checkpoint")
    assert spend_rows(checkpoint) == [(1, 0, 1.0, 2.0, 0, 0), (1, 1, 0.5, 1.0, *used)]

    status = cli("status", str(out), "--json")
    info = json.loads(status.stdout)
    assert info["spent"] == pytest.approx(half, abs=1e-6)
    assert info["batch_spend"] == {"input": used[0], "output": used[1],
                                   "dollars": round(half, 6)}  # fmt: skip
    assert "through the Batch API, at half price" in cli("status", str(out)).stdout
    report = cli("report", str(out), "--json")
    assert json.loads(report.stdout)["spend"]["dollars"] == pytest.approx(half, abs=1e-6)
    text = cli("report", str(out)).stdout
    assert "Batch API" in text and f"${half:.4g} at half price" in text


def test_the_spend_keeps_a_runs_batch_answers_apart_at_the_batch_price(tmp_path: Path) -> None:
    store = Checkpoint.open(tmp_path / "ck")
    store.use_identity({"provider": "openai", "model": "m"})
    store.begin_spend(store.begin_run({}), (1.0, 2.0), batch=True)
    store.write([result("a")._replace(prompt_tokens=1000, completion_tokens=500)])
    store.write([result("b")._replace(prompt_tokens=1000, completion_tokens=500)], batch=True)
    spent = store.spend()
    assert spent.dollars == pytest.approx(0.002 + 0.001)
    assert (spent.batch_prompt_tokens, spent.batch_completion_tokens) == (1000, 500)
    assert spent.batch_dollars == pytest.approx(0.001)
    assert store.spend(this_run=True) == spent
    store.close()


def test_the_summarys_run_cost_prices_the_batch_tokens_at_half() -> None:
    config = RunConfig(provider="openai", via="auto", price="1,2")
    counters = SimpleNamespace(input_tokens=3000, output_tokens=1500, tokens_estimated=False)

    said = token_fields(config, counters, None, batched=(1000, 500))["cost"]

    # 2000 in + 1000 out sent online at full price, 1000 + 500 collected from batches at half.
    assert said["run"] == pytest.approx(0.004 + 0.001)
    assert said["batch"] == pytest.approx(0.001)


@pytest.mark.slow
def test_auto_prices_the_rows_it_sends_online_at_full_price(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    server.batches.seconds = 3600.0
    inp = write_jsonl(tmp_path / "in.jsonl", rows(20))
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"

    done = run(inp, out, server.base_url, "--via", "auto", "--deadline", "6s", "--rate", "0",
               "--summary-json", str(summary))  # fmt: skip

    assert done.returncode == 0, done.stderr
    said = json.loads(summary.read_text())
    assert said["batches"]["online"] == 20
    assert said["cost"]["run"] == pytest.approx(cost(PRICE, *output_tokens(out)), abs=1e-6)
    assert said["cost"]["batch"] == 0


@pytest.mark.slow
def test_dry_run_estimates_the_batch_api_at_half_price(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", rows(100))
    said = {}
    for via in ("online", "batch"):
        done = cli("run", str(inp), "-o", str(tmp_path / f"{via}.jsonl"), "--provider", "openai",
                   "--price", "1,2", "--max-cost", "1", "--param", "max_tokens=20",
                   "--via", via, "--dry-run")  # fmt: skip
        assert done.returncode == 0, done.stderr
        said[via] = done.stdout
    numbers = {
        via: [float(x) for x in re.findall(r"about \$([0-9.e-]+)", text)]
        for via, text in said.items()
    }
    assert "at the Batch API's half of $1/$2" in said["batch"]
    # The estimate, and each row's worst case reserved: half.
    assert numbers["batch"] == pytest.approx([n / 2 for n in numbers["online"]], rel=1e-2)


# -- --max-cost ----------------------------------------------------------------------------


@pytest.mark.slow
def test_max_cost_through_batches_never_lets_the_servers_usage_pass_the_cap(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", rows(120))
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    # A row's worst case: about 28 bytes in + 20 out, $0.034 a thousand at half price; each
    # uses about half of it: $0.001 reserves for 29 rows and spends for more.
    extra = ("--via", "batch", "--wait", "--param", "max_tokens=20",
             "--summary-json", str(summary))  # fmt: skip

    done = run(inp, out, server.base_url, *extra, "--max-cost", "0.001")

    assert done.returncode == 4, done.stderr
    said = json.loads(summary.read_text())
    assert said["stopped"] == "budget" and said["pending"] > 0
    assert cost(PRICE, *served_usage(server)) / 2 <= 0.001
    assert said["cost"]["total"] <= 0.001
    answered = 120 - said["pending"]
    # Collected batches settled for less than they reserved: more rows went than the first file.
    first = len(next(iter(server.batches.batches.values()))["_lines"])
    assert answered > first > 0
    assert sorted(server.batches.submitted.values()) == [1] * answered
    pending = {r["id"] for r in read_jsonl(out) if r["finish_reason"] == "pending"}
    assert len(pending) == said["pending"]

    # A higher cap: only the rows not answered are submitted.
    again = run(inp, out, server.base_url, *extra, "--max-cost", "0.01")

    assert again.returncode == 0, again.stderr
    assert server.batches.twice() == {}
    assert len(server.batches.submitted) == 120
    assert cost(PRICE, *served_usage(server)) / 2 <= 0.01
    assert json.loads(summary.read_text())["cost"]["total"] == pytest.approx(
        cost(PRICE, *served_usage(server)) / 2, abs=1e-6
    )


def capped_batches_out(
    server: ThreadedMockServer, tmp_path: Path
) -> tuple[Path, Path, Path, tuple[str, ...]]:
    """120 rows, batches that take a minute to end (still out through every run of a test, on a
    loaded machine too: at 4 s, a run's 0.3 s deadline from its process start came before it
    submitted), and the options of a run capped at $0.001 with max_tokens=20 and its summary
    written: input, output, summary, options."""
    server.batches.seconds = 60.0
    inp = write_jsonl(tmp_path / "in.jsonl", rows(120))
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    capped = ("--param", "max_tokens=20", "--max-cost", "0.001", "--summary-json", str(summary))
    return inp, out, summary, capped


@pytest.mark.slow
def test_batches_out_when_a_run_starts_are_reserved_until_collected(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    inp, out, summary, capped = capped_batches_out(server, tmp_path)
    extra = ("--via", "batch", *capped)

    first = run(inp, out, server.base_url, *extra, "--deadline", "30s")
    assert first.returncode == 4, first.stderr
    assert json.loads(summary.read_text())["stopped"] == "batches"
    submitted = len(server.batches.submitted)
    assert 0 < submitted < 120

    # From cron, while they are out: they hold the cap, nothing more is submitted.
    second = run(inp, out, server.base_url, *extra, "--deadline", "30s")
    assert second.returncode == 4, second.stderr
    assert len(server.batches.submitted) == submitted

    # Once collected, what they did not use goes to more rows; the cap holds throughout.
    server.batches.seconds = 0.2
    last = run(inp, out, server.base_url, *extra, "--wait")
    assert last.returncode == 4, last.stderr
    assert json.loads(summary.read_text())["stopped"] == "budget"
    assert len(server.batches.submitted) > submitted
    assert server.batches.twice() == {}
    assert cost(PRICE, *served_usage(server)) / 2 <= 0.001


@pytest.mark.slow
def test_batches_out_for_another_model_hold_the_cap_of_a_run_of_a_new_one(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    # Model a's batches were out (they will be billed) when a run of model b began: b's run
    # reserved only its own model's, submitted as if a's cost nothing, and the two passed the
    # cap together.
    inp, out, summary, capped = capped_batches_out(server, tmp_path)
    extra = ("--via", "batch", *capped)

    first = run(inp, out, server.base_url, *extra, "--model", "a")  # exits 4, batches out
    assert first.returncode == 4, first.stderr
    submitted = sum(server.batches.submitted.values())
    assert 0 < submitted < 120

    second = run(inp, out, server.base_url, *extra, "--model", "b")

    assert second.returncode == 4, second.stderr
    assert sum(server.batches.submitted.values()) == submitted, "b's lines went beside a's"
    assert "a --via batch run at the server they were made at collects them" in second.stderr
    said = cli("status", str(out))
    assert f"still out ({submitted} requests, billed when they end)" in said.stdout, said.stdout
    as_json = json.loads(cli("status", str(out), "--json").stdout)
    assert as_json["other_batches"]["lines_out"] == submitted
    assert json.loads(summary.read_text())["stopped"] == "budget"


@pytest.mark.slow
def test_an_online_run_keeps_the_cap_with_the_batches_still_out(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    # The same command without --via while its batches were out sent rows online up to the
    # whole cap, as if the batches (billed when they end) cost nothing.
    inp, out, summary, extra = capped_batches_out(server, tmp_path)

    first = run(inp, out, server.base_url, *extra, "--via", "batch")  # exits 4, batches out
    assert first.returncode == 4, first.stderr
    assert 0 < sum(server.batches.submitted.values()) < 120
    before = server.stats.requests

    online = run(inp, out, server.base_url, *extra, "--rate", "0")

    assert online.returncode == 4, online.stderr
    assert json.loads(summary.read_text())["stopped"] == "budget"
    assert server.stats.requests == before, "rows went online beside the batches"
    assert "in Batch API batches still out hold $" in online.stderr
    assert "still out, which --via batch collects (billed when they end" in online.stderr


@pytest.mark.slow
def test_a_cap_nothing_fits_in_stops_budget_without_submitting(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", rows(5))
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"

    done = run(inp, out, server.base_url, "--via", "batch", "--max-cost", "0.00001",
               "--param", "max_tokens=20", "--summary-json", str(summary))  # fmt: skip

    assert done.returncode == 4, done.stderr
    said = json.loads(summary.read_text())
    assert said["stopped"] == "budget" and said["pending"] == 5
    assert server.batches.uploads == 0 and not server.batches.batches
    assert "would pass --max-cost" in done.stderr


@pytest.mark.slow
def test_auto_keeps_spent_the_lines_of_the_batches_it_cancels_and_sends_the_rest_online(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    server.batches.seconds = 3600.0
    inp = write_jsonl(tmp_path / "in.jsonl", rows(20))
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"

    # $0.0007: the 20 rows' worst cases fit at half price, not at full.
    done = run(inp, out, server.base_url, "--via", "auto", "--deadline", "6s", "--rate", "0",
               "--max-cost", "0.0007", "--param", "max_tokens=20",
               "--summary-json", str(summary))  # fmt: skip

    assert done.returncode == 4, done.stderr
    said = json.loads(summary.read_text())
    assert said["batches"]["submitted"] == 20 and said["stopped"] == "budget"
    assert said["batches"]["online"] == server.stats.requests  # those sent, not those meant
    assert said["pending"] == 20 - server.stats.requests
    # The batch cancelled near the deadline bills the lines it completed before the cancel took
    # effect (the mock: half of them, once its state is next looked at, as OpenAI's would be).
    for batch_id in list(server.batches.batches):
        urllib.request.urlopen(f"{server.base_url}/v1/batches/{batch_id}", timeout=10).read()
    billed_by_batch = cost(PRICE, *served_usage(server), batch=True)
    assert billed_by_batch > 0
    billed = billed_by_batch + cost(PRICE, *output_tokens(out))  # the rows answered online
    assert billed <= 0.0007
    # What the run counts as spent: the online answers' usage and the batch lines' worst cases.
    assert billed - 1e-9 <= said["cost"]["total"] <= 0.0007
    # Kept for the next run's cap, on the run's Batch API row of the spend (at half price).
    batch_rows = [r for r in spend_rows(Path(f"{out}.checkpoint")) if r[1]]
    assert len(batch_rows) == 1 and batch_rows[0][4] > 0 and batch_rows[0][5] == 20 * 20


def test_a_line_keeps_its_reservation_to_resubmit_frees_it_failing_settles_it_answered() -> None:
    line = json.dumps({"custom_id": "0-x", "body": {"messages": [
        {"role": "user", "content": "x" * 84}], "max_tokens": 100}}).encode()  # fmt: skip
    worst = cost(PRICE, 84 + 16, 100, batch=True)  # $0.00015
    budget = Budget(2.5 * worst, PRICE)
    money = BatchBudget(Meter(params={}, budget=budget), Counters())

    waiting = [BatchLine(1, f"{i}-x", f"q{i}", i, bytes([i]), 2, line) for i in range(3)]
    # Lines an earlier run left waiting to be resubmitted: those that fit, each reserved.
    assert [x.pos for x in money.resubmittable(waiting)] == [0, 1] and money.short
    assert budget.reserved == pytest.approx(2 * worst)
    answer = result("q0")._replace(digest=bytes([0]), prompt_tokens=50, completion_tokens=10)
    money.settle([(bytes([0]), "answered"), (bytes([1]), "failed")], [answer])
    assert budget.spent == pytest.approx(cost(PRICE, 50, 10, batch=True))
    assert budget.reserved == pytest.approx(worst)  # the failed line's, to resubmit it
    assert money.tokens == (50, 10)
    assert [x.pos for x in money.resubmittable(waiting[1:])] == [1, 2]  # 1 holds its own
    money.settle([(bytes([1]), "error"), (bytes([2]), "expired")], [])
    assert budget.reserved == pytest.approx(worst)  # the error freed, not billed
    # Lines a batch already has: reserved even past the cap (they will be billed).
    money.reserve_out(BatchLine(2, f"{i}-x", f"q{i}", i, bytes([i]), 1, line) for i in (8, 9))
    assert budget.reserved == pytest.approx(3 * worst)
    assert budget.spent + budget.reserved > budget.cap


def test_another_models_lines_give_their_share_of_the_cap_back_once_collected() -> None:
    # Collected while a --via batch run waits, their worst case stayed off the cap beside what
    # they cost (spent): the run's cap counted them twice.
    line = json.dumps({"custom_id": "0-x", "body": {"messages": [
        {"role": "user", "content": "x" * 84}], "max_tokens": 100}}).encode()  # fmt: skip
    worst = cost(PRICE, 84 + 16, 100, batch=True)
    budget = Budget(10 * worst, PRICE)
    money = BatchBudget(Meter(params={}, budget=budget), Counters())
    lines = [BatchLine(seq, f"{seq}-x", f"q{seq}", seq, bytes([seq]), 1, line) for seq in (7, 8)]

    money.reserve_foreign(lines, "a run of theirs")
    assert budget.cap == pytest.approx(8 * worst)
    money.foreign_collected(7)
    money.foreign_collected(7)  # given back once
    assert budget.cap == pytest.approx(9 * worst)


def test_a_lines_messages_are_bounded_as_its_prompt_was() -> None:
    # What a batch out at a run's start reserves, from its line alone: the prompt's own bound.
    one = Prompt("a", "héllo, 世界", ())
    two = Prompt("b", "", ({"role": "system", "content": "be brief"},
                          {"role": "user", "content": "ünïcode 🍕"}))  # fmt: skip
    assert messages_bound([{"role": "user", "content": one.text}]) == input_bound(one)
    assert messages_bound(two.messages) == input_bound(two)


# -- --tpm ------------------------------------------------------------------------------------


def test_tpm_is_refused_with_the_batch_api_and_kept_for_autos_online_rows(
    tmp_path: Path,
) -> None:
    with pytest.raises(UsageError, match="no per-minute pacing"):
        RunConfig(provider="openai", via="batch", tpm="20k")
    with pytest.raises(UsageError, match="no per-minute pacing"):
        RunConfig(provider="openai", via="batch", tpm="auto")
    assert RunConfig(provider="openai", via="batch", tpm="0").tpm_per_s is None  # no limit
    assert RunConfig(provider="openai", via="auto", tpm="20k").tpm_per_s == pytest.approx(
        20000 / 60
    )
    inp = write_jsonl(tmp_path / "in.jsonl", rows(1))
    done = cli("run", str(inp), "-o", str(tmp_path / "out.jsonl"), "--provider", "openai",
               "--via", "batch", "--tpm", "20k")  # fmt: skip
    assert done.returncode == 2
    assert "enqueued-token quota" in done.stderr


def test_files_never_submitted_are_not_taken_off_an_online_cap(tmp_path: Path) -> None:
    # A gateway refused every upload (LiteLLM without files_settings): the --via batch run left
    # its files waiting, no batch made of them. The online run after it took their worst cases
    # off its cap ("they will be billed") and said its rows were in batches still out ("paid
    # twice"), though nobody bills them: their rows answered online close the files.
    store = Checkpoint.open(tmp_path / "ck")
    store.use_identity({"provider": "openai", "model": "a"})
    line = json.dumps({"custom_id": "0-x", "body": {"messages": [
        {"role": "user", "content": "x" * 84}], "max_tokens": 100}}).encode()  # fmt: skip
    store.intend_file([("0-x", "q0", 0, b"k0", 1, line)])  # recorded, its upload refused
    stored = store.intend_file([("1-x", "q1", 1, b"k1", 1, line)])
    store.set_file_id(stored.seq, "file-1")  # uploaded, no create sent
    budget = Budget(1.0, PRICE)

    off_the_cap(Meter(params={}, budget=budget), store)
    assert budget.cap == 1.0 and requests_out(store) == 0

    submitted = store.intend_file([("2-x", "q2", 2, b"k2", 1, line)])
    store.set_file_id(submitted.seq, "file-2")
    store.set_batch(submitted.seq, {"id": "batch-2", "status": "in_progress"})
    off_the_cap(Meter(params={}, budget=budget), store)
    assert budget.cap == pytest.approx(1.0 - cost(PRICE, 84 + 16, 100, batch=True))
    assert requests_out(store) == 1
    store.close()


@pytest.mark.slow
def test_an_online_run_after_refused_uploads_keeps_its_cap_and_says_no_batch_is_out(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    server.batches.upload_fail = 10**6  # every upload refused: files recorded, never a batch
    inp = write_jsonl(tmp_path / "in.jsonl", rows(20))
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    extra = ("--param", "max_tokens=20", "--max-cost", "0.002", "--summary-json", str(summary))
    first = run(inp, out, server.base_url, *extra, "--via", "batch", "--max-retries", "0",
                "--model", "a")  # fmt: skip
    assert first.returncode != 0 and not server.batches.batches, first.stderr

    for model in ("b", "a"):  # another model's files waiting, then this model's
        online = run(inp, out, server.base_url, *extra, "--rate", "0", "--model", model)
        assert online.returncode == 0, online.stderr
        assert "still out" not in online.stderr, online.stderr
        assert json.loads(summary.read_text())["answered"] == 20
        if model == "b":
            said = cli("status", str(out)).stdout
            assert "still out" not in said, said
            assert "1 file of other models or parameters waiting to be submitted" in said, said


@pytest.mark.slow
def test_dry_run_counts_the_cap_the_batches_still_out_hold_as_the_run_does(
    server: ThreadedMockServer, tmp_path: Path
) -> None:
    # A dry run said the whole cap was left ("$0.001 left, about N of the 120 requests fit",
    # N > 0) while the batches still out held it: the run itself then submitted and sent nothing.
    inp, out, _, capped = capped_batches_out(server, tmp_path)
    first = run(inp, out, server.base_url, "--via", "batch", *capped)  # exits 4, batches out
    assert first.returncode == 4, first.stderr
    submitted, before = sum(server.batches.submitted.values()), server.stats.requests
    assert 0 < submitted < 120

    for via in (("--via", "batch"), ("--via", "auto"), ()):
        dry = run(inp, out, server.base_url, *via, *capped, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        cap = re.search(r"cap +\$0\.001: (\S+) left \(batches still out hold (\S+)\), about "
                        r"(\d+) of the (\d+) requests fit", dry.stdout)  # fmt: skip
        assert cap is not None, (via, dry.stdout)
        assert (cap[1], cap[3]) == ("$0", "0"), (via, cap[0])

    again = run(inp, out, server.base_url, "--via", "batch", *capped)  # what the run does
    assert again.returncode == 4, again.stderr
    online = run(inp, out, server.base_url, *capped, "--rate", "0")
    assert online.returncode == 4, online.stderr
    assert (sum(server.batches.submitted.values()), server.stats.requests) == (submitted, before)
