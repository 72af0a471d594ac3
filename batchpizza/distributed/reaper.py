"""Ray's processes of a local cluster that a `--ray auto` run started, ended with the run however
it ends (Linux; elsewhere nothing is done).

Two leaks were seen here: a kill -9 of the driver left Ray's DashboardAgent and RuntimeEnvAgent
running (190 MB; Ray's own fate sharing ends the rest), and after a run that ended normally an
actor's process now and then hung at its exit (a deadlock in Ray Core's shutdown, its process
orphaned with 215 MB; ray-project/ray#52322). A watchdog in a session of its own (so that a
Ctrl-C or a kill of the driver's process group spares it) waits for the driver's end, seen as
the end of its standard input, which the kernel closes however the driver ends; then it kills
them. Two marks find them, as neither does alone:

- the processes under the cluster's raylet, looked at while the driver lives (first before
  `Watchdog.start` returns, then more and more rarely), each kept with its start so that a
  later process given its pid is not taken. The raylet dies with the driver and its children
  are then orphans that nothing links to the cluster: the agents rename themselves (setproctitle
  clears the memory /proc/PID/environ reads, so RAY_RAYLET_PID is gone from it, and with
  RAY_LOG_TO_STDERR they hold no file of the session either);
- RAY_RAYLET_PID in the environment of a worker the raylet started since the last look.

    python -m batchpizza.distributed.reaper RAYLET_PID RAYLET_START
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Collection
from pathlib import Path

_PROC = Path("/proc")
_REAP_WAIT_S = 10.0
_STOP_WAIT_S = 1.0
# Those that end it, held while the raylet is stopped (getattr: no SIGHUP on Windows, at import).
_HELD_SIGNALS = {
    held
    for name in ("SIGTERM", "SIGHUP", "SIGINT", "SIGQUIT")
    if (held := getattr(signal, name, 0))
}
# The looks under the raylet: its agents are there from its start, and a worker started since
# the last look carries RAY_RAYLET_PID; so soon after the start, then every 8 s (a look reads
# /proc/PID/stat of every process: 2 ms for 90 of them).
_LOOK_FIRST_S = 0.5
_LOOK_MOST_S = 8.0


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


def mine(pid: int | str) -> bool:
    """Whether a process runs as this user (its real uid): run as root, the watchdog could kill
    anyone's."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        for line in (_PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1]) == os.getuid()
    return False


def descendants(root: int) -> dict[int, int]:
    """The living processes under `root` (its children, theirs, ...), each with its start."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = _stat(entry.name)[1]
                children.setdefault(int(fields[1]), []).append((int(entry.name), int(fields[19])))
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        for pid, start in children.get(todo.pop(), ()):
            if pid not in found:
                found[pid] = start
                todo.append(pid)
    return found


def started_by(raylet: int, since: int | None = None) -> dict[int, int]:
    """This user's processes whose environment names the raylet `raylet` (its workers), each
    with its start: none started before it (`since`, its start), which a raylet of the same pid
    before it started."""
    needle = f"\0RAY_RAYLET_PID={raylet}\0".encode()
    found = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):  # gone meanwhile, or another user's
            if needle in b"\0" + (entry / "environ").read_bytes():
                start = started_at(entry.name)
                if start is not None and (since is None or start >= since):
                    found[int(entry.name)] = start
    return found


def _is_raylet(pid: int, since: int | None) -> bool:
    """Whether the raylet started at `since` still runs at `pid`."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        comm, fields = _stat(pid)
        return comm == "raylet" and (since is None or int(fields[19]) == since)
    return False


def _until_stopped(pid: int) -> None:
    """Wait (a second at most) until a process sent SIGSTOP has stopped: the signal is
    delivered when it next runs, later on a loaded machine."""
    deadline = time.monotonic() + _STOP_WAIT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, IndexError):
            if _stat(pid)[1][0] not in "RSD":  # stopped (T), or a zombie
                return
        time.sleep(0.001)


def reap(raylet: int, since: int | None = None, seen: dict[int, int] | None = None) -> int:
    """Kill the raylet if it is still there (the same process: started at `since`), what it
    started, and what was `seen` under it (pid: start) and still runs; how many, the raylet
    aside."""
    alive = _is_raylet(raylet, since)
    # A SIGTERM or SIGHUP (a `kill` of the watchdog, a logout) waits until the raylet is killed,
    # as does an error of a look: ended between the two, the watchdog left it stopped for good.
    # (A SIGKILL of the watchdog there still does.)
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS) if alive else None
    try:
        if alive:
            # Frozen before the looks: a worker it forked after them would be missed, and one
            # it is starting as they run shows no environment yet (/proc/PID/environ reads empty
            # until the new program is loaded), but is still its child.
            with contextlib.suppress(OSError):
                os.kill(raylet, signal.SIGSTOP)
                _until_stopped(raylet)
        targets = {**(seen or {}), **started_by(raylet, since)}
        if alive:
            targets.update(descendants(raylet))
    finally:
        if alive:
            with contextlib.suppress(OSError):
                os.kill(raylet, signal.SIGKILL)
        if held is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
    killed = 0
    for pid, start in targets.items():
        # The same process (a pid alone may have been given to another since) and this user's.
        if pid != os.getpid() and started_at(pid) == start and mine(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
    return killed


def watch(raylet: int, since: int, driver: int, ready: int | None = None) -> dict[int, int]:
    """The processes seen under the raylet until the driver's end (the end of file `driver`);
    `ready` is told after the first look."""
    seen: dict[int, int] = {}
    wait = _LOOK_FIRST_S
    while True:
        if _is_raylet(raylet, since):
            seen.update(descendants(raylet))
        if ready is not None:
            os.write(ready, b"\n")
            ready = None
        readable = select.select([driver], [], [], wait)[0]
        if readable and not os.read(driver, 4096):
            return seen
        wait = min(wait * 2, _LOOK_MOST_S)


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
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError:  # no watchdog: Ray's own clean-up, as before
            return None
        # Its first look under the raylet, before the driver goes on (and may be killed: the
        # agents are orphans then); an end of file if it failed.
        assert process.stdout is not None
        process.stdout.readline()
        process.stdout.close()
        return cls(process)

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(_REAP_WAIT_S)


def main(argv: list[str]) -> int:
    raylet, since = int(argv[1]), int(argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the end of the driver ends this
    # Until the driver closes it, or dies.
    seen = watch(raylet, since, sys.stdin.fileno(), sys.stdout.fileno())
    reap(raylet, since, seen)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
