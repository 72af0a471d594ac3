"""batchpizza.answer / aanswer / stream: rows held in memory go through a run and come back as
what they were, with the result columns; resumable with checkpoint=PATH, leaving nothing behind
without it; and the types of a file input survive a run to Parquet (SPEC "Python API", "Output").

Every test talks to the fake API on 127.0.0.1 (`mock_api`), except the README example, which
starts the bundled mock in-process (`mock=True`).
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import copy
import decimal
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

# datasets reads these when imported: set first, so that no test can reach the Hugging Face hub.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import datasets
import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FAST, read_jsonl, write_jsonl

import batchpizza
from batchpizza.checkpoint import Checkpoint
from batchpizza.mock.replies import mock_answer
from batchpizza.mock.server import ThreadedMockServer
from batchpizza.rows import format_prompt

RESULTS = [
    *("answer", "finish_reason", "misuse", "error", "attempts", "latency_ms", "model"),
    "reused_from",
    *("prompt_tokens", "completion_tokens", "tokens_estimated"),  # every output's
]
QUESTIONS = ["What is the capital of Italy?", "Name a pizza.", "Why is dough sticky?"]
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])


@pytest.fixture
def opts(mock_api: ThreadedMockServer) -> dict[str, Any]:
    """Fast, quiet options against the local fake API."""
    return {**FAST, "base_url": mock_api.base_url}


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tempfile.gettempdir() as a folder of this test's own (the machine's /tmp is shared, so
    other processes' batchpizza-* folders cannot be told from ours), and the cwd another."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return folder


def listing(folder: Path) -> list[str]:
    """The names in `folder`, sorted (a helper, so async tests do no blocking I/O inline)."""
    return sorted(p.name for p in folder.iterdir())


def expected_answers(prompts: list[str]) -> list[str]:
    return [mock_answer(p) for p in prompts]


# -- each input type through answer -----------------------------------------------------------


@pytest.fixture
def frame() -> pd.DataFrame:
    when = pd.to_datetime(["2024-01-01 10:00", "2024-02-01 11:00", "2024-03-01 12:00"])
    return pd.DataFrame(
        {
            "prompt": QUESTIONS,
            "n": pd.array([1, None, 3], dtype="Int64"),
            "kind": pd.Categorical(["geo", "food", "food"], categories=["food", "geo", "sky"]),
            "when": when.tz_localize("Europe/Rome"),
        },
        index=pd.Index([30, 10, 20], name="key"),
    )


def test_a_pandas_frame_comes_back_with_its_index_order_dtypes_and_results(
    frame: pd.DataFrame, opts: dict[str, Any]
) -> None:
    before = frame.copy(deep=True)
    out = batchpizza.answer(frame, **opts)
    assert isinstance(out, pd.DataFrame)
    assert list(out.index) == [30, 10, 20] and out.index.name == "key"
    assert list(out.columns) == [*frame.columns, *RESULTS]
    assert list(out["prompt"]) == QUESTIONS
    for name in frame.columns:  # Int64, category (with its categories), tz-aware datetime
        assert out[name].dtype == frame[name].dtype, name
    pd.testing.assert_frame_equal(out[list(frame.columns)], frame)
    assert list(out["answer"]) == expected_answers(QUESTIONS)
    assert list(out["finish_reason"]) == ["stop"] * 3
    assert out["misuse"].dtype == bool and not out["misuse"].any()
    assert pd.api.types.is_integer_dtype(out["attempts"]) and list(out["attempts"]) == [1, 1, 1]
    assert pd.api.types.is_float_dtype(out["latency_ms"])
    assert pd.api.types.is_string_dtype(out["answer"])
    assert list(out["model"]) == ["gpt-4o-mini"] * 3
    assert out["error"].isna().all()
    pd.testing.assert_frame_equal(frame, before)  # the caller's frame is not changed
    assert list(frame.columns) == list(before.columns)


def test_a_polars_frame_comes_back_as_polars_in_order(opts: dict[str, Any]) -> None:
    data = pl.DataFrame({"prompt": QUESTIONS, "n": [3, 1, 2], "tag": ["a", None, "c"]})
    before = data.clone()
    out = batchpizza.answer(data, **opts)
    assert isinstance(out, pl.DataFrame)
    assert out.columns == ["prompt", "n", "tag", *RESULTS]
    assert out.select(["prompt", "n", "tag"]).equals(before)
    assert out["answer"].to_list() == expected_answers(QUESTIONS)
    assert out.schema["n"] == pl.Int64
    assert out.schema["misuse"] == pl.Boolean and out.schema["attempts"] == pl.Int64
    assert out.schema["latency_ms"] == pl.Float64 and out.schema["answer"] == pl.String
    assert data.equals(before) and data.columns == ["prompt", "n", "tag"]


def test_an_arrow_table_keeps_its_schema_metadata(opts: dict[str, Any]) -> None:
    schema = pa.schema(
        [
            pa.field("prompt", pa.string(), metadata={b"doc": b"the question"}),
            pa.field("n", pa.int32()),
        ],
        metadata={b"origin": b"eval-set-7"},
    )
    table = pa.table({"prompt": QUESTIONS, "n": [1, 2, 3]}, schema=schema)
    before = table.to_pydict(), table.schema
    out = batchpizza.answer(table, **opts)
    assert isinstance(out, pa.Table)
    assert out.schema.metadata[b"origin"] == b"eval-set-7"
    assert out.schema.field("prompt").metadata == {b"doc": b"the question"}
    assert out.schema.field("n").type == pa.int32()
    assert out.column_names == ["prompt", "n", *RESULTS]
    assert out.column("answer").to_pylist() == expected_answers(QUESTIONS)
    assert out.schema.field("attempts").type == pa.int64()
    assert out.schema.field("misuse").type == pa.bool_()
    assert (table.to_pydict(), table.schema) == before
    assert table.schema.equals(before[1], check_metadata=True)


def test_a_polars_frame_made_arrow_keeps_its_string_view_prompts(opts: dict[str, Any]) -> None:
    frame = pl.DataFrame({"prompt": QUESTIONS, "id": ["a", "b", "c"]})
    table = frame.to_arrow(compat_level=pl.CompatLevel.newest())
    assert table.schema.field("prompt").type == pa.string_view()  # polars' newest export
    out = batchpizza.answer(table, **opts)
    assert out.column("answer").to_pylist() == expected_answers(QUESTIONS)
    assert out.column("id").to_pylist() == ["a", "b", "c"]
    assert out.schema.field("prompt").type == pa.string_view()


def test_a_prompt_column_of_none_only_is_rows_without_a_prompt_and_an_empty_one_no_rows(
    opts: dict[str, Any],
) -> None:
    with pytest.raises(batchpizza.InputError, match="<data> row 1: has no 'prompt'"):
        batchpizza.answer(pd.DataFrame({"prompt": [None, None]}), **opts)
    out = batchpizza.answer(pd.DataFrame({"prompt": [None, None]}), skip_bad_rows=True, **opts)
    assert list(out["finish_reason"]) == ["invalid", "invalid"]
    empty = batchpizza.answer(pl.DataFrame({"prompt": []}), **opts)  # polars types it Null
    assert empty.height == 0 and "answer" in empty.columns


def test_an_empty_frame_of_any_prompt_type_is_no_rows_and_a_filled_one_is_checked(
    opts: dict[str, Any],
) -> None:
    # pandas makes an empty column float64: a frame filtered down to nothing was refused
    # ("must hold strings, not double") though it has no row to hold a number.
    empty = batchpizza.answer(pd.DataFrame({"prompt": []}), **opts)
    assert len(empty) == 0 and "answer" in empty.columns
    with pytest.raises(batchpizza.InputError, match="must hold strings, not double"):
        batchpizza.answer(pd.DataFrame({"prompt": [1.5]}), **opts)


def test_a_record_batch_reader_comes_back_streamable_with_every_row(
    opts: dict[str, Any],
) -> None:
    prompts = [f"question {i}" for i in range(10)]
    schema = pa.schema([("prompt", pa.string()), ("i", pa.int64())], metadata={b"k": b"v"})
    table = pa.table({"prompt": prompts, "i": range(10)}, schema=schema)
    reader = pa.RecordBatchReader.from_batches(schema, table.to_batches(max_chunksize=3))
    out = batchpizza.answer(reader, **opts)
    assert isinstance(out, pa.RecordBatchReader)
    assert out.schema.names == ["prompt", "i", *RESULTS]
    assert out.schema.metadata[b"k"] == b"v"
    got = pa.Table.from_batches(list(out), schema=out.schema)
    assert got.column("i").to_pylist() == list(range(10))
    assert got.column("answer").to_pylist() == expected_answers(prompts)


def test_a_dataset_keeps_its_class_label(opts: dict[str, Any]) -> None:
    features = datasets.Features(
        {"prompt": datasets.Value("string"), "label": datasets.ClassLabel(names=["no", "yes"])}
    )
    data = datasets.Dataset.from_dict({"prompt": QUESTIONS, "label": [1, 0, 1]}, features=features)
    before = data.to_dict(), copy.deepcopy(data.features)
    out = batchpizza.answer(data, **opts)
    assert isinstance(out, datasets.Dataset)
    assert out.features["label"] == datasets.ClassLabel(names=["no", "yes"])
    assert out.column_names == ["prompt", "label", *RESULTS]
    assert out["label"] == [1, 0, 1]
    assert out["answer"] == expected_answers(QUESTIONS)
    assert out.features["attempts"] == datasets.Value("int64")
    assert (data.to_dict(), data.features) == before
    assert data.column_names == ["prompt", "label"]


def test_a_list_of_dicts_comes_back_as_new_dicts_the_input_untouched(
    opts: dict[str, Any],
) -> None:
    rows: list[dict[str, Any]] = [
        {"prompt": q, "meta": {"i": i, "tags": ["x"]}} for i, q in enumerate(QUESTIONS)
    ]
    before = copy.deepcopy(rows)
    out = batchpizza.answer(rows, **opts)
    assert isinstance(out, list) and len(out) == 3
    assert all(new is not old for new, old in zip(out, rows, strict=True))
    assert rows == before  # no result keys were added to the caller's dicts
    for i, row in enumerate(out):
        assert list(row) == ["prompt", "meta", *RESULTS]
        assert row["meta"] == {"i": i, "tags": ["x"]}
        assert row["answer"] == mock_answer(QUESTIONS[i])
        assert row["attempts"] == 1 and row["misuse"] is False and row["error"] is None


# -- options ----------------------------------------------------------------------------------


def test_prompt_field_names_the_column_to_send(opts: dict[str, Any]) -> None:
    data = pd.DataFrame({"question": QUESTIONS, "prompt_like": ["x", "y", "z"]})
    out = batchpizza.answer(data, prompt_field="question", **opts)
    assert list(out["answer"]) == expected_answers(QUESTIONS)


def test_messages_rows_are_sent_as_their_formatted_prompt(opts: dict[str, Any]) -> None:
    chats = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "Name a pizza."}],
    ]
    rows = [{"id": f"c{i}", "messages": m} for i, m in enumerate(chats)]
    out = batchpizza.answer(rows, **opts)
    assert [r["answer"] for r in out] == [mock_answer(format_prompt(m)) for m in chats]
    assert [r["messages"] for r in out] == chats
    frame = pd.DataFrame({"messages": chats})
    assert list(batchpizza.answer(frame, **opts)["answer"]) == [r["answer"] for r in out]


def test_skip_bad_rows_gives_invalid_rows_and_runs_the_rest(opts: dict[str, Any]) -> None:
    data = pd.DataFrame({"prompt": ["good one", "", "good two"], "n": [1, 2, 3]})
    out = batchpizza.answer(data, skip_bad_rows=True, **opts)
    assert list(out["finish_reason"]) == ["stop", "invalid", "stop"]
    assert list(out["n"]) == [1, 2, 3]
    bad = out.iloc[1]
    assert pd.isna(bad["answer"]) and "empty" in bad["error"] and bad["attempts"] == 0
    rows = batchpizza.answer([{"prompt": "ok"}, {"prompt": 5}], skip_bad_rows=True, **opts)
    assert [r["finish_reason"] for r in rows] == ["stop", "invalid"]
    assert rows[1]["prompt"] == 5 and rows[1]["attempts"] == 0


def test_a_bad_row_in_a_frame_raises_input_error_naming_row_and_field(
    mock_api: ThreadedMockServer, opts: dict[str, Any], private_tmp: Path
) -> None:
    data = pd.DataFrame({"prompt": ["fine", "also fine", ""]})
    with pytest.raises(batchpizza.InputError) as caught:
        batchpizza.answer(data, **opts)
    message = caught.value.message
    assert "<data> row 2" in message and "'prompt'" in message
    assert str(private_tmp) not in message and "batchpizza-" not in message
    assert "input.parquet" not in message
    assert mock_api.stats.requests == 0
    assert not listing(private_tmp)


@pytest.mark.parametrize(
    ("index", "named"),
    [
        (pd.Index([2, 0, 1]), "<data> row 1 (index 0): field 'prompt'"),  # df.loc[1] is another
        (pd.Index(["a", "b", "c"]), "<data> row 1 (index 'b'): field 'prompt'"),
        (pd.MultiIndex.from_tuples([("x", 1), ("x", 2), ("y", 1)]), "row 1 (index ('x', 2))"),
        (pd.RangeIndex(3), "<data> row 1: field 'prompt'"),  # the position is the label
    ],
)
def test_a_bad_row_of_a_frame_is_named_by_its_index_label_too(
    opts: dict[str, Any], index: pd.Index, named: str
) -> None:
    data = pd.DataFrame({"prompt": ["fine", "", "also fine"]}, index=index)
    with pytest.raises(batchpizza.InputError) as caught:
        batchpizza.answer(data, **opts)
    assert named in caught.value.message


@pytest.mark.parametrize("skip_bad_rows", [False, True])
def test_a_number_among_a_frames_prompts_is_named_by_row_not_a_failed_conversion(
    mock_api: ThreadedMockServer, opts: dict[str, Any], skip_bad_rows: bool
) -> None:
    # An object column of mixed types, which pandas cannot give to Arrow: the row is named
    # (the list of dicts names it too), not only "cannot be read as Arrow" for the whole frame.
    data = pd.DataFrame({"prompt": ["fine", None, 42, "also fine"]}, index=[10, 11, 12, 13])
    with pytest.raises(batchpizza.InputError) as caught:
        batchpizza.answer(data, skip_bad_rows=skip_bad_rows, **opts)
    assert "<data> row 2 (index 12): field 'prompt': a number where row 0 holds a string" in (
        caught.value.message
    )
    assert mock_api.stats.requests == 0


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (
            pd.DataFrame(
                {"key": pd.array([1, None, 3], dtype="Int64"), "prompt": QUESTIONS[:3]},
                index=["x", "y", "z"],
            ),
            "<data> row 1 (index 'y'): field 'key'",
        ),
        (  # its position is 1, row 0's id: was refused as a duplicate of row 0
            pd.DataFrame({"key": pd.array([1, None, 3], dtype="Int64"), "prompt": QUESTIONS[:3]}),
            "<data> row 1: field 'key'",
        ),
        (pl.DataFrame({"key": [1, None, 3], "prompt": QUESTIONS[:3]}), "<data> row 1: field 'key'"),
        ([{"key": "a", "prompt": "x"}, {"key": None, "prompt": "y"}], "<data> row 1: field 'key'"),
    ],
    ids=["pandas-labels", "pandas", "polars", "list"],
)
def test_a_null_id_is_refused_naming_the_row_not_numbered_by_its_position(
    opts: dict[str, Any], mock_api: ThreadedMockServer, data: Any, named: str
) -> None:
    with pytest.raises(batchpizza.InputError) as caught:
        batchpizza.answer(data, id_field="key", **opts)
    message = caught.value.message
    assert f"{named}: the id must be a non-empty string or an integer, not null" in message
    assert "duplicate" not in message
    assert mock_api.stats.requests == 0


def test_a_pandas_id_column_made_float_by_a_missing_value_is_said_so_with_the_fix(
    opts: dict[str, Any], mock_api: ThreadedMockServer
) -> None:
    # pandas keeps [5, None, 7] as float64 [5.0, nan, 7.0]: row 0's id was "not a number".
    frame = pd.DataFrame({"key": [5, None, 7], "prompt": QUESTIONS})

    with pytest.raises(batchpizza.InputError) as caught:
        batchpizza.answer(frame, id_field="key", **opts)

    message = caught.value.message
    assert (
        "<data> row 0: field 'key': the id must be a non-empty string or an integer, not a "
        "float (5.0): pandas stores an integer column with a missing value as float64" in message
    )
    assert ".astype('Int64')" in message
    assert "not a number" not in message
    out = batchpizza.answer(
        frame.astype({"key": "Int64"}), id_field="key", skip_bad_rows=True, **opts
    )
    assert out["finish_reason"].tolist() == ["stop", "invalid", "stop"]


def test_a_null_id_comes_back_invalid_with_skip_bad_rows(opts: dict[str, Any]) -> None:
    data = pd.DataFrame({"key": pd.array([1, None], dtype="Int64"), "prompt": QUESTIONS[:2]})
    out = batchpizza.answer(data, id_field="key", skip_bad_rows=True, **opts)
    assert list(out["finish_reason"]) == ["stop", "invalid"]
    assert "not null" in out["error"][1]


def test_an_id_column_beside_another_id_field_is_carried_as_data(opts: dict[str, Any]) -> None:
    # Its user ids repeat, so the rows are keyed by `key`; answer() adds no `id` column of its
    # own for it to collide with (an output file does, and still refuses it).
    data = pd.DataFrame({"key": ["k1", "k2"], "id": [7, 7], "prompt": QUESTIONS[:2]})
    out = batchpizza.answer(data, id_field="key", **opts)
    assert list(out.columns) == ["key", "id", "prompt", *RESULTS]
    assert list(out["id"]) == [7, 7]
    assert list(out["answer"]) == expected_answers(QUESTIONS[:2])
    rows = batchpizza.answer([{"key": "k", "id": 1, "prompt": "x"}], id_field="key", **opts)
    assert rows[0]["id"] == 1 and rows[0]["finish_reason"] == "stop"


def test_a_bad_item_in_a_list_raises_input_error_naming_field_not_the_spool(
    mock_api: ThreadedMockServer, opts: dict[str, Any], private_tmp: Path
) -> None:
    with pytest.raises(batchpizza.InputError) as caught:
        batchpizza.answer([{"prompt": "fine"}, {"prompt": ""}], **opts)
    message = caught.value.message
    assert "<data>" in message and "'prompt'" in message
    assert str(private_tmp) not in message and "input.jsonl" not in message
    assert mock_api.stats.requests == 0


def test_a_bad_item_in_a_list_is_named_by_its_index(opts: dict[str, Any]) -> None:
    with pytest.raises(batchpizza.InputError) as caught:
        batchpizza.answer([{"prompt": "fine"}, {"prompt": ""}], **opts)
    assert "<data> row 1:" in caught.value.message  # the list's own (0-based) index


@pytest.mark.parametrize(
    ("columns", "problem"),
    [({"question": ["a"]}, "no 'prompt' column"), ({"prompt": ["a"], "answer": [1]}, "'answer'")],
    ids=["no-prompt-column", "column-named-like-a-result"],
)
def test_a_frame_the_run_cannot_read_is_named_data_not_the_spool(
    columns: dict[str, list[Any]],
    problem: str,
    mock_api: ThreadedMockServer,
    opts: dict[str, Any],
    private_tmp: Path,
) -> None:
    with pytest.raises(batchpizza.InputError) as caught:
        batchpizza.answer(pd.DataFrame(columns), **opts)
    message = caught.value.message
    assert problem in message  # what is wrong is said either way
    assert mock_api.stats.requests == 0 and listing(private_tmp) == []
    assert str(private_tmp) not in message and "input.parquet" not in message
    assert message.startswith("<data>")


# -- checkpoint, and nothing left behind without one ------------------------------------------


def test_without_a_checkpoint_nothing_is_left_on_disk(
    opts: dict[str, Any], private_tmp: Path
) -> None:
    cwd = Path.cwd()
    batchpizza.answer(pd.DataFrame({"prompt": QUESTIONS}), **opts)
    batchpizza.answer([{"prompt": q} for q in QUESTIONS], **opts)
    batchpizza.answer(pa.table({"prompt": QUESTIONS}), skip_bad_rows=True, **opts)
    assert listing(private_tmp) == []
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize("kind", ["pandas", "rows"])
def test_the_same_call_again_sends_only_the_rows_that_failed(
    kind: str, mock_api: ThreadedMockServer, opts: dict[str, Any], tmp_path: Path
) -> None:
    prompts = ["one", "[[fail-first:1]] two", "three", "[[fail-first:1]] four", "five"]
    data: Any = pd.DataFrame({"prompt": prompts})
    if kind == "rows":
        data = [{"prompt": p} for p in prompts]
    checkpoint = tmp_path / "answers.checkpoint"
    first = batchpizza.answer(data, checkpoint=str(checkpoint), max_retries=0, **opts)
    reasons = (
        list(first["finish_reason"]) if kind == "pandas" else [r["finish_reason"] for r in first]
    )
    assert reasons == ["stop", "error", "stop", "error", "stop"]
    assert mock_api.stats.requests == 5
    mock_api.stats.requests = 0
    second = batchpizza.answer(data, checkpoint=str(checkpoint), max_retries=0, **opts)
    assert mock_api.stats.requests == 2  # only the two that failed
    answers = list(second["answer"]) if kind == "pandas" else [r["answer"] for r in second]
    assert answers == expected_answers(prompts)
    assert listing(tmp_path) == ["answers.checkpoint"]
    mock_api.stats.requests = 0
    batchpizza.answer(data, checkpoint=str(checkpoint), **opts)
    assert mock_api.stats.requests == 0


def _answers_kept(checkpoint: Path) -> int:
    if not checkpoint.exists():
        return 0
    store = Checkpoint.open(checkpoint, readonly=True)
    try:
        kept = store.status()["answers_kept"]
        assert isinstance(kept, int)
        return kept
    except batchpizza.OutputError:  # tables not made yet
        return 0
    finally:
        store.close()


async def _until(condition: Any, timeout: float = 10.0) -> None:
    """Poll `condition` on the loop (the run goes on meanwhile) until true, or fail."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        assert loop.time() < end, "timed out waiting"
        await asyncio.sleep(0.01)


