"""FieldTypes: JSONL fields carried into Parquet keep native types; JSON text only where they clash."""

from __future__ import annotations

import decimal
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchpizza.fieldtypes import inference as fieldtypes
from batchpizza.fieldtypes import tree
from batchpizza.fieldtypes.inference import FieldTypes
from batchpizza.fieldtypes.tree import MAX_STRUCT_KEYS

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])


def chat(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in turns]


def inferred(rows: list[dict[str, Any]], exclude: tuple[str, ...] = ("id",)) -> FieldTypes:
    types = FieldTypes(set(exclude))
    for row in rows:
        types.observe(row)
    return types


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "batchpizza"]


def write(path: Path, rows: list[dict[str, Any]], types: FieldTypes) -> pa.Table:
    """The rows as the Parquet sink will write them: one column per field, via to_array."""
    arrow = types.arrow_types()
    table = pa.table(
        {name: FieldTypes.to_array([r.get(name) for r in rows], t) for name, t in arrow.items()}
    )
    pq.write_table(table, path)
    return table


# -- inference ------------------------------------------------------------------------------------


def test_messages_are_a_list_of_role_content_structs() -> None:
    rows = [
        {"id": 1, "messages": chat(("system", "Be brief."), ("user", "Hi"))},
        {"id": 2, "messages": chat(("user", "Hello"))},
    ]
    assert inferred(rows).arrow_types() == {"messages": pa.list_(MESSAGE)}


def test_a_dict_is_a_struct_of_the_union_of_its_keys_in_first_seen_order() -> None:
    rows = [{"meta": {"b": 1, "a": "x"}}, {"meta": {"c": True}}, {"meta": {"a": "y", "b": None}}]
    types = inferred(rows)
    assert types.arrow_types() == {
        "meta": pa.struct([("b", pa.int64()), ("a", pa.string()), ("c", pa.bool_())])
    }
    column = FieldTypes.to_array([r["meta"] for r in rows], types.arrow_types()["meta"])
    assert column.to_pylist() == [
        {"b": 1, "a": "x", "c": None},
        {"b": None, "a": None, "c": True},
        {"b": None, "a": "y", "c": None},
    ]


def test_fields_keep_first_seen_order_and_the_id_is_excluded() -> None:
    types = inferred([{"id": "a", "z": 1}, {"y": "s", "id": "b", "x": 1.5, "z": 2}])
    assert types.names == ["z", "y", "x"]
    assert list(types.arrow_types()) == ["z", "y", "x"]
    assert list(types.arrow_types(["x", "z"])) == ["x", "z"]


def test_scalars_keep_their_types_and_ints_with_floats_are_floats() -> None:
    rows = [{"b": True, "i": 1, "f": 1.5, "s": "x", "n": 1}, {"b": False, "i": 2, "f": 2, "n": 2.5}]
    assert inferred(rows).arrow_types() == {
        "b": pa.bool_(),
        "i": pa.int64(),
        "f": pa.float64(),
        "s": pa.string(),
        "n": pa.float64(),
    }


def test_nulls_are_ignored_and_a_field_only_ever_null_is_a_string_column() -> None:
    rows = [{"a": None, "n": None, "l": [None, 1]}, {"a": 3, "n": None, "l": None}, {"a": None}]
    types = inferred(rows)
    assert types.arrow_types() == {"a": pa.int64(), "n": pa.string(), "l": pa.list_(pa.int64())}
    assert FieldTypes.to_array([None, None], pa.string()).null_count == 2


def test_empty_lists_merge_with_anything() -> None:
    rows = [{"l": [], "m": []}, {"l": [[], [1]]}, {"l": [[2.5]], "m": []}, {"l": []}]
    assert inferred(rows).arrow_types() == {
        "l": pa.list_(pa.list_(pa.float64())),
        "m": pa.list_(pa.string()),  # never an element: the most general type
    }


def test_deep_nesting_is_native_at_every_level() -> None:
    rows = [
        {"d": {"a": [{"b": {"c": [[1, 2], []]}}], "e": {"f": {"g": "x"}}}},
        {"d": {"a": [{"b": {"c": [[3]], "h": True}}, {"b": None}], "e": None}},
    ]
    expected = pa.struct(
        [
            (
                "a",
                pa.list_(
                    pa.struct(
                        [
                            (
                                "b",
                                pa.struct(
                                    [("c", pa.list_(pa.list_(pa.int64()))), ("h", pa.bool_())]
                                ),
                            )
                        ]
                    )
                ),
            ),
            ("e", pa.struct([("f", pa.struct([("g", pa.string())]))])),
        ]
    )
    assert inferred(rows).arrow_types() == {"d": expected}


def test_an_openai_batch_body_is_a_struct_holding_the_messages() -> None:
    rows = [
        {"custom_id": f"r{i}", "body": {"model": "m", "messages": chat(("user", f"q{i}"))}}
        for i in range(5)
    ]
    types = inferred(rows, exclude=("custom_id",)).arrow_types()
    assert types["body"] == pa.struct([("model", pa.string()), ("messages", pa.list_(MESSAGE))])


# -- conflicts ------------------------------------------------------------------------------------


def test_a_conflict_makes_the_field_json_text_with_one_warning_naming_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows = [{"v": "text", "ok": 1}, {"v": 5, "ok": 2}, {"v": [1]}, {"v": "again"}]
    types = inferred(rows)
    with caplog.at_level(logging.WARNING, logger="batchpizza"):
        assert types.arrow_types() == {"v": None, "ok": pa.int64()}
        types.arrow_types()  # asked again: not said again
    [said] = warnings_of(caplog)
    assert "'v'" in said and "integer" in said and "string" in said and "JSON text" in said
    column = FieldTypes.to_array([r.get("v") for r in rows], None)
    assert column.to_pylist() == ['"text"', "5", "[1]", '"again"']


def test_a_conflict_deep_inside_names_where_it_is(caplog: pytest.LogCaptureFixture) -> None:
    rows = [{"m": chat(("user", "hi"))}, {"m": [{"role": "user", "content": ["parts"]}]}]
    types = inferred(rows)
    with caplog.at_level(logging.WARNING, logger="batchpizza"):
        assert types.arrow_types() == {"m": None}
    [said] = warnings_of(caplog)
    assert "m[].content" in said and "list" in said and "string" in said


@pytest.mark.parametrize(
    ("first", "second"),
    [(True, 1), ("1", 1), ({"a": 1}, [1]), ([1], "x"), ({"a": 1}, 2.5), ([{"a": 1}], [[1]])],
)
def test_kinds_that_cannot_share_a_column_clash(first: object, second: object) -> None:
    assert inferred([{"v": first}, {"v": second}]).arrow_types() == {"v": None}
    assert inferred([{"v": second}, {"v": first}]).arrow_types() == {"v": None}


def test_a_clash_in_one_field_leaves_the_others_native() -> None:
    rows = [{"a": 1, "m": chat(("u", "x"))}, {"a": "x", "m": chat(("u", "y"))}]
    assert inferred(rows).arrow_types() == {"a": None, "m": pa.list_(MESSAGE)}


def test_an_object_of_many_keys_with_agreeing_values_is_a_map() -> None:
    rows = [{"scores": {f"k{i}-{j}": float(j) for j in range(30)}} for i in range(5)]
    types = inferred(rows)
    assert types.arrow_types() == {"scores": pa.map_(pa.string(), pa.float64())}
    column = FieldTypes.to_array([r["scores"] for r in rows], types.arrow_types()["scores"])
    assert dict(column[0].as_py()) == rows[0]["scores"]


def test_an_object_of_many_keys_with_disagreeing_values_is_json_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows = [{"d": {f"k{j}": (j if j % 2 else str(j)) for j in range(MAX_STRUCT_KEYS + 1)}}]
    with caplog.at_level(logging.WARNING, logger="batchpizza"):
        assert inferred(rows).arrow_types() == {"d": None}
    assert len(warnings_of(caplog)) == 1


def test_memory_follows_the_schema_not_the_rows() -> None:
    """Keys that are data (a new key in every row) become a map: the state stays small."""
    types = FieldTypes()
    for i in range(20_000):
        types.observe({"counts": {f"word{i}": i, f"other{i}": 1}, "tags": [f"t{i}"]})
    assert types.arrow_types() == {
        "counts": pa.map_(pa.string(), pa.int64()),
        "tags": pa.list_(pa.string()),
    }
    assert len(types.to_json()) < 500
    assert all(len(f.seen) <= fieldtypes._CACHE_LIMIT for f in types._fields.values())


# -- integers beyond 64 bits ----------------------------------------------------------------------


