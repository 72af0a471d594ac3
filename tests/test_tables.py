"""In-memory inputs: each kind comes back as itself with the result columns added, never changed;
Parquet schema metadata carried so that pandas and datasets read back what was written."""

from __future__ import annotations

import copy
import datetime as dt
import decimal
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# datasets reads these when imported: set first, so that no test can reach the Hugging Face hub.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import datasets
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchpizza.errors import InputError, UsageError
from batchpizza.schema_metadata import carry_metadata
from batchpizza.tables import InMemory, from_data, kind_of

RESULT_SCHEMA = pa.schema(
    [
        ("answer", pa.string()),
        ("finish_reason", pa.string()),
        ("misuse", pa.bool_()),
        ("error", pa.string()),
        ("attempts", pa.int64()),
        ("latency_ms", pa.float64()),
        ("model", pa.string()),
        ("prompt_tokens", pa.int64()),
    ]
)
RESULT_NAMES = RESULT_SCHEMA.names


def results(n: int) -> pa.Table:
    """Synthetic result columns, row i answered "answer i"; odd rows failed (nulls in places)."""
    return pa.table(
        {
            "answer": [None if i % 2 else f"answer {i}" for i in range(n)],
            "finish_reason": ["error" if i % 2 else "stop" for i in range(n)],
            "misuse": [False] * n,
            "error": ["HTTP 503 after 6 attempts" if i % 2 else None for i in range(n)],
            "attempts": [6 if i % 2 else 1 for i in range(n)],
            "latency_ms": [12.5 * i for i in range(n)],
            "model": ["gpt-4o-mini"] * n,
            "prompt_tokens": [None if i % 2 else 10 + i for i in range(n)],
        },
        schema=RESULT_SCHEMA,
    )


def with_results(data: InMemory) -> pa.Table:
    """What the runner hands back: the input's columns as it read them, then the results."""
    table = pa.Table.from_batches(list(data.batches()), schema=data.schema)
    new = results(table.num_rows)
    return pa.Table.from_arrays(
        [*table.columns, *new.columns], names=[*table.column_names, *new.column_names]
    )


# -- recognising the input --------------------------------------------------------------------------


def test_a_list_of_dicts_needs_no_library() -> None:
    code = (
        "import sys; from batchpizza.tables import from_data; "
        "data = from_data([{'prompt': 'x'}]); "
        "out = data.restore([{'answer': 'y'}]); assert out == [{'prompt': 'x', 'answer': 'y'}]; "
        "loaded = {'pandas', 'polars', 'datasets', 'pyarrow'} & set(sys.modules); "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("data", "hint"),
    [
        ({"prompt": "x"}, "list of dicts"),
        ("prompts.jsonl", None),
        (None, None),
        (({"prompt": "x"},), None),
        (pd.Series(["x"]), "to_frame"),
        (pl.LazyFrame({"prompt": ["x"]}), "collect"),
        (datasets.DatasetDict({"train": datasets.Dataset.from_dict({"prompt": ["x"]})}), "split"),
        (pa.record_batch({"prompt": ["x"]}), "from_batches"),
    ],
    ids=["dict", "str", "None", "tuple", "Series", "LazyFrame", "DatasetDict", "RecordBatch"],
)
def test_anything_else_is_a_usage_error_naming_what_is_accepted(
    data: object, hint: str | None
) -> None:
    with pytest.raises(UsageError) as raised:
        from_data(data)
    message = raised.value.message
    for accepted in ("pandas DataFrame", "polars DataFrame", "pyarrow Table", "datasets.Dataset"):
        assert accepted in message
    assert type(data).__name__ in message
    if hint is not None:
        assert hint in message


def test_kinds_are_told_apart() -> None:
    table = pa.table({"prompt": ["x"]})
    assert kind_of([]) == "rows"
    assert kind_of(table) == "arrow"
    assert kind_of(table.to_reader()) == "stream"
    assert kind_of(table.to_pandas()) == "pandas"
    assert kind_of(pl.from_arrow(table)) == "polars"
    assert kind_of(datasets.Dataset(table)) == "datasets"
    assert kind_of(object()) is None


# -- pandas -----------------------------------------------------------------------------------------