async def test_a_cancelled_aanswer_keeps_what_finished_and_the_rerun_sends_the_rest(
    mock_api: ThreadedMockServer, opts: dict[str, Any], tmp_path: Path, private_tmp: Path
) -> None:
    prompts = ["one", "two", "three", "[[hang]] four", "[[hang]] five"]
    data = pd.DataFrame({"prompt": prompts})
    checkpoint = tmp_path / "ck"
    options = {**opts, "timeout": 60.0, "concurrency": 8, "checkpoint": str(checkpoint)}
    task = asyncio.ensure_future(batchpizza.aanswer(data, **options))
    await _until(lambda: _answers_kept(checkpoint) == 3 and mock_api.stats.requests == 5)
    task.cancel()  # as a kernel interrupt would
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _answers_kept(checkpoint) == 3
    assert listing(private_tmp) == []  # the spool went with the cancelled call
    assert listing(tmp_path) == ["ck", "cwd", "tmp"]  # no -wal, -shm or lock beside it
    mock_api.stats.requests = 0
    out = await batchpizza.aanswer(data, **{**options, "timeout": 0.2, "max_retries": 0})
    assert mock_api.stats.requests == 2  # only the two that never finished
    assert list(out["finish_reason"]) == ["stop", "stop", "stop", "error", "error"]
    assert list(out["answer"])[:3] == expected_answers(prompts[:3])


