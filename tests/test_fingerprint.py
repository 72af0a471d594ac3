"""Request identity: an answer is reused only for the request it answers (provider, model,
parameters, prompt as sent), answers of several requests are kept side by side, identical
requests of one run are sent once, and why a row is sent is said before anything is paid.

Against the bundled mock with `by_request`: its chat answers depend on the model and the
temperature, so an answer written for the wrong request shows in the output.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import FAST, read_jsonl, write_jsonl
from old_checkpoints import SCHEMA_2

import batchpizza
from batchpizza.checkpoint import Checkpoint
from batchpizza.cli import cli
from batchpizza.errors import CheckpointVersionError, UsageError
from batchpizza.fingerprint import canonical_json, describe_change, identity_digest
from batchpizza.mock.faults import MockConfig
from batchpizza.mock.replies import mock_answer
from batchpizza.mock.server import ThreadedMockServer
from batchpizza.rows import prompt_digest


@pytest.fixture
def chat(mock_api: ThreadedMockServer) -> ThreadedMockServer:
    mock_api.config = MockConfig(seed=1, by_request=True)
    mock_api.reset()
    return mock_api


def prompts(path: Path, n: int) -> Path:
    return write_jsonl(path, [{"id": f"q{i}", "prompt": f"question {i}"} for i in range(n)])


def run_chat(server: ThreadedMockServer, inp: Path, out: Path, **options: Any) -> Any:
    before = server.stats.requests
    summary = batchpizza.run(
        inp,
        out,
        **{**FAST, "provider": "openai", "base_url": f"{server.base_url}/v1", **options},
    )
    return summary, server.stats.requests - before


def cli_chat(server: ThreadedMockServer, inp: Path, out: Path, *extra: str) -> Any:
    args = ["run", str(inp), "-o", str(out), "--provider", "openai", "--rate", "0"]
    args += ["--base-url", f"{server.base_url}/v1", "--no-progress", *extra]
    return CliRunner().invoke(cli, args)


def said(model: str, temperature: object = 1) -> str:
    return f" [model {model}, temperature {temperature}]"


def test_a_rerun_with_another_model_and_temperature_sends_every_row_and_says_why(
    chat: ThreadedMockServer, tmp_path: Path
) -> None:
    inp, out = prompts(tmp_path / "in.jsonl", 30), tmp_path / "out.jsonl"
    first = cli_chat(chat, inp, out, "--model", "model-A")
    assert first.exit_code == 0, first.output
    sent = chat.stats.requests

    dry = cli_chat(chat, inp, out, "--model", "model-B", "--param", "temperature=0.9", "--dry-run")
    assert dry.exit_code == 0, dry.output
    why = "30 new request (model model-A -> model-B, temperature unset -> 0.9)"
    reason = f"30 to send: {why}"
    assert f"  to send     30: {why}" in dry.stdout  # the plan is printed on stdout
    assert chat.stats.requests == sent

    rerun = cli_chat(chat, inp, out, "--model", "model-B", "--param", "temperature=0.9")

    assert rerun.exit_code == 0, rerun.output
    assert chat.stats.requests == sent + 30
    assert reason in rerun.stderr.splitlines()[0]  # the run's first log line
    rows = read_jsonl(out)
    assert [r["answer"] for r in rows] == [
        mock_answer(f"question {i}") + said("model-B", 0.9) for i in range(30)
    ]


def test_model_a_then_b_then_a_sends_all_all_nothing_with_each_models_answers(
    chat: ThreadedMockServer, tmp_path: Path
) -> None:
    inp, out = prompts(tmp_path / "in.jsonl", 40), tmp_path / "out.parquet"
    sent = []
    for model in ("model-A", "model-B", "model-A"):
        summary, requests = run_chat(chat, inp, out, model=model)
        sent.append(requests)
        assert summary["exit_code"] == 0
        got = pq.read_table(out).column("answer").to_pylist()
        assert got == [mock_answer(f"question {i}") + said(model) for i in range(40)]
    assert sent == [40, 40, 0]
    assert summary["plan"]["identity"] == 0 and summary["answered"] == 40


def test_a_change_is_told_from_the_request_the_output_holds_not_the_last_one_sent(
    chat: ThreadedMockServer, tmp_path: Path
) -> None:
    # Model A, then B, then A again (nothing sent: the output holds A's answers), then A at
    # temperature 0.9: the plan said "model model-B -> model-A, temperature unset -> 0.9", B
    # being the last request sent for each row, though A's answers were the output's.
    inp, out = prompts(tmp_path / "in.jsonl", 5), tmp_path / "out.jsonl"
    for model in ("model-A", "model-B", "model-A"):
        assert run_chat(chat, inp, out, model=model)[0]["exit_code"] == 0

    dry = cli_chat(chat, inp, out, "--model", "model-A", "--param", "temperature=0.9", "--dry-run")

    assert dry.exit_code == 0, dry.output
    assert "  to send     5: 5 new request (temperature unset -> 0.9)" in dry.stdout, dry.stdout


def test_parameters_are_canonical_so_key_order_and_1_or_1_0_resend_nothing(
    chat: ThreadedMockServer, tmp_path: Path
) -> None:
    inp, out = prompts(tmp_path / "in.jsonl", 5), tmp_path / "out.jsonl"
    params = {"temperature": 1, "response_format": {"type": "text", "x": [1, 2]}}
    run_chat(chat, inp, out, model="m", params=params)
    same = {"response_format": {"x": [1.0, 2], "type": "text"}, "temperature": 1.0}

    _, requests = run_chat(chat, inp, out, model="m", params=same)

    assert requests == 0
    assert canonical_json(params) == canonical_json(same)
    assert identity_digest({"a": 1, "b": 2.0}) == identity_digest({"b": 2, "a": 1.0})


def test_alternating_two_prompt_fields_costs_nothing_once_both_were_asked(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    rows = [{"id": f"r{i}", "short": f"short {i}", "long": f"a longer {i}"} for i in range(10)]
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    sent = []
    for field in ("short", "long", "short", "long"):
        before = mock_api.stats.requests
        batchpizza.run(inp, out, **{**FAST, "base_url": mock_api.base_url, "prompt_field": field})
        sent.append(mock_api.stats.requests - before)
        assert [r["answer"] for r in read_jsonl(out)] == [mock_answer(r[field]) for r in rows]

    assert sent == [10, 10, 0, 0]  # paid answers are never deleted by a changed prompt


@pytest.mark.slow
def test_identical_requests_are_sent_once_and_every_row_gets_the_answer(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    rows = [{"id": f"r{i}", "prompt": f"question {i % 2000}"} for i in range(10_000)]
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"

    summary = batchpizza.run(inp, out, **{**FAST, "base_url": mock_api.base_url})

    assert mock_api.stats.requests == 2000
    written = read_jsonl(out)
    assert len(written) == 10_000
    assert all(r["answer"] == mock_answer(r["prompt"]) for r in written)
    assert [r["reused_from"] for r in written[:2000:999]] == [None, None, None]
    assert written[2000]["reused_from"] == "r0" and written[9999]["reused_from"] == "r1999"
    assert summary["plan"]["new"] == 2000 and summary["plan"]["reused"] == 8000
    rerun = batchpizza.run(inp, out, **{**FAST, "base_url": mock_api.base_url})
    assert mock_api.stats.requests == 2000 and rerun["exit_code"] == 0


def test_a_row_that_took_another_rows_answer_is_sent_for_its_changed_prompt_not_as_new(
    chat: ThreadedMockServer, tmp_path: Path
) -> None:
    # q1 asks what q0 asks: it takes q0's answer, and no result is kept under its id.
    rows = [{"id": "q0", "prompt": "same"}, {"id": "q1", "prompt": "same"}]
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    assert run_chat(chat, inp, out, model="model-A")[1] == 1
    assert read_jsonl(out)[1]["reused_from"] == "q0"
    write_jsonl(inp, [rows[0], {"id": "q1", "prompt": "q1's own"}])

    dry = cli_chat(chat, inp, out, "--model", "model-A", "--dry-run")
    summary, sent = run_chat(chat, inp, out, model="model-A")

    assert "  to send     1: 1 prompt changed\n" in dry.stdout, dry.stdout
    assert sent == 1 and summary["plan"]["changed"] == 1 and summary["plan"]["new"] == 0
    assert read_jsonl(out)[1]["answer"] == mock_answer("q1's own") + said("model-A")


@pytest.mark.parametrize(
    ("model", "why"),
    [("model-A", "1 prompt changed"), ("model-B", "2 new model (model-A -> model-B)")],
)
def test_a_row_added_with_an_answered_prompt_is_asked_before_when_it_changes(
    chat: ThreadedMockServer, tmp_path: Path, model: str, why: str
) -> None:
    # q1 joins later with q0's prompt, answered by an earlier run: it takes that answer, then
    # its prompt changes; with another model, both rows are asked again for the new model.
    rows = [{"id": "q0", "prompt": "same"}]
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    assert run_chat(chat, inp, out, model="model-A")[1] == 1
    write_jsonl(inp, [*rows, {"id": "q1", "prompt": "same"}])
    assert run_chat(chat, inp, out, model="model-A")[1] == 0
    write_jsonl(inp, [*rows, {"id": "q1", "prompt": "q1's own"}])

    done = cli_chat(chat, inp, out, "--model", model)

    assert done.exit_code == 0, done.output
    assert f"to send: {why};" in done.stderr.splitlines()[0]  # the run's first log line


def test_a_restart_forgets_the_answers_rows_took_with_the_rest(
    chat: ThreadedMockServer, tmp_path: Path
) -> None:
    rows = [{"id": "q0", "prompt": "same"}, {"id": "q1", "prompt": "same"}]
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    assert run_chat(chat, inp, out, model="model-A")[1] == 1
    write_jsonl(inp, [rows[0], {"id": "q1", "prompt": "q1's own"}])

    done = cli_chat(chat, inp, out, "--model", "model-A", "--restart")

    assert done.exit_code == 0, done.output
    assert "to send: 2 new rows;" in done.stderr.splitlines()[0]  # the run's first log line


def test_rows_in_memory_have_the_same_identity(chat: ThreadedMockServer, tmp_path: Path) -> None:
    data = [{"prompt": f"question {i}"} for i in range(6)] + [{"prompt": "question 0"}]
    ck = str(tmp_path / "mem.checkpoint")
    options = {**FAST, "provider": "openai", "base_url": f"{chat.base_url}/v1", "checkpoint": ck}
    first = batchpizza.answer(data, model="model-A", **options)
    assert chat.stats.requests == 6  # the repeated prompt is asked once
    assert first[6]["reused_from"] == "0"
    second = batchpizza.answer(data, model="model-B", **options)
    assert chat.stats.requests == 12
    assert second[3]["answer"] == mock_answer("question 3") + said("model-B")
    third = batchpizza.answer(data, model="model-A", **options)
    assert chat.stats.requests == 12
    assert [r["answer"] for r in third] == [r["answer"] for r in first]


@pytest.mark.parametrize(
    ("param", "said_"),
    [
        ("model=x", "--param model"),
        ("messages=[]", "--param messages"),
        ("stream=false", "--param stream"),
    ],
)
def test_a_reserved_param_is_a_usage_error_before_anything_is_sent(
    chat: ThreadedMockServer, tmp_path: Path, param: str, said_: str
) -> None:
    inp, out = prompts(tmp_path / "in.jsonl", 3), tmp_path / "out.jsonl"
    done = cli_chat(chat, inp, out, "--model", "m", "--param", param)
    assert done.exit_code == 2, done.output
    assert said_ in done.output
    assert chat.stats.requests == 0 and not out.exists()


def test_a_param_json_cannot_hold_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--param seed: not a JSON value"):
        batchpizza.run(
            prompts(tmp_path / "in.jsonl", 1),
            tmp_path / "out.jsonl",
            provider="openai",
            params={"seed": object()},
        )


def _schema_2(path: Path, options: dict[str, Any], answers: dict[str, str]) -> None:
    """A checkpoint as batchpizza wrote it before fingerprints: results by id and prompt digest."""
    conn = sqlite3.connect(path)
    started = time.time() - 60
    with conn:
        conn.executescript(SCHEMA_2)
        conn.execute(
            "INSERT INTO runs VALUES (1, ?, ?, 1, 0, ?)",
            (started, started + 1, json.dumps(options)),
        )
        for row_id, prompt in answers.items():
            conn.execute(
                "INSERT INTO results VALUES (?, ?, 'stop', ?, NULL, 1, 1.0, 'gpt-4o-mini', ?, "
                "NULL, NULL, NULL, NULL)",
                (row_id, prompt_digest(prompt), f"old answer to {prompt}", started + 0.5),
            )
    conn.close()


def test_an_old_checkpoints_answers_count_for_the_request_its_runs_table_names(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    inp, out = prompts(tmp_path / "in.jsonl", 4), tmp_path / "out.jsonl"
    _schema_2(
        Path(f"{out}.checkpoint"),
        {"provider": "pizzagpt", "model": None},
        {f"q{i}": f"question {i}" for i in range(3)},
    )

    batchpizza.run(inp, out, **{**FAST, "base_url": mock_api.base_url})

    assert mock_api.stats.requests == 1  # q3 only: the Pizzagpt run's answers are known
    answers = [r["answer"] for r in read_jsonl(out)]
    assert answers[:3] == [f"old answer to question {i}" for i in range(3)]


def test_an_old_checkpoints_answers_of_an_unknown_request_are_asked_again_and_counted(
    chat: ThreadedMockServer, tmp_path: Path
) -> None:
    inp, out = prompts(tmp_path / "in.jsonl", 3), tmp_path / "out.jsonl"
    # An OpenAI-compatible run recorded no parameters: which request it made is not known.
    _schema_2(
        Path(f"{out}.checkpoint"),
        {"provider": "openai", "model": "m"},
        {f"q{i}": f"question {i}" for i in range(3)},
    )
    done = cli_chat(chat, inp, out, "--model", "m")

    assert done.exit_code == 0, done.output
    assert "3 to send: 3 asked before fingerprints (request not known)" in done.stderr
    assert chat.stats.requests == 3
    conn = sqlite3.connect(f"{out}.checkpoint")
    kept = conn.execute("SELECT count(*) FROM results WHERE answer LIKE 'old answer%'").fetchone()
    conn.close()
    assert kept == (3,)  # kept all the same: paid answers are never deleted


def test_fingerprints_of_a_newer_batchpizza_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl.checkpoint"
    Checkpoint.open(path).close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("INSERT INTO identities VALUES (x'00', 99, '{}')")
    conn.close()

    with pytest.raises(CheckpointVersionError, match="fingerprints of version 99"):
        Checkpoint.open(path)
    done = CliRunner().invoke(cli, ["status", "--checkpoint", str(path)])
    assert done.exit_code == 2 and "version 99" in done.output


def test_status_says_what_a_rerun_would_send_and_why(
    chat: ThreadedMockServer, tmp_path: Path
) -> None:
    inp, out = prompts(tmp_path / "in.jsonl", 5), tmp_path / "out.jsonl"
    cli_chat(chat, inp, out, "--model", "model-A")
    rows = [{"id": "q0", "prompt": "changed"}, *read_jsonl(inp)[1:], {"id": "n", "prompt": "new"}]
    write_jsonl(inp, rows)
    dry = cli_chat(chat, inp, out, "--model", "model-A", "--dry-run")
    assert "  to send     2: 1 prompt changed, 1 new row" in dry.stdout

    done = cli_chat(chat, inp, out, "--model", "model-A", "--param", "temperature=0")
    status = CliRunner().invoke(cli, ["status", str(out), "--json"])

    assert done.exit_code == 0
    info = json.loads(status.output)
    assert info["to_send"] == "0 to send"
    assert info["answered"] == 6


def test_describe_change_names_what_changed() -> None:
    a = {"provider": "openai", "format": 1, "model": "a", "params": {}}
    assert describe_change(a, {**a, "model": "b"}) == "new model (a -> b)"
    assert describe_change(a, {**a, "params": {"seed": 1}}) == "new request (seed unset -> 1)"
    assert "request not known" not in describe_change(a, a)


FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints"


def test_a_schema_3_checkpoint_of_the_previous_release_opens_and_keeps_its_answers(
    chat: ThreadedMockServer, tmp_path: Path
) -> None:
    # Made by batchpizza before staged results (schema 3): rows q0-q2 answered with model-A.
    out = tmp_path / "out.jsonl"
    Path(f"{out}.checkpoint").write_bytes((FIXTURES / "schema3-model-A.checkpoint").read_bytes())
    inp = prompts(tmp_path / "in.jsonl", 4)

    summary, sent = run_chat(chat, inp, out, model="model-A")

    assert (summary.exit_code, sent) == (0, 1)  # only the new row, q3
    assert [row["answer"] for row in read_jsonl(out)] == [
        mock_answer(f"question {i}") + said("model-A") for i in range(4)
    ]
    with sqlite3.connect(f"file:{out}.checkpoint?mode=ro", uri=True) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("5",)
        assert conn.execute("SELECT count(*) FROM results").fetchone() == (4,)
    assert run_chat(chat, inp, out, model="model-A")[1] == 0


def test_status_and_a_dry_run_read_a_checkpoint_of_the_previous_release_leaving_it_as_it_was(
    chat: ThreadedMockServer, tmp_path: Path
) -> None:
    # Its tables lack `taken` (the answers rows took from others), which they read as empty.
    out, made = tmp_path / "out.jsonl", (FIXTURES / "schema3-model-A.checkpoint").read_bytes()
    Path(f"{out}.checkpoint").write_bytes(made)
    inp = prompts(tmp_path / "in.jsonl", 4)

    status = CliRunner().invoke(cli, ["status", str(out), "--json"])
    dry = cli_chat(chat, inp, out, "--model", "model-A", "--dry-run")

    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["answered"] == 3
    assert dry.exit_code == 0, dry.output
    assert "  to send     1: 1 new row\n" in dry.stdout, dry.stdout
    assert Path(f"{out}.checkpoint").read_bytes() == made
