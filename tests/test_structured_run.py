"""Runs with --schema: answers validated and re-asked through the gate, invalid_output when the
re-asks are spent, the parsed column typed in Parquet (DuckDB reads it), an object in JSONL,
--flatten, answer()'s result types, the fingerprint, and the counts in the summary, status and
report. Against the bundled mock (which answers schema-bound requests 70 % valid, 15 % wrapped,
15 % invalid) and raw 127.0.0.1 servers that record what they were sent."""

from __future__ import annotations

import html as htmlmod
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from click.testing import CliRunner
from conftest import write_jsonl

import batchpizza
from batchpizza.cli import cli
from batchpizza.controls.gate import Gatekeeper
from batchpizza.mock.server import ThreadedMockServer
from batchpizza.mock.structured import bound_prompt, structured_answer
from batchpizza.structured.answers import INSTRUCTION
from batchpizza.structured.schema import compile_validator

SCHEMA: dict[str, Any] = {
    "title": "Review",
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "tags": {"type": "array", "items": {"type": "string"}},
        "reason": {"type": ["string", "null"]},
    },
    "required": ["label", "score", "stars", "tags", "reason"],
    "additionalProperties": False,
}
VALID = '{"label": "positive", "score": 0.5, "stars": 4, "tags": ["a"], "reason": null}'
FAST = {"rate": 0, "progress": False, "quiet": True, "backoff_base": 0.0, "backoff_cap": 0.0}


@pytest.fixture
def schema_file(tmp_path: Path) -> Path:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMA))
    return path


def prompts(tmp_path: Path, n: int, **extra: Any) -> Path:
    return write_jsonl(
        tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": f"review {i}", **extra} for i in range(n)]
    )


# -- a raw OpenAI-compatible server that answers from a script ---------------------------------


# The answer's text, or the whole choice (a refusal, tool calls, another finish reason).
Script = Callable[[dict[str, Any]], str | dict[str, Any]]


