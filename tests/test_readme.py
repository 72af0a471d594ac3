"""The README's first screen must work as written on a fresh machine: a test keeps it honest."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from conftest import REPO

from batchpizza import format_prompt
from batchpizza.mock.replies import mock_answer

README = (REPO / "README.md").read_text(encoding="utf-8")


def first_screen_commands() -> list[str]:
    block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert block is not None, "the README opens with a shell block"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_first_screen_installs_then_runs_the_samples() -> None:
    commands = first_screen_commands()
    assert len(commands) == 2
    assert commands[0].startswith("pip install")
    assert commands[1].startswith("batchpizza run samples/")


def test_readme_run_command_works_offline_and_answers_every_sample(tmp_path: Path) -> None:
    shutil.copytree(REPO / "samples", tmp_path / "samples")
    words = shlex.split(first_screen_commands()[1])
    assert words[0] == "batchpizza"
    done = subprocess.run(
        [sys.executable, "-m", "batchpizza", *words[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    output = tmp_path / words[words.index("-o") + 1]
    rows = pq.read_table(output).to_pylist()
    sample = [line for line in (tmp_path / words[2]).read_text().splitlines() if line.strip()]
    assert len(rows) == len(sample) > 0
    for row in rows:
        # Messages carried from JSONL into Parquet keep their native type: a list of structs.
        prompt = row["prompt"] or format_prompt(row["messages"])
        assert row["finish_reason"] == "stop"
        assert row["answer"] == mock_answer(prompt)


def test_readme_names_the_test_command_that_ci_runs() -> None:
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "python -m pytest -q" in README
    assert "python -m pytest -q" in ci
