"""A local JSON lines input of `--ray`, read on the driver as a run without --ray reads it
(batchpizza.distributed.staging): the same bad rows and message, the same ids, the same field
types. These need Ray installed (the command checks for it) but start no cluster; the output
next to a run without --ray is compared on a cluster in test_ray_cli.py."""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl

import batchpizza
from batchpizza.config import RunConfig
from batchpizza.distributed.command import run as run_on_ray
from batchpizza.distributed.staging import SCAN, STAGED, CarriedColumns, row_objects, stage
from batchpizza.errors import InputError, RowProblem
from batchpizza.sources import JsonlSource

needs_ray = pytest.mark.ray  # deselected without the ray extra (conftest.py)

# A field whose type changes between rows, as Arrow's JSON reader refused it under --ray
# ("Column(/x) changed from number to string in row 1").
CHANGING = [{"id": 1, "prompt": "a", "x": 1}, {"id": 2, "prompt": "b", "x": "two"}]


def test_staging_gives_the_ids_problems_and_field_types_of_a_run_without_ray(
    tmp_path: Path,
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"id": 7, "prompt": "a", "x": 1, "big": 123456789012345678901234567890}\n'
        '{"prompt": "b", "x": "two"}\n'  # no id: its position, as without --ray
        "\n"
        '{"id": "q", "prompt": 5}\n'  # bad: a number
        '{"id": "q", "prompt": "\n'  # bad: not JSON, no id to show
    )
    config = RunConfig.from_options(str(source), "out.parquet", skip_bad_rows=True)
    staged = stage(str(source), config, None, str(tmp_path))
    assert staged.rows == 4
    table = pq.read_table(staged.place)
    # The line that is not JSON has no id, as without --ray: its position (3) could be another
    # row's id.
    assert table.column("id").to_pylist() == ["7", "1", "q", None]
    objects = row_objects(table, "id")
    assert objects[0] == {"id": 7, "prompt": "a", "x": 1, "big": 123456789012345678901234567890}
    assert objects[1] == {"id": "1", "prompt": "b", "x": "two"}
    assert isinstance(objects[2], RowProblem) and objects[2].id == "q"
    assert objects[2].problem == "field 'prompt': must be a string, not a number"
    assert isinstance(objects[3], RowProblem) and objects[3].problem.startswith("invalid JSON")
    assert objects[3].id is None
    # The output's fields: x as JSON text (its shapes clash), big exactly, as without --ray.
    assert staged.carried == CarriedColumns(
        {"prompt": None, "x": None, "big": pa.decimal128(38, 0)}
    )
    results = table.append_column("answer", pa.array(["A", "B", None, None]))
    out = staged.carried.output(results)
    assert out.column_names == ["id", "prompt", "x", "big", "answer"]
    assert out.column("x").to_pylist() == ["1", '"two"', None, None]
    # A bad row carries what could be read of it, as JSON text here: the number it gave.
    assert out.column("prompt").to_pylist() == ['"a"', '"b"', "5", None]


def test_staging_stopped_by_ctrl_c_leaves_no_file_and_says_no_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The scan's verdicts were left open and closed when collected, on the closed scan:
    # "Exception ignored in: <generator object ScanIndex.verdicts ...>" after the ^C.
    source = write_jsonl(tmp_path / "in.jsonl", CHANGING)

    carried = JsonlSource.carried

    def interrupted(self: JsonlSource) -> Iterator[Any]:
        yield from carried(self)  # every row read: the verdicts had one more to give
        raise KeyboardInterrupt

    monkeypatch.setattr(JsonlSource, "carried", interrupted)
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    config = RunConfig.from_options(str(source), "out.parquet")
    with contextlib.suppress(KeyboardInterrupt):
        stage(str(source), config, None, str(tmp_path))
    gc.collect()
    assert unraisable == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_staging_keeps_its_scan_beside_the_staged_file_not_in_the_system_temp_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 44 B a row in the system temp folder: RAM on a tmpfs /tmp, and left there by a kill.
    system_temp = tmp_path / "tmp"
    system_temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_temp))
    checkpoint = tmp_path / "out.checkpoint"
    checkpoint.mkdir()
    (checkpoint / SCAN).write_bytes(b"what a killed staging left")
    scans: list[Path] = []
    scan = JsonlSource.scan

    def seen(self: JsonlSource, limit: int | None) -> Any:
        scans.extend(system_temp.rglob("*"))
        scans.extend(checkpoint.iterdir())
        return scan(self, limit)

    monkeypatch.setattr(JsonlSource, "scan", seen)
    source = write_jsonl(tmp_path / "in.jsonl", CHANGING)
    config = RunConfig.from_options(str(source), "out.parquet")
    staged = stage(str(source), config, None, str(checkpoint))
    assert staged.rows == 2
    assert scans == [checkpoint / SCAN]  # the scan's database, while it is written
    assert sorted(p.name for p in checkpoint.iterdir()) == [STAGED]  # the scan is gone after
    assert list(system_temp.iterdir()) == []


