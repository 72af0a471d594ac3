"""The reader: input files -> validated rows (scan), the prompts to send, the fields to carry."""

from __future__ import annotations

import gzip
import io
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SAMPLES, write_jsonl

from batchpizza import jsoncodec
from batchpizza.config import RunConfig
from batchpizza.errors import InputError, RowProblem
from batchpizza.fingerprint import request_digest
from batchpizza.rows import Fields, interpret, prompt_digest
from batchpizza.sources import Source, open_source, spool_stdin
from batchpizza.sources import jsonl as jsonl_source

DEFAULT_FIELDS = Fields("prompt", "messages", "id", False, False, False)


def source_for(
    path: Path | str, tmp_path: Path, stdin: bytes | None = None, **options: Any
) -> Source:
    config = RunConfig.from_options(str(path), str(tmp_path / "out.jsonl"), **options)
    if stdin is None:
        return open_source(config.input, Fields.from_config(config))
    copy = tmp_path / ".stdin-copy.jsonl"
    spool_stdin(io.BytesIO(stdin).read, copy, threading.Event())
    return open_source(config.input, Fields.from_config(config), copy)


def prompts(source: Source, wanted: Any) -> list[tuple[int, str, str]]:
    return [(pos, p.id, p.text) for pos, p in source.prompts(wanted)]


def scanned(source: Source) -> tuple[dict[int, tuple[str, int, int, bytes]], dict[int, Any]]:
    """pos -> (id, file, at, digest) of the good rows, and pos -> Row of the bad ones."""
    good: dict[int, tuple[str, int, int, bytes]] = {}
    bad: dict[int, Any] = {}
    for good_rows, bad_rows in source.scan():
        for pos, row_id, digest, _said, file, at in good_rows:
            good[pos] = (row_id, file, at, digest)
        for row in bad_rows:
            bad[row.pos] = row
    return good, bad


# -- JSONL lines ---------------------------------------------------------------------------------


def test_bom_crlf_and_a_last_line_without_newline_are_read(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + b'{"id": "a", "prompt": "x"}\r\n'
        + b'{"id": "b", "prompt": "y"}\r\n'
        + b'{"id": "c", "prompt": "z"}'
    )
    source = source_for(path, tmp_path)
    good, bad = scanned(source)
    assert bad == {}
    assert [(g[0], g[2]) for g in good.values()] == [("a", 1), ("b", 2), ("c", 3)]
    assert prompts(source, [0, 1, 2]) == [(0, "a", "x"), (1, "b", "y"), (2, "c", "z")]
    carried = [obj for batch in source.carried() for obj in batch.rows()]
    assert carried == [
        {"id": "a", "prompt": "x"},
        {"id": "b", "prompt": "y"},
        {"id": "c", "prompt": "z"},
    ]


def test_blank_lines_are_skipped_and_line_numbers_stay_physical(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b"\n"  # 1
        b'{"prompt": "a"}\n'  # 2 -> pos 0
        b"   \t \n"  # 3
        b"\r\n"  # 4
        b"{not json\n"  # 5 -> pos 1, bad
        b'{"prompt": "b"}\n'  # 6 -> pos 2
        b"\n"  # 7
    )
    source = source_for(path, tmp_path)
    good, bad = scanned(source)
    assert {pos: (g[0], g[2]) for pos, g in good.items()} == {0: ("0", 2), 2: ("2", 6)}
    assert list(bad) == [1]
    assert bad[1].at == 5
    assert "JSON" in bad[1].problem
    # The other passes count the same rows.
    assert prompts(source, [0, 2]) == [(0, "0", "a"), (2, "2", "b")]
    assert sum(len(batch) for batch in source.carried()) == 3


