"""The benchmark scripts are not tests, but they must keep working: a tiny smoke run of each."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_bench_quick_validation_and_resume_run_and_print_their_table() -> None:
    done = run_script(
        "benchmarks/bench.py",
        "--quick",
        "--scenario",
        "validation",
        "resume",
        "controls",
        "startup",
        "--repeat",
        "1",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| validation |" in done.stdout
    assert "| resume |" in done.stdout
    assert "| controls |" in done.stdout
    assert "| start-up steps | one-row Parquet run: the output |" in done.stdout


@pytest.mark.slow
def test_bench_quick_tokens_and_schema_compare_their_jobs() -> None:
    done = run_script(
        "benchmarks/bench.py", "--quick", "--scenario", "tokens", "schema", "--repeat", "1"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| tokens |" in done.stdout
    assert "| schema |" in done.stdout


@pytest.mark.slow
def test_crash_soak_small_passes_its_own_checks() -> None:
    done = run_script("benchmarks/crash.py", "--rows", "400", "--kills", "2", "--seed", "5")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout
