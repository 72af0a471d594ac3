"""Empty, odd and hostile input files, and a fuzz of the readers: nothing but InputError ever comes out."""

from __future__ import annotations

import gzip
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import examples, read_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bad_input import RESULT_COLUMNS, assert_clean_exit, assert_refused, invoke, j, lines

from batchpizza.checkpoint import Checkpoint, ScanIndex
from batchpizza.config import RunConfig
from batchpizza.errors import InputError
from batchpizza.mock.replies import mock_answer
from batchpizza.mock.server import ThreadedMockServer
from batchpizza.rows import Fields
from batchpizza.sources import describe, open_source
from batchpizza.sources import jsonl as jsonl_source

# -- empty and odd files -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"", b"\n", b"\n\n  \n\t\r\n", b"\xef\xbb\xbf", b"\xef\xbb\xbf\n\n"],
    ids=["empty", "one-newline", "blank-lines", "bom-only", "bom-and-blanks"],
)
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_empty_input_gives_empty_output_with_all_columns(
    mock_api: ThreadedMockServer, tmp_path: Path, content: bytes, fmt: str
) -> None:
    src = tmp_path / "prompts.jsonl"
    src.write_bytes(content)
    out = tmp_path / f"out.{fmt}"

    result = invoke(mock_api, src, out)

    assert_clean_exit(result, 0)
    assert mock_api.stats.requests == 0
    assert out.exists()
    if fmt == "parquet":
        table = pq.read_table(out)
        assert table.num_rows == 0
        assert table.column_names[0] == "id"
        assert set(RESULT_COLUMNS) <= set(table.column_names)
    else:
        assert out.read_bytes().strip() == b""


def test_empty_parquet_gives_empty_output(mock_api: ThreadedMockServer, tmp_path: Path) -> None:
    src = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), src)
    out = tmp_path / "out.parquet"

    result = invoke(mock_api, src, out)

    assert_clean_exit(result, 0)
    table = pq.read_table(out)
    assert table.num_rows == 0
    assert set(RESULT_COLUMNS) | {"id"} <= set(table.column_names)


@pytest.mark.parametrize(
    "text",
    [pa.large_string(), pa.string_view(), pa.dictionary(pa.int32(), pa.string())],
    ids=["large_string", "string_view", "dictionary"],
)
def test_parquet_prompt_and_id_columns_of_any_string_type_are_read(
    mock_api: ThreadedMockServer, tmp_path: Path, text: pa.DataType
) -> None:
    # string_view is what pyarrow writes back for a table polars made (to_arrow()), and reads
    # back from such a file: a column of text, as the others.
    src = tmp_path / "prompts.parquet"
    prompts = ["first", "second", "first"]
    ids = pa.array(["a", "b", "c"]).cast(text)
    pq.write_table(pa.table({"id": ids, "prompt": pa.array(prompts).cast(text)}), src)
    out = tmp_path / "out.parquet"

    result = invoke(mock_api, src, out)

    assert_clean_exit(result, 0)
    table = pq.read_table(out)
    assert table.column("answer").to_pylist() == [mock_answer(p) for p in prompts]
    assert table.column("id").to_pylist() == ["a", "b", "c"]
    assert table.schema.field("prompt").type == pq.read_schema(src).field("prompt").type


def test_a_parquet_prompt_column_with_no_value_at_all_leaves_each_row_to_its_messages(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # A column of None only (pandas and polars write it so) is typed null, not string.
    src = tmp_path / "chats.parquet"
    chat = [{"role": "user", "content": "Name a pizza."}]
    pq.write_table(pa.table({"prompt": pa.nulls(2), "messages": [chat, chat]}), src)
    out = tmp_path / "out.parquet"

    result = invoke(mock_api, src, out)

    assert_clean_exit(result, 0)
    table = pq.read_table(out)
    assert table.column("answer").to_pylist() == [mock_answer("Name a pizza.")] * 2
    assert table.column("prompt").to_pylist() == [None, None]


@pytest.mark.parametrize(
    ("content", "prompts"),
    [
        (b'\xef\xbb\xbf{"prompt": "x"}\n{"prompt": "y"}\n', ["x", "y"]),
        (b'{"prompt": "x"}\r\n{"prompt": "y"}\r\n', ["x", "y"]),
        (b'{"prompt": "x"}\r\n\r\n{"prompt": "y"}', ["x", "y"]),
        (b'{"prompt": "x"}\n{"prompt": "y"}', ["x", "y"]),
        (b'\n\n{"prompt": "x"}\n   \n{"prompt": "y"}\n\n', ["x", "y"]),
        (b'\xef\xbb\xbf{"prompt": "only"}', ["only"]),
    ],
    ids=["bom", "crlf", "crlf-blank-no-final-newline", "no-final-newline", "blank-lines", "bom-1"],
)
def test_odd_but_valid_files_are_read(
    mock_api: ThreadedMockServer, tmp_path: Path, content: bytes, prompts: list[str]
) -> None:
    src = tmp_path / "prompts.jsonl"
    src.write_bytes(content)
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, src, out)

    assert_clean_exit(result, 0)
    rows = read_jsonl(out)
    assert [r["answer"] for r in rows] == [mock_answer(p) for p in prompts]
    assert [r["prompt"] for r in rows] == prompts
    assert [r["id"] for r in rows] == [str(i) for i in range(len(prompts))]