def test_line_separators_inside_strings_do_not_split_a_row(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    text = "one\u2028two\u0085three"
    path.write_bytes(jsoncodec.dumps({"id": "s", "prompt": text}) + b"\n")
    source = source_for(path, tmp_path)
    good, bad = scanned(source)
    assert (list(good), bad) == ([0], {})
    assert prompts(source, [0]) == [(0, "s", text)]


def test_bad_rows_say_what_is_wrong_and_where(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b'{"id": "ok", "prompt": "fine"}\n'
        b"[1, 2]\n"
        b'{"id": "e", "prompt": ""}\n'
        b'{"id": "n", "prompt": 5}\n'
        b'{"id": "m"}\n'
        b'{"id": "u", "prompt": "caf\xe9"}\n'
        b'{"id": 1.5, "prompt": "float id"}\n'
    )
    good, bad = scanned(source_for(path, tmp_path))
    assert list(good) == [0]
    assert {pos: row.at for pos, row in bad.items()} == {1: 2, 2: 3, 3: 4, 4: 5, 5: 6, 6: 7}
    assert "not a JSON object" in bad[1].problem
    assert bad[2].field == "prompt" and "empty" in bad[2].problem
    assert bad[2].id == "e"  # kept for --skip-bad-rows
    assert bad[3].field == "prompt" and "string" in bad[3].problem
    assert "no 'prompt' and no 'messages'" in bad[4].problem
    assert "UTF-8" in bad[5].problem
    assert bad[6].field == "id"


def test_gzipped_jsonl_is_read_with_physical_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(gzip.compress(b'\n{"prompt": "a"}\n\n{"prompt": ""}\n'))
    good, bad = scanned(source_for(path, tmp_path))
    assert [(g[0], g[2]) for g in good.values()] == [("0", 2)]
    assert [row.at for row in bad.values()] == [4]


def test_scan_infers_the_arrow_types_of_carried_fields(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": 1, "prompt": "a", "n": 1, "mixed": 1, "tags": ["x"]},
            {"id": "two", "prompt": "b", "n": 2, "mixed": "x", "flag": True},
        ],
    )
    source = source_for(path, tmp_path)
    scanned(source)
    types = source.columns().types()
    assert "id" not in types
    assert types["prompt"] == pa.string()
    assert types["n"] == pa.int64()
    assert types["mixed"] is None  # int in one row, str in another: JSON text
    assert types["tags"] == pa.list_(pa.string())  # a list keeps its native type
    assert types["flag"] == pa.bool_()


def test_scan_digest_is_of_the_messages_as_sent_and_of_a_prompt_its_text(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    rows = [{"id": "m", "messages": messages}, {"id": "p", "prompt": "hi"}]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    good, _ = scanned(source_for(path, tmp_path))
    assert good[0][3] == request_digest("User: hi\nAssistant: yo\nAssistant:", messages, None)
    assert good[0][3] != prompt_digest("User: hi\nAssistant: yo\nAssistant:")
    assert good[1][3] == prompt_digest("hi")  # as checkpoints before fingerprints had it


# -- prompts and carried -------------------------------------------------------------------------


def test_prompts_parses_only_the_wanted_positions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": f"p{i}"} for i in range(8)]
    )
    source = source_for(path, tmp_path)
    parsed: list[bytes] = []
    real_read = jsonl_source.read_line

    def counting_read(data: bytes) -> Any:
        parsed.append(data)
        return real_read(data)

    monkeypatch.setattr(jsonl_source, "read_line", counting_read)
    assert prompts(source, [1, 4, 7]) == [(1, "r1", "p1"), (4, "r4", "p4"), (7, "r7", "p7")]
    assert len(parsed) == 3
    parsed.clear()
    assert prompts(source, []) == []
    assert parsed == []


def test_prompts_of_a_parquet_file_formats_messages(tmp_path: Path) -> None:
    source = source_for(SAMPLES / "prompts.parquet", tmp_path)
    rows = prompts(source, [2, 5])
    assert rows == [
        (
            2,
            "haiku",
            "System: You are a terse poet.\nUser: Write a haiku about mozzarella.\nAssistant:",
        ),
        (
            5,
            "chat",
            "User: Name a pizza topping.\nAssistant: Basil.\nUser: Another one?\nAssistant:",
        ),
    ]


def test_carried_yields_every_input_row_in_order(tmp_path: Path) -> None:
    jsonl = source_for(SAMPLES / "prompts.jsonl", tmp_path)
    objects = [obj for batch in jsonl.carried() for obj in batch.rows()]
    assert [o["id"] for o in objects] == [
        "capital-it",
        "pizza-origin",
        "haiku",
        "translate",
        "math",
        "chat",
    ]
    assert all(isinstance(o, Mapping) for o in objects)
    parquet = source_for(SAMPLES / "prompts.parquet", tmp_path)
    batches = [carried.batch for carried in parquet.carried()]  # type: ignore[attr-defined]
    assert all(isinstance(b, pa.RecordBatch) for b in batches)
    table = pa.Table.from_batches(batches)
    assert table.column("topic").to_pylist() == [o["topic"] for o in objects]