# -- inside a running event loop (Jupyter) ----------------------------------------------------


async def test_inside_a_running_loop_aanswer_and_answer_both_work(
    opts: dict[str, Any],
) -> None:
    # A notebook cell runs inside an event loop: answer() blocks it, on a thread of its own.
    data = pd.DataFrame({"prompt": QUESTIONS})
    out = await batchpizza.aanswer(data, **opts)
    assert list(out["answer"]) == expected_answers(QUESTIONS)
    blocking = batchpizza.answer(data, **opts)
    assert list(blocking["answer"]) == expected_answers(QUESTIONS)
    assert threading.active_count() == threads_before_answer(blocking)


def threads_before_answer(_result: object) -> int:
    """The threads now: answer()'s worker thread has ended by the time it returns."""
    return threading.active_count()


async def test_answer_in_a_running_loop_raises_what_the_job_raises(opts: dict[str, Any]) -> None:
    with pytest.raises(batchpizza.InputError, match="<data> row 1"):
        batchpizza.answer(pd.DataFrame({"prompt": ["fine", ""]}), **opts)


@pytest.mark.slow
async def test_an_interrupt_of_answer_in_a_running_loop_stops_the_job_and_keeps_what_finished(
    mock_api: ThreadedMockServer, opts: dict[str, Any], tmp_path: Path
) -> None:
    prompts = [f"[[slow:150]] question {i}" for i in range(40)]
    checkpoint = str(tmp_path / "cell.checkpoint")
    options = {**opts, "concurrency": 4, "checkpoint": checkpoint, "grace": 1.0}
    # The notebook's stop button raises KeyboardInterrupt in the cell's thread. asyncio's runner,
    # under which this test runs, would only cancel its task on a first SIGINT: Python's own
    # handler stands in for the kernel's here.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.8, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            batchpizza.answer([{"prompt": p} for p in prompts], **options)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    sent = mock_api.stats.requests
    assert 0 < sent < len(prompts)
    out = batchpizza.answer([{"prompt": p} for p in prompts], **options)
    assert [row["finish_reason"] for row in out] == ["stop"] * len(prompts)
    # The rerun sent only what the stopped job had not saved: at most its concurrency again.
    assert len(prompts) <= mock_api.stats.requests <= len(prompts) + 4