def test_an_int_beyond_64_bits_is_kept_exact_as_a_decimal_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows = [{"n": 1}, {"n": 2**70}, {"n": -(2**70) - 1}, {"n": None}]
    types = inferred(rows)
    with caplog.at_level(logging.WARNING, logger="batchpizza"):
        arrow = types.arrow_types()
        types.arrow_types()
    assert arrow == {"n": pa.decimal128(38, 0)}
    assert len(warnings_of(caplog)) == 1 and "64 bits" in warnings_of(caplog)[0]
    column = FieldTypes.to_array([r["n"] for r in rows], arrow["n"])
    assert column.to_pylist() == [1, 2**70, -(2**70) - 1, None]
    assert all(isinstance(v, decimal.Decimal) for v in column.to_pylist()[:3])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2**63 - 1, pa.int64()),
        (-(2**63), pa.int64()),
        (2**63, pa.decimal128(38, 0)),
        (-(2**63) - 1, pa.decimal128(38, 0)),
        (10**38 - 1, pa.decimal128(38, 0)),
        (-(10**38) + 1, pa.decimal128(38, 0)),
        (10**38, pa.string()),
    ],
)
def test_the_int64_and_decimal_boundaries(value: int, expected: pa.DataType) -> None:
    types = inferred([{"n": value}])
    assert types.arrow_types()["n"] == expected
    assert FieldTypes.to_array([value], expected).to_pylist() in ([value], [str(value)])


def test_an_int_beyond_38_digits_is_kept_exact_as_text() -> None:
    rows = [{"n": 10**40 + 1}, {"n": 7}]
    types = inferred(rows)
    assert types.arrow_types() == {"n": pa.string()}
    column = FieldTypes.to_array([r["n"] for r in rows], pa.string())
    assert column.to_pylist() == [str(10**40 + 1), "7"]


def test_nested_big_ints_are_exact_and_found_through_the_line_shortcut() -> None:
    rows = [{"ids": [1, 2], "m": {"x": 3}}, {"ids": [2**70], "m": {"x": 10**40}}]
    for hinted in (False, True):
        types = FieldTypes()
        for row in rows:
            types.observe(row, json.dumps(row).encode() if hinted else None)
        arrow = types.arrow_types()
        assert arrow == {
            "ids": pa.list_(pa.decimal128(38, 0)),
            "m": pa.struct([("x", pa.string())]),
        }
        assert FieldTypes.to_array([r["ids"] for r in rows], arrow["ids"]).to_pylist() == [
            [1, 2],
            [2**70],
        ]
        assert FieldTypes.to_array([r["m"] for r in rows], arrow["m"]).to_pylist() == [
            {"x": "3"},
            {"x": str(10**40)},
        ]


def test_a_big_int_and_a_float_would_lose_digits_so_they_clash() -> None:
    assert inferred([{"n": 1.5}, {"n": 2**70 + 1}]).arrow_types() == {"n": None}
    assert inferred([{"n": 2**70 + 1}, {"n": 1.5}]).arrow_types() == {"n": None}


# -- the fast path agrees with the slow one -------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "role", "content"])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.floats(allow_nan=False),
    st.sampled_from(["", "x", "user"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=8,
)
ROWS = st.lists(st.dictionaries(st.sampled_from(["id", "p", "q", "r"]), VALUES), max_size=12)


def walked(rows: list[dict[str, Any]]) -> FieldTypes:
    """Every row walked whole: the caches forgotten before each one."""
    types = FieldTypes({"id"})
    for row in rows:
        types._shapes.clear()
        for field in types._fields.values():
            field.seen.clear()
        types.observe(row)
    return types


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=ROWS, repeat=st.integers(min_value=1, max_value=3))
def test_the_cached_fast_path_infers_what_walking_every_row_does(
    rows: list[dict[str, Any]], repeat: int
) -> None:
    rows = rows * repeat  # repeated shapes are what the caches serve
    expected = walked(rows).to_json()
    assert inferred(rows).to_json() == expected
    hinted = FieldTypes({"id"})
    for row in rows:
        hinted.observe(row, json.dumps(row).encode())
    assert hinted.to_json() == expected


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=ROWS, repeat=st.integers(min_value=1, max_value=3))
def test_the_fast_path_agrees_where_objects_turn_into_maps(
    rows: list[dict[str, Any]], repeat: int
) -> None:
    with mock.patch.object(tree, "MAX_STRUCT_KEYS", 2):  # 3 keys make a map
        rows = rows * repeat
        assert inferred(rows).to_json() == walked(rows).to_json()


def test_the_fast_path_agrees_on_long_lists_and_lists_of_maps() -> None:
    long = [{"role": "user", "content": str(i)} for i in range(40)]
    rows = [
        {"m": long, "maps": [{"a": 1, "b": 2, "c": 3}]},
        {"m": long, "maps": [{"x": 1, "y": 2, "z": 3}, {"k": 4}]},
        {"m": [*long, {"role": "user", "content": 1}], "maps": [{"q": 5}]},
        {"m": long, "maps": [{"q": "text"}]},
    ]
    with mock.patch.object(tree, "MAX_STRUCT_KEYS", 2):
        for end in range(1, len(rows) + 1):
            assert inferred(rows[:end] * 2).to_json() == walked(rows[:end] * 2).to_json()
        assert inferred(rows).arrow_types() == {"m": None, "maps": None}


