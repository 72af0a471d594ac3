"""The cyclic garbage collector paused around the passes over every row (batchpizza/collector.py),
and given back as it was."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_run import output_rows, prompts_file, run

from batchpizza.collector import collector_paused
from batchpizza.mock.server import ThreadedMockServer
from batchpizza.sinks.jsonl import JsonlSink
from batchpizza.sinks.parquet import ParquetSink


@pytest.fixture
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_paused_inside_given_back_after_an_error(collector_on: None) -> None:
    with pytest.raises(RuntimeError), collector_paused():
        assert not gc.isenabled()
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_left_off_when_it_was_off(collector_on: None) -> None:
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()  # someone else's choice, not ours to undo


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_the_output_is_written_with_the_collector_paused(
    mock_api: ThreadedMockServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    collector_on: None,
    suffix: str,
) -> None:
    seen: list[bool] = []
    sink = JsonlSink if suffix == ".jsonl" else ParquetSink
    real_write = sink.write

    def write(self: Any, *args: Any) -> None:
        seen.append(gc.isenabled())
        real_write(self, *args)

    monkeypatch.setattr(sink, "write", write)
    out = tmp_path / f"out{suffix}"
    summary = run(mock_api, prompts_file(tmp_path / "in.jsonl", ["a", "b", "c"]), out)
    assert summary["exit_code"] == 0
    assert [r["id"] for r in output_rows(out)] == ["r0", "r1", "r2"]
    assert seen and not any(seen)
    assert gc.isenabled()  # back on once the output is written
