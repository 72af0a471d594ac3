"""CSV and TSV inputs (batchpizza/sources/delimited.py), as a user runs them: typed carried
columns, bad rows named by file and physical line, ragged rows, empty files, gzip, resume."""

from __future__ import annotations

import copy
import datetime
import gzip
import json
import pickle
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from conftest import FAST, read_jsonl

import batchpizza
from batchpizza import rows
from batchpizza.cli import cli
from batchpizza.mock.replies import mock_answer
from batchpizza.mock.server import ThreadedMockServer
from batchpizza.sources.delimited import DelimitedSource
from batchpizza.written import plain, written

RESULTS = [
    "answer",
    "finish_reason",
    "misuse",
    "error",
    "attempts",
    "latency_ms",
    "model",
    "reused_from",
    *("prompt_tokens", "completion_tokens", "tokens_estimated"),  # every output's
]


def csv_file(folder: Path, text: str, name: str = "in.csv") -> Path:
    """`text` written to `folder`/`name` (UTF-8): the input of a run."""
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def invoke(server: ThreadedMockServer, source: Path, out: Path, *extra: str) -> Result:
    args = ["run", str(source), "-o", str(out), "--base-url", server.base_url, "--rate", "0"]
    return CliRunner().invoke(cli, [*args, "--no-progress", *extra])


