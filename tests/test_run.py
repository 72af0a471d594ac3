"""End to end: batchpizza.run and `batchpizza run` against the local fake API.

Every test runs a whole job (scan, plan, send, checkpoint, write) and checks what a user gets: the
output rows, the summary, stderr, the exit code, and what reached the server.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import gzip
import json
import re
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import FAST, SAMPLES, write_jsonl

import batchpizza
from batchpizza import format_prompt
from batchpizza.cli import cli
from batchpizza.errors import UsageError
from batchpizza.mock.faults import MockConfig
from batchpizza.mock.replies import MISUSE_TEXT, mock_answer
from batchpizza.mock.server import ThreadedMockServer

RESULT_COLUMNS = [
    *("answer", "finish_reason", "misuse", "error", "attempts", "latency_ms", "model"),
    "reused_from",
    *("prompt_tokens", "completion_tokens", "tokens_estimated"),  # every output's
]
SUMMARY_KEYS = {
    "schema_version",
    "started",
    "ended",
    "plan",
    "batches",
    "rows",
    "answered",
    "failed",
    "misuse",
    "invalid",
    "pending",
    "stopped",
    "rate",
    "requests",
    "retries",
    "elapsed_s",
    "output",
    "checkpoint",
    "interrupted",
    "exit_code",
    "structured",
    "tokens",
    "cost",
}


# -- helpers ---------------------------------------------------------------------------------


def run(
    server: ThreadedMockServer, input: Path | str, output: Path, **options: Any
) -> dict[str, Any]:
    return batchpizza.run(input, output, **{**FAST, "base_url": server.base_url, **options})


def cli_args(server: ThreadedMockServer, input: Path | str, output: Path, *extra: str) -> list[str]:
    return [
        "run",
        str(input),
        "-o",
        str(output),
        "--base-url",
        server.base_url,
        "--rate",
        "0",
        "--no-progress",
        *extra,
    ]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    # Split on b"\n" only: str.splitlines would also split inside a JSON string holding a raw
    # U+0085 or U+2028, which is valid JSONL (conftest.read_jsonl does that).
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line.strip()]


def output_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()  # type: ignore[no-any-return]
    return read_jsonl(path)


def output_columns(path: Path) -> list[str]:
    if path.suffix == ".parquet":
        return list(pq.read_schema(path).names)
    lines = read_jsonl(path)
    return list(lines[0]) if lines else []


def formatted(obj: dict[str, Any]) -> str:
    """The prompt the server must have been asked for an input object."""
    if obj.get("prompt") is not None:
        return str(obj["prompt"])
    return format_prompt(obj["messages"])


def sample_objects() -> list[dict[str, Any]]:
    return read_jsonl(SAMPLES / "prompts.jsonl")


def assert_answered_in_order(path: Path, objects: list[dict[str, Any]], ids: list[str]) -> None:
    rows = output_rows(path)
    assert [r["id"] for r in rows] == ids
    for row, obj in zip(rows, objects, strict=True):
        assert row["finish_reason"] == "stop"
        assert row["answer"] == mock_answer(formatted(obj))
        assert row["misuse"] is False
        assert row["error"] is None
        assert row["attempts"] == 1
        assert row["model"] == "gpt-4o-mini"


def prompts_file(path: Path, prompts: list[str]) -> Path:
    return write_jsonl(path, [{"id": f"r{i}", "prompt": p} for i, p in enumerate(prompts)])


# -- every input form --------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_sample_jsonl_gives_one_answered_row_per_input_row_in_order(
    mock_api: ThreadedMockServer, tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"out{suffix}"
    summary = run(mock_api, SAMPLES / "prompts.jsonl", out)
    objects = sample_objects()
    assert_answered_in_order(out, objects, [o["id"] for o in objects])
    assert summary["exit_code"] == 0
    assert summary["rows"] == summary["answered"] == len(objects)


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_sample_parquet_gives_one_answered_row_per_input_row_in_order(
    mock_api: ThreadedMockServer, tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"out{suffix}"
    summary = run(mock_api, SAMPLES / "prompts.parquet", out)
    objects = pq.read_table(SAMPLES / "prompts.parquet").to_pylist()
    assert_answered_in_order(out, objects, [o["id"] for o in objects])
    assert summary["exit_code"] == 0


@pytest.mark.parametrize(
    "name", ["prompts.jsonl.gz", "prompts.ndjson", "PROMPTS.JSONL", "p.NDJSON.GZ"]
)
def test_jsonl_variants_are_read_like_jsonl(
    mock_api: ThreadedMockServer, tmp_path: Path, name: str
) -> None:
    data = (SAMPLES / "prompts.jsonl").read_bytes()
    source = tmp_path / name
    source.write_bytes(gzip.compress(data) if name.lower().endswith(".gz") else data)
    out = tmp_path / "out.jsonl"
    run(mock_api, source, out)
    objects = sample_objects()
    assert_answered_in_order(out, objects, [o["id"] for o in objects])


def test_directory_of_parquet_files_is_read_recursively_in_sorted_path_order(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    files = {
        "c.parquet": ["c0", "c1"],
        "a.parquet": ["a0", "a1"],
        "sub/b.parquet": ["b0"],
        "z.PARQUET": ["z0"],
    }
    for name, prompts in files.items():
        pq.write_table(pa.table({"prompt": prompts}), folder / name)
    (folder / "notes.txt").write_text("not an input")
    out = tmp_path / "out.jsonl"
    summary = run(mock_api, folder, out)
    rows = output_rows(out)
    expected = ["a0", "a1", "c0", "c1", "b0", "z0"]
    # No id column: ids are positions that continue from one file to the next.
    assert [r["id"] for r in rows] == [str(i) for i in range(len(expected))]
    assert [r["prompt"] for r in rows] == expected
    assert [r["answer"] for r in rows] == [mock_answer(p) for p in expected]
    assert summary["exit_code"] == 0


def test_stdin_is_read_as_jsonl_when_input_is_dash(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(
        cli,
        cli_args(mock_api, "-", out, "-q"),
        input=(SAMPLES / "prompts.jsonl").read_bytes(),
    )
    assert result.exit_code == 0, result.output
    objects = sample_objects()
    assert_answered_in_order(out, objects, [o["id"] for o in objects])
    # The spooled copy of standard input does not outlive the run.
    assert not list(tmp_path.glob(".batchpizza-stdin-*"))


# -- output formats and columns ----------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_output_columns_are_id_carried_fields_then_results(
    mock_api: ThreadedMockServer, tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"out{suffix}"
    run(mock_api, SAMPLES / "prompts.jsonl", out)
    columns = output_columns(out)
    assert columns[0] == "id"
    assert columns[-len(RESULT_COLUMNS) :] == RESULT_COLUMNS
    assert sorted(columns[1 : -len(RESULT_COLUMNS)]) == ["messages", "prompt", "topic"]


def test_every_jsonl_line_has_every_column(mock_api: ThreadedMockServer, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    run(mock_api, SAMPLES / "prompts.jsonl", out)
    lines = read_jsonl(out)
    assert len(lines) == 6
    keys = [list(line) for line in lines]
    assert all(k == keys[0] for k in keys)
    # A prompt row has no messages and a messages row no prompt: both still carry the key.
    assert lines[0]["messages"] is None
    assert lines[2]["prompt"] is None


def test_parquet_output_has_typed_result_columns(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    out = tmp_path / "out.parquet"
    run(mock_api, SAMPLES / "prompts.parquet", out)
    schema = pq.read_schema(out)
    assert schema.field("id").type == pa.string()
    assert schema.field("answer").type == pa.string()
    assert schema.field("finish_reason").type == pa.string()
    assert schema.field("misuse").type == pa.bool_()
    assert schema.field("error").type == pa.string()
    assert schema.field("attempts").type == pa.int64()
    assert schema.field("latency_ms").type == pa.float64()
    assert schema.field("model").type == pa.string()
    # Carried Parquet columns keep their own type.
    assert schema.field("topic").type == pa.string()
    assert pa.types.is_list(schema.field("messages").type)
    rows = output_rows(out)
    assert all(isinstance(r["latency_ms"], float) and r["latency_ms"] >= 0 for r in rows)


def test_carried_fields_are_kept_natively_and_mixed_jsonl_types_become_json_text(
    mock_api: ThreadedMockServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": "a", "prompt": "p1", "extra": 1, "flag": True, "score": 1, "tags": ["x"]},
            {"id": "b", "prompt": "p2", "extra": "one", "flag": False, "score": 2.5, "tags": []},
            {"id": "c", "prompt": "p3", "extra": None, "flag": None},
        ],
    )
    out = tmp_path / "out.parquet"
    run(mock_api, source, out, quiet=False)
    table = pq.read_table(out)
    assert table.schema.field("extra").type == pa.string()
    assert table.column("extra").to_pylist() == ["1", '"one"', None]
    assert table.schema.field("flag").type == pa.bool_()
    assert table.column("flag").to_pylist() == [True, False, None]
    assert table.schema.field("score").type == pa.float64()
    assert table.column("score").to_pylist() == [1.0, 2.5, None]
    # A list of one shape in every row keeps its native type (list<string>), not JSON text.
    assert table.schema.field("tags").type == pa.list_(pa.string())
    assert table.column("tags").to_pylist() == [["x"], [], None]
    assert table.column("prompt").to_pylist() == ["p1", "p2", "p3"]
    err = capsys.readouterr().err
    # Said once on stderr, naming the field; the other fields are not mixed.
    assert err.count("JSON text") == 1
    assert "'extra'" in err


def test_parquet_to_jsonl_writes_timestamps_iso_bytes_base64_decimals_as_strings(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    when = dt.datetime(2024, 5, 1, 12, 30, 15, 250000)
    table = pa.table(
        {
            "id": ["x"],
            "prompt": ["hello"],
            "ts": pa.array([when], pa.timestamp("us")),
            "ts_utc": pa.array([when], pa.timestamp("ms", tz="UTC")),
            "day": pa.array([when.date()], pa.date32()),
            "blob": pa.array([b"\x00\xffpizza"], pa.binary()),
            "price": pa.array([decimal.Decimal("12.50")], pa.decimal128(10, 2)),
            "n": pa.array([3], pa.int32()),
        }
    )
    source = tmp_path / "in.parquet"
    pq.write_table(table, source)
    out = tmp_path / "out.jsonl"
    run(mock_api, source, out)
    (line,) = read_jsonl(out)
    assert dt.datetime.fromisoformat(line["ts"]) == when
    assert dt.datetime.fromisoformat(line["ts_utc"]) == when.replace(tzinfo=dt.timezone.utc)
    assert line["day"] == "2024-05-01"
    assert base64.b64decode(line["blob"]) == b"\x00\xffpizza"
    assert line["price"] == "12.50"
    assert line["n"] == 3
    assert line["answer"] == mock_answer("hello")


@pytest.mark.parametrize("name", ["out.csv", "out.json", "out"])
def test_unknown_output_extension_is_a_usage_error(
    mock_api: ThreadedMockServer, tmp_path: Path, name: str
) -> None:
    out = tmp_path / name
    with pytest.raises(UsageError):
        run(mock_api, SAMPLES / "prompts.jsonl", out)
    result = CliRunner().invoke(cli, cli_args(mock_api, SAMPLES / "prompts.jsonl", out))
    assert result.exit_code == 2
    assert ".parquet" in result.stderr
    assert mock_api.stats.requests == 0
    assert list(tmp_path.iterdir()) == []


def test_output_extension_is_matched_case_insensitively(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    out = tmp_path / "OUT.JSONL"
    summary = run(mock_api, SAMPLES / "prompts.jsonl", out)
    assert summary["exit_code"] == 0
    assert len(read_jsonl(out)) == 6


# -- row ids and field names -------------------------------------------------------------------


def test_integer_ids_become_decimal_strings(mock_api: ThreadedMockServer, tmp_path: Path) -> None:
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": 7, "prompt": "a"},
            {"id": -3, "prompt": "b"},
            {"id": 12345678901234567, "prompt": "c"},
            {"id": "x-1", "prompt": "d"},
        ],
    )
    for out in (tmp_path / "out.jsonl", tmp_path / "out.parquet"):
        run(mock_api, source, out)
        ids = [r["id"] for r in output_rows(out)]
        assert ids == ["7", "-3", "12345678901234567", "x-1"]
        assert all(isinstance(i, str) for i in ids)


def test_rows_without_id_are_numbered_by_position_among_non_blank_rows(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('\n{"prompt": "a"}\n\n   \n{"prompt": "b"}\n\n{"prompt": "c"}\n')
    out = tmp_path / "out.jsonl"
    run(mock_api, source, out)
    rows = read_jsonl(out)
    assert [(r["id"], r["answer"]) for r in rows] == [
        ("0", mock_answer("a")),
        ("1", mock_answer("b")),
        ("2", mock_answer("c")),
    ]


def test_id_prompt_and_messages_fields_can_be_named(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ciao"}]
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [{"key": "k1", "question": "What is basil?"}, {"key": "k2", "conversation": chat}],
    )
    out = tmp_path / "out.jsonl"
    summary = run(
        mock_api,
        source,
        out,
        id_field="key",
        prompt_field="question",
        messages_field="conversation",
    )
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["k1", "k2"]
    assert rows[0]["answer"] == mock_answer("What is basil?")
    assert rows[1]["answer"] == mock_answer("User: hi\nAssistant: ciao\nAssistant:")
    assert summary["exit_code"] == 0


def test_named_fields_work_on_the_command_line(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"key": 5, "q": "one"}, {"key": 6, "q": "two"}])
    out = tmp_path / "out.parquet"
    result = CliRunner().invoke(
        cli, cli_args(mock_api, source, out, "-q", "--id-field", "key", "--prompt-field", "q")
    )
    assert result.exit_code == 0, result.output
    rows = output_rows(out)
    assert [(r["id"], r["answer"]) for r in rows] == [
        ("5", mock_answer("one")),
        ("6", mock_answer("two")),
    ]


def test_named_prompt_field_wins_over_messages(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [{"id": "a", "prompt": "plain", "messages": [{"role": "user", "content": "chat"}]}],
    )
    out = tmp_path / "out.jsonl"
    run(mock_api, source, out, prompt_field="prompt")
    assert read_jsonl(out)[0]["answer"] == mock_answer("plain")
    run(mock_api, source, out, messages_field="messages", restart=True)
    assert read_jsonl(out)[0]["answer"] == mock_answer("chat")


def test_openai_batch_request_lines_use_custom_id_and_formatted_messages(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    conversations = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Pizza?"}],
        [{"role": "user", "content": "Only one message"}],
    ]
    lines = [
        {
            "custom_id": f"request-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": messages, "max_tokens": 100},
        }
        for i, messages in enumerate(conversations)
    ]
    source = write_jsonl(tmp_path / "batch.jsonl", lines)
    for out in (tmp_path / "out.jsonl", tmp_path / "out.parquet"):
        summary = run(mock_api, source, out)
        rows = output_rows(out)
        assert [r["id"] for r in rows] == ["request-0", "request-1"]
        assert rows[0]["answer"] == mock_answer("System: Be brief.\nUser: Pizza?\nAssistant:")
        assert rows[1]["answer"] == mock_answer("Only one message")
        assert summary["exit_code"] == 0


# -- faults, retries and what the output says about them ---------------------------------------


@pytest.mark.slow
def test_every_row_is_answered_through_a_quarter_of_faults(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    mock_api.config = MockConfig(
        error_rate=0.10,
        garbage_rate=0.05,
        drop_rate=0.05,
        empty_rate=0.04,
        hang_rate=0.01,
        seed=7,
    )
    prompts = [f"question number {i}" for i in range(200)]
    source = prompts_file(tmp_path / "in.jsonl", prompts)
    out = tmp_path / "out.parquet"
    summary = run(mock_api, source, out, timeout=0.5, max_retries=25, concurrency=8)
    rows = output_rows(out)
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(200)]
    assert all(r["finish_reason"] == "stop" for r in rows)
    assert [r["answer"] for r in rows] == [mock_answer(p) for p in prompts]
    assert all(r["error"] is None and r["misuse"] is False for r in rows)
    assert summary["exit_code"] == 0
    assert summary["answered"] == 200
    # The faults did happen, and each cost exactly one retry.
    assert summary["retries"] > 0
    assert summary["requests"] == 200 + summary["retries"]
    assert sum(r["attempts"] for r in rows) == summary["requests"]
    assert any(status != 200 for status in mock_api.stats.by_status)


def test_client_errors_are_not_retried(mock_api: ThreadedMockServer, tmp_path: Path) -> None:
    source = prompts_file(tmp_path / "in.jsonl", ["fine", "[[status:404]] gone", "also fine"])
    out = tmp_path / "out.jsonl"
    summary = run(mock_api, source, out, max_retries=5)
    ok, gone, ok2 = read_jsonl(out)
    assert gone["finish_reason"] == "error"
    assert gone["attempts"] == 1
    assert gone["answer"] is None
    assert gone["misuse"] is False
    assert re.fullmatch(r"HTTP 404\b.* after 1 attempt", gone["error"]), gone["error"]
    assert ok["finish_reason"] == ok2["finish_reason"] == "stop"
    assert summary["exit_code"] == 3
    assert summary["failed"] == 1
    assert mock_api.stats.by_status.get(404) == 1


def test_error_column_counts_attempts_for_a_row_that_always_fails(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = prompts_file(tmp_path / "in.jsonl", ["[[status:503]] the oven is off"])
    out = tmp_path / "out.jsonl"
    summary = run(mock_api, source, out, max_retries=5)
    (row,) = read_jsonl(out)
    assert row["finish_reason"] == "error"
    assert row["attempts"] == 6
    assert re.fullmatch(r"HTTP 503\b.* after 6 attempts", row["error"]), row["error"]
    assert isinstance(row["latency_ms"], float)
    assert summary["requests"] == 6
    assert summary["retries"] == 5
    assert summary["exit_code"] == 3


@pytest.mark.parametrize("misuse_retries", [0, 2])
def test_misuse_is_retried_its_own_count_then_recorded(
    mock_api: ThreadedMockServer, tmp_path: Path, misuse_retries: int
) -> None:
    source = prompts_file(tmp_path / "in.jsonl", ["[[misuse]] hello", "[[botcheck]] hi", "ok"])
    out = tmp_path / "out.jsonl"
    # max_retries=0: the misuse budget is separate from the one for passing failures.
    summary = run(mock_api, source, out, misuse_retries=misuse_retries, max_retries=0)
    misuse, botcheck, ok = read_jsonl(out)
    for row in (misuse, botcheck):
        assert row["finish_reason"] == "misuse"
        assert row["misuse"] is True
        assert row["answer"] is None
        assert row["attempts"] == 1 + misuse_retries
    assert misuse["error"] == MISUSE_TEXT
    assert "kästchen" in botcheck["error"]
    assert ok["finish_reason"] == "stop"
    assert summary["misuse"] == 2
    assert summary["exit_code"] == 3


def test_a_row_that_fails_first_is_answered_on_a_later_attempt(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    prompt = "[[fail-first:2]] patience"
    source = prompts_file(tmp_path / "in.jsonl", [prompt])
    out = tmp_path / "out.parquet"
    summary = run(mock_api, source, out)
    (row,) = output_rows(out)
    assert row["finish_reason"] == "stop"
    assert row["attempts"] == 3
    assert row["answer"] == mock_answer(prompt)
    assert row["error"] is None
    assert summary["exit_code"] == 0


def test_summary_counts_requests_and_retries_of_this_run(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    prompts = [
        "a",  # 1 request
        "b",  # 1 request
        "[[fail-first:2]] c",  # 3 requests, 2 retries
        "[[status:404]] d",  # 1 request
        "[[misuse]] e",  # 2 requests (misuse_retries=1), 1 retry
        "[[fail-first:1]] f",  # 2 requests, 1 retry
    ]
    source = prompts_file(tmp_path / "in.jsonl", prompts)
    out = tmp_path / "out.jsonl"
    summary = run(mock_api, source, out, misuse_retries=1)
    assert summary["requests"] == 10
    assert summary["retries"] == 4
    assert mock_api.stats.requests == 10
    assert (summary["rows"], summary["answered"], summary["failed"], summary["misuse"]) == (
        6,
        4,
        1,
        1,
    )
    assert summary["invalid"] == 0
    assert summary["pending"] == 0
    assert summary["exit_code"] == 3
    assert [r["attempts"] for r in read_jsonl(out)] == [1, 1, 3, 1, 2, 2]


@pytest.mark.slow
def test_retry_after_pauses_every_worker(mock_api: ThreadedMockServer, tmp_path: Path) -> None:
    # Row 0 gets a 429 with Retry-After: 1; rows 1-3 go out with it and take 150 ms, so without a
    # shared pause their workers would send rows 4-6 some 150 ms after the 429.
    prompts = ["[[retry-after:1]] first", *(f"[[slow:150]] q{i}" for i in range(1, 7))]
    source = prompts_file(tmp_path / "in.jsonl", prompts)
    out = tmp_path / "out.jsonl"
    summary = run(mock_api, source, out, concurrency=4, rate=0, retry_after_cap=1.0)
    stats = mock_api.stats
    assert stats.by_status.get(429) == 1
    assert stats.by_status.get(200) == 7
    ts = stats.timestamps
    assert len(ts) == 8
    # The 429 is one of the first four arrivals, so it came no earlier than ts[0]; the pause runs
    # from when the client read it. Nothing else may arrive until it is over.
    first_wave, later = ts[:4], ts[4:]
    assert later, "rows 4-6 and the retry of row 0 come after the pause"
    assert min(later) >= min(first_wave) + 0.95, [round(t - ts[0], 3) for t in ts]
    rows = read_jsonl(out)
    assert rows[0]["attempts"] == 2
    assert rows[0]["answer"] == mock_answer(prompts[0])
    assert all(r["finish_reason"] == "stop" for r in rows)
    assert summary["retries"] == 1


def test_concurrency_bounds_requests_in_flight(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    mock_api.config = MockConfig(latency_ms=20, seed=1)
    source = prompts_file(tmp_path / "in.jsonl", [f"q{i}" for i in range(24)])
    out = tmp_path / "out.parquet"
    run(mock_api, source, out, concurrency=3)
    assert mock_api.stats.peak_in_flight == 3
    rows = output_rows(out)
    assert all(r["finish_reason"] == "stop" for r in rows)
    assert all(r["latency_ms"] >= 20 for r in rows)


@pytest.mark.slow
def test_rate_limits_requests_in_any_one_second_window(tmp_path: Path) -> None:
    # The server runs in its own process, as a real one would: timestamps taken in a thread of
    # this process would wait for the GIL and misplace arrivals by more than pacing's precision.
    import subprocess
    import urllib.request

    server = subprocess.Popen(
        [sys.executable, "-m", "batchpizza", "mock-server", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        base_url = server.stdout.readline().split()[-1]
        assert base_url.startswith("http://127.0.0.1:")
        source = prompts_file(tmp_path / "in.jsonl", [f"q{i}" for i in range(40)])
        out = tmp_path / "out.jsonl"
        options = {**FAST, "base_url": base_url, "rate": "20/s", "concurrency": 8}
        summary = batchpizza.run(source, out, **options)
        with urllib.request.urlopen(f"{base_url}/__stats", timeout=5) as reply:
            stats = json.load(reply)
    finally:
        server.terminate()
        server.wait(timeout=10)
        if server.stdout is not None:
            server.stdout.close()
    assert stats["requests"] == 40
    assert stats["max_in_window_1s"] <= 20
    # Evenly spaced, not a burst and a wait: 40 requests at 20/s take about two seconds.
    assert stats["mean_rate"] == pytest.approx(20, rel=0.05)
    assert summary["exit_code"] == 0