@pytest.mark.parametrize("kind", ["pandas", "polars", "arrow", "stream", "datasets", "rows"])
def test_limit_answers_and_returns_the_first_rows_only(
    kind: str, mock_api: ThreadedMockServer, opts: dict[str, Any]
) -> None:
    prompts = [f"question {i}" for i in range(20)]
    table = pa.table({"prompt": prompts})
    data: Any = {
        "pandas": lambda: table.to_pandas(),
        "polars": lambda: pl.from_arrow(table),
        "arrow": lambda: table,
        "stream": lambda: pa.RecordBatchReader.from_batches(table.schema, table.to_batches()),
        "datasets": lambda: datasets.Dataset(table),
        "rows": lambda: [{"prompt": p} for p in prompts],
    }[kind]()
    out = batchpizza.answer(data, limit=5, **opts)
    if kind == "stream":
        out = out.read_all()
    answers = (
        [row["answer"] for row in out]
        if kind == "rows"
        else list(out["answer"])
        if kind in ("pandas", "polars", "datasets")
        else out.column("answer").to_pylist()
    )
    assert answers == expected_answers(prompts[:5])
    assert mock_api.stats.requests == 5


def test_a_list_of_prompt_strings_comes_back_as_rows_with_their_results(
    opts: dict[str, Any],
) -> None:
    out = batchpizza.answer(QUESTIONS, **opts)
    assert [row["prompt"] for row in out] == QUESTIONS
    assert [row["answer"] for row in out] == expected_answers(QUESTIONS)
    named = batchpizza.answer(QUESTIONS, prompt_field="question", **opts)
    assert [row["question"] for row in named] == QUESTIONS


