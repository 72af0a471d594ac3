"""Ray's processes of a local cluster that a `--ray auto` run started, ended with the run however
it ends (Linux; elsewhere nothing is done).

Two leaks were seen here: a kill -9 of the driver left Ray's DashboardAgent and RuntimeEnvAgent
running (190 MB; Ray's own fate sharing ends the rest), and after a run that ended normally an
actor's process now and then hung at its exit (a deadlock in Ray Core's shutdown, its process
orphaned with 215 MB; ray-project/ray#52322). Every process the cluster's raylet starts carries
RAY_RAYLET_PID in its environment: a watchdog in a session of its own (so that a Ctrl-C or a
kill of the driver's process group spares it) waits for the driver's end, seen as the end of
its standard input, which the kernel closes however the driver ends; then it kills them.

    python -m batchpizza.distributed.reaper RAYLET_PID RAYLET_START
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path

_PROC = Path("/proc")
_REAP_WAIT_S = 10.0


def _stat(pid: int | str) -> tuple[str, list[str]]:
    """A process's name (comm) and the fields of /proc/PID/stat after it (state, ppid, ...)."""
    stat = (_PROC / str(pid) / "stat").read_text()
    # pid (comm) state ppid ...: comm may hold spaces, so split after its ")".
    return stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()


def started_at(pid: int | str) -> int | None:
    """When a process started (clock ticks since boot), None when it is gone: with its pid it
    names one process, where a pid alone may be reused by another."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        return int(_stat(pid)[1][19])
    return None


def raylets_here() -> set[int]:
    """The living raylets whose parent is this process. Before ray.init, those are not the
    run's: a driver that is PID 1 of a container (`ray start --head && exec batchpizza run --ray
    auto`), or a subreaper, is the parent of a standing cluster's raylet, which `ray start`
    left to it."""
    if not _PROC.is_dir():
        return set()
    me = str(os.getpid())
    found = set()
    for entry in _PROC.iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            comm, fields = _stat(entry.name)
            if comm == "raylet" and fields[1] == me and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def raylet_started_here(before: Collection[int] = ()) -> int | None:
    """The pid of the raylet this process started (ray.init of a new local cluster), if any:
    one of its raylets that was not there `before` ray.init."""
    new = raylets_here() - set(before)
    return max(new, key=lambda pid: started_at(pid) or 0) if new else None


def started_by(raylet: int, since: int | None = None) -> list[int]:
    """This user's processes that the raylet `raylet` started (its workers and agents): none
    started before it (`since`, its start), which a raylet of the same pid before it started."""
    needle = f"\0RAY_RAYLET_PID={raylet}\0".encode()
    found = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):  # gone meanwhile, or another user's
            if needle in b"\0" + (entry / "environ").read_bytes():
                start = started_at(entry.name)
                if since is None or (start is not None and start >= since):
                    found.append(int(entry.name))
    return found


def reap(raylet: int, since: int | None = None) -> int:
    """Kill what the raylet started, and the raylet if it is still there (the same process:
    started at `since`); how many."""
    killed = 0
    for pid in started_by(raylet, since):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    with contextlib.suppress(OSError):
        if (_PROC / str(raylet) / "comm").read_text().strip() == "raylet" and (
            since is None or started_at(raylet) == since
        ):
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
        since = None if raylet is None else started_at(raylet)
        if raylet is None or since is None:
            return None
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "batchpizza.distributed.reaper", str(raylet), str(since)],
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
    raylet, since = int(argv[1]), int(argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the end of the driver ends this
    sys.stdin.buffer.read()  # until the driver closes it, or dies
    reap(raylet, since)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
