"""The watchdog of a local cluster a --ray run started (batchpizza.distributed.reaper): what
the cluster's raylet started is killed when the run ends, or when its driver is killed, with
stand-ins for Ray's processes (no Ray)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MockProcess

from batchpizza.distributed.reaper import (
    Watchdog,
    descendants,
    raylet_started_here,
    raylets_here,
    reap,
    started_at,
)

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
    if raylet is not None:
        names_the_raylet(process, raylet)
    return process


def names_the_raylet(process: subprocess.Popen[str], raylet: int) -> None:
    """Wait until `process`'s environment shows RAY_RAYLET_PID, as a raylet's worker's does long
    before a watchdog looks: Popen returns once the exec began, and until the new program is
    loaded /proc/PID/environ reads empty (136 of 300 children, read at once under load; a reap
    then missed the worker, once in ~100 runs)."""
    needle = f"\0RAY_RAYLET_PID={raylet}\0".encode()
    while needle not in b"\0" + Path(f"/proc/{process.pid}/environ").read_bytes():
        assert process.poll() is None
        time.sleep(0.001)


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


def test_the_raylet_is_frozen_while_what_it_started_is_looked_for(
    processes: list[subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Looked for while it ran, a worker it forked after the looks was missed, and one it was
    # starting as they ran showed no environment yet: left running once the raylet was killed.
    import batchpizza.distributed.reaper as reaper

    raylet = fake_raylet(processes)
    states: list[str] = []

    def frozen(look: Callable[..., dict[int, int]]) -> Callable[..., dict[int, int]]:
        def looking(*args: Any) -> dict[int, int]:
            states.append(reaper._stat(raylet.pid)[1][0])
            return look(*args)

        return looking

    monkeypatch.setattr(reaper, "descendants", frozen(reaper.descendants))
    monkeypatch.setattr(reaper, "started_by", frozen(reaper.started_by))
    reap(raylet.pid)
    assert states == ["T", "T"]  # stopped, for both looks
    assert raylet.wait(30) == -signal.SIGKILL


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


def fake_raylet(processes: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    raylet = sleeper(code=FAKE_RAYLET)
    processes.append(raylet)
    assert raylet.stdout is not None and raylet.stdout.readline() == "up\n"
    return raylet


def test_a_standing_clusters_raylet_that_is_a_child_here_is_not_the_runs(
    processes: list[subprocess.Popen[str]],
) -> None:
    # A driver that is PID 1 of a container (`ray start --head && exec batchpizza run --ray
    # auto`) is the parent of the standing cluster's raylet: it was taken for the run's own,
    # and the cluster the user had started was killed at the run's end.
    standing = fake_raylet(processes)
    before = raylets_here()
    assert before == {standing.pid}
    assert raylet_started_here(before) is None  # ray.init joined it: not ours
    ours = fake_raylet(processes)
    assert raylet_started_here(before) == ours.pid


def test_nothing_started_before_the_raylet_is_reaped_nor_a_raylet_that_reused_its_pid(
    processes: list[subprocess.Popen[str]],
) -> None:
    # A process that carries this pid as RAY_RAYLET_PID but started before the raylet (left by
    # an earlier raylet of the same pid, or a shell opened from one) is not this cluster's.
    earlier = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys; pid = sys.stdin.readline().strip(); "
            "os.execve(sys.executable, [sys.executable, '-c', 'import time; time.sleep(600)'], "
            "{**os.environ, 'RAY_RAYLET_PID': pid})",
        ],
        stdin=subprocess.PIPE,
        text=True,
    )
    processes.append(earlier)
    raylet = fake_raylet(processes)
    while started_at(raylet.pid) == started_at(earlier.pid):  # the same clock tick: not after
        raylet.kill()
        raylet = fake_raylet(processes)
    assert earlier.stdin is not None
    earlier.stdin.write(f"{raylet.pid}\n")
    earlier.stdin.close()
    names_the_raylet(earlier, raylet.pid)
    worker = sleeper(raylet.pid)
    processes.append(worker)
    since = started_at(raylet.pid)
    assert since is not None

    assert reap(raylet.pid, since) == 1
    assert worker.wait(30) == raylet.wait(30) == -signal.SIGKILL
    assert earlier.poll() is None

    another = fake_raylet(processes)  # at a pid the watchdog's raylet had, started since
    another_since = started_at(another.pid)
    assert another_since is not None
    reap(another.pid, another_since - 1)
    assert another.poll() is None


# A raylet that starts an agent with nothing of the cluster in its environment, as Ray's agents
# look once they renamed themselves (setproctitle clears the memory /proc/PID/environ reads).
RAYLET_WITH_AN_AGENT = (
    "import ctypes, os, subprocess, sys, time; ctypes.CDLL(None).prctl(15, b'raylet'); "
    "env = {k: v for k, v in os.environ.items() if k != 'RAY_RAYLET_PID'}; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], env=env); "
    "print('up', flush=True); time.sleep(600)"
)


def test_an_agent_orphaned_by_the_raylets_end_is_reaped_after_a_kill_of_the_driver(
    processes: list[subprocess.Popen[str]],
) -> None:
    raylet = sleeper(code=RAYLET_WITH_AN_AGENT)
    processes.append(raylet)
    assert raylet.stdout is not None and raylet.stdout.readline() == "up\n"
    bystander = sleeper()  # this user's, started since, under no raylet
    driver = sleeper(
        code=(
            "import time; from batchpizza.distributed.reaper import Watchdog; "
            f"w = Watchdog.start({raylet.pid}); print('up', flush=True); time.sleep(600)"
        )
    )
    processes.extend([bystander, driver])
    assert driver.stdout is not None and driver.stdout.readline() == "up\n"
    # Ray's fate sharing ends the raylet with the driver: its agent is an orphan then.
    raylet.kill()
    raylet.wait()
    driver.kill()
    # The agent holds the raylet's standard output: its end is that output's end.
    assert select.select([raylet.stdout], [], [], 30)[0] and raylet.stdout.read() == ""
    assert bystander.poll() is None


@pytest.mark.skipif(os.geteuid() != 0, reason="only root starts another user's process")
def test_another_users_process_is_spared_though_it_names_the_raylet(
    processes: list[subprocess.Popen[str]],
) -> None:
    raylet = fake_raylet(processes)
    worker = sleeper(raylet.pid)
    processes.append(worker)
    another_users = subprocess.Popen(
        ["sleep", "600"],  # not this user's Python, which that user may not be allowed to run
        env={**os.environ, "RAY_RAYLET_PID": str(raylet.pid)},
        user=65534,
        group=65534,
        text=True,
    )
    try:
        names_the_raylet(another_users, raylet.pid)  # else spared for being unreadable yet
        assert reap(raylet.pid) == 1
        assert worker.wait(30) == -signal.SIGKILL
        assert another_users.poll() is None
    finally:
        another_users.kill()
        another_users.wait()


@pytest.mark.ray
@pytest.mark.slow
def test_a_kill_of_a_ray_auto_runs_driver_leaves_none_of_its_clusters_processes(
    mock_process: Callable[..., MockProcess], tmp_path: Path
) -> None:
    # The whole chain with Ray's own processes. Whether an agent's RAY_RAYLET_PID survives its
    # setproctitle depends on where the raylet put it in its environment: run by hand with
    # RAY_LOG_TO_STDERR=1 it was gone and both agents stayed; in this test's environment it
    # survived, so the stand-ins above are what shows the orphaned agents taken.
    mock = mock_process("--latency", "2000")
    source = tmp_path / "in.jsonl"
    source.write_text("".join(f'{{"id": {i}, "prompt": "q{i}"}}\n' for i in range(200)))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"RAY_AUTH_MODE": "disabled", "RAY_LOG_TO_STDERR": "1"}
    args = [str(source), "-o", str(tmp_path / "out.jsonl"), "--ray", "auto", "--base-url", mock.url]
    run = subprocess.Popen(
        [sys.executable, "-m", "batchpizza", "run", *args, "-q"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    cluster: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 240
        while mock.stats()["requests"] < 1:
            assert run.poll() is None, "it ended before it sent"
            assert time.monotonic() < deadline, "it never started sending"
            time.sleep(0.1)
        raylets = [p for p in descendants(run.pid) if _comm(p) == "raylet"]
        if not raylets:
            pytest.skip("--ray auto joined a standing cluster here: no watchdog of its own")
        cluster = {raylets[0]: started_at(raylets[0]) or 0, **descendants(raylets[0])}
        assert any(_comm(p) == "ray::DashboardA" for p in cluster)  # comm: 15 characters
        run.kill()  # kill -9 of the driver alone, not of its process group
        run.wait()
        deadline = time.monotonic() + 60
        while (left := [p for p, start in cluster.items() if started_at(p) == start]) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert [_comm(p) for p in left] == []
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        for pid, start in cluster.items():  # a failure here leaves nothing behind either
            if started_at(pid) == start:
                os.kill(pid, signal.SIGKILL)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_a_watchdog_terminated_while_the_raylet_is_frozen_kills_it_first(
    processes: list[subprocess.Popen[str]],
) -> None:
    # A `kill` of the watchdog between the raylet's SIGSTOP and its SIGKILL left the raylet
    # stopped for good, with what it started.
    raylet = fake_raylet(processes)
    terminated_while_looking = (
        "import os, signal, sys\n"
        "from batchpizza.distributed import reaper\n"
        "def looking(*_):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return {}\n"
        "reaper.started_by = looking\n"
        "reaper.reap(int(sys.argv[1]))\n"
    )
    watchdog = subprocess.run(
        [sys.executable, "-c", terminated_while_looking, str(raylet.pid)], check=False
    )

    assert watchdog.returncode == -signal.SIGTERM  # the SIGTERM, once the raylet was killed
    assert raylet.wait(30) == -signal.SIGKILL