# -- files: kinds, directories, stdin ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("a.jsonl", "jsonl"),
        ("a.ndjson", "jsonl"),
        ("a.JSONL", "jsonl"),
        ("a.NdJson", "jsonl"),
        ("a.parquet", "parquet"),
        ("a.PARQUET", "parquet"),
    ],
)
def test_the_extension_decides_the_kind_whatever_its_case(
    tmp_path: Path, name: str, kind: str
) -> None:
    path = tmp_path / name
    if kind == "parquet":
        pq.write_table(pa.table({"prompt": ["x"]}), path)
    else:
        path.write_text('{"prompt": "x"}\n')
    source = source_for(path, tmp_path)
    assert source.unit == {"jsonl": "line", "parquet": "row"}[kind]
    assert prompts(source, [0]) == [(0, "0", "x")]


@pytest.mark.parametrize("name", ["a.xlsx", "a.json", "a.txt", "a.gz"])
def test_an_unknown_extension_is_an_input_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text('{"prompt": "x"}\n')
    with pytest.raises(InputError, match="unknown input type"):
        source_for(path, tmp_path)


def test_a_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        source_for(tmp_path / "nope.jsonl", tmp_path)


def test_a_broken_gzip_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(b"this is not gzip at all")
    with pytest.raises(InputError):
        source_for(path, tmp_path)


def test_a_directory_is_its_parquet_files_recursively_in_sorted_path_order(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    (folder / "b" / "deep").mkdir(parents=True)
    for name in ("c.parquet", "a.parquet", "b/deep/x.parquet", "b/y.parquet"):
        pq.write_table(pa.table({"prompt": [name, name + "!"]}), folder / name)
    (folder / "readme.jsonl").write_text('{"prompt": "not read"}\n')
    source = source_for(folder, tmp_path)
    assert source.unit == "row"
    relative = [p.relative_to(folder).as_posix() for p in source.paths]
    assert relative == ["a.parquet", "b/deep/x.parquet", "b/y.parquet", "c.parquet"]
    good, bad = scanned(source)
    assert bad == {}
    # Ids are positions that continue across files; `at` is the 0-based row within each file.
    assert [(pos, g[0], g[1], g[2]) for pos, g in good.items()] == [
        (0, "0", 0, 0),
        (1, "1", 0, 1),
        (2, "2", 1, 0),
        (3, "3", 1, 1),
        (4, "4", 2, 0),
        (5, "5", 2, 1),
        (6, "6", 3, 0),
        (7, "7", 3, 1),
    ]
    assert [p for _, _, p in prompts(source, range(8))][2:4] == [
        "b/deep/x.parquet",
        "b/deep/x.parquet!",
    ]


def test_a_directory_leaves_out_hidden_and_underscore_names_as_pyarrow_and_spark_do(
    tmp_path: Path,
) -> None:
    # macOS leaves `._x.parquet` beside each file copied to another disk (not Parquet at all);
    # a tool still writing puts its file under a hidden or `_temporary` name. pandas, pyarrow's
    # datasets and Spark all skip such names: a folder they read is the same rows here.
    folder = tmp_path / "in"
    (folder / "_temporary" / "0").mkdir(parents=True)
    (folder / ".ipynb_checkpoints").mkdir()
    pq.write_table(pa.table({"prompt": ["kept"]}), folder / "part-0.parquet")
    (folder / "._part-0.parquet").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    for hidden in ("_temporary/0/part-1.parquet", ".ipynb_checkpoints/x.parquet", ".w.parquet"):
        pq.write_table(pa.table({"prompt": ["half written"]}), folder / hidden)

    source = source_for(folder, tmp_path)

    assert [p.name for p in source.paths] == ["part-0.parquet"]
    good, bad = scanned(source)
    assert bad == {} and list(good) == [0]
    assert prompts(source, [0]) == [(0, "0", "kept")]


def test_a_folder_whose_files_disagree_on_a_type_names_the_file_that_disagrees(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name, x in (("a", [1]), ("b", [2]), ("c", ["three"]), ("d", [4])):
        pq.write_table(pa.table({"prompt": [name], "x": x}), folder / f"{name}.parquet")
    with pytest.raises(InputError) as caught:
        source_for(folder, tmp_path)
    said = str(caught.value)
    assert said.startswith(f"{folder / 'c.parquet'}: column 'x' is string here"), said
    assert f"int64 in {folder / 'a.parquet'}" in said, said


def test_a_parquet_file_naming_a_column_twice_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    columns = [pa.array(["a"]), pa.array([1]), pa.array([2])]
    pq.write_table(pa.Table.from_arrays(columns, names=["prompt", "x", "x"]), path)
    with pytest.raises(InputError) as caught:
        source_for(path, tmp_path)
    assert str(caught.value) == f"{path}: the file names column 'x' twice; rename one"


def test_a_directory_without_parquet_files_is_an_input_error(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"prompt": "x"}\n')
    with pytest.raises(InputError, match=r"without any \.parquet"):
        source_for(folder, tmp_path)


def test_a_parquet_file_without_the_prompt_column_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["x"]}), path)
    with pytest.raises(InputError, match="no 'prompt' column"):
        source_for(path, tmp_path)  # found when the file is opened, before any row is read


