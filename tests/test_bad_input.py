"""Bad input: refused before anything is sent, said precisely, and never a traceback.

SPEC.md "Bad input": a malformed row, an unreadable file, an unknown extension, a Parquet file
without the prompt column or an input field named like a result column makes the run refuse
before sending anything, write nothing, exit 2 and name, for up to 10 bad rows, the file, the line
(JSONL, 1-based) or row (Parquet, 0-based), the field and the problem, with the total count.
`--skip-bad-rows` runs the good rows and writes the bad ones as `invalid`.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from conftest import read_jsonl

from batchpizza.cli import cli
from batchpizza.mock.replies import mock_answer
from batchpizza.mock.server import ThreadedMockServer
from batchpizza.sources import jsonl as jsonl_source

RESULT_COLUMNS = ("answer", "finish_reason", "misuse", "error", "attempts", "latency_ms", "model")
GOOD = b'{"prompt": "good first"}'
AFTER = b'{"prompt": "good after"}'


# -- helpers ----------------------------------------------------------------------------------


def invoke(
    mock_api: ThreadedMockServer, input_path: Path | str, output: Path, *extra: str
) -> Result:
    args = ["run", str(input_path), "-o", str(output), "--base-url", mock_api.base_url]
    return CliRunner().invoke(cli, [*args, "--rate", "0", "-q", *extra])


def assert_clean_exit(result: Result, code: int) -> None:
    """The CLI exited with `code` through sys.exit, not by an exception escaping."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert "Traceback" not in result.stderr