@pytest.fixture
def frame() -> pd.DataFrame:
    """Every dtype that Arrow alone would not give back, under an index that is not 0..n-1."""
    return pd.DataFrame(
        {
            "prompt": ["one", "two", "three", "four"],
            "count": pd.array([1, None, 3, 4], dtype="Int64"),
            "topic": pd.Categorical(["a", "b", "a", "c"], categories=["c", "b", "a"], ordered=True),
            "when": pd.to_datetime(["2024-01-01", "2024-03-31", None, "2024-12-25"]).tz_localize(
                "Europe/Rome"
            ),
            "flag": pd.array([True, None, False, True], dtype="boolean"),
            "note": pd.array(["x", None, "z", "w"], dtype="string"),
        },
        index=pd.Index([42, 7, 7, 3], name="key"),  # unsorted, repeated, named
    )


def test_a_pandas_frame_comes_back_with_its_index_dtypes_and_the_results(
    frame: pd.DataFrame,
) -> None:
    before = frame.copy(deep=True)
    data = from_data(frame)
    out = data.restore(with_results(data))
    assert isinstance(out, pd.DataFrame)
    pd.testing.assert_frame_equal(out[list(frame.columns)], frame)  # index, order, dtypes, values
    assert list(out.columns) == [*frame.columns, *RESULT_NAMES]
    assert out["answer"].tolist()[0] == "answer 0" and pd.isna(out["answer"].tolist()[1])
    assert out["attempts"].dtype == "int64"
    assert out["latency_ms"].dtype == "float64"
    assert out["misuse"].dtype == "bool"
    assert out["prompt_tokens"].dtype == "Int64"  # nulls: nullable ints, not floats
    assert out["prompt_tokens"].tolist()[:2] == [10, pd.NA]
    pd.testing.assert_frame_equal(frame, before)  # the input is not changed


@pytest.mark.parametrize(
    "index",
    [pd.RangeIndex(10, 14), pd.RangeIndex(4), pd.date_range("2024-01-01", periods=4, tz="UTC")],
    ids=["range-from-10", "default", "datetime-tz"],
)
def test_any_index_is_kept(index: pd.Index) -> None:
    frame = pd.DataFrame({"prompt": list("abcd")}, index=index)
    out = from_data(frame).restore(results(4))
    pd.testing.assert_index_equal(out.index, frame.index)


def test_results_alone_or_after_the_input_columns_are_both_accepted(frame: pd.DataFrame) -> None:
    data = from_data(frame)
    pd.testing.assert_frame_equal(data.restore(results(4)), data.restore(with_results(data)))
    with pytest.raises(ValueError, match="rows"):
        data.restore(results(3))
    with pytest.raises(ValueError, match="input columns"):
        data.restore(pa.table({"answer": ["a"] * 4, "prompt": ["p"] * 4}))


def test_a_pandas_column_arrow_cannot_hold_matters_only_if_read() -> None:
    frame = pd.DataFrame({"prompt": ["a", "b"], "odd": [1, "mixed"]})
    data = from_data(frame)
    [batch] = data.batches(["prompt"])
    assert batch.column("prompt").to_pylist() == ["a", "b"]
    with pytest.raises(InputError, match="row 1: field 'odd': a string where row 0 holds a number"):
        _ = data.table
    out = data.restore(results(2))
    assert out["odd"].tolist() == [1, "mixed"]


# -- polars -----------------------------------------------------------------------------------------


def test_a_polars_frame_comes_back_as_polars_with_the_results() -> None:
    frame = pl.DataFrame(
        {
            "prompt": ["one", "two", "three"],
            "topic": pl.Series(["a", "b", "a"], dtype=pl.Categorical),
            "when": pl.Series(
                [dt.datetime(2024, 1, 1), None, dt.datetime(2024, 2, 1)]
            ).dt.replace_time_zone("Asia/Tokyo"),
            "count": pl.Series([1, None, 3], dtype=pl.Int32),
        }
    )
    before = frame.clone()
    data = from_data(frame)
    assert data.table.schema.field("prompt").type in (pa.large_string(), pa.string())
    out = data.restore(with_results(data))
    assert isinstance(out, pl.DataFrame)
    assert out.select(frame.columns).equals(frame)
    assert out.schema["topic"] == pl.Categorical and out.schema["count"] == pl.Int32
    assert out.columns == [*frame.columns, *RESULT_NAMES]
    assert out["answer"].to_list() == ["answer 0", None, "answer 2"]
    assert frame.equals(before) and frame.columns == before.columns


