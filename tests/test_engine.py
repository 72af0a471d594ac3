"""The in-memory door of the engine under kill -9: `answer()` with a checkpoint loses nothing and
sends each row once more at most while in flight; without one it leaves no file anywhere."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from conftest import MockProcess

import batchpizza
from batchpizza.mock.replies import mock_answer

ROWS = 300
CONCURRENCY = 8
PROMPTS = [f"Question {i}: which cheese on a pizza with figs?" for i in range(ROWS)]

CHILD = textwrap.dedent(
    """
    import sys
    import pandas as pd
    import batchpizza

    url, checkpoint = sys.argv[1], sys.argv[2] or None
    rows, concurrency = int(sys.argv[3]), int(sys.argv[4])
    frame = pd.DataFrame(
        {"prompt": [f"Question {i}: which cheese on a pizza with figs?" for i in range(rows)]}
    )
    batchpizza.answer(frame, base_url=url, rate=0, concurrency=concurrency, quiet=True,
                      progress=False, checkpoint=checkpoint)
    """
)


def kill_after(server: MockProcess, requests: int, proc: subprocess.Popen[bytes]) -> int:
    """SIGKILL `proc` once the server has seen `requests` requests; how many it had seen."""
    deadline = time.monotonic() + 60
    while server.stats()["requests"] < requests:
        assert proc.poll() is None, "the run ended by itself before it could be killed"
        assert time.monotonic() < deadline, "the run sent too little to be killed mid-run"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return int(server.stats()["requests"])


def spawn(url: str, checkpoint: Path | None, tmp: Path, cwd: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TMPDIR": str(tmp)}
    args = [sys.executable, "-c", CHILD, url, str(checkpoint or ""), str(ROWS), str(CONCURRENCY)]
    return subprocess.Popen(args, cwd=cwd, env=env, stderr=subprocess.DEVNULL)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    tmp, cwd = tmp_path / "tmp", tmp_path / "cwd"
    tmp.mkdir()
    cwd.mkdir()
    return tmp, cwd


@pytest.mark.slow
def test_answer_killed_with_a_checkpoint_loses_nothing_and_resends_at_most_the_concurrency(
    mock_process: Callable[..., MockProcess], folders: tuple[Path, Path], tmp_path: Path
) -> None:
    server = mock_process("--latency", "20")
    tmp, cwd = folders
    checkpoint = tmp_path / "answers.checkpoint"
    sent = kill_after(server, 100, spawn(server.url, checkpoint, tmp, cwd))
    assert sent < ROWS
    assert list(tmp.iterdir()) == [] and list(cwd.iterdir()) == []
    frame = pd.DataFrame({"prompt": PROMPTS})
    out = batchpizza.answer(
        frame,
        base_url=server.url,
        rate=0,
        concurrency=CONCURRENCY,
        quiet=True,
        checkpoint=str(checkpoint),
    )
    assert list(out["answer"]) == [mock_answer(p) for p in PROMPTS]
    assert set(out["finish_reason"]) == {"stop"}
    # Rows sent before the kill but not yet committed are sent again: at most the concurrency.
    assert ROWS <= server.stats()["requests"] <= ROWS + CONCURRENCY


@pytest.mark.slow
def test_answer_killed_without_a_checkpoint_leaves_no_file_anywhere(
    mock_process: Callable[..., MockProcess], folders: tuple[Path, Path]
) -> None:
    server = mock_process("--latency", "20")
    tmp, cwd = folders
    kill_after(server, 50, spawn(server.url, None, tmp, cwd))
    assert list(tmp.iterdir()) == []
    assert list(cwd.iterdir()) == []