def test_crlf_file_reports_physical_line_numbers(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    src = tmp_path / "prompts.jsonl"
    src.write_bytes(b'\xef\xbb\xbf{"prompt": "x"}\r\n\r\n{"prompt": ""}\r\n')
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, src, out)

    assert_refused(result, mock_api, out)
    assert f"{src}:3: field 'prompt': is empty" in result.stderr


def test_bom_line_with_a_bad_row_is_line_one(mock_api: ThreadedMockServer, tmp_path: Path) -> None:
    src = tmp_path / "prompts.jsonl"
    src.write_bytes(b'\xef\xbb\xbf{"prompt": 3}\n')
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, src, out)

    assert_refused(result, mock_api, out)
    assert f"{src}:1: field 'prompt': must be a string" in result.stderr


def test_gzip_with_damaged_first_block_exits_2(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    data = bytearray(gzip.compress(lines(j({"prompt": "one"}), j({"prompt": "two"}))))
    data[10] = 0  # the first deflate byte (gzip's header is 10 bytes): a broken block
    src = tmp_path / "damaged.jsonl.gz"
    src.write_bytes(bytes(data))
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, src, out)

    assert_refused(result, mock_api, out)
    assert str(src) in result.stderr


def test_gzip_input_bad_row_names_the_gz_file(mock_api: ThreadedMockServer, tmp_path: Path) -> None:
    src = tmp_path / "prompts.JSONL.GZ"
    src.write_bytes(gzip.compress(lines(j({"prompt": "x"}), j({"prompt": 2}))))
    out = tmp_path / "out.jsonl"

    result = invoke(mock_api, src, out)

    assert_refused(result, mock_api, out)
    assert f"{src}:2: field 'prompt'" in result.stderr


# -- fuzz: the reader never fails with anything but InputError ---------------------------------

KEYS = st.sampled_from(
    ["prompt", "messages", "id", "custom_id", "body", "role", "content", "answer", "text", "x"]
)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS | st.text(max_size=4), inner),
    max_leaves=4,
)
ROW_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "prompt": JSON_VALUES,
        "messages": st.lists(
            st.fixed_dictionaries({}, optional={"role": JSON_VALUES, "content": JSON_VALUES}),
            max_size=3,
        )
        | JSON_VALUES,
        "id": JSON_VALUES,
        "custom_id": JSON_VALUES,
        "body": JSON_VALUES,
        "tag": JSON_VALUES,
    },
)
LINES = st.lists(
    JSON_VALUES.map(lambda v: json.dumps(v).encode())
    | ROW_LIKE.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    | st.binary(max_size=40)
    | st.sampled_from([b"", b"  ", b"\r", b"\xef\xbb\xbf", b'{"prompt": "ok"}']),
    max_size=8,
)


@pytest.fixture(scope="module")
def fuzz_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="batchpizza-fuzz-") as name:
        yield Path(name)


def nonblank_lines(content: bytes) -> int:
    """What the reader must count as rows: physical lines with more than white space."""
    if content.startswith(b"\xef\xbb\xbf"):
        content = content[3:]
    parts = content.split(b"\n")
    return sum(1 for p in parts if p.strip())


@dataclass
class Scanned:
    total: int
    bad: int
    first_bad: list[Any]  # reader rows with .pos, .at, .problem
    prompts: list[tuple[int, str, str]]  # (pos, id, prompt) of every good row


def scan_file(path: Path, folder: Path) -> Scanned | None:
    """What the validation pass makes of a file; None when the file is refused with an
    InputError. Any other exception fails the test."""
    config = RunConfig(input=str(path), output=str(folder / "out.jsonl"))
    try:
        source = open_source(config.input, Fields.from_config(config))
        try:
            scan = ScanIndex()
            try:
                scan.scan(source.scan(), source.unit, source.names)
                if scan.bad:
                    error = InputError.of_rows(describe(source, scan.first_bad), scan.bad)
                    assert isinstance(error, InputError)
                    assert error.total_bad == scan.bad
                    assert str(scan.bad) in error.message
                # What a run would send with an empty checkpoint: every good row, interpreted.
                planning = Checkpoint.planning(folder / "none.checkpoint", scan)
                try:
                    plan = planning.plan()
                    sent = list(planning.todo_positions())
                    positions = [
                        pos for (pos,) in planning._conn.execute("SELECT pos FROM temp.todo")
                    ]
                finally:
                    planning.close()
                # Identical requests are sent once; every good row is planned.
                assert plan.to_send == len(sent) and set(sent) <= set(positions)
                assert plan.to_send + plan.reused == len(positions) == scan.total - scan.bad
                prompts = [(pos, p.id, p.text) for pos, p in source.prompts(positions)]
                assert [p[0] for p in prompts] == positions
                return Scanned(scan.total, scan.bad, list(scan.first_bad), prompts)
            finally:
                scan.close()
        finally:
            source.close()
    except InputError:
        return None