def test_a_list_of_prompts_with_a_none_or_a_number_names_those_rows_only(
    opts: dict[str, Any],
) -> None:
    with pytest.raises(batchpizza.InputError) as raised:
        batchpizza.answer([QUESTIONS[0], None, 42], **opts)
    said = str(raised.value)
    assert "2 bad rows in the input" in said and "row 0" not in said  # the string is a fine prompt
    assert "<data> row 1: has no 'prompt'" in said
    assert "<data> row 2: field 'prompt': must be a string, not a number" in said
    out = batchpizza.answer([QUESTIONS[0], None], skip_bad_rows=True, **opts)
    assert [row["finish_reason"] for row in out] == ["stop", "invalid"]
    assert [row["prompt"] for row in out] == [QUESTIONS[0], None]


async def test_a_dry_run_sends_nothing_prints_the_plan_and_returns_the_summary(
    mock_api: ThreadedMockServer, opts: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    data = pd.DataFrame({"prompt": QUESTIONS})
    summary = await batchpizza.aanswer(data, dry_run=True, **opts)
    assert isinstance(summary, batchpizza.Summary)  # was an AssertionError, once planned
    assert summary["plan"]["new"] == 3 and summary["pending"] == 3
    assert "to send     3: 3 new rows" in capsys.readouterr().out
    assert [row async for row in batchpizza.stream(data, dry_run=True, **opts)] == []
    assert mock_api.stats.requests == 0


def test_any_arrow_stream_producer_is_read_and_comes_back_as_a_reader(
    opts: dict[str, Any],
) -> None:
    duckdb = pytest.importorskip("duckdb")
    relation = duckdb.sql(
        "SELECT * FROM (VALUES (1, 'What is the capital of Italy?'), (2, 'Name a pizza.')) "
        "AS t(n, prompt)"
    )
    assert not isinstance(relation, (pa.Table, pa.RecordBatchReader))
    out = batchpizza.answer(relation, **opts).read_all()
    assert out.column("n").to_pylist() == [1, 2]
    assert out.column("answer").to_pylist() == expected_answers(QUESTIONS[:2])


# -- stream -----------------------------------------------------------------------------------


async def _collect(data: Any, **options: Any) -> list[dict[str, Any]]:
    return [row async for row in batchpizza.stream(data, **options)]


@pytest.mark.slow
async def test_stream_yields_each_row_once_in_completion_order(opts: dict[str, Any]) -> None:
    prompts = ["[[slow:400]] slow first", "b", "c", "d"]
    data = pd.DataFrame({"id": ["r0", "r1", "r2", "r3"], "prompt": prompts})
    got = await _collect(data, concurrency=4, **opts)
    assert sorted(r["position"] for r in got) == [0, 1, 2, 3]
    assert got[-1]["position"] == 0  # the slow one finished last, and came last
    assert {r["id"]: r["position"] for r in got} == {"r0": 0, "r1": 1, "r2": 2, "r3": 3}
    assert all(list(r) == ["id", "position", *RESULTS] for r in got)
    by_pos = {r["position"]: r for r in got}
    answered = await batchpizza.aanswer(data, **opts)
    assert [by_pos[i]["answer"] for i in range(4)] == list(answered["answer"])
    assert [by_pos[i]["finish_reason"] for i in range(4)] == ["stop"] * 4


async def test_stream_over_a_list_numbers_positions_from_zero(opts: dict[str, Any]) -> None:
    got = await _collect([{"prompt": q} for q in QUESTIONS], **opts)
    assert sorted((r["position"], r["id"]) for r in got) == [(0, "0"), (1, "1"), (2, "2")]


async def test_stream_yields_invalid_rows_once_too(opts: dict[str, Any]) -> None:
    rows = [{"prompt": "a"}, {"prompt": ""}, {"prompt": "c"}, "not an object"]
    got = await _collect(rows, skip_bad_rows=True, **opts)
    reasons = {r["position"]: r["finish_reason"] for r in got}
    assert len(got) == 4 and reasons == {0: "stop", 1: "invalid", 2: "stop", 3: "invalid"}
    assert all(r["attempts"] == 0 and r["error"] for r in got if r["finish_reason"] == "invalid")


async def test_stream_works_for_a_path(opts: dict[str, Any], tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl", [{"id": f"q{i}", "prompt": q} for i, q in enumerate(QUESTIONS)]
    )
    got = await _collect(str(path), **opts)
    assert sorted((r["position"], r["id"]) for r in got) == [(0, "q0"), (1, "q1"), (2, "q2")]
    assert {r["id"]: r["answer"] for r in got} == {
        f"q{i}": mock_answer(q) for i, q in enumerate(QUESTIONS)
    }
    assert listing(tmp_path) == ["in.jsonl"]


async def test_stream_broken_off_keeps_what_finished_and_the_next_sends_the_rest(
    mock_api: ThreadedMockServer, opts: dict[str, Any], tmp_path: Path, private_tmp: Path
) -> None:
    n = 12
    prompts = [f"[[slow:30]] q{i}" for i in range(n)]
    data = [{"id": f"r{i}", "prompt": p} for i, p in enumerate(prompts)]
    checkpoint = tmp_path / "ck"
    options = {**opts, "concurrency": 2, "checkpoint": str(checkpoint)}
    first: list[dict[str, Any]] = []
    async with contextlib.aclosing(batchpizza.stream(data, **options)) as rows:
        async for row in rows:
            first.append(row)
            if len(first) == 3:
                break
    # aclose() has returned: the run is over, nothing is being sent any more
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
    assert listing(private_tmp) == []
    kept = _answers_kept(checkpoint)
    assert 3 <= kept < n
    mock_api.stats.requests = 0
    second = await _collect(data, **options)
    assert mock_api.stats.requests == n - kept
    assert sorted(r["position"] for r in second) == list(range(n))
    assert {r["id"] for r in first} <= {r["id"] for r in second}
    assert all(r["answer"] == mock_answer(prompts[r["position"]]) for r in second)


# -- types through files (batchpizza.run) -----------------------------------------------------


@pytest.fixture
def chat_run(opts: dict[str, Any], tmp_path: Path) -> Path:
    rows = [
        {
            "id": "a",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Name a pizza."},
            ],
        },
        {"id": "b", "messages": [{"role": "user", "content": "Hi"}]},
    ]
    source = write_jsonl(tmp_path / "chats.jsonl", rows)
    output = tmp_path / "out.parquet"
    summary = batchpizza.run(source, output, **opts)
    assert summary.exit_code == 0
    return output


