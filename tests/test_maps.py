"""Arrow map columns as rows read them (sources/maps.py): a map with string keys is a JSON object
in the JSONL output and in a prompt template, at any depth; a map with other keys stays a list of
[key, value] pairs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner
from conftest import read_jsonl

from batchpizza.cli import cli
from batchpizza.mock.replies import mock_answer
from batchpizza.mock.server import ThreadedMockServer
from batchpizza.sources.maps import map_converters, with_maps_as_objects
from batchpizza.sources.parquet import pylist

TAGS = pa.map_(pa.string(), pa.int64())


def table() -> pa.Table:
    return pa.table(
        {
            "id": ["a", "b", "c"],
            "question": ["x", "y", "z"],
            "tags": pa.array([[("k", 1), ("j", 2)], [], None], type=TAGS),
            "by_number": pa.array(
                [[(1, "one")], [(2, "two")], None], type=pa.map_(pa.int32(), pa.string())
            ),
            "nested": pa.array(
                [{"m": [("a", 1.5)], "n": 1}, {"m": None, "n": 2}, None],
                type=pa.struct([("m", pa.map_(pa.large_string(), pa.float64())), ("n", pa.int8())]),
            ),
            "listed": pa.array(
                [[[("q", "r")]], [], None], type=pa.list_(pa.map_(pa.string(), pa.string()))
            ),
            "deep": pa.array(
                [[("o", [("i", True)])], None, []],
                type=pa.map_(pa.string(), pa.map_(pa.string(), pa.bool_())),
            ),
        }
    )


def test_string_keyed_maps_are_dicts_at_any_depth_and_other_keys_stay_pairs() -> None:
    rows = pylist(table().to_batches()[0])

    assert [r["tags"] for r in rows] == [{"k": 1, "j": 2}, {}, None]
    assert [r["by_number"] for r in rows] == [[(1, "one")], [(2, "two")], None]
    assert [r["nested"] for r in rows] == [{"m": {"a": 1.5}, "n": 1}, {"m": None, "n": 2}, None]
    assert [r["listed"] for r in rows] == [[{"q": "r"}], [], None]
    assert [r["deep"] for r in rows] == [{"o": {"i": True}}, None, {}]


def test_a_repeated_key_keeps_its_last_value_as_json_does() -> None:
    batch = pa.record_batch({"tags": pa.array([[("k", 1), ("k", 2)]], type=TAGS)})
    assert pylist(batch) == [{"tags": {"k": 2}}]


def test_a_table_without_maps_is_left_as_pyarrow_gives_it() -> None:
    schema = pa.schema([("id", pa.string()), ("tags", pa.list_(pa.string()))])
    assert map_converters(schema) == {}
    rows: list[Any] = [{"id": "a", "tags": ["x"]}]
    assert with_maps_as_objects(schema, rows) is rows


def test_a_parquet_map_column_is_an_object_in_the_jsonl_output_and_the_template(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # Was: [["k", 1], ["j", 2]] in both.
    inp = tmp_path / "in.parquet"
    pq.write_table(table().select(["id", "question", "tags", "by_number"]).slice(0, 2), inp)
    out = tmp_path / "out.jsonl"
    args = ["run", str(inp), "-o", str(out), "--rate", "0", "--no-progress"]

    done = CliRunner().invoke(cli, [*args, "--base-url", mock_api.base_url, "--template", "{tags}"])

    assert done.exit_code == 0, done.output
    got = read_jsonl(out)
    assert [r["tags"] for r in got] == [{"k": 1, "j": 2}, {}]
    assert [r["by_number"] for r in got] == [[[1, "one"]], [[2, "two"]]]
    assert [r["prompt"] for r in got] == ['{"k": 1, "j": 2}', "{}"]
    assert [r["answer"] for r in got] == [mock_answer(r["prompt"]) for r in got]


def test_a_ray_jsonl_part_writes_maps_as_objects_too(tmp_path: Path) -> None:
    from batchpizza.distributed.folders import write_part

    write_part(table().select(["id", "tags"]), str(tmp_path), 0, "jsonl")

    (part,) = tmp_path.iterdir()
    assert [r["tags"] for r in read_jsonl(part)] == [{"k": 1, "j": 2}, {}, None]


def test_a_scan_of_an_input_with_maps_is_keyed_apart(tmp_path: Path) -> None:
    # A checkpoint's scan made when maps were read as pairs (its prompts digested so) is not
    # reused for an input with maps; one without maps keeps its key.
    from batchpizza.config import RunConfig
    from batchpizza.rows import Fields
    from batchpizza.sources import open_source

    fields = Fields.from_config(
        RunConfig.from_options("in.parquet", "out.jsonl", prompt_field="question")
    )
    with_maps, without = tmp_path / "maps.parquet", tmp_path / "plain.parquet"
    pq.write_table(table().select(["id", "question", "tags"]), with_maps)
    pq.write_table(table().select(["id", "question"]), without)
    keys = [
        json.loads(open_source(str(p), fields).input_key() or "{}") for p in (with_maps, without)
    ]
    assert keys[0]["maps"] == "objects" and "maps" not in keys[1]