def test_a_parquet_column_named_like_a_result_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": ["x"], "answer": ["y"]}), path)
    with pytest.raises(InputError, match="'answer'"):
        source_for(path, tmp_path)  # found when the file is opened, before any row is read


def test_parquet_null_prompt_with_messages_is_a_messages_row(tmp_path: Path) -> None:
    good, bad = scanned(source_for(SAMPLES / "prompts.parquet", tmp_path))
    assert bad == {}
    assert [g[0] for g in good.values()] == [
        "capital-it",
        "pizza-origin",
        "haiku",
        "translate",
        "math",
        "chat",
    ]


def test_stdin_is_spooled_beside_the_checkpoint_and_removed_on_close(tmp_path: Path) -> None:
    data = b'{"id": "s1", "prompt": "from stdin"}\n\n{"prompt": "second"}\n'
    source = source_for("-", tmp_path, stdin=data)
    assert source.unit == "line"
    assert source.names == ["<stdin>"]
    assert source.spooled and source.paths[0].parent == tmp_path
    good, bad = scanned(source)
    assert bad == {}
    assert [(g[0], g[2]) for g in good.values()] == [("s1", 1), ("1", 3)]
    # Standard input is read once, so the later passes read the spooled copy.
    assert prompts(source, [0, 1]) == [(0, "s1", "from stdin"), (1, "1", "second")]
    source.close()
    assert not source.paths[0].exists()


def test_lines_ended_by_a_lone_cr_are_a_bad_row_that_says_so(tmp_path: Path) -> None:
    # Classic Mac line ends: to a reader of \n-ended lines the rows are one line of JSON values.
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"prompt": "a"}\r{"prompt": "b"}\r{"prompt": "c"}\n{"prompt": "d"}\n')
    good, bad = scanned(source_for(path, tmp_path))
    assert list(good) == [1]
    assert "lone CR" in bad[0].problem and "\\n" in bad[0].problem, bad[0].problem


def test_a_bom_starting_a_later_line_is_read_past_as_the_first_line_s_is(tmp_path: Path) -> None:
    # `cat a.jsonl b.jsonl` of two files saved with a BOM: the second BOM starts a line mid-file.
    path = tmp_path / "in.jsonl"
    bom = b"\xef\xbb\xbf"
    path.write_bytes(
        bom + b'{"prompt": "a"}\n' + bom + b'{"prompt": "b", "n": 12345678901234567890123}\n'
    )
    source = source_for(path, tmp_path)
    good, bad = scanned(source)
    assert bad == {} and list(good) == [0, 1]
    assert prompts(source, [0, 1]) == [(0, "0", "a"), (1, "1", "b")]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (b'[{"prompt": "a"}, {"prompt": "b"}]\n', "a list of objects: JSONL has one object a line"),
        (b'[\n  {"prompt": "a"}\n]\n', "a lone '[': a JSON array over several lines?"),
        (b'{\n  "prompt": "a"\n}\n', "a lone '{': an object over several lines?"),
    ],
)
def test_a_json_document_given_as_jsonl_says_what_it_looks_like(
    tmp_path: Path, text: bytes, said: str
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(text)
    _good, bad = scanned(source_for(path, tmp_path))
    assert said in bad[0].problem, bad[0].problem


def test_stdin_that_ends_mid_line_makes_that_line_a_bad_row_not_a_row_for_the_next_run(
    tmp_path: Path,
) -> None:
    # A file's torn last line may still be being written; standard input has ended for good, and
    # the next run reads another one: the cut line is a bad row, never dropped in silence.
    source = source_for("-", tmp_path, stdin=b'{"prompt": "whole"}\n{"prompt": "cut sh')
    good, bad = scanned(source)
    assert list(good) == [0]
    assert list(bad) == [1]
    assert bad[1].problem.startswith("the last line is cut short")
    source.close()


# -- interpret: one row's id and prompt ------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("abc", "abc"), (7, "7"), (-12, "-12"), (2**70, str(2**70)), (0, "0"), (None, "3")],
)
def test_an_id_is_a_string_an_integer_or_the_position(raw: object, expected: str) -> None:
    obj = {"prompt": "x"} if raw is None else {"id": raw, "prompt": "x"}
    assert interpret(obj, DEFAULT_FIELDS, 3)[:2] == (expected, "x")