def parses_as_json(line: bytes) -> bool:
    try:
        jsonl_source.load(line)
    except ValueError:
        return False
    return True


def check_rows(scanned: Scanned | None, content: bytes) -> None:
    if content.startswith((b"\xff\xfe", b"\xfe\xff")):  # a UTF-16 file: refused, said plainly
        assert scanned is None
        return
    assert scanned is not None, "a readable .jsonl file is never refused as a whole"
    total, bad = scanned.total, scanned.bad
    expected = nonblank_lines(content)
    body = content[3:] if content.startswith(b"\xef\xbb\xbf") else content
    last = body.split(b"\n")[-1]
    if last.strip() and not parses_as_json(last):
        expected -= 1  # a torn last line (no newline, not JSON) waits for the next run
    assert total == expected
    assert 0 <= bad <= total
    assert len(scanned.first_bad) == min(bad, InputError.shown)
    physical = content.count(b"\n") + 1
    positions = [row.pos for row in scanned.first_bad]
    assert positions == sorted(positions)
    for row in scanned.first_bad:
        assert 0 <= row.pos < total
        assert 1 <= row.at <= physical
        assert isinstance(row.problem, str) and row.problem
    assert len(scanned.prompts) == total - bad
    assert len({row_id for _pos, row_id, _prompt in scanned.prompts}) == total - bad
    for pos, row_id, prompt in scanned.prompts:
        assert 0 <= pos < total
        assert isinstance(row_id, str) and row_id
        assert isinstance(prompt, str) and prompt.strip()


@pytest.mark.slow
@settings(
    max_examples=examples(1000),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(content=LINES.map(b"\n".join))
def test_fuzz_jsonl_lines_are_rows_or_bad_rows(fuzz_dir: Path, content: bytes) -> None:
    path = fuzz_dir / "fuzz.jsonl"
    path.write_bytes(content)
    check_rows(scan_file(path, fuzz_dir), content)


@pytest.mark.slow
@settings(
    max_examples=examples(1500),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(content=st.binary(max_size=300))
def test_fuzz_random_bytes_never_crash_the_reader(fuzz_dir: Path, content: bytes) -> None:
    path = fuzz_dir / "bytes.jsonl"
    path.write_bytes(content)
    check_rows(scan_file(path, fuzz_dir), content)


@pytest.fixture(scope="module")
def parquet_bytes() -> bytes:
    buffer = pa.BufferOutputStream()
    table = pa.table({"id": ["a", "b", "c"], "prompt": ["one", "", None], "n": [1, 2, 3]})
    pq.write_table(table, buffer, compression="none")
    return bytes(buffer.getvalue().to_pybytes())


DAMAGE = st.lists(
    st.tuples(st.integers(min_value=0), st.binary(min_size=1, max_size=4)), min_size=1, max_size=4
)


def damage(good: bytes, edits: list[tuple[int, bytes]], cut: int | None) -> bytes:
    data = bytearray(good)
    for at, patch in edits:
        at %= len(data)
        data[at : at + len(patch)] = patch
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    return bytes(data)


@settings(
    max_examples=examples(400),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(edits=DAMAGE, cut=st.none() | st.integers(min_value=0))
def test_fuzz_damaged_gzip_is_an_input_error(
    fuzz_dir: Path, edits: list[tuple[int, bytes]], cut: int | None
) -> None:
    good = gzip.compress(lines(*[j({"prompt": f"question {i}"}) for i in range(20)]))
    path = fuzz_dir / "damaged.jsonl.gz"
    path.write_bytes(damage(good, edits, cut))
    scan_file(path, fuzz_dir)  # rows or None (InputError); any other exception fails


@settings(
    max_examples=examples(600),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(edits=DAMAGE, cut=st.none() | st.integers(min_value=0))
def test_fuzz_damaged_parquet_is_an_input_error(
    fuzz_dir: Path, parquet_bytes: bytes, edits: list[tuple[int, bytes]], cut: int | None
) -> None:
    path = fuzz_dir / "damaged.parquet"
    path.write_bytes(damage(parquet_bytes, edits, cut))
    scan_file(path, fuzz_dir)  # rows or None (InputError); any other exception fails