def test_csv_columns_are_typed_and_the_prompt_and_id_stay_text(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = csv_file(
        tmp_path,
        "id,prompt,n,score,flag,note\n"
        "007,42,1,0.5,true,first\n"
        '008,"Say ""hi"", please",2,1.25,false,\n'
        "009,third question,,2,true,x\n",
    )
    out = tmp_path / "out.parquet"

    result = invoke(mock_api, source, out)

    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column_names == ["id", "prompt", "n", "score", "flag", "note", *RESULTS]
    types = {f.name: f.type for f in table.schema}
    assert types["prompt"] == pa.string() and types["id"] == pa.string()
    assert (types["n"], types["score"], types["flag"]) == (pa.int64(), pa.float64(), pa.bool_())
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == ["007", "008", "009"]  # the zeros kept
    assert [r["prompt"] for r in rows] == ["42", 'Say "hi", please', "third question"]
    assert [r["n"] for r in rows] == [1, 2, None]
    assert all(r["answer"] == mock_answer(r["prompt"]) for r in rows)


def test_bad_csv_rows_are_named_by_file_and_physical_line(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = csv_file(
        tmp_path,
        "id,prompt\n"  # line 1
        'a,"a prompt\nover two lines"\n'  # lines 2-3
        "\n"  # line 4: blank
        "b,\n"  # line 5: empty prompt
        "c,one,two\n"  # line 6: a field too many
        "a,again\n",  # line 7: the id of line 2
    )
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, source, out)

    assert result.exit_code == 2, result.output
    assert mock_api.stats.requests == 0 and not out.exists()
    err = result.stderr
    assert "3 bad rows in the input" in err
    assert f"{source}:5: field 'prompt': is empty" in err
    assert f"{source}:6: expected 2 fields as the header has, found 3" in err
    assert f"{source}:7: field 'id': duplicate id 'a' (first on line 2)" in err


def test_skip_bad_rows_keeps_a_ragged_row_in_its_place_as_invalid(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = csv_file(tmp_path, "id,prompt,n\nr0,zero,0\nr1,one\nr2,two,2\n")
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, source, out, "--skip-bad-rows")

    assert result.exit_code == 3, result.output
    rows = read_jsonl(out)
    assert [r["finish_reason"] for r in rows] == ["stop", "invalid", "stop"]
    assert [r["n"] for r in rows] == [0, None, 2]
    assert rows[2]["id"] == "r2" and rows[2]["answer"] == mock_answer("two")
    assert "expected 3 fields" in rows[1]["error"]


def test_a_quote_never_closed_is_a_bad_row_not_the_rest_of_the_file_as_one_prompt(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = csv_file(tmp_path, 'id,prompt\nr0,zero\nr1,"one\nr2,two\nr3,three\n')
    out = tmp_path / "out.jsonl"

    refused = invoke(mock_api, source, out)

    assert refused.exit_code == 2, refused.output
    assert mock_api.stats.requests == 0 and not out.exists()
    assert f"{source}:3: a quoted value opened on this line is never closed" in refused.stderr
    skipped = invoke(mock_api, source, out, "--skip-bad-rows")
    assert skipped.exit_code == 3, skipped.output
    assert [r["finish_reason"] for r in read_jsonl(out)] == ["stop", "invalid"]


def test_a_quote_left_open_in_the_middle_of_a_file_is_a_bad_row_saying_so(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # Read leniently, r1's value ran to r3's opening quote: `one\nr2,two\nr3,three"`.
    source = csv_file(tmp_path, 'id,prompt\nr0,zero\nr1,"one\nr2,two\nr3,"three"\nr4,four\n')
    out = tmp_path / "out.jsonl"

    refused = invoke(mock_api, source, out)

    assert refused.exit_code == 2, refused.output
    assert (
        f"{source}:3: a quoted value has text after its closing quote, in a row running over "
        "lines 3-5: is a quote opened on this line never closed?"
    ) in refused.stderr
    skipped = invoke(mock_api, source, out, "--skip-bad-rows")
    assert skipped.exit_code == 3, skipped.output
    assert [(r["id"], r["finish_reason"]) for r in read_jsonl(out)] == [
        ("r0", "stop"),
        ("r1", "invalid"),
        ("r4", "stop"),
    ]


def test_a_quoted_value_over_lines_at_the_end_of_the_file_is_a_good_row(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = csv_file(tmp_path, 'id,prompt\nr0,zero\nr1,"one\nand two"\n')
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, source, out)

    assert result.exit_code == 0, result.output
    assert [r["prompt"] for r in read_jsonl(out)] == ["zero", "one\nand two"]


@pytest.mark.parametrize(
    ("name", "data", "line"),
    [
        ("in.csv", b'id,prompt\nr0,zero\nr1,"one', 3),
        ("in.csv", b'id,prompt\nr0,zero\nr1,"one\n', 3),  # with a line end, as before
        ("in.csv", b'id,prompt,n\nr0,"zero\nover two",0\nr1,"a\nb","one', 4),
        ("in.tsv", b'id\tprompt\nr0\tzero\nr1\t"one', 3),
        ("in.csv", b'\xef\xbb\xbfid,prompt\nr0,zero\nr1,"one', 3),  # a BOM
        ("in.csv", b'id,prompt\r\nr0,zero\r\nr1,"one', 3),
        ("in.csv.gz", b'id,prompt\nr0,zero\nr1,"one', 3),
        ("one.csv", b'id,prompt\nr1,"one', 2),  # the only row
    ],
)
def test_a_quote_never_closed_at_the_very_end_of_the_file_is_a_bad_row(
    mock_api: ThreadedMockServer, tmp_path: Path, name: str, data: bytes, line: int
) -> None:
    source = tmp_path / name
    source.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    out = tmp_path / "out.jsonl"

    refused = invoke(mock_api, source, out)

    assert refused.exit_code == 2, refused.output
    assert mock_api.stats.requests == 0 and not out.exists()
    assert f"{source}:{line}: a quoted value opened on this line is never closed" in refused.stderr
    skipped = invoke(mock_api, source, out, "--skip-bad-rows")
    assert skipped.exit_code == 3, skipped.output
    rows = read_jsonl(out)
    assert [r["finish_reason"] for r in rows] == ["stop"] * (len(rows) - 1) + ["invalid"]
    assert "never closed" in rows[-1]["error"]


def test_a_template_says_a_csv_number_or_time_as_the_file_wrote_it(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # A column of 1 and 1.5 is typed double: its 1 printed as 1.0, 1.50 as 1.5, 1e3 as 1000.0.
    source = csv_file(
        tmp_path,
        "id,n,at,clock\n"
        "a,1,2024-01-01T10:00:00,10:00\n"
        "b,1.50,2024-01-02T11:30:00,11:00:01\n"
        "c,1e3,2024-01-03T12:00:00,12:00\n",
    )
    out = tmp_path / "out.parquet"

    result = invoke(mock_api, source, out, "--template", "{n} ({n:.2f}) at {at}, {clock}")

    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column("prompt").to_pylist() == [
        "1 (1.00) at 2024-01-01T10:00:00, 10:00",
        "1.50 (1.50) at 2024-01-02T11:30:00, 11:00:01",
        "1e3 (1000.00) at 2024-01-03T12:00:00, 12:00",
    ]
    assert all(r["answer"] == mock_answer(r["prompt"]) for r in table.to_pylist())  # as sent
    assert table.schema.field("n").type == pa.float64()  # the output keeps the column's type
    assert pa.types.is_timestamp(table.schema.field("at").type)
    assert table.column("n").to_pylist() == [1.0, 1.5, 1000.0]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1"),
        (datetime.datetime(2024, 1, 1, 10, 0), "2024-01-01T10:00"),
        (datetime.datetime(2024, 1, 1, 10, 0, tzinfo=datetime.timezone.utc), "2024-01-01T10:00Z"),
        (datetime.time(10, 0), "10:00"),
    ],
)
def test_a_value_printing_as_written_keeps_its_text_through_pickle_and_copy(
    value: Any, text: str
) -> None:
    # A timestamp or a time of day came back from pickle (a row sent to another process) or
    # copy.copy printing as its type does ("2024-01-01 10:00:00"), not as the file wrote it.
    made = written(value, text)
    for again in (pickle.loads(pickle.dumps(made)), copy.copy(made), copy.deepcopy(made)):
        assert (str(again), f"{again}", again, type(again)) == (text, text, value, type(made))
        assert plain(again) == value and type(plain(again)) is type(value)
    later = made + datetime.timedelta(days=1) if isinstance(value, datetime.datetime) else None
    if later is not None:  # computed from it: its type, no text, and so it stays
        assert str(pickle.loads(pickle.dumps(later))) == str(later)


def test_a_jinja_template_computes_with_a_csv_number_and_prints_it_as_written(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = csv_file(tmp_path, "id,n\na,1\nb,2.5\n")
    template = tmp_path / "t.j2"
    template.write_text("{{ n }} {{ n + 1 }} {{ n > 2 }} {{ '%.1f' | format(n) }} {{ row }}")
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, source, out, "--template-file", str(template))

    assert result.exit_code == 0, result.output
    assert [r["prompt"] for r in read_jsonl(out)] == [
        '1 2.0 false 1.0 {"id": "a", "n": 1}',
        '2.5 3.5 true 2.5 {"id": "b", "n": 2.5}',
    ]


def test_a_csv_row_as_json_in_a_jinja_template_is_valid_json_with_numbers_as_written(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # `tojson` wrote the double column's 1.0 for the file's 1; `{{ row }}` wrote `.5` and `+2`
    # as they stand, which no JSON reader takes.
    source = tmp_path / "in.csv"
    source.write_text("id,n\na,1\nb,2.50\nc,.5\nd,+2\ne,1E3\n", encoding="utf-8")
    template = tmp_path / "t.j2"
    template.write_text("{{ row }}|{{ row | tojson }}|{{ [n] | tojson }}")
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, source, out, "--template-file", str(template))

    assert result.exit_code == 0, result.output
    printed = [r["prompt"].split("|") for r in read_jsonl(out)]
    as_json = [[json.loads(part) for part in parts] for parts in printed]
    assert [parts[0] for parts in as_json] == [parts[1] for parts in as_json]
    assert [parts[2] for parts in as_json] == [[1.0], [2.5], [0.5], [2.0], [1000.0]]
    assert [parts[0] for parts in printed] == [
        '{"id": "a", "n": 1}',
        '{"id": "b", "n": 2.50}',
        '{"id": "c", "n": 0.5}',
        '{"id": "d", "n": 2.0}',
        '{"id": "e", "n": 1E3}',
    ]
    assert printed[0][1] == '{"id": "a", "n": 1}'  # Jinja2's tojson sorts keys


def test_a_csv_row_with_a_time_through_tojson_writes_it_as_the_file_did(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # A timestamp or time column made `{{ row | tojson }}` fail every row ("Object of type
    # WrittenDatetime is not JSON serializable"), where `{{ row }}` wrote it.
    source = tmp_path / "in.csv"
    source.write_text("id,when,at\na,2024-01-02T03:04,10:30\n", encoding="utf-8")
    template = tmp_path / "t.j2"
    template.write_text("{{ row }}|{{ row | tojson }}|{{ when | tojson }}")
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, source, out, "--template-file", str(template))

    assert result.exit_code == 0, result.output
    printed = read_jsonl(out)[0]["prompt"].split("|")
    assert [json.loads(part) for part in printed] == [
        {"id": "a", "when": "2024-01-02T03:04", "at": "10:30"},
        {"at": "10:30", "id": "a", "when": "2024-01-02T03:04"},
        "2024-01-02T03:04",
    ]


def test_a_prompt_function_gets_a_csv_row_s_values_of_their_own_types(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # The values a template says as written are Python's own to a function, which says how it
    # prints them (orjson refuses a float subclass).
    source = csv_file(tmp_path, "id,n,at\na,1,2024-01-01T10:00:00\nb,1.5,2024-01-02T10:00:00\n")

    def prompt(row: dict[str, Any]) -> str:
        assert type(row["n"]) is float and type(row["at"]) is datetime.datetime
        return orjson.dumps(row).decode()

    out = tmp_path / "out.jsonl"
    summary = batchpizza.run(source, out, prompt=prompt, base_url=mock_api.base_url, **FAST)

    assert summary["exit_code"] == 0
    assert read_jsonl(out)[0]["prompt"] == '{"id":"a","n":1.0,"at":"2024-01-01T10:00:00"}'


def test_rfc_4180_quoting_gives_each_value_as_written(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = csv_file(
        tmp_path,
        "id,prompt,note\n"
        'r0,"he said ""hi""","a ""q"""\n'  # doubled quotes
        'r1,"two\nlines","x,y"\n'  # a quoted line end, a quoted delimiter
        'r2,she said "no",""""\n'  # a quote inside an unquoted value is kept as it is
        'r3,"",\n',  # an empty quoted value is an empty one
    )
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, source, out, "--skip-bad-rows")

    assert result.exit_code == 3, result.output  # r3: an empty prompt
    rows = read_jsonl(out)
    assert [r["prompt"] for r in rows] == ['he said "hi"', "two\nlines", 'she said "no"', ""]
    assert [r["note"] for r in rows] == ['a "q"', "x,y", '"', ""]  # text: empty, not null


@pytest.mark.parametrize(
    ("name", "data", "line"),
    [
        ("in.csv", 'id,prompt\nr0,zero\nr1,"he said "hi""\nr2,two\n', 3),
        ("in.csv", 'id,prompt\nr0,zero\nr1,"one"two\nr2,two\n', 3),
        ("in.csv", 'id,prompt,n\nr0,"zero\nover two",0\nr1,"a "b" c",1\nr2,two,2\n', 4),
        ("in.tsv", 'id\tprompt\nr0\tzero\nr1\t"he said "hi""\nr2\ttwo\n', 3),
    ],
)
def test_a_quote_inside_a_quoted_value_not_doubled_is_a_bad_row_not_lost_quotes(
    mock_api: ThreadedMockServer, tmp_path: Path, name: str, data: str, line: int
) -> None:
    # Both pyarrow and Python's csv module read `"he said "hi""` as `he said hi""`, silently.
    source = csv_file(tmp_path, data, name)
    out = tmp_path / "out.jsonl"

    refused = invoke(mock_api, source, out)

    assert refused.exit_code == 2, refused.output
    assert mock_api.stats.requests == 0 and not out.exists()
    said = f"{source}:{line}: a quoted value has text after its closing quote"
    assert said in refused.stderr and "written twice" in refused.stderr
    skipped = invoke(mock_api, source, out, "--skip-bad-rows")
    assert skipped.exit_code == 3, skipped.output
    rows = read_jsonl(out)
    assert [r["finish_reason"] for r in rows] == ["stop", "invalid", "stop"]
    assert rows[1]["id"] == "r1"  # its id still read


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("in.csv", 'id,prompt\nr0,zero\n"r1" ,one\nr2,two\n'),
        ("in.csv", 'id,prompt\nr0,zero\nr1,"one"  \nr2,two\n'),
        ("in.csv", 'id,prompt\nr0,zero\n"r1"\t,one\nr2,two\n'),
        ("in.tsv", 'id\tprompt\nr0\tzero\nr1\t"one" \nr2\ttwo\n'),
    ],
)
def test_spaces_after_a_closing_quote_are_said_as_such_not_as_a_quote_to_double(
    mock_api: ThreadedMockServer, tmp_path: Path, name: str, data: str
) -> None:
    # `"one" ,x` was told to write a quote inside a quoted value twice: there is none.
    source = csv_file(tmp_path, data, name)

    refused = invoke(mock_api, source, tmp_path / "out.jsonl")

    assert refused.exit_code == 2, refused.output
    said = f"{source}:3: a quoted value has spaces after its closing quote"
    assert said in refused.stderr and "written twice" not in refused.stderr, refused.stderr


@pytest.mark.parametrize(
    ("name", "data", "prompts"),
    [
        ("in.csv", b'id,prompt\nr0,zero\nr1,"one"', ["zero", "one"]),
        ("in.csv", b'id,prompt\nr0,zero\nr1,"say ""one"""', ["zero", 'say "one"']),
        ("in.csv", b'id,prompt\nr0,zero\nr1,"one\nand two"', ["zero", "one\nand two"]),
        ("in.tsv", b'id\tprompt\nr0\tzero\nr1\t"one"', ["zero", "one"]),
        ("in.csv", b'\xef\xbb\xbfid,prompt\nr1,"one"', ["one"]),
        ("in.csv", b"id,prompt\nr1,one", ["one"]),
        ("in.csv.gz", b'id,prompt\nr0,zero\nr1,"one"', ["zero", "one"]),
        ("in.csv", b"id,prompt", []),  # one line, the header: an empty input
    ],
)
def test_a_file_ending_without_a_line_end_after_a_closed_value_is_read_whole(
    mock_api: ThreadedMockServer, tmp_path: Path, name: str, data: bytes, prompts: list[str]
) -> None:
    source = tmp_path / name
    source.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, source, out)

    assert result.exit_code == 0, result.output
    assert [r["prompt"] for r in read_jsonl(out)] == prompts