@needs_ray  # the command checks that Ray is installed; no cluster starts
def test_ray_dry_run_reads_a_field_that_changes_type(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", CHANGING)
    summary = run_on_ray(str(source), str(tmp_path / "out"), dry_run=True, quiet=True)
    assert (summary.exit_code, summary.rows) == (0, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # nothing written


@needs_ray  # the command checks that Ray is installed; no cluster starts
def test_ray_dry_run_stages_in_the_temp_folder_and_leaves_nothing_there_on_any_way_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not in the checkpoint folder, which a dry run does not create and a run going on stages
    # in. A killed dry run's scratch (its process gone) was left in the temp folder for good
    # (RAM on a tmpfs): the next removes it; a live process's stays.
    system_temp = tmp_path / "tmp"
    system_temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_temp))
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    killed = system_temp / f"batchpizza-scratch-{gone.pid}-abc"
    alive = system_temp / f"batchpizza-scratch-{os.getppid()}-def"
    for left in (killed, alive):
        left.mkdir()
        (left / STAGED).write_bytes(b"a staged input")
    source = write_jsonl(tmp_path / "in.jsonl", CHANGING)
    out = str(tmp_path / "out")

    assert run_on_ray(str(source), out, dry_run=True, quiet=True).rows == 2
    assert list(system_temp.iterdir()) == [alive]

    def interrupted(*_: Any) -> Any:
        raise KeyboardInterrupt  # a signal, as the driver's Signals raise it

    monkeypatch.setattr("batchpizza.distributed.planning.count_answered", interrupted)
    with pytest.raises(batchpizza.Interrupted, match="nothing was sent or changed"):
        run_on_ray(str(source), out, dry_run=True, quiet=True)
    assert list(system_temp.iterdir()) == [alive]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "tmp"]  # no checkpoint


@needs_ray  # the command checks that Ray is installed; no cluster starts
def test_ray_reads_a_folder_of_json_lines_parts_as_before_staging(tmp_path: Path) -> None:
    # A --ray run's JSON lines output (a folder named *.jsonl) as the next run's input: staged
    # as a file, it was refused ("a directory without any .parquet file", exit 2).
    parts = tmp_path / "answers.jsonl"
    parts.mkdir()
    write_jsonl(parts / "part-000000.jsonl", CHANGING[:1])
    write_jsonl(parts / "part-000001.jsonl", [{"id": 2, "prompt": "b"}])
    summary = run_on_ray(str(parts), str(tmp_path / "out"), dry_run=True, quiet=True)
    assert (summary.exit_code, summary.rows) == (0, 2)


@needs_ray
def test_ray_refuses_bad_rows_with_the_message_of_a_run_without_ray(tmp_path: Path) -> None:
    # A prompt that changes type is a bad row, named by line, as without --ray; a repeated id
    # too (its first line said), and a line that is not JSON.
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": 5}\n{"id": "a", "prompt": "y"}\n{\n'
    )
    with pytest.raises(InputError) as without_ray:
        batchpizza.run(str(source), str(tmp_path / "local.parquet"), quiet=True)
    with pytest.raises(InputError) as on_ray:
        run_on_ray(str(source), str(tmp_path / "out"), quiet=True, base_url="http://127.0.0.1:9")
    assert on_ray.value.message == without_ray.value.message
    assert "in.jsonl:2: field 'prompt': must be a string" in on_ray.value.message
    assert on_ray.value.exit_code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


@needs_ray
def test_ray_restart_on_an_empty_input_forgets_the_answers_and_leaves_no_checkpoint(
    tmp_path: Path,
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("")
    out, checkpoint = tmp_path / "out", tmp_path / "out.checkpoint"
    (checkpoint / "parts").mkdir(parents=True)  # an earlier run's answers
    pq.write_table(pa.table({"id": ["a"], "answer": ["A"]}), checkpoint / "parts" / "p.parquet")
    (checkpoint / "meta.json").write_text('{"learned_rate": 3.0}')
    summary = run_on_ray(str(source), str(out), restart=True, quiet=True)
    assert (summary.exit_code, summary.rows) == (0, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out"]