def assert_refused(result: Result, mock_api: ThreadedMockServer, output: Path) -> None:
    """Exit 2, nothing sent, no output, no checkpoint."""
    assert_clean_exit(result, 2)
    assert mock_api.stats.requests == 0
    assert not output.exists()
    checkpoint = Path(f"{output}.checkpoint")
    for suffix in ("", "-wal", "-shm", "-journal"):
        assert not Path(f"{checkpoint}{suffix}").exists(), suffix
    assert not list(output.parent.glob("*.partial"))
    # Nothing of this output's is left behind but the run lock (see the report on the lock file).
    left = [
        p.name
        for p in output.parent.iterdir()
        if p.name.startswith((output.name, f".{output.name}")) and not p.name.endswith(".lock")
    ]
    assert left == []


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, except the run lock (rewritten with the pid by each run)."""
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.endswith(".lock")
    }


def lines(*rows: bytes) -> bytes:
    return b"".join(r + b"\n" for r in rows)


# -- one bad row, kind by kind ---------------------------------------------------------------

MSGS_OK = [{"role": "user", "content": "hi"}]


def j(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# (name, the bad line, field named or None, what the message says)
BAD_ROWS: list[tuple[str, bytes, str | None, str]] = [
    ("invalid_json_trailing_comma", b'{"prompt": "x",}', None, "invalid JSON"),
    ("invalid_json_unclosed", b'{"prompt": "x"', None, "invalid JSON"),
    ("invalid_json_bare_word", b"prompt", None, "invalid JSON"),
    # The line's own end is no part of the string it cuts short, and json's "... at" says "at"
    # once.
    (
        "invalid_json_unterminated_string",
        b'{"prompt": "tw',
        None,
        "invalid JSON: Unterminated string starting at column 12\n",
    ),
    ("not_object_list", b'["a", "b"]', None, "not a JSON object but a list"),
    ("not_object_number", b"42", None, "not a JSON object but a number"),
    ("not_object_string", b'"just text"', None, "not a JSON object but a string"),
    ("not_object_null", b"null", None, "not a JSON object"),
    ("no_prompt_no_messages", j({"text": "x"}), None, "has no 'prompt' and no 'messages'"),
    ("null_prompt_is_absent", j({"prompt": None}), None, "has no 'prompt' and no 'messages'"),
    ("empty_object", b"{}", None, "has no 'prompt' and no 'messages'"),
    ("empty_prompt", j({"prompt": ""}), "prompt", "is empty"),
    ("whitespace_prompt", j({"prompt": " \t\n "}), "prompt", "is empty"),
    ("prompt_number", j({"prompt": 5}), "prompt", "must be a string, not a number"),
    ("prompt_list", j({"prompt": ["a"]}), "prompt", "must be a string, not a list"),
    ("prompt_bool", j({"prompt": True}), "prompt", "must be a string, not a boolean"),
    ("prompt_object", j({"prompt": {"a": 1}}), "prompt", "must be a string, not an object"),
    ("messages_string", j({"messages": "hi"}), "messages", "non-empty list"),
    ("messages_object", j({"messages": {"role": "user"}}), "messages", "non-empty list"),
    ("messages_empty", j({"messages": []}), "messages", "non-empty list"),
    ("message_not_object", j({"messages": ["hi"]}), "messages", "item 0 is not an object"),
    (
        "message_without_role",
        j({"messages": [{"content": "x"}]}),
        "messages",
        "item 0 has no role",
    ),
    (
        "message_without_content",
        j({"messages": [{"role": "user"}]}),
        "messages",
        "item 0 has no content",
    ),
    (
        "message_role_not_string",
        j({"messages": [{"role": 1, "content": "x"}]}),
        "messages",
        "item 0 has no role",
    ),
    (
        "message_content_not_string",
        j({"messages": [{"role": "user", "content": 7}]}),
        "messages",
        "item 0 has no content",
    ),
    (
        "second_message_bad",
        j({"messages": [*MSGS_OK, {"role": "user"}]}),
        "messages",
        "item 1 has no content",
    ),
    (
        "messages_without_text",
        j({"messages": [{"role": "user", "content": "  "}]}),
        "messages",
        "hold no text",
    ),
    ("id_float", j({"id": 1.5, "prompt": "x"}), "id", "not a number"),
    ("id_bool", j({"id": True, "prompt": "x"}), "id", "not a boolean"),
    ("id_empty_string", j({"id": "", "prompt": "x"}), "id", "not an empty string"),
    # Not numbered by its position (which could be another row's id): only a row without the
    # id field is.
    ("id_null", j({"id": None, "prompt": "x"}), "id", "not null"),
    ("id_list", j({"id": ["a"], "prompt": "x"}), "id", "not a list"),
    ("id_object", j({"id": {"a": 1}}), "id", "not an object"),
    ("invalid_utf8", b'{"prompt": "caf\xe9"}', None, "invalid UTF-8"),
    ("invalid_utf8_in_key", b'{"pr\xffompt": "x"}', None, "invalid UTF-8"),
    (
        "prompt_and_messages",
        j({"prompt": "x", "messages": MSGS_OK}),
        None,
        "has both 'prompt' and 'messages'",
    ),
    *[
        (
            f"result_column_{name}",
            j({"prompt": "x", name: "y"}),
            name,
            "named like an output column",
        )
        for name in RESULT_COLUMNS
    ],
    (
        "openai_batch_without_messages",
        j({"custom_id": "c1", "body": {"max_tokens": 5}}),
        None,
        "messages",
    ),
    (
        "openai_batch_bad_custom_id",
        j({"custom_id": 2.5, "body": {"messages": MSGS_OK}}),
        "custom_id",
        "not a number",
    ),
]


@pytest.mark.parametrize(
    ("bad", "field", "problem"),
    [pytest.param(b, f, p, id=n) for n, b, f, p in BAD_ROWS],
)
def test_bad_row_refuses_run_naming_file_line_field_and_problem(
    mock_api: ThreadedMockServer, tmp_path: Path, bad: bytes, field: str | None, problem: str
) -> None:
    # The bad row sits on physical line 3, after a good row and a blank line.
    src = tmp_path / "prompts.jsonl"
    src.write_bytes(GOOD + b"\n\n" + bad + b"\n" + AFTER + b"\n")
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, src, out)

    assert_refused(result, mock_api, out)
    err = result.stderr
    assert f"{src}:3:" in err
    if field is not None:
        assert f"field {field!r}" in err
    assert problem in err
    assert "1 bad row" in err
    assert f"{src}:1:" not in err and f"{src}:4:" not in err


def test_duplicate_id_names_the_first_line(mock_api: ThreadedMockServer, tmp_path: Path) -> None:
    src = tmp_path / "prompts.jsonl"
    src.write_bytes(
        lines(j({"id": "a", "prompt": "x"}), b"", j({"id": "b", "prompt": "y"}))
        + lines(j({"id": "a", "prompt": "z"}))
    )
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, src, out)

    assert_refused(result, mock_api, out)
    assert f"{src}:4: field 'id'" in result.stderr
    assert "duplicate id 'a'" in result.stderr
    assert "line 1" in result.stderr
    assert "1 bad row" in result.stderr


def test_integer_id_and_its_decimal_string_are_the_same_id(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    src = tmp_path / "prompts.jsonl"
    src.write_bytes(lines(j({"id": 7, "prompt": "x"}), j({"id": "7", "prompt": "y"})))
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, src, out)

    assert_refused(result, mock_api, out)
    assert f"{src}:2: field 'id'" in result.stderr
    assert "duplicate id '7'" in result.stderr


def test_id_field_clashing_with_output_id_column(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # With --id-field key, an input field called "id" would collide with the output's id column.
    src = tmp_path / "prompts.jsonl"
    src.write_bytes(lines(j({"key": "k1", "prompt": "x", "id": "other"})))
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, src, out, "--id-field", "key")

    assert_refused(result, mock_api, out)
    assert f"{src}:1: field 'id'" in result.stderr
    assert "named like an output column" in result.stderr


def test_line_longer_than_limit_is_a_bad_row(
    mock_api: ThreadedMockServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jsonl_source, "MAX_LINE_BYTES", 64)
    src = tmp_path / "prompts.jsonl"
    src.write_bytes(
        lines(j({"prompt": "short"}), j({"prompt": "y" * 500}), j({"prompt": "also short"}))
    )
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, src, out)

    assert_refused(result, mock_api, out)
    assert f"{src}:2:" in result.stderr
    assert "longer than 64 bytes" in result.stderr
    assert "1 bad row" in result.stderr


def test_long_line_does_not_shift_later_line_numbers(
    mock_api: ThreadedMockServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jsonl_source, "MAX_LINE_BYTES", 64)
    src = tmp_path / "prompts.jsonl"
    src.write_bytes(lines(j({"prompt": "y" * 1000}), j({"prompt": "ok"}), j({"prompt": ""})))
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, src, out)

    assert_refused(result, mock_api, out)
    assert f"{src}:1:" in result.stderr
    assert f"{src}:3: field 'prompt': is empty" in result.stderr
    assert "2 bad row" in result.stderr


def test_openai_batch_request_line_is_read_as_a_row(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # The shape of every line of an OpenAI Batch API input file: the body always names a model.
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello world!"},
    ]
    line = {
        "custom_id": "request-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-3.5-turbo-0125", "messages": messages, "max_tokens": 1000},
    }
    src = tmp_path / "batch.jsonl"
    src.write_bytes(lines(j(line)))
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, src, out)

    assert_clean_exit(result, 0)
    (row,) = read_jsonl(out)
    assert row["id"] == "request-1"
    expected = "System: You are a helpful assistant.\nUser: Hello world!\nAssistant:"
    assert row["answer"] == mock_answer(expected)


def test_naming_prompt_field_resolves_prompt_and_messages(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    src = tmp_path / "prompts.jsonl"
    src.write_bytes(lines(j({"id": "r", "prompt": "the prompt", "messages": MSGS_OK})))
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, src, out, "--prompt-field", "prompt")

    assert_clean_exit(result, 0)
    (row,) = read_jsonl(out)
    assert row["answer"] == mock_answer("the prompt")
    assert row["finish_reason"] == "stop"


def test_naming_messages_field_resolves_prompt_and_messages(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    src = tmp_path / "prompts.jsonl"
    src.write_bytes(lines(j({"id": "r", "prompt": "the prompt", "messages": MSGS_OK})))
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, src, out, "--messages-field", "messages")

    assert_clean_exit(result, 0)
    (row,) = read_jsonl(out)
    assert row["answer"] == mock_answer("hi")


def test_bad_rows_leave_existing_checkpoint_and_output_byte_for_byte(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    src = tmp_path / "prompts.jsonl"
    src.write_bytes(lines(j({"id": "a", "prompt": "x"}), j({"id": "b", "prompt": "y"})))
    out = work / "out.jsonl"
    assert_clean_exit(invoke(mock_api, src, out), 0)
    before = snapshot(work)
    assert "out.jsonl.checkpoint" in before
    mock_api.reset()

    src.write_bytes(
        lines(j({"id": "a", "prompt": "x"}), j({"id": "b", "prompt": "y"}), j({"id": "c"}))
    )
    result = invoke(mock_api, src, out)

    assert_clean_exit(result, 2)
    assert f"{src}:3:" in result.stderr
    assert mock_api.stats.requests == 0
    assert snapshot(work) == before


def test_bad_last_line_means_nothing_is_sent(mock_api: ThreadedMockServer, tmp_path: Path) -> None:
    src = tmp_path / "prompts.jsonl"
    good = [j({"prompt": f"q{i}"}) for i in range(300)]
    src.write_bytes(lines(*good, b'{"prompt": '))
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, src, out, "--concurrency", "4")

    assert_refused(result, mock_api, out)
    assert f"{src}:301:" in result.stderr


# -- many bad rows -----------------------------------------------------------------------------


def test_only_first_ten_bad_rows_listed_with_total(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    src = tmp_path / "prompts.jsonl"
    rows = [j({"prompt": "fine"})] + [j({"prompt": ""}) for _ in range(25)]
    src.write_bytes(lines(*rows))
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, src, out)

    assert_refused(result, mock_api, out)
    listed = [line for line in result.stderr.splitlines() if f"{src}:" in line]
    assert len(listed) == 10
    assert [int(line.split(f"{src}:")[1].split(":")[0]) for line in listed] == list(range(2, 12))
    assert "25 bad row" in result.stderr


def test_duplicates_are_listed_in_line_order_among_other_bad_rows(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # Duplicates are found after the scan; the list must still be the first 10 by line.
    src = tmp_path / "prompts.jsonl"
    rows = [j({"id": "a", "prompt": "x"}), j({"id": "a", "prompt": "x"})]
    rows += [j({"id": f"e{i}", "prompt": ""}) for i in range(25)]
    rows += [j({"id": "a", "prompt": "late duplicate"})]
    src.write_bytes(lines(*rows))
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, src, out)

    assert_refused(result, mock_api, out)
    listed = [line for line in result.stderr.splitlines() if f"{src}:" in line]
    assert len(listed) == 10
    assert "duplicate id 'a'" in listed[0] and f"{src}:2:" in listed[0]
    assert [int(line.split(f"{src}:")[1].split(":")[0]) for line in listed] == list(range(2, 12))
    assert "27 bad row" in result.stderr


# -- Parquet -----------------------------------------------------------------------------------


def test_parquet_without_prompt_column_is_refused(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    src = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"text": ["a", "b"]}), src)
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, src, out)

    assert_refused(result, mock_api, out)
    assert str(src) in result.stderr
    assert "'prompt'" in result.stderr


def test_parquet_prompt_column_of_wrong_type_is_refused(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    src = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"prompt": [1, 2, 3]}), src)
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, src, out)

    assert_refused(result, mock_api, out)
    assert str(src) in result.stderr
    assert "'prompt'" in result.stderr
    assert "string" in result.stderr


def test_parquet_bad_row_is_named_by_zero_based_row(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    src = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b", "c", " ", "e"]}), src)
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, src, out)

    assert_refused(result, mock_api, out)
    assert f"{src} row 3: field 'prompt': is empty" in result.stderr
    assert "1 bad row" in result.stderr


def test_a_null_id_is_a_bad_row_not_a_duplicate_of_the_id_its_position_would_be(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # Row 1's null id numbered by its position was '1', row 0's id: it was refused as a
    # duplicate of row 0. Rows without an id column at all are still numbered by position.
    src = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"id": [1, None, 3], "prompt": ["a", "b", "c"]}), src)
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, src, out)

    assert_refused(result, mock_api, out)
    assert (
        f"{src} row 1: field 'id': the id must be a non-empty string or an integer, not null"
        in (result.stderr)
    )
    assert "duplicate" not in result.stderr


def test_an_empty_id_cell_of_a_csv_is_a_bad_row(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    src = tmp_path / "prompts.csv"
    src.write_text("id,prompt\n1,a\n,b\n3,c\n")
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, src, out)

    assert_refused(result, mock_api, out)
    assert f"{src}:3: field 'id': the id must be a non-empty string or an integer, not an " in (
        result.stderr
    )


def test_parquet_column_named_like_result_column_is_refused(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    src = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"prompt": ["a"], "finish_reason": ["x"]}), src)
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, src, out)

    assert_refused(result, mock_api, out)
    assert str(src) in result.stderr
    assert "'finish_reason'" in result.stderr


def test_parquet_directory_bad_row_names_its_file(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    folder = tmp_path / "set"
    (folder / "b").mkdir(parents=True)
    pq.write_table(pa.table({"prompt": ["a", "b"]}), folder / "a.parquet")
    pq.write_table(pa.table({"prompt": ["c", None]}), folder / "b" / "c.parquet")
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, folder, out)

    assert_refused(result, mock_api, out)
    assert f"{folder / 'b' / 'c.parquet'} row 1:" in result.stderr


def test_parquet_invalid_utf8_string_is_a_bad_row(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # Arrow does not validate strings on write: other tools can produce such files.
    prompts = pa.array([b"fine", b"caf\xe9"], pa.binary()).view(pa.string())
    src = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"prompt": prompts}), src)
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, src, out)

    assert_refused(result, mock_api, out)
    assert str(src) in result.stderr
    assert "UTF-8" in result.stderr


def test_parquet_damaged_carried_column_is_refused_before_sending(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # The prompt column is intact; the page header of another column is broken. The file cannot
    # be read whole, so the run must refuse it up front, not send every row and fail at the end.
    src = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"prompt": ["one", "two"], "n": [1, 2]}), src, compression="none")
    page = pq.ParquetFile(src).metadata.row_group(0).column(1).data_page_offset
    data = bytearray(src.read_bytes())
    data[page] = 0
    src.write_bytes(bytes(data))
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, src, out)

    assert_refused(result, mock_api, out)
    assert str(src) in result.stderr


# -- file-level problems -----------------------------------------------------------------------


@pytest.fixture
def file_problems(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (input path, text the message must contain)."""
    cases: dict[str, tuple[Path, str]] = {}
    unknown = tmp_path / "prompts.xlsx"
    unknown.write_text("prompt\nhello\n")
    cases["unknown_extension"] = (unknown, "unknown input type")
    cases["missing_file"] = (tmp_path / "nowhere.jsonl", "no such file")
    dangling = tmp_path / "dangling.jsonl"
    dangling.symlink_to(tmp_path / "gone.jsonl")
    cases["dangling_symlink"] = (dangling, "no such file")
    # /proc/self/mem fails to read at offset 0 (EIO) even for root: an unreadable file.
    broken = tmp_path / "unreadable.jsonl"
    broken.symlink_to("/proc/self/mem")
    cases["unreadable_file"] = (broken, "cannot read")
    data = gzip.compress(lines(*[j({"prompt": f"question number {i}"}) for i in range(2000)]))
    truncated = tmp_path / "prompts.jsonl.gz"
    truncated.write_bytes(data[: len(data) // 2])
    cases["truncated_gzip"] = (truncated, "cannot read")
    not_gzip = tmp_path / "plain.jsonl.gz"
    not_gzip.write_bytes(lines(j({"prompt": "x"})))
    cases["not_gzip"] = (not_gzip, "gzip")
    fake = tmp_path / "fake.parquet"
    fake.write_bytes(lines(j({"prompt": "x"})))
    cases["not_parquet"] = (fake, "Parquet")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    cases["empty_directory"] = (empty_dir, "without any .parquet")
    no_parquet = tmp_path / "jsonl_only"
    no_parquet.mkdir()
    (no_parquet / "prompts.jsonl").write_bytes(lines(j({"prompt": "x"})))
    cases["directory_without_parquet"] = (no_parquet, "without any .parquet")
    return cases


FILE_PROBLEMS = [
    "unknown_extension",
    "missing_file",
    "dangling_symlink",
    "unreadable_file",
    "truncated_gzip",
    "not_gzip",
    "not_parquet",
    "empty_directory",
    "directory_without_parquet",
]


@pytest.mark.parametrize("case", FILE_PROBLEMS)
@pytest.mark.parametrize("skip_bad_rows", [False, True], ids=["default", "skip-bad-rows"])
def test_file_level_problem_exits_2_naming_the_file(
    mock_api: ThreadedMockServer,
    tmp_path: Path,
    file_problems: dict[str, tuple[Path, str]],
    case: str,
    skip_bad_rows: bool,
) -> None:
    src, expected = file_problems[case]
    out = tmp_path / "out" / "result.jsonl"
    out.parent.mkdir()

    result = invoke(mock_api, src, out, *(["--skip-bad-rows"] if skip_bad_rows else []))

    assert_refused(result, mock_api, out)
    assert str(src) in result.stderr
    assert expected in result.stderr


def test_permission_denied_file_exits_2(mock_api: ThreadedMockServer, tmp_path: Path) -> None:
    src = tmp_path / "secret.jsonl"
    src.write_bytes(lines(j({"prompt": "x"})))
    out = tmp_path / "out.jsonl"
    if os.geteuid() == 0:
        # root reads through chmod 000; a path through a regular file is refused by the kernel.
        src = tmp_path / "secret.jsonl" / "inside.jsonl"
        expected = "no such file"
    else:
        src.chmod(0)
        expected = "cannot read"
    try:
        result = invoke(mock_api, src, out)
    finally:
        (tmp_path / "secret.jsonl").chmod(0o644)

    assert_refused(result, mock_api, out)
    assert str(src) in result.stderr
    assert expected in result.stderr


def test_skip_bad_rows_does_not_hide_parquet_file_problems(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    src = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"text": ["a"]}), src)
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, src, out, "--skip-bad-rows")

    assert_refused(result, mock_api, out)
    assert str(src) in result.stderr