@pytest.mark.parametrize("raw", ["", True, False, 1.5, [1], {"a": 1}])
def test_any_other_id_is_a_bad_row(raw: object) -> None:
    with pytest.raises(RowProblem) as info:
        interpret({"id": raw, "prompt": "x"}, DEFAULT_FIELDS, 0)
    assert info.value.field == "id"


def test_a_named_id_field_is_used_and_id_then_collides() -> None:
    fields = Fields("prompt", "messages", "key", False, False, True)
    assert interpret({"key": "k", "prompt": "x", "other": 1}, fields, 0)[:2] == ("k", "x")
    with pytest.raises(RowProblem) as info:
        interpret({"key": "k", "id": "i", "prompt": "x"}, fields, 0)
    assert info.value.field == "id"
    assert info.value.id == "k"


@pytest.mark.parametrize(
    "name", ["answer", "finish_reason", "misuse", "error", "attempts", "latency_ms", "model"]
)
def test_a_field_named_like_a_result_column_is_a_bad_row(name: str) -> None:
    with pytest.raises(RowProblem) as info:
        interpret({"id": "a", "prompt": "x", name: 1}, DEFAULT_FIELDS, 0)
    assert info.value.field == name
    assert info.value.id == "a"


def test_both_prompt_and_messages_is_ambiguous_unless_one_is_named() -> None:
    obj = {"id": "a", "prompt": "plain", "messages": [{"role": "user", "content": "chat"}]}
    with pytest.raises(RowProblem) as info:
        interpret(obj, DEFAULT_FIELDS, 0)
    assert "both" in info.value.problem
    assert info.value.id == "a"
    named_prompt = Fields("prompt", "messages", "id", True, False, False)
    assert interpret(obj, named_prompt, 0)[:2] == ("a", "plain")
    named_messages = Fields("prompt", "messages", "id", False, True, False)
    assert interpret(obj, named_messages, 0)[:2] == ("a", "chat")


def test_a_null_field_counts_as_absent() -> None:
    assert (
        interpret(
            {"prompt": None, "messages": [{"role": "user", "content": "m"}]}, DEFAULT_FIELDS, 0
        )[1]
        == "m"
    )
    assert interpret({"prompt": "p", "messages": None}, DEFAULT_FIELDS, 0)[1] == "p"


def test_a_row_without_an_id_takes_its_position_and_a_null_id_is_a_bad_row() -> None:
    # A null in an id column numbered by its position could be another row's id.
    assert interpret({"prompt": "p"}, DEFAULT_FIELDS, 4)[0] == "4"
    with pytest.raises(RowProblem, match="not null") as caught:
        interpret({"id": None, "prompt": "p"}, DEFAULT_FIELDS, 4)
    assert caught.value.field == "id"