@pytest.mark.parametrize("name", ["in.tsv", "in.csv.gz", "IN.TSV.GZ"])
def test_tsv_and_gzipped_inputs_are_read_by_their_extension(
    mock_api: ThreadedMockServer, tmp_path: Path, name: str
) -> None:
    tsv = ".tsv" in name.lower()
    sep, hello = ("\t", "hello, world") if tsv else (",", '"hello, world"')
    text = f"id{sep}prompt{sep}note\nr0{sep}{hello}{sep}x\nr1{sep}second{sep}y\n"
    source = tmp_path / name
    data = text.encode()
    source.write_bytes(gzip.compress(data) if name.lower().endswith(".gz") else data)
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, source, out)

    assert result.exit_code == 0, result.output
    rows = read_jsonl(out)
    assert [(r["id"], r["prompt"], r["note"]) for r in rows] == [
        ("r0", "hello, world", "x"),
        ("r1", "second", "y"),
    ]


@pytest.mark.parametrize("text", ["", "\n\n", "id,prompt\n"])
def test_an_empty_csv_is_an_empty_output_with_every_column(
    mock_api: ThreadedMockServer, tmp_path: Path, text: str
) -> None:
    source = csv_file(tmp_path, text)
    out = tmp_path / "out.parquet"

    result = invoke(mock_api, source, out)

    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.num_rows == 0
    assert set(RESULTS) <= set(table.column_names)
    assert mock_api.stats.requests == 0


