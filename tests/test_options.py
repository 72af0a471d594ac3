"""The Python API's keyword arguments: one typed option per run option, checked by mypy."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from batchpizza.cli import run as run_command
from batchpizza.config import RunConfig
from batchpizza.options import Options


def test_the_typed_options_are_the_run_options() -> None:
    fields = {f.name for f in dataclasses.fields(RunConfig) if f.init} - {"input", "output"}
    assert set(Options.__annotations__) == fields


def test_every_command_line_option_of_run_is_a_typed_option() -> None:
    # The other way round some are Python's only: the backoff and grace tunings, input_label.
    names = {p.name for p in run_command.params} - {"input", "output", "ray_address"}
    assert names <= set(Options.__annotations__)


@pytest.mark.slow
def test_mypy_refuses_an_option_of_the_wrong_type_or_name(tmp_path: Path) -> None:
    snippet = tmp_path / "use.py"
    snippet.write_text(
        "import batchpizza\n"
        "batchpizza.answer(['q'], concurrency=8, rate='5/s')\n"
        "batchpizza.answer(['q'], concurrency='8')\n"
        "batchpizza.answer(['q'], concurency=8)\n"
        "batchpizza.run('in.jsonl', 'out.jsonl', retries=3)\n"
    )
    found = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(snippet)],
        capture_output=True,
        text=True,
    )
    errors = [line for line in found.stdout.splitlines() if ": error:" in line]
    assert [line.split(":")[1] for line in errors] == ["3", "4", "5"], found.stdout