def test_messages_are_formatted_as_the_seed_does() -> None:
    one = [{"role": "user", "content": "only"}]
    assert interpret({"messages": one}, DEFAULT_FIELDS, 0)[1] == "only"
    several = [
        {"role": "system", "content": "Be kind."},
        {"role": "USER", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
    assert (
        interpret({"messages": several}, DEFAULT_FIELDS, 0)[1]
        == "System: Be kind.\nUser: Hi\nAssistant: Hello\nAssistant:"
    )


def test_openai_text_content_parts_are_joined() -> None:
    parts = [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]
    messages = [{"role": "user", "content": parts}]
    assert interpret({"messages": messages}, DEFAULT_FIELDS, 0)[1] == "first\nsecond"


@pytest.mark.parametrize(
    ("part", "said"),
    [
        ({"type": "file", "file": {"file_id": "f"}}, "is of type 'file', which is not sent"),
        ({"type": "input_audio", "input_audio": {}}, "has no input_audio.data"),
        ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "mp3"}}, "'mp3'"),
        ({"type": "image_url", "image_url": "https://x/y.png"}, "has no 'image_url' object"),
        ({"type": "image_url", "image_url": {"url": "u", "detail": "max"}}, "low, high or auto"),
        ({"type": "text"}, "has no text"),
        ("just a string", "is not an object"),
    ],
)
def test_a_content_part_that_cannot_be_sent_is_a_bad_row_not_dropped_from_the_request(
    part: object, said: str
) -> None:
    # Dropping a part sent the question without it: a paid answer to another request; and a
    # part whose tokens cannot be bounded could pass --max-cost.
    parts = [{"type": "text", "text": "What is in this picture?"}, part]
    with pytest.raises(RowProblem) as info:
        interpret({"id": "m", "messages": [{"role": "user", "content": parts}]}, DEFAULT_FIELDS, 0)
    assert info.value.field == "messages"
    assert "item 0: content part 1" in str(info.value), str(info.value)
    assert said in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("message", "said"),
    [
        ({"role": "tool", "tool_call_id": "call_1", "content": "42"}, "item 1 has 'tool_call_id'"),
        ({"role": "assistant", "content": "", "tool_calls": [{"id": "c"}]}, "has 'tool_calls'"),
        ({"role": "assistant", "content": "x", "function_call": {"name": "f"}}, "'function_call'"),
        ({"role": "user", "name": 5, "content": "hi"}, "item 1: name must be a non-empty string"),
    ],
)
def test_a_message_of_a_tool_conversation_is_a_bad_row_not_sent_without_its_call(
    message: dict[str, Any], said: str
) -> None:
    # The tool message's call id was dropped, and the request sent was not the row's (and one
    # no server takes: a tool message answers no call).
    messages = [{"role": "user", "content": "What is 6*7?"}, message]
    with pytest.raises(RowProblem) as info:
        interpret({"id": "m", "messages": messages}, DEFAULT_FIELDS, 0)
    assert info.value.field == "messages"
    assert said in str(info.value), str(info.value)


def test_a_message_with_empty_tool_fields_is_no_tool_call_and_is_sent() -> None:
    # An export's `tool_calls: []` on every message (a Parquet struct's, a DataFrame's) made
    # each row bad, though no call was in them.
    message = {"role": "user", "content": "hi", "tool_calls": [], "function_call": None}
    row = interpret(
        {"id": "m", "messages": [message, {**message, "tool_call_id": ""}]}, DEFAULT_FIELDS, 0
    )
    assert row[2] == [{"role": "user", "content": "hi"}, {"role": "user", "content": "hi"}]


def test_a_messages_name_is_sent_and_part_of_its_request() -> None:
    # `name` (a speaker in a chat of several, few-shot examples) was dropped: rows told apart
    # only by it were one request, and each got the other's answer.
    def read(name: str | None) -> Any:
        message = {"role": "user", "content": "hi", **({"name": name} if name else {})}
        return interpret({"id": "m", "messages": [message]}, DEFAULT_FIELDS, 0)

    alice, bob, nobody = read("alice"), read("bob"), read(None)
    assert alice[2] == [{"role": "user", "content": "hi", "name": "alice"}]
    digests = {request_digest(*row[1:]) for row in (alice, bob, nobody)}
    assert len(digests) == 3
    assert nobody[2] == [{"role": "user", "content": "hi"}]
    assert request_digest(*nobody[1:]) == request_digest("hi", None, None)  # as a prompt row


@pytest.mark.parametrize(
    "messages",
    [
        [],
        "not a list",
        ["not an object"],
        [{"content": "no role"}],
        [{"role": "", "content": "empty role"}],
        [{"role": "user"}],
        [{"role": "user", "content": 5}],
        [{"role": "user", "content": "   "}],
    ],
)
def test_malformed_messages_are_a_bad_row(messages: object) -> None:
    with pytest.raises(RowProblem) as info:
        interpret({"id": "m", "messages": messages}, DEFAULT_FIELDS, 0)
    assert info.value.field == "messages"
    assert info.value.id == "m"