# -- pyarrow ----------------------------------------------------------------------------------------


def test_an_arrow_table_keeps_its_schema_and_field_metadata() -> None:
    schema = pa.schema(
        [pa.field("prompt", pa.string(), metadata={"doc": "the question"}), ("n", pa.int8())],
        metadata={"source": "survey 2024"},
    )
    table = pa.table({"prompt": ["a", "b"], "n": [1, 2]}, schema=schema)
    out = from_data(table).restore(results(2))
    assert isinstance(out, pa.Table)
    assert out.schema.metadata == {b"source": b"survey 2024"}
    assert out.schema.field("prompt").metadata == {b"doc": b"the question"}
    assert out.select(["prompt", "n"]).equals(table)
    assert out.schema.names == ["prompt", "n", *RESULT_NAMES]
    assert table.schema.names == ["prompt", "n"]  # the input is not changed


def test_an_arrow_table_made_from_pandas_still_reads_back_as_that_frame(
    frame: pd.DataFrame,
) -> None:
    table = pa.Table.from_pandas(frame)
    out = from_data(table).restore(results(4)).to_pandas()
    pd.testing.assert_frame_equal(out[list(frame.columns)], frame)
    assert list(out.columns) == [*frame.columns, *RESULT_NAMES]


def test_a_record_batch_reader_streams_through() -> None:
    """Batches are pulled from the input only as the output is read: nothing is gathered."""
    pulled: list[int] = []
    schema = pa.schema([("prompt", pa.string())], metadata={"k": "v"})

    def source() -> Iterator[pa.RecordBatch]:
        for i in range(5):
            pulled.append(i)
            yield pa.record_batch({"prompt": [f"p{i}a", f"p{i}b"]}, schema=schema)

    data = from_data(pa.RecordBatchReader.from_batches(schema, source()))
    assert data.num_rows is None and data.schema == schema

    def answered() -> Iterator[pa.RecordBatch]:
        for batch in data.batches():
            [new] = results(batch.num_rows).to_batches()
            yield pa.RecordBatch.from_arrays(
                [*batch.columns, *new.columns], names=[*batch.schema.names, *new.schema.names]
            )

    out = data.restore(answered())
    assert isinstance(out, pa.RecordBatchReader)
    assert out.schema.metadata == {b"k": b"v"}
    first = out.read_next_batch()
    assert first.column("prompt").to_pylist() == ["p0a", "p0b"]
    assert len(pulled) <= 2  # the output's first batch, perhaps one looked ahead to: not all 5
    rest = out.read_all()
    assert rest.num_rows == 8 and pulled == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError, match="once"):
        next(data.batches())


# -- datasets ---------------------------------------------------------------------------------------


@pytest.fixture
def dataset() -> datasets.Dataset:
    features = datasets.Features(
        {
            "prompt": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["negative", "positive"]),
            "score": datasets.Value("float32"),
        }
    )
    rows = {"prompt": ["a", "b", "c", "d"], "label": [0, 1, 1, 0], "score": [0.5, 1.0, 0.25, 2.0]}
    return datasets.Dataset.from_dict(rows, features=features)


def test_a_dataset_comes_back_with_its_features_and_the_new_columns(
    dataset: datasets.Dataset,
) -> None:
    shuffled = dataset.select([3, 1, 0, 2])  # an indices mapping over the table
    before = shuffled.to_dict()
    data = from_data(shuffled)
    out = data.restore(with_results(data))
    assert isinstance(out, datasets.Dataset)
    assert out["prompt"] == ["d", "b", "a", "c"]
    assert out.features["label"] == datasets.ClassLabel(names=["negative", "positive"])
    assert out.features["score"] == datasets.Value("float32")
    assert out.features["answer"] == datasets.Value("string")
    assert out.features["prompt_tokens"] == datasets.Value("int64")
    assert list(out.features) == [*dataset.features, *RESULT_NAMES]
    assert out.features["label"].int2str(out["label"]) == ["negative", "positive"] * 2
    assert shuffled.to_dict() == before and list(shuffled.features) == list(dataset.features)


def test_a_dataset_keeps_its_format(dataset: datasets.Dataset) -> None:
    formatted = dataset.with_format("pandas")
    out = from_data(formatted).restore(results(4))
    assert out.format["type"] == "pandas"
    assert list(out[:2].columns) == [*dataset.features, *RESULT_NAMES]


