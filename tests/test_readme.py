"""The README's first screen must work as written on a fresh machine: a test keeps it honest."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO

from batchpizza import format_prompt, runlog
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


def shape(line: str) -> str:
    """A log line with every number (a count, a time, a rate, a date) as N, the output as OUT."""
    line = re.sub(r"-> \S+ \(exit", "-> OUT (exit", line.strip())
    return re.sub(r"\d+(?:[.,:/-]\d+)*", "N", line)


def readme_lines(word: str) -> list[str]:
    """The README's example log lines holding `batchpizza: WORD:`."""
    return [line for line in README.splitlines() if f"batchpizza: {word}:" in line]


def run_lines(folder: Path, rows: list[dict[str, str]], *options: str) -> list[str]:
    (folder / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    command = ["run", "prompts.jsonl", "-o", "answers.parquet", "--mock", *options]
    done = subprocess.run(
        [sys.executable, "-m", "batchpizza", *command],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in done.stderr
    return done.stderr.splitlines()


@pytest.mark.slow
def test_the_log_lines_the_readme_shows_are_the_ones_a_run_writes(tmp_path: Path) -> None:
    first = [{"id": "a", "prompt": "one"}, {"id": "b", "prompt": "two"}]
    first += [{"id": "c", "prompt": "[[status:404]] three"}]
    run_lines(tmp_path, first)
    # Then a prompt changed, rows added, and the failed one asked again: every reason at once
    # (two new rows, as the README's many).
    again = [first[0], {"id": "b", "prompt": "two, changed"}, first[2], {"id": "d", "prompt": "4"}]
    again.append({"id": "e", "prompt": "5"})
    written = run_lines(tmp_path, again, "--rate", "auto", "--deadline", "50m")
    start = next(line for line in written if "batchpizza: start:" in line)
    done = next(line for line in written if "batchpizza: done:" in line)
    progress = runlog.progress_text(
        runlog.Snapshot(300, 201, 196, 4, 0, 1, 58, 61, 3, 4, 60.0, 4.2, None, tokens=2318)
    )

    assert [shape(line) for line in readme_lines("start")] == [shape(start)]
    # The cron log's and the exit codes' summary line.
    assert {shape(line) for line in readme_lines("done")} == {shape(done)}
    assert [shape(line).split("batchpizza: ")[1] for line in readme_lines("progress")] == [
        shape(progress)
    ]