# -- cached scans ---------------------------------------------------------------------------------


def test_to_json_and_from_json_restore_the_state_exactly() -> None:
    rows = [
        {"id": 1, "m": chat(("u", "x")), "n": 2**70, "c": "s", "d": {"a": None}, "e": []},
        {"id": 2, "c": 1, "big": {f"k{i}": i for i in range(MAX_STRUCT_KEYS + 1)}},
    ]
    types = inferred(rows)
    restored = FieldTypes.from_json(types.to_json())
    assert restored.to_json() == types.to_json()
    assert restored.names == types.names
    assert restored.exclude == {"id"}
    assert restored.arrow_types() == types.arrow_types()
    later = [{"id": 3, "m": chat(("u", "y")), "d": {"a": 1.5}}, {"id": 4, "e": ["x"]}]
    for row in later:
        types.observe(row)
        restored.observe(row)
    assert restored.to_json() == types.to_json()


@pytest.mark.parametrize("text", ["", "[]", '{"format": 99, "exclude": [], "fields": []}', "{}"])
def test_from_json_refuses_what_it_did_not_write(text: str) -> None:
    with pytest.raises(ValueError):
        FieldTypes.from_json(text)


def test_observing_rows_does_not_import_pyarrow() -> None:
    code = (
        "import sys; from batchpizza.fieldtypes.inference import FieldTypes; t = FieldTypes({'id'}); "
        "t.observe({'id': 1, 'm': [{'role': 'u', 'content': 'x'}], 'n': 2**70}); "
        "FieldTypes.from_json(t.to_json()); assert 'pyarrow' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_to_array_writes_what_json_cannot_hold_as_text() -> None:
    import datetime as dt

    values = [{"when": dt.date(2024, 1, 2), "raw": b"\x00\x01"}, None]
    assert FieldTypes.to_array(values, None).to_pylist() == [
        '{"when":"2024-01-02","raw":"AAE="}',
        None,
    ]


# -- what readers see -----------------------------------------------------------------------------


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    rows = [
        {
            "id": "a",
            "messages": chat(("system", "Be brief."), ("user", "Hi")),
            "meta": {"source": "web", "score": 0.5},
            "tags": ["x", "y"],
            "n": 2**70,
        },
        {"id": "b", "messages": chat(("user", "Hello")), "meta": {"source": "book"}, "tags": []},
    ]
    types = inferred(rows, exclude=())
    path = tmp_path / "out.parquet"
    write(path, rows, types)
    return path, rows


def test_pyarrow_reads_native_types(written: tuple[Path, list[dict[str, Any]]]) -> None:
    path, rows = written
    table = pq.read_table(path)
    assert table.schema.field("messages").type == pa.list_(MESSAGE)
    assert table.column("messages").to_pylist() == [r["messages"] for r in rows]
    assert table.column("n").to_pylist() == [2**70, None]


def test_pandas_reads_native_values(written: tuple[Path, list[dict[str, Any]]]) -> None:
    path, rows = written
    frame = pd.read_parquet(path)
    assert list(frame.columns) == ["id", "messages", "meta", "tags", "n"]
    first = frame["messages"].iloc[0]
    assert [dict(m) for m in first] == rows[0]["messages"]
    assert frame["meta"].iloc[1] == {"source": "book", "score": None}


def test_polars_reads_messages_as_a_list_of_structs(
    written: tuple[Path, list[dict[str, Any]]],
) -> None:
    path, rows = written
    frame = pl.read_parquet(path)
    assert frame.schema["messages"] == pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
    assert frame["messages"].to_list() == [r["messages"] for r in rows]
    assert frame.select(pl.col("meta").struct.field("source")).to_series().to_list() == [
        "web",
        "book",
    ]


def test_duckdb_indexes_into_messages(written: tuple[Path, list[dict[str, Any]]]) -> None:
    path, _rows = written
    with duckdb.connect() as db:
        got = db.execute(
            "SELECT messages[1].role, messages[1].content, meta.source, len(tags) "
            f"FROM read_parquet('{path}') ORDER BY id"
        ).fetchall()
    assert got == [("system", "Be brief.", "web", 2), ("user", "Hello", "book", 0)]


def test_a_map_of_objects_keeps_their_fields_as_a_struct() -> None:
    rows = [{"users": {f"u{i}": {"name": f"n{i}", "age": i} for i in range(MAX_STRUCT_KEYS + 1)}}]
    rows.append({"users": {"x": {"name": "x", "admin": True}}})
    user = pa.struct([("name", pa.string()), ("age", pa.int64()), ("admin", pa.bool_())])
    assert inferred(rows).arrow_types() == {"users": pa.map_(pa.string(), user)}
