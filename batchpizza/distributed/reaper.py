"""Ray's processes of a local cluster that a `--ray auto` run started, ended with the run however
it ends (Linux; elsewhere nothing is done).

Two leaks were seen here: a kill -9 of the driver left Ray's DashboardAgent and RuntimeEnvAgent
running (190 MB; Ray's own fate sharing ends the rest), and after a run that ended normally an
actor's process now and then hung at its exit (a deadlock in Ray Core's shutdown, its process
orphaned with 215 MB; ray-project/ray#52322). Every process the cluster's raylet starts carries
RAY_RAYLET_PID in its environment: a watchdog in a session of its own (so that a Ctrl-C or a
kill of the driver's process group spares it) waits for the driver's end, seen as the end of
its standard input, which the kernel closes however the driver ends; then it kills them.

    python -m batchpizza.distributed.reaper RAYLET_PID
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

_PROC = Path("/proc")
_REAP_WAIT_S = 10.0


def raylet_started_here() -> int | None:
    """The pid of the raylet this process started (ray.init of a new local cluster), if any."""
    if not _PROC.is_dir():
        return None
    me = str(os.getpid())
    for entry in _PROC.iterdir():
        with contextlib.suppress(OSError, IndexError):
            stat = (entry / "stat").read_text()
            # pid (comm) state ppid ...: comm may hold spaces, so split after its ")".
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            if comm == "raylet" and stat[stat.rindex(")") + 2 :].split()[1] == me:
                return int(entry.name)
    return None


def started_by(raylet: int) -> list[int]:
    """This user's processes that the raylet `raylet` started (its workers and agents)."""
    needle = f"\0RAY_RAYLET_PID={raylet}\0".encode()
    found = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):  # gone meanwhile, or another user's
            if needle in b"\0" + (entry / "environ").read_bytes():
                found.append(int(entry.name))
    return found


def reap(raylet: int) -> int:
    """Kill what the raylet started, and the raylet if it is still there; how many."""
    killed = 0
    for pid in started_by(raylet):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    with contextlib.suppress(OSError):
        if (_PROC / str(raylet) / "comm").read_text().strip() == "raylet":
            os.kill(raylet, signal.SIGKILL)
    return killed


class Watchdog:
    """The watchdog of a cluster started here: its leftovers are killed at `close()`, or when
    this process dies."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process

    @classmethod
    def start(cls, raylet: int | None) -> Watchdog | None:
        """None when no raylet was started here (a cluster joined: not ours to clean up)."""
        if raylet is None:
            return None
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "batchpizza.distributed.reaper", str(raylet)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError:  # no watchdog: Ray's own clean-up, as before
            return None
        return cls(process)

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(_REAP_WAIT_S)


def main(argv: list[str]) -> int:
    raylet = int(argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the end of the driver ends this
    sys.stdin.buffer.read()  # until the driver closes it, or dies
    reap(raylet)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
