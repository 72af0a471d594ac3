"""The run lock: one run per output and checkpoint, across processes and network namespaces, and nothing left on disk."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import FAST, Spawn, other_network_namespace, write_jsonl
from test_durability import check_output, prompt_rows, run_args, wait_until

import batchpizza
from batchpizza.checkpoint import is_locked
from batchpizza.cli import cli
from batchpizza.mock.faults import MockConfig
from batchpizza.mock.server import ThreadedMockServer

# -- 5. the run lock ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_run_on_the_same_output_refuses_at_once_before_reading_its_input(
    tmp_path: Path, mock_api: ThreadedMockServer, spawn: Spawn
) -> None:
    rows = prompt_rows(200, "locked")
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    mock_api.config = MockConfig(latency_ms=300)
    first = spawn(run_args(inp, out, mock_api.base_url, "--concurrency", "4", "-q"))
    assert wait_until(lambda: mock_api.stats.requests >= 4, 20), first.stderr

    missing = tmp_path / "missing.jsonl"
    started = time.monotonic()
    second = subprocess.run(
        run_args(missing, out, mock_api.base_url), capture_output=True, text=True, timeout=30
    )
    took = time.monotonic() - started
    # Even told to start over, a refused run must not touch the first run's checkpoint.
    third = subprocess.run(
        run_args(inp, out, mock_api.base_url, "--restart"),
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert first.popen.poll() is None, "the first run ended early; the test proves nothing"
    for refused in (second, third):
        assert refused.returncode == 75, refused.stderr  # EX_TEMPFAIL: try again later
        message = refused.stderr.lower()
        assert "lock" in message or "another" in message, refused.stderr
        assert "traceback" not in message
    assert "missing.jsonl" not in second.stderr  # it never looked at its input
    assert took < 5

    mock_api.config = MockConfig()
    assert first.wait(30) == 0, first.stderr
    check_output(out, rows)
    assert sorted(mock_api.stats.answers.values()) == [1] * 200
    assert mock_api.stats.requests == 200


@pytest.mark.slow
def test_a_run_in_another_network_namespace_cannot_run_on_the_same_files(
    tmp_path: Path, mock_api: ThreadedMockServer, spawn: Spawn
) -> None:
    netns = other_network_namespace()
    rows = prompt_rows(60, "netns")
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    ck = Path(f"{out}.checkpoint")
    mock_api.config = MockConfig(latency_ms=300)
    first = spawn(run_args(inp, out, mock_api.base_url, "--concurrency", "4", "-q"))
    assert wait_until(lambda: mock_api.stats.requests >= 4, 20), first.stderr

    # Its loopback is not ours: had it run, it could only have failed to send, not exit 75.
    second = subprocess.run(
        [*netns, *run_args(inp, out, mock_api.base_url, "--max-retries", "0", "--timeout", "2")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    status = subprocess.run(
        [*netns, sys.executable, "-m", "batchpizza", "status", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert first.popen.poll() is None, "the first run ended early; the test proves nothing"
    assert second.returncode == 75, second.stderr
    assert "another batchpizza run" in second.stderr
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["running"] is True  # status sees the lock from there too
    mock_api.config = MockConfig()
    assert first.wait(30) == 0, first.stderr
    check_output(out, rows)
    assert mock_api.stats.requests == 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", out.name, ck.name]


def test_a_run_refused_before_it_wrote_its_new_checkpoint_leaves_none(
    tmp_path: Path, mock_api: ThreadedMockServer
) -> None:
    # The lock is held on the checkpoint file, which is created to be locked: bad input must
    # still leave nothing behind.
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": ""}])
    done = CliRunner().invoke(
        cli, ["run", str(inp), "-o", str(tmp_path / "out.jsonl"), "--base-url", mock_api.base_url]
    )
    assert done.exit_code == 2, done.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_a_lock_left_by_a_killed_run_never_blocks_the_next(
    tmp_path: Path, mock_api: ThreadedMockServer, spawn: Spawn
) -> None:
    rows = prompt_rows(100, "stale")
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    ck = Path(f"{out}.checkpoint")
    mock_api.config = MockConfig(latency_ms=300)
    proc = spawn(run_args(inp, out, mock_api.base_url, "--concurrency", "4", "-q"))
    assert wait_until(lambda: mock_api.stats.requests >= 4, 20), proc.stderr
    assert is_locked(ck)
    proc.signal(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL
    assert not is_locked(ck)  # the kernel freed the lock with the process

    mock_api.config = MockConfig()
    summary = batchpizza.run(inp, out, base_url=mock_api.base_url, **FAST)

    assert summary["exit_code"] == 0
    check_output(out, rows)