def test_messages_from_jsonl_are_a_list_of_structs_in_parquet(chat_run: Path) -> None:
    schema = pq.read_schema(chat_run)
    assert schema.field("messages").type == pa.list_(MESSAGE)


def test_polars_reads_the_messages_as_a_list_of_structs(chat_run: Path) -> None:
    frame = pl.read_parquet(chat_run)
    assert frame.schema["messages"] == pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
    assert frame["messages"][1].to_list() == [{"role": "user", "content": "Hi"}]


def test_duckdb_indexes_into_the_messages(chat_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(chat_run.parent)
    with duckdb.connect() as db:
        got = db.execute("SELECT messages[1].role FROM 'out.parquet' ORDER BY id").fetchall()
    assert got == [("system",), ("user",)]


def test_an_int_beyond_64_bits_is_exact_in_parquet_and_jsonl_output(
    opts: dict[str, Any], tmp_path: Path
) -> None:
    big = 2**70
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [{"id": "a", "prompt": "x", "n": big}, {"id": "b", "prompt": "y", "n": 5}],
    )
    parquet, jsonl = tmp_path / "out.parquet", tmp_path / "out.jsonl"
    batchpizza.run(source, parquet, **opts)
    batchpizza.run(source, jsonl, **opts)
    table = pq.read_table(parquet)
    assert pa.types.is_decimal(table.schema.field("n").type)
    assert table.column("n").to_pylist() == [decimal.Decimal(big), decimal.Decimal(5)]
    assert [r["n"] for r in read_jsonl(jsonl)] == [big, 5]  # json.loads reads ints exactly
    assert str(big) in jsonl.read_text(encoding="utf-8")