@pytest.mark.parametrize(
    ("name", "text", "said"),
    [
        ("in.csv", "id,question\nr0,hi\n", ["no 'prompt' column"]),
        ("in.csv", "id,prompt,prompt\nr0,a,b\n", ["names column 'prompt' twice"]),
        ("in.csv", "prompt,,\na,1,2\n", ["leaves columns 2 and 3 without a name"]),
        ("in.csv", "prompt,answer\nhi,there\n", ["'answer' is named like an output column"]),
        # A header that is almost right says what it looks like.
        ("in.csv", "id;prompt\nr0;a\n", ["no 'prompt' column", "separated by ';'"]),
        ("in.csv", "id\tprompt\nr0\ta\n", ["no 'prompt' column", "separated by tabs"]),
        ("in.tsv", "id,prompt\nr0,a\n", ["no 'prompt' column", "separated by ','"]),
        ("in.csv", "id, prompt\nr0, a\n", ["no 'prompt' column", "column ' prompt'"]),
    ],
)
def test_a_csv_without_a_usable_header_is_refused_naming_the_file(
    mock_api: ThreadedMockServer, tmp_path: Path, name: str, text: str, said: list[str]
) -> None:
    source = csv_file(tmp_path, text, name)

    result = invoke(mock_api, source, tmp_path / "out.jsonl")

    assert result.exit_code == 2, result.output
    assert f"{source}: " in result.stderr
    assert all(words in result.stderr for words in said), result.stderr
    assert mock_api.stats.requests == 0