# -- --skip-bad-rows ---------------------------------------------------------------------------


def test_skip_bad_rows_writes_invalid_rows_and_answers_good_ones(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    src = tmp_path / "prompts.jsonl"
    src.write_bytes(
        lines(
            j({"id": "a", "prompt": "first", "tag": 1}),
            j({"id": "b", "prompt": "", "tag": 2}),
            b"",
            b"{not json",
            j({"id": "a", "prompt": "again", "tag": 4}),
            j({"id": 1.5, "prompt": "float id", "tag": 5}),
            j({"id": "c", "prompt": "last", "tag": 6}),
            j({"id": "d", "messages": [], "tag": 7}),
        )
    )
    out = tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"

    result = invoke(mock_api, src, out, "--skip-bad-rows", "--summary-json", str(summary))

    assert_clean_exit(result, 3)
    rows = read_jsonl(out)
    assert len(rows) == 7
    by_tag = {r["tag"]: r for r in rows}
    for tag, prompt in ((1, "first"), (6, "last")):
        assert by_tag[tag]["finish_reason"] == "stop"
        assert by_tag[tag]["answer"] == mock_answer(prompt)
        assert by_tag[tag]["attempts"] == 1
    invalid = [r for r in rows if r["finish_reason"] == "invalid"]
    assert len(invalid) == 5
    for r in invalid:
        assert r["answer"] is None
        assert r["attempts"] == 0
        assert r["misuse"] is False
        assert isinstance(r["error"], str) and r["error"]
    assert "is empty" in by_tag[2]["error"] and by_tag[2]["id"] == "b"
    assert "duplicate id 'a'" in by_tag[4]["error"]
    assert by_tag[4]["id"] == "a"  # a repeated id keeps its id
    assert "not a number" in by_tag[5]["error"]
    assert "non-empty list" in by_tag[7]["error"] and by_tag[7]["id"] == "d"
    broken = rows[2]
    assert broken["finish_reason"] == "invalid" and "invalid JSON" in broken["error"]
    assert {r["id"] for r in rows if r["finish_reason"] == "stop"} == {"a", "c"}
    assert mock_api.stats.requests == 2
    assert set(mock_api.stats.answers) == {"first", "last"}
    stats = json.loads(summary.read_text())
    assert stats["invalid"] == 5
    assert stats["answered"] == 2
    assert stats["exit_code"] == 3


def test_skip_bad_rows_in_parquet_input_and_output(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    src = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"id": ["x", "y", "z"], "prompt": ["one", "", "three"]}), src)
    out = tmp_path / "out.parquet"

    result = invoke(mock_api, src, out, "--skip-bad-rows")

    assert_clean_exit(result, 3)
    rows = pq.read_table(out).to_pylist()
    assert [r["finish_reason"] for r in rows] == ["stop", "invalid", "stop"]
    assert rows[1]["id"] == "y"
    assert rows[1]["attempts"] == 0
    assert rows[1]["misuse"] is False
    assert "is empty" in rows[1]["error"]
    assert rows[1]["prompt"] == ""  # what of the row could be read is carried