def test_a_pandas_written_parquet_reads_back_with_its_index_and_dtypes(
    opts: dict[str, Any], tmp_path: Path
) -> None:
    frame = pd.DataFrame(
        {"prompt": QUESTIONS, "n": pd.array([7, None, 9], dtype="Int64")},
        index=pd.Index(["x", "y", "z"], name="key"),
    )
    source, output = tmp_path / "in.parquet", tmp_path / "out.parquet"
    frame.to_parquet(source)
    batchpizza.run(source, output, **opts)
    back = pd.read_parquet(output)
    assert back.index.name == "key" and list(back.index) == ["x", "y", "z"]
    assert back["n"].dtype == pd.Int64Dtype()
    assert list(back["n"].astype(object).where(back["n"].notna(), None)) == [7, None, 9]
    assert list(back["prompt"]) == QUESTIONS
    for name in RESULTS:
        assert name in back.columns
    assert list(back["answer"]) == expected_answers(QUESTIONS)
    assert back["attempts"].dtype.kind == "i" and back["misuse"].dtype == bool


# -- the README's example ---------------------------------------------------------------------


def test_readme_notebook_example_prints_both_questions_and_answers(
    capsys: pytest.CaptureFixture[str], private_tmp: Path
) -> None:
    import pandas as pd

    import batchpizza

    df = pd.DataFrame({"question": ["What is the capital of Italy?", "Name a pizza."]})
    out = batchpizza.answer(df, prompt_field="question", mock=True)
    print(out[["question", "answer", "finish_reason"]].to_string())

    printed = capsys.readouterr().out
    for question in df["question"]:
        assert question in printed
        assert mock_answer(question) in printed
    assert printed.count("stop") == 2
    assert listing(private_tmp) == []  # the mock's checkpoint went with the spool


# -- helpers used above -----------------------------------------------------------------------


def test_mock_answers_differ_per_question() -> None:
    """The assertions above tell rows apart by their answers: those must differ."""
    assert len(set(expected_answers(QUESTIONS))) == len(QUESTIONS)