def test_a_csv_rerun_sends_nothing_and_a_grown_one_only_the_new_rows(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = csv_file(tmp_path, "id,prompt\nr0,zero\nr1,one\n")
    out = tmp_path / "out.parquet"
    assert invoke(mock_api, source, out).exit_code == 0
    assert invoke(mock_api, source, out).exit_code == 0
    assert mock_api.stats.requests == 2

    with source.open("a", encoding="utf-8") as handle:
        handle.write("r2,two\n")
    assert invoke(mock_api, source, out).exit_code == 0
    assert mock_api.stats.requests == 3
    assert pq.read_table(out).column("id").to_pylist() == ["r0", "r1", "r2"]


@pytest.mark.slow  # 1 s: two runs
def test_a_scan_kept_by_an_earlier_way_of_reading_rows_is_made_again_not_reused(
    mock_api: ThreadedMockServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run of an earlier version, which read `"he said "hi""` as `he said hi""`, kept its scan:
    # the same file, unchanged, must be read as this version reads it, not as that one did.
    source = csv_file(tmp_path, 'id,prompt\nr0,zero\nr1,"he said "hi""\n')
    out = tmp_path / "out.jsonl"
    with monkeypatch.context() as earlier:
        earlier.setattr(rows, "READING", rows.READING - 1)
        earlier.setattr(DelimitedSource, "_misquoted", lambda self, record: False)
        assert invoke(mock_api, source, out).exit_code == 0
    assert mock_api.stats.requests == 2

    again = invoke(mock_api, source, out)

    assert again.exit_code == 2, again.output
    assert f"{source}:3: a quoted value has text after its closing quote" in again.stderr
    assert mock_api.stats.requests == 2


def test_invalid_utf8_in_a_csv_row_is_a_bad_row_of_its_own(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    source.write_bytes(b"id,prompt\nr0,fine\nr1,bad \xff byte\nr2,also fine\n")
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, source, out, "--skip-bad-rows")

    assert result.exit_code == 3, result.output
    assert [r["finish_reason"] for r in read_jsonl(out)] == ["stop", "invalid", "stop"]


@pytest.mark.parametrize(
    ("name", "data"),
    [
        # Excel's "Unicode Text" export: UTF-16 with a BOM, tab-separated.
        ("in.tsv", "id\tprompt\r\nr0\tfine\r\n".encode("utf-16")),
        ("in.csv", "id,prompt\r\nr0,fine\r\n".encode("utf-16")),
        ("in.csv", "id,prompt\r\nr0,fine\r\n".encode("utf-16-be")),
        ("in.csv", "id,prompt\r\nr0,fine\r\n".encode("utf-16-le")),  # no BOM
    ],
    ids=["excel-unicode-text", "utf-16", "utf-16-be", "utf-16-le-without-bom"],
)
def test_a_utf16_csv_is_refused_with_a_sentence_not_a_traceback(
    mock_api: ThreadedMockServer, tmp_path: Path, name: str, data: bytes
) -> None:
    source = tmp_path / name
    source.write_bytes(data)
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, source, out)

    assert result.exit_code == 2, (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert f"{source}: a UTF-16 file" in result.stderr and "UTF-8" in result.stderr
    assert mock_api.stats.requests == 0 and not out.exists()


def test_integers_beyond_64_bits_in_a_csv_column_are_carried_exactly(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # pyarrow types such a column double: 12345678901234567890123 would come out 1.2345678901234568e22
    # and the 1 beside it 1.0, a carried value changed without a word.
    source = csv_file(
        tmp_path,
        "id,prompt,account,ratio\n"
        "r0,a,12345678901234567890123,0.5\n"
        "r1,b,1,2\n"
        "r2,c,,3\n"
        "r3,d,-99999999999999999999999999999999999999,4\n",
    )
    out = tmp_path / "out.parquet"

    result = invoke(mock_api, source, out)

    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.schema.field("account").type == pa.decimal128(38, 0)
    assert table.schema.field("ratio").type == pa.float64()  # a real double column stays one
    assert [None if v is None else int(v) for v in table.column("account").to_pylist()] == [
        12345678901234567890123,
        1,
        None,
        -99999999999999999999999999999999999999,
    ]


def test_integers_too_big_even_for_a_decimal_keep_their_text(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    big = "1" * 45
    source = csv_file(tmp_path, f"prompt,n,m\na,{big},1\nb,7,1.5e300\n")
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, source, out)

    assert result.exit_code == 0, result.output
    rows = read_jsonl(out)
    assert [r["n"] for r in rows] == [big, "7"]
    assert [r["m"] for r in rows] == [1.0, 1.5e300]


def test_a_csv_row_over_16_mib_is_refused_in_words_a_user_can_act_on(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    # pyarrow reads in blocks of 16 MiB: a row over two boundaries (so over 32 MiB) fails.
    source.write_bytes(b'id,prompt\nr0,"' + b"x" * (40 << 20) + b'"\nr1,b\n')

    result = invoke(mock_api, source, tmp_path / "out.jsonl")

    assert result.exit_code == 2, result.output
    assert f"{source}: a row longer than 16 MiB" in result.stderr
    assert "block size" not in result.stderr  # pyarrow's words, about an option no one can set
    assert mock_api.stats.requests == 0


def test_a_column_of_integers_with_leading_zeros_keeps_them_as_text(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # Zip codes, phone numbers, SKUs: as int64 02134 was 2134, in the output and in the prompt
    # a template built from it.
    source = csv_file(tmp_path, "name,zip,n\nann,02134,1\nbob,10001,-2\ncy,,3\n")
    out = tmp_path / "out.parquet"

    result = invoke(mock_api, source, out, "--template", "{name} lives at {zip}", "--skip-bad-rows")

    assert result.exit_code == 3, result.output  # cy has no zip: a bad row
    table = pq.read_table(out)
    assert table.schema.field("zip").type == pa.string()
    assert table.schema.field("n").type == pa.int64()  # integers without zeros stay integers
    assert table.column("zip").to_pylist() == ["02134", "10001", None]
    assert table.column("prompt").to_pylist() == ["ann lives at 02134", "bob lives at 10001", None]
