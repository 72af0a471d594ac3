"""One run per output and per checkpoint, with nothing left on disk.

A lock is a name only a live process can hold: on Linux an abstract-namespace Unix socket (no
file at all; the kernel frees the name when the process dies, so a killed run never blocks the
next), elsewhere an flock'ed file in the system's temporary folder. Either way nothing is left
beside the output: at rest there is the output and its checkpoint, and nothing else.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import tempfile
from pathlib import Path

from batchpizza.errors import LockedError, OutputError

_ABSTRACT = sys.platform.startswith("linux")


def _name(kind: str, path: Path) -> str:
    # The resolved path, so that `out.jsonl`, `./out.jsonl` and a link to it are one lock.
    digest = hashlib.blake2b(str(path.resolve()).encode(), digest_size=16).hexdigest()
    return f"batchpizza-{kind}-{digest}"


class _Held:
    """One held name; `release` frees it."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind, self.path = kind, path
        self._sock: socket.socket | None = None
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        name = _name(self.kind, self.path)
        if _ABSTRACT:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind("\0" + name)
            except OSError:
                sock.close()
                return False
            self._sock = sock
            return True
        import fcntl  # not on Windows; there the package's other locks would not work either

        lock_path = Path(tempfile.gettempdir()) / f"{name}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise OutputError(f"cannot create the lock {lock_path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class RunLock:
    """Held for the whole run: on the output and on the checkpoint, so two runs can share
    neither an output nor a checkpoint."""

    def __init__(self, output: Path, checkpoint: Path) -> None:
        self._held = [_Held("output", output), _Held("checkpoint", checkpoint)]
        self.paths = [output, checkpoint]

    def acquire(self) -> None:
        try:
            for held in self._held:
                if not held.try_acquire():
                    raise LockedError(
                        f"another batchpizza run is using this {held.kind} ({held.path}); "
                        "try again later, once it has finished"
                    )
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        for held in self._held:
            held.release()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def is_locked(checkpoint: Path) -> bool:
    """Does a live run hold this checkpoint? (For `status`; the answer may change right after.)"""
    held = _Held("checkpoint", checkpoint)
    if held.try_acquire():
        held.release()
        return False
    return True