# -- a list of dicts --------------------------------------------------------------------------------


def test_a_list_of_dicts_comes_back_as_new_dicts_in_order() -> None:
    rows: list[Any] = [
        {"id": "a", "prompt": "x", "meta": {"k": [1]}},
        {"messages": [{"role": "user", "content": "y"}]},
        "not an object",  # a bad row: it is kept, with its result alone
    ]
    before = copy.deepcopy(rows)
    data = from_data(rows)
    assert data.rows is rows and data.num_rows == 3
    answers = [
        {"answer": "1", "finish_reason": "stop"},
        {"answer": "2"},
        {"finish_reason": "invalid"},
    ]
    out = data.restore(answers)
    assert out == [
        {"id": "a", "prompt": "x", "meta": {"k": [1]}, "answer": "1", "finish_reason": "stop"},
        {"messages": [{"role": "user", "content": "y"}], "answer": "2"},
        {"finish_reason": "invalid"},
    ]
    assert all(o is not r for o, r in zip(out, rows, strict=True))
    assert rows == before
    with pytest.raises(ValueError, match="2 results for 3 rows"):
        data.restore(answers[:2])
    with pytest.raises(TypeError):
        _ = data.table


# -- every kind ------------------------------------------------------------------------------------

EMPTY = pa.table({"prompt": pa.array([], pa.string())})


@pytest.mark.parametrize(
    "data",
    [
        EMPTY,
        EMPTY.to_pandas(),
        pl.from_arrow(EMPTY),
        datasets.Dataset(EMPTY),
        EMPTY.to_reader(),
    ],
    ids=["arrow", "pandas", "polars", "datasets", "stream"],
)
def test_an_empty_input_comes_back_empty_with_every_result_column(data: Any) -> None:
    memory = from_data(data)
    result = pa.Table.from_arrays(
        [pa.array([], pa.string()), *results(0).columns], names=["prompt", *RESULT_NAMES]
    )
    out = memory.restore(result)
    assert type(out) is type(data)
    if isinstance(out, pa.Table | pa.RecordBatchReader):
        names = out.schema.names
    else:
        names = out.column_names if isinstance(out, datasets.Dataset) else list(out.columns)
    assert names == ["prompt", *RESULT_NAMES]
    assert from_data([]).restore([]) == []


def test_results_read_from_the_dataset_itself_get_features_of_their_own(
    dataset: datasets.Dataset,
) -> None:
    data = from_data(dataset)
    result = data.table.append_column("answer", pa.array(["x"] * 4))
    assert b"huggingface" in result.schema.metadata  # the dataset's Features, without "answer"
    out = data.restore(result)
    assert out.features["answer"] == datasets.Value("string")
    assert out.features["label"] == dataset.features["label"]


# -- Parquet schema metadata ------------------------------------------------------------------------


def write_output(source: Path, dest: Path, id_column: bool = True) -> pa.Schema:
    """What the Parquet sink does: the input's columns (an id first, where the input has none),
    the result columns after them, under carry_metadata's schema."""
    table = pq.read_table(source)
    input_schema = pq.read_schema(source)
    columns = [*table.columns, *results(table.num_rows).columns]
    fields = [*table.schema, *RESULT_SCHEMA]
    if id_column:
        columns.insert(0, pa.array([f"r{i}" for i in range(table.num_rows)]))
        fields.insert(0, pa.field("id", pa.string()))
    schema = carry_metadata(input_schema, pa.schema(fields))
    with pq.ParquetWriter(dest, schema) as writer:
        writer.write_table(pa.Table.from_arrays(columns, schema=schema))
    return schema