@asynccontextmanager
async def chat_server(script: Script) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A chat completions server on 127.0.0.1 answering `script(body)`; yields (base URL, the
    bodies it was sent)."""
    bodies: list[dict[str, Any]] = []

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        bodies.append(body)
        said = script(body)
        choice = said if isinstance(said, dict) else {
            "message": {"role": "assistant", "content": said}, "finish_reason": "stop"
        }  # fmt: skip
        usage = {"prompt_tokens": 10 * len(body["messages"]), "completion_tokens": 7}
        return web.json_response(
            {"id": "c", "object": "chat.completion", "model": "m",
             "choices": [{"index": 0, **choice}], "usage": usage}
        )  # fmt: skip

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1", bodies
    finally:
        await runner.cleanup()


async def test_response_format_is_sent_and_a_wrong_answer_reasked_with_its_error(
    tmp_path: Path,
) -> None:
    def script(body: dict[str, Any]) -> str:
        return "I think it is positive." if len(body["messages"]) == 1 else f"```json\n{VALID}\n```"

    async with chat_server(script) as (url, bodies):
        out = tmp_path / "out.parquet"
        summary = await batchpizza.arun(
            prompts(tmp_path, 1), out, provider="openai", base_url=url, schema=SCHEMA, **FAST
        )
    assert bodies[0]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "Review", "schema": SCHEMA, "strict": True},
    }
    first, again = bodies
    assert first["messages"] == [{"role": "user", "content": "review 0"}]
    assert again["messages"][:2] == [
        {"role": "user", "content": "review 0"},
        {"role": "assistant", "content": "I think it is positive."},
    ]
    assert again["messages"][2]["role"] == "user"
    assert "the answer holds no JSON value" in again["messages"][2]["content"]
    assert again["response_format"] == first["response_format"]
    assert summary["requests"] == 2 and summary["retries"] == 1
    assert summary["structured"] == {"valid": 1, "reasked": 1, "invalid": 0, "not_validated": 0}
    row = pq.read_table(out).to_pylist()[0]
    assert row["finish_reason"] == "stop" and row["attempts"] == 2
    # Both requests' tokens: the first (1 message) and the re-ask (3 messages).
    assert (row["prompt_tokens"], row["completion_tokens"]) == (10 + 30, 7 + 7)
    assert row["parsed"] == {**json.loads(VALID), "score": 0.5}


async def test_after_the_reasks_the_row_is_invalid_output_with_answer_and_error(
    tmp_path: Path,
) -> None:
    async with chat_server(lambda body: '{"label": "great"}') as (url, bodies):
        out = tmp_path / "out.jsonl"
        summary = await batchpizza.arun(
            prompts(tmp_path, 1), out, provider="openai", base_url=url, schema=SCHEMA,
            schema_retries=3, **FAST,
        )  # fmt: skip
    assert len(bodies) == 4  # the first ask and three re-asks
    row = json.loads(out.read_text())
    assert row["finish_reason"] == "invalid_output"
    assert row["answer"] == '{"label": "great"}'
    assert row["error"] == "data must contain ['reason', 'score', 'stars', 'tags'] properties"
    assert row["parsed"] is None and row["attempts"] == 4
    assert row["completion_tokens"] == 4 * 7  # every request's, the invalid ones too
    assert summary["exit_code"] == 3 and summary["failed"] == 1
    assert summary["structured"] == {"valid": 0, "reasked": 0, "invalid": 1, "not_validated": 0}


async def test_no_reasks_with_schema_retries_0(tmp_path: Path) -> None:
    async with chat_server(lambda body: "nope") as (url, bodies):
        await batchpizza.arun(
            prompts(tmp_path, 2), tmp_path / "o.jsonl", provider="openai", base_url=url,
            schema=SCHEMA, schema_retries=0, **FAST,
        )  # fmt: skip
    assert len(bodies) == 2


async def test_a_rerun_asks_invalid_rows_again_and_keeps_valid_ones(tmp_path: Path) -> None:
    answers = iter(["nope", VALID, VALID])
    async with chat_server(lambda body: next(answers)) as (url, bodies):
        options = {"provider": "openai", "base_url": url, "schema": SCHEMA, "schema_retries": 0}
        inp, out = prompts(tmp_path, 2), tmp_path / "o.jsonl"
        await batchpizza.arun(inp, out, **options, **FAST)
        summary = await batchpizza.arun(inp, out, **options, **FAST)
    assert len(bodies) == 3  # the second run re-asks the one invalid row only
    # The row asked again by the rerun counts as re-asked: its first answer did not fit.
    assert summary["structured"] == {"valid": 2, "reasked": 1, "invalid": 0, "not_validated": 0}


def _choice(finish: str, **message: Any) -> dict[str, Any]:
    return {"message": {"role": "assistant", "content": None, **message}, "finish_reason": finish}


async def test_refusals_tool_calls_and_empty_cut_off_answers_are_counted_as_not_validated(
    tmp_path: Path,
) -> None:
    # They are answers kept as they came, never tried on the schema: `valid` counted them.
    calls = [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    answers = {
        "review 0": VALID,
        "review 1": _choice("stop", refusal="I cannot help with that."),
        "review 2": _choice("tool_calls", tool_calls=calls),
        "review 3": _choice("length", content=""),
        "review 4": _choice("content_filter"),
    }
    async with chat_server(lambda body: answers[body["messages"][0]["content"]]) as (url, _):
        out = tmp_path / "o.jsonl"
        summary = await batchpizza.arun(
            prompts(tmp_path, 5), out, provider="openai", base_url=url, schema=SCHEMA, **FAST
        )
    fit = {"valid": 1, "reasked": 0, "invalid": 0, "not_validated": 4}
    assert summary["structured"] == fit
    assert (
        json.loads(CliRunner().invoke(cli, ["status", str(out), "--json"]).output)["structured"]
        == fit
    )
    shown = CliRunner().invoke(cli, ["status", str(out)]).output
    assert "schema     1 valid (0 after a re-ask), 0 invalid output, 4 answered but not" in shown
    report = CliRunner().invoke(cli, ["report", str(out), "--json"]).output
    assert {k: v for k, v in json.loads(report)["structured"].items() if k != "errors"} == fit
    assert (
        "  not validated            4  answered"
        in CliRunner().invoke(cli, ["report", str(out)]).output
    )


# -- the done-when run against the bundled mock --------------------------------------------------


def _check_done(out: Path, summary: Any, rows: int) -> None:
    table = pq.read_table(out)
    finish = table.column("finish_reason").to_pylist()
    assert finish.count("stop") >= 0.99 * rows, summary
    validate = compile_validator(SCHEMA)
    for answer, reason, parsed in zip(
        table.column("answer").to_pylist(), finish, table.column("parsed").to_pylist(), strict=True
    ):
        if reason == "stop":
            validate(parsed)
        else:
            assert reason == "invalid_output" and parsed is None and answer is not None
    import duckdb

    labels = duckdb.sql(f"SELECT parsed.label, count(*) FROM '{out}' GROUP BY 1").fetchall()
    assert {label for label, _ in labels} <= {"positive", "negative", "neutral", None}
    assert sum(n for label, n in labels if label is not None) == finish.count("stop")
    fit = summary["structured"]
    assert fit["valid"] == finish.count("stop") and fit["invalid"] == finish.count("invalid_output")
    assert fit["reasked"] > 0.1 * rows  # about 1 in 6 answers needs a re-ask


@pytest.mark.slow
@pytest.mark.parametrize("provider", ["pizzagpt", "openai"])
def test_with_default_reasks_99_percent_of_rows_end_valid(
    mock_api: ThreadedMockServer, tmp_path: Path, schema_file: Path, provider: str
) -> None:
    out = tmp_path / "out.parquet"
    base = mock_api.base_url + ("/v1" if provider == "openai" else "")
    summary = batchpizza.run(
        prompts(tmp_path, 400), out, provider=provider, base_url=base, schema=str(schema_file),
        concurrency=16, **FAST,
    )  # fmt: skip
    _check_done(out, summary, 400)
    assert summary["requests"] == mock_api.stats.requests  # every re-ask was a request


def test_the_mock_answers_schema_bound_questions_only() -> None:
    assert structured_answer("just a question") is None
    question = bound_prompt("q", {"type": "json_schema", "json_schema": {"schema": SCHEMA}})
    assert question.endswith(INSTRUCTION + json.dumps(SCHEMA, separators=(",", ":")))
    answers = [structured_answer(f"q{i}" + question[1:]) for i in range(400)]
    valid = sum(1 for a in answers if a is not None and a.startswith("{") and '"not"' not in a)
    assert 0.6 < valid / 400 < 0.8
    assert answers == [structured_answer(f"q{i}" + question[1:]) for i in range(400)]


# -- outputs -------------------------------------------------------------------------------------


def test_jsonl_holds_parsed_as_an_object_and_flatten_spreads_it(
    mock_api: ThreadedMockServer, tmp_path: Path, schema_file: Path
) -> None:
    inp = prompts(tmp_path, 20)
    out = tmp_path / "out.jsonl"
    batchpizza.run(inp, out, base_url=mock_api.base_url, schema=str(schema_file), **FAST)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(isinstance(r["parsed"], dict) for r in rows if r["finish_reason"] == "stop")
    flat = tmp_path / "flat.parquet"
    batchpizza.run(
        inp, flat, base_url=mock_api.base_url, schema=str(schema_file), flatten=True, **FAST
    )
    table = pq.read_table(flat)
    assert "parsed" not in table.column_names
    assert table.schema.field("label").type == pa.dictionary(pa.int32(), pa.string())
    assert table.schema.field("stars").type == pa.int64()


def test_flatten_refuses_a_clash_before_sending(
    mock_api: ThreadedMockServer, tmp_path: Path, schema_file: Path
) -> None:
    inp = prompts(tmp_path, 3, label="mine")
    result = CliRunner().invoke(
        cli,
        ["run", str(inp), "-o", str(tmp_path / "o.parquet"), "--base-url", mock_api.base_url,
         "--schema", str(schema_file), "--flatten", "--rate", "0", "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "label" in result.output and "clash" in result.output
    assert mock_api.stats.requests == 0


def test_a_bad_schema_is_exit_2_naming_the_place(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"type": "object", "properties": {"n": {"type": "integer", "minimum": "1"}}})
    )
    inp = prompts(tmp_path, 1)
    result = CliRunner().invoke(
        cli, ["run", str(inp), "-o", str(tmp_path / "o.parquet"), "--schema", str(bad)]
    )
    assert result.exit_code == 2
    assert "/properties/n/minimum" in result.output


def test_answer_returns_the_parsed_column_in_every_type(
    mock_api: ThreadedMockServer, schema_file: Path
) -> None:
    import pandas as pd
    import polars as pl

    options = {"base_url": mock_api.base_url, "schema": SCHEMA, **FAST}
    frame = batchpizza.answer(pd.DataFrame({"prompt": ["a", "b"]}), **options)
    assert set(frame["parsed"][0]) == set(SCHEMA["properties"])
    polars = batchpizza.answer(pl.DataFrame({"prompt": ["a", "b"]}), flatten=True, **options)
    assert polars.schema["stars"] == pl.Int64
    table = batchpizza.answer(pa.table({"prompt": ["a"]}), **options)
    assert pa.types.is_struct(table.schema.field("parsed").type)
    listed = batchpizza.answer(["a"], **options)
    assert listed[0]["parsed"]["label"] in SCHEMA["properties"]["label"]["enum"]


# -- the fingerprint -----------------------------------------------------------------------------


def test_the_same_schema_reuses_answers_and_a_changed_one_reasks(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    inp, out = prompts(tmp_path, 5), tmp_path / "o.parquet"
    options = {"base_url": mock_api.base_url, **FAST}
    batchpizza.run(inp, out, schema=SCHEMA, **options)
    again = batchpizza.run(inp, out, schema=SCHEMA, **options)
    assert again["requests"] == 0
    changed = {**SCHEMA, "properties": {**SCHEMA["properties"], "stars": {"type": "integer"}}}
    third = batchpizza.run(inp, out, schema=changed, **options)
    assert third["plan"]["identity"] == 5 and third["requests"] >= 5
    assert third["plan"]["change"] == "new request (schema changed)"
    plain = batchpizza.run(inp, out, **options)
    assert plain["plan"]["identity"] == 5  # answers asked without a schema are another request
    assert plain["plan"]["change"] == "new request (schema dropped)"


# -- status and report ---------------------------------------------------------------------------


def test_status_and_report_count_valid_reasked_and_invalid(
    mock_api: ThreadedMockServer, tmp_path: Path, schema_file: Path
) -> None:
    out = tmp_path / "o.parquet"
    batchpizza.run(
        prompts(tmp_path, 60), out, base_url=mock_api.base_url, schema=str(schema_file), **FAST
    )
    status = CliRunner().invoke(cli, ["status", str(out), "--json"])
    fit = json.loads(status.output)["structured"]
    assert fit["valid"] + fit["invalid"] == 60 and fit["reasked"] > 0
    report = CliRunner().invoke(cli, ["report", str(out)])
    assert "Structured outputs (--schema)" in report.output
    assert "most common validation errors" in report.output
    numbers = json.loads(CliRunner().invoke(cli, ["report", str(out), "--json"]).output)
    assert (
        numbers["structured"]["errors"][0]["count"] >= numbers["structured"]["errors"][-1]["count"]
    )
    page = tmp_path / "report.html"
    assert CliRunner().invoke(cli, ["report", str(out), "--html", str(page)]).exit_code == 0
    html = page.read_text()
    assert "<h2>Structured outputs</h2>" in html
    top = numbers["structured"]["errors"][0]["error"]
    assert htmlmod.escape(top) in html


# -- the runner: each re-ask passes the gate, its retries apart from the re-asks' budget ----------


class _Counting(Gatekeeper):
    """A gatekeeper that counts the attempts it lets through, and how they ended."""

    def __init__(self) -> None:
        self.entered = 0
        self.outcomes: list[str] = []

    async def enter(self) -> object:
        self.entered += 1
        return None

    def finished(
        self,
        token: object,
        started: float,
        outcome: str,
        error: Any,
        rate: Any = None,
        *,
        again: bool = False,
        usage: Any = None,
    ) -> None:
        self.outcomes.append(outcome)


class _Reasked:
    """A provider answering prose first, then (after one 503 on the re-ask) valid JSON."""

    name = "scripted"
    model: str | None = "m"
    extra_columns: tuple[str, ...] = ()
    fatal_statuses: frozenset[int] = frozenset()
    detects_refusals = False

    def __init__(self) -> None:
        from batchpizza.structured import Structured

        self.structured = Structured(SCHEMA, retries=1)
        self.asked: list[int] = []

    @property
    def identity(self) -> dict[str, Any]:
        return {"provider": "scripted"}

    async def ask(self, session: Any, prompt: Any) -> Any:
        from batchpizza.errors import HTTPStatusError
        from batchpizza.records import Answer

        self.asked.append(len(prompt.messages))
        if len(self.asked) == 1:
            return Answer("no JSON, sorry")
        if len(self.asked) == 2:
            raise HTTPStatusError(503, "HTTP 503")
        return Answer(VALID)

    def preview(self, prompt: Any) -> tuple[str, dict[str, str], bytes]:
        return "scripted://", {}, b""


async def test_each_reask_passes_the_gate_and_its_transport_retries_are_apart() -> None:
    from batchpizza.controls.retrying import RetryPolicy
    from batchpizza.controls.stop import Stop
    from batchpizza.engine.batch import MemoryStore
    from batchpizza.engine.runner import Runner
    from batchpizza.records import Prompt

    policy = RetryPolicy(max_retries=1, misuse_retries=0, misuse_backoff=0.0, backoff_base=0.0,
                         backoff_cap=0.0, retry_after_cap=0.0)  # fmt: skip
    gate, provider, results = _Counting(), _Reasked(), []
    runner = Runner(provider, MemoryStore(), policy, gate, concurrency=1, stop=Stop(),  # type: ignore[arg-type]
                    on_result=lambda pos, r: results.append(r))  # fmt: skip
    prompt = Prompt("r1", "rate", ({"role": "user", "content": "rate"},))
    await runner.run(iter([(0, prompt)]))
    assert gate.entered == 3 and runner.counters.requests == 3
    assert provider.asked == [1, 3, 3]  # the re-ask (3 messages) retried after its 503
    assert gate.outcomes == ["answered", "http", "answered"]
    (result,) = results
    assert result.finish_reason == "stop" and result.answer == VALID and result.attempts == 3
    assert runner.counters.reasked == 1


async def test_stream_yields_parsed_with_each_row(mock_api: ThreadedMockServer) -> None:
    rows = [
        row
        async for row in batchpizza.stream(
            ["a", "b", "c"], base_url=mock_api.base_url, schema=SCHEMA, **FAST
        )
    ]
    assert len(rows) == 3
    assert all(
        r["parsed"]["label"] in ("positive", "negative", "neutral")
        for r in rows
        if r["finish_reason"] == "stop"
    )


def test_places_without_a_column_type_are_warned_of_before_sending(
    mock_api: ThreadedMockServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    loose = {"type": "object", "properties": {"any": {}, "n": {"type": "integer"}}}
    out = tmp_path / "o.parquet"
    options = {**FAST, "quiet": False}
    batchpizza.run(prompts(tmp_path, 2), out, base_url=mock_api.base_url, schema=loose, **options)
    said = capfd.readouterr().err
    warning = "--schema: /properties/any (any value) has no one column type: written as JSON text"
    assert said.count(warning) == 1
    assert said.index(warning) < said.index("start:")  # before anything is sent
    assert pq.read_table(out).schema.field("parsed").type.field("any").type == pa.string()


async def test_a_parquet_output_where_no_answer_fits_is_written(tmp_path: Path) -> None:
    # Every row invalid_output: the parsed column all null, an enum's dictionary included.
    async with chat_server(lambda body: "nope") as (url, _bodies):
        out = tmp_path / "out.parquet"
        summary = await batchpizza.arun(
            prompts(tmp_path, 3), out, provider="openai", base_url=url, schema=SCHEMA,
            schema_retries=0, **FAST,
        )  # fmt: skip
    assert summary["exit_code"] == 3
    rows = pq.read_table(out).to_pylist()
    assert [(r["finish_reason"], r["parsed"]) for r in rows] == [("invalid_output", None)] * 3