def test_openai_batch_request_line_is_read_with_custom_id_and_its_messages() -> None:
    line = {
        "custom_id": "request-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are helpful."},
                {"role": "user", "content": "Hello!"},
            ],
            "max_tokens": 1000,
        },
    }
    assert interpret(line, DEFAULT_FIELDS, 0)[:2] == (
        "request-1",
        "System: You are helpful.\nUser: Hello!\nAssistant:",
    )


def test_a_stdin_copy_that_ends_after_its_run_stopped_waiting_raises_nothing(
    tmp_path: Path,
) -> None:
    """The copying thread is abandoned on a signal; if its read returns after the run's loop is
    closed (a busy machine starts it late), it must end quietly, not print a traceback."""
    import asyncio
    import threading

    from batchpizza.controls.stop import Stop
    from batchpizza.errors import Interrupted
    from batchpizza.sources.stdin import spool_stdin_aside

    released = threading.Event()

    class LatePipe:
        def read(self, _n: int) -> bytes:
            released.wait(5)
            return b""

    errors: list[BaseException | None] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    try:

        async def interrupted() -> None:
            stop = Stop()
            task = asyncio.ensure_future(spool_stdin_aside(LatePipe(), tmp_path / "copy", stop))
            await asyncio.sleep(0.05)
            stop.interrupt(15)
            with pytest.raises(Interrupted):
                await task

        asyncio.run(interrupted())  # the loop is closed once this returns
        released.set()
        for thread in threading.enumerate():
            if thread.name == "batchpizza-stdin":
                thread.join(5)
    finally:
        threading.excepthook = previous
    assert errors == []


def test_a_later_pass_seeks_to_the_mark_before_the_first_row_wanted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import batchpizza.sources.jsonl as jsonl

    monkeypatch.setattr(jsonl, "MARK_EVERY", 3)
    first = tmp_path / "a.jsonl"
    second = tmp_path / "b.jsonl"
    first.write_bytes(
        b"\n".join(b'{"id": "a%d", "prompt": "pa%d"}' % (i, i) for i in range(5)).replace(
            b"\n", b"\n\n", 1
        )
        + b"\n"
    )  # a blank line after the first row
    second.write_bytes(
        b"\xef\xbb\xbf" + b"".join(b'{"id": "b%d", "prompt": "pb%d"}\n' % (i, i) for i in range(7))
    )

    def open_both() -> jsonl.JsonlSource:  # (the CLI reads one JSONL file; the source, several)
        return jsonl.JsonlSource([first, second], ["a.jsonl", "b.jsonl"], DEFAULT_FIELDS)

    source = open_both()
    list(source.scan())
    state = source.scan_state()
    assert [m[0] for m in state["marks"]] == [3, 6, 9]
    every = prompts(source, iter(range(12)))
    assert [p[1] for p in every] == [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(7)]

    # A rerun's source, from the kept state: each row read after a seek, as every row was read.
    rerun = open_both()
    rerun.restore(state)
    for start in range(12):
        assert prompts(rerun, iter(range(start, 12))) == every[start:]
    # Seeks, not reads from the top: a row before the mark changed in place (two lines where
    # there was one, the same bytes) moves no later row.
    text = first.read_bytes()
    first.write_bytes(text.replace(b'"a1", "prompt": "pa1"}', b'"a1",\n"prompt":"pa1"}', 1))
    assert prompts(rerun, iter([10, 11])) == every[10:]


@pytest.mark.parametrize(("depth", "bad"), [(50, False), (150, True)])
def test_objects_nested_deeper_than_the_limit_are_bad_rows_as_lists_are(
    tmp_path: Path, depth: int, bad: bool
) -> None:
    deep = b'{"a": ' * depth + b"1" + b"}" * depth
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"id": "x", "prompt": "fine", "deep": ' + deep + b"}\n")
    good_rows, bad_rows = scanned(source_for(path, tmp_path))
    assert [row.problem for row in bad_rows.values()] == (
        ["nested deeper than 100 levels"] if bad else []
    )
    assert list(good_rows) == ([] if bad else [0])