def test_pandas_reads_back_its_frame_plus_the_new_columns(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    frame.to_parquet(tmp_path / "in.parquet")
    schema = write_output(tmp_path / "in.parquet", tmp_path / "out.parquet")
    described = [c["field_name"] for c in json.loads(schema.metadata[b"pandas"])["columns"]]
    assert set(described) == set(schema.names)  # every column listed, none that is gone
    out = pd.read_parquet(tmp_path / "out.parquet")
    pd.testing.assert_frame_equal(out[list(frame.columns)], frame)
    assert list(out.columns) == ["id", *frame.columns, *RESULT_NAMES]
    assert out["attempts"].dtype == "int64" and out["misuse"].dtype == "bool"
    assert out["id"].tolist() == ["r0", "r1", "r2", "r3"]


def test_pandas_reads_back_a_range_index(tmp_path: Path) -> None:
    frame = pd.DataFrame({"prompt": ["a", "b"], "w": [1.5, 2.5]}, index=pd.RangeIndex(3, 5))
    frame.to_parquet(tmp_path / "in.parquet")
    write_output(tmp_path / "in.parquet", tmp_path / "out.parquet", id_column=False)
    out = pd.read_parquet(tmp_path / "out.parquet")
    pd.testing.assert_index_equal(out.index, frame.index)
    assert list(out.columns) == ["prompt", "w", *RESULT_NAMES]


def test_pandas_reads_back_ints_as_column_labels_as_text(tmp_path: Path) -> None:
    frame = pd.DataFrame({0: ["a", "b"], 1: [1, 2]})
    frame.to_parquet(tmp_path / "in.parquet")
    write_output(tmp_path / "in.parquet", tmp_path / "out.parquet", id_column=False)
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert list(out.columns) == ["0", "1", *RESULT_NAMES]  # readable, where it would fail


def test_pandas_reads_back_columns_of_several_levels(tmp_path: Path) -> None:
    frame = pd.DataFrame([["a", 1.0], ["b", 2.0]])
    frame.columns = pd.MultiIndex.from_tuples([("q", "prompt"), ("q", "weight")])
    frame.to_parquet(tmp_path / "in.parquet")
    write_output(tmp_path / "in.parquet", tmp_path / "out.parquet", id_column=False)
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert list(out.columns) == [("q", "prompt"), ("q", "weight")] + [
        (name, "") for name in RESULT_NAMES
    ]


def test_an_index_column_that_is_gone_leaves_a_readable_file(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    frame.to_parquet(tmp_path / "in.parquet")
    input_schema = pq.read_schema(tmp_path / "in.parquet")
    kept = [f for f in input_schema if f.name != "key"]
    schema = carry_metadata(input_schema, pa.schema([*kept, *RESULT_SCHEMA]))
    assert json.loads(schema.metadata[b"pandas"])["index_columns"] == []
    table = pq.read_table(tmp_path / "in.parquet").drop_columns(["key"])
    out = pa.Table.from_arrays([*table.columns, *results(4).columns], schema=schema).to_pandas()
    assert list(out.index) == [0, 1, 2, 3]
    assert out["count"].dtype == "Int64"


def test_datasets_reads_back_its_features_plus_the_new_columns(
    dataset: datasets.Dataset, tmp_path: Path
) -> None:
    dataset.to_parquet(tmp_path / "in.parquet")
    write_output(tmp_path / "in.parquet", tmp_path / "out.parquet")
    loaded = datasets.load_dataset(
        "parquet",
        data_files=str(tmp_path / "out.parquet"),
        split="train",
        cache_dir=str(tmp_path / "cache"),
    )
    assert loaded.features["label"] == datasets.ClassLabel(names=["negative", "positive"])
    assert loaded.features["score"] == datasets.Value("float32")
    assert list(loaded.features) == ["id", *dataset.features, *RESULT_NAMES]
    assert loaded["prompt"] == dataset["prompt"] and loaded["answer"][0] == "answer 0"


def test_a_new_column_datasets_has_no_plain_feature_for_drops_its_metadata(
    dataset: datasets.Dataset, tmp_path: Path
) -> None:
    dataset.to_parquet(tmp_path / "in.parquet")
    input_schema = pq.read_schema(tmp_path / "in.parquet")
    output = pa.schema([*input_schema, ("tokens", pa.list_(pa.string()))])
    assert b"huggingface" not in (carry_metadata(input_schema, output).metadata or {})


# Every Arrow type a Parquet input may hold. Parquet itself changes three on the way in
# (timestamp[s] -> [ms], date64 -> date32, dictionary of large_string -> of string): an output
# must keep what the input file holds, exactly. (string_view is left out: pyarrow 26 aborts at
# interpreter exit once a string_view column read from Parquet has been alive.)
EVERY_TYPE = {
    "ts_s": pa.timestamp("s"),
    "ts_ms_utc": pa.timestamp("ms", tz="UTC"),
    "ts_us": pa.timestamp("us"),
    "ts_ns_zone": pa.timestamp("ns", tz="America/New_York"),
    "date32": pa.date32(),
    "date64": pa.date64(),
    "time32": pa.time32("ms"),
    "time64": pa.time64("ns"),
    "duration": pa.duration("us"),
    "decimal": pa.decimal128(20, 4),
    "decimal256": pa.decimal256(50, 2),
    "binary": pa.binary(),
    "large_binary": pa.large_binary(),
    "fixed_binary": pa.binary(3),
    "binary_view": pa.binary_view(),
    "string": pa.string(),
    "large_string": pa.large_string(),
    "dictionary": pa.dictionary(pa.int32(), pa.string()),
    "ordered_dictionary": pa.dictionary(pa.int8(), pa.large_string(), ordered=True),
    "list_of_structs": pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])),
    "large_list": pa.large_list(pa.int64()),
    "fixed_list": pa.list_(pa.float32(), 2),
    "struct": pa.struct([("x", pa.float64()), ("y", pa.list_(pa.string()))]),
    "map": pa.map_(pa.string(), pa.int16()),
    "null": pa.null(),
    "float16": pa.float16(),
    "uint8": pa.uint8(),
    "uint64": pa.uint64(),
    "int8": pa.int8(),
    "bool": pa.bool_(),
}
VALUES: dict[str, Any] = {
    "ts_s": dt.datetime(2024, 5, 6, 7, 8, 9),
    "ts_ms_utc": dt.datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=dt.timezone.utc),
    "ts_us": dt.datetime(2024, 5, 6, 7, 8, 9, 123456),
    "ts_ns_zone": dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc),
    "date32": dt.date(2024, 2, 29),
    "date64": dt.date(1999, 12, 31),
    "time32": dt.time(1, 2, 3, 4000),
    "time64": dt.time(23, 59, 59, 999999),
    "duration": dt.timedelta(days=1, microseconds=5),
    "decimal": decimal.Decimal("1234567890123456.7890"),
    "decimal256": decimal.Decimal("1" * 48 + ".25"),
    "binary": b"\x00\xff",
    "large_binary": b"big",
    "fixed_binary": b"abc",
    "binary_view": b"view",
    "string": "s",
    "large_string": "ls",
    "dictionary": "cat",
    "ordered_dictionary": "low",
    "list_of_structs": [{"role": "user", "content": "hi"}],
    "large_list": [1, 2, 3],
    "fixed_list": [1.5, 2.5],
    "struct": {"x": 1.0, "y": ["a"]},
    "map": [("k", 7)],
    "null": None,
    "float16": None,  # pyarrow builds no float16 array from Python floats; nulls still typed
    "uint8": 255,
    "uint64": 2**64 - 1,
    "int8": -128,
    "bool": True,
}


