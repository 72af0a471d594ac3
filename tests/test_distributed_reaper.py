"""The watchdog of a local cluster a --ray run started (batchpizza.distributed.reaper): what
the cluster's raylet started is killed when the run ends, or when its driver is killed, with
stand-ins for Ray's processes (no Ray)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from batchpizza.distributed.reaper import Watchdog, raylet_started_here, reap

# A process whose name (comm) is "raylet", as Ray's is, until it is killed.
FAKE_RAYLET = (
    "import ctypes, sys, time; ctypes.CDLL(None).prctl(15, b'raylet'); "
    "print('up', flush=True); time.sleep(600)"
)


def sleeper(
    raylet: int | None = None, code: str = "import time; time.sleep(600)"
) -> subprocess.Popen[str]:
    env = {**os.environ}
    if raylet is not None:
        env["RAY_RAYLET_PID"] = str(raylet)  # as the raylet sets it in what it starts
    process = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True
    )
    return process


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_the_raylet_started_here_is_found_and_reaped_with_what_it_started(
    processes: list[subprocess.Popen[str]],
) -> None:
    assert raylet_started_here() is None
    raylet = sleeper(code=FAKE_RAYLET)
    processes.append(raylet)
    assert raylet.stdout is not None and raylet.stdout.readline() == "up\n"
    assert raylet_started_here() == raylet.pid
    worker, agent = sleeper(raylet.pid), sleeper(raylet.pid)
    another_clusters = sleeper(raylet.pid + 1_000_000)
    processes.extend([worker, agent, another_clusters])

    assert reap(raylet.pid) == 2
    assert worker.wait(30) == agent.wait(30) == raylet.wait(30) == -signal.SIGKILL
    assert another_clusters.poll() is None  # not this cluster's


def test_the_watchdog_reaps_when_the_run_ends(processes: list[subprocess.Popen[str]]) -> None:
    worker = sleeper(os.getpid())  # a raylet pid whose process is no raylet: spared
    processes.append(worker)
    watchdog = Watchdog.start(os.getpid())
    assert watchdog is not None and worker.poll() is None
    watchdog.close()
    assert worker.wait(30) == -signal.SIGKILL
    assert Watchdog.start(None) is None  # a cluster joined, not started here: not ours


def test_the_watchdog_reaps_when_the_driver_is_killed(
    processes: list[subprocess.Popen[str]],
) -> None:
    worker = sleeper(os.getpid())
    driver = sleeper(
        code=(
            "import sys, time; from batchpizza.distributed.reaper import Watchdog; "
            f"w = Watchdog.start({os.getpid()}); print('up', flush=True); time.sleep(600)"
        )
    )
    processes.extend([worker, driver])
    assert driver.stdout is not None and driver.stdout.readline() == "up\n"
    driver.kill()  # kill -9: nothing of the driver runs any more
    assert worker.wait(30) == -signal.SIGKILL