# pyarrow before 26 (the last for Python 3.10 is 25) cannot read back from Parquet a null
# fixed-size list it wrote ("Expected all lists to be of size=2"): there that column's second
# value is a list too.
NULL_FIXED_LIST_READS = int(pa.__version__.split(".")[0]) >= 26


def second_value(name: str) -> Any:
    return VALUES[name] if name == "fixed_list" and not NULL_FIXED_LIST_READS else None


def test_every_arrow_type_survives_a_parquet_to_parquet_run(tmp_path: Path) -> None:
    columns = {
        name: pa.array([VALUES[name], second_value(name)], type)
        for name, type in EVERY_TYPE.items()
    }
    original = pa.table(columns, schema=pa.schema(EVERY_TYPE.items(), metadata={"k": "v"}))
    pq.write_table(original, tmp_path / "in.parquet")
    input_schema = pq.read_schema(tmp_path / "in.parquet")
    changed_by_parquet = {
        f.name for f in original.schema if not input_schema.field(f.name).type.equals(f.type)
    }
    assert changed_by_parquet == {"ts_s", "date64", "ordered_dictionary"}

    write_output(tmp_path / "in.parquet", tmp_path / "out.parquet")
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.schema.names == ["id", *EVERY_TYPE, *RESULT_NAMES]
    for field in input_schema:
        assert out.schema.field(field.name).type.equals(field.type), field.name
    assert out.select(list(EVERY_TYPE)).equals(pq.read_table(tmp_path / "in.parquet"))
    assert out.schema.metadata is not None and out.schema.metadata[b"k"] == b"v"
    assert out.schema.field("answer").type == pa.string()
