"""One run per output and per checkpoint, held where the files are, with nothing left on disk.

The checkpoint's lock lives on the file system the checkpoint lives on, so every process that
sees the file sees the lock: another container or pod sharing the volume (whatever its network
namespace), and over NFS another machine. On Linux it is an open file description lock
(F_OFD_SETLK) on one byte of the checkpoint file, LOCK_BYTE, which SQLite never uses: SQLite locks
bytes 0x40000000..0x400001FF of a database for its own locking (and keeps no data in that page),
so its locking is unaffected, and an OFD lock is not dropped when SQLite closes a descriptor of
the same file, as a classic fcntl lock would be. The kernel frees it when the process dies, so a
killed run never blocks the next one. To be locked, a checkpoint that does not exist yet is
created empty (SQLite takes an empty file as a new database); a run that leaves it empty (refused,
bad input) removes it again. A --ray checkpoint is a folder: it is flock'ed, and its contents,
never the folder itself, are deleted by --restart.

The output's lock (so that two runs with different checkpoints, such as a --mock run and a real
one, never write one output at once) is a name only a live process can hold: on Linux an
abstract-namespace Unix socket, which holds within one network namespace (a machine, a
container), elsewhere an flock'ed file in the system's temporary folder. The checkpoint's lock
falls back to such a name too where the file system refuses locks (with a warning), for a URI
checkpoint, and where there are no OFD locks (not Linux).

At rest there is the output and its checkpoint beside it, and nothing else.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path

from batchpizza.errors import CheckpointIsFolder, LockedError, OutputError

log = logging.getLogger("batchpizza")

_ABSTRACT = sys.platform.startswith("linux")
# The byte of the checkpoint a run locks: in the page SQLite keeps for its lock bytes
# (0x40000000..0x400001FF; the rest of that page is never used either), away from them.
LOCK_BYTE = 0x40000800
_BUSY = (errno.EAGAIN, errno.EACCES)  # another holder, as fcntl and flock say it

try:
    import fcntl

    _OFD_SETLK: int | None = getattr(fcntl, "F_OFD_SETLK", None)
    _OFD_GETLK: int | None = getattr(fcntl, "F_OFD_GETLK", None)
except ImportError:  # pragma: no cover - Windows, where nothing of the package's locking works
    _OFD_SETLK = _OFD_GETLK = None


class _Flock(ctypes.Structure):
    """struct flock, as the kernel reads it for F_OFD_SETLK (off_t is 64 bits there)."""

    _fields_ = [
        ("l_type", ctypes.c_short),
        ("l_whence", ctypes.c_short),
        ("l_start", ctypes.c_int64),
        ("l_len", ctypes.c_int64),
        ("l_pid", ctypes.c_int),  # must be 0 for an OFD lock
    ]


def _ofd(fd: int, command: int, kind: int) -> int:
    """F_OFD_SETLK / F_OFD_GETLK on LOCK_BYTE; the lock type the kernel answers with."""
    request = _Flock(kind, os.SEEK_SET, LOCK_BYTE, 1, 0)
    answer = fcntl.fcntl(fd, command, bytes(request))
    return int(_Flock.from_buffer_copy(answer).l_type)


def _name(kind: str, path: Path) -> str:
    # The resolved path, so that `out.jsonl`, `./out.jsonl` and a link to it are one lock.
    digest = hashlib.blake2b(str(path.resolve()).encode(), digest_size=16).hexdigest()
    return f"batchpizza-{kind}-{digest}"


def _key(path: Path) -> str:
    return str(path.resolve())


# The checkpoints this process holds: asked again from here, the answer is known without opening
# the file (closing a descriptor of it would drop the classic fcntl locks SQLite holds on it).
_HELD_HERE: set[str] = set()


class _Named:
    """A name only a live process can hold; `release` frees it."""

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


class _OnDisk:
    """The lock of a checkpoint, on its file system: LOCK_BYTE of the file (OFD), or the whole
    folder of a --ray checkpoint (flock). Falls back to a name where the file system refuses."""

    def __init__(self, path: Path, *, folder: bool) -> None:
        self.kind, self.path, self.folder = "checkpoint", path, folder
        self._fd: int | None = None
        self._created = False
        self._named: _Named | None = None

    def try_acquire(self) -> bool:
        if _OFD_SETLK is None:
            return self._by_name()
        key = _key(self.path)
        if key in _HELD_HERE:
            return False
        for _ in range(10):
            fd, created = self._open()
            try:
                if self.folder:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                else:
                    _ofd(fd, _OFD_SETLK, fcntl.F_WRLCK)
            except OSError as exc:
                os.close(fd)
                if exc.errno in _BUSY:
                    return False
                self._forget(created)
                log.warning(
                    "the file system of %s refuses locks (%s): runs elsewhere that share it are "
                    "not kept out, only those on this machine",
                    self.path,
                    exc.strerror,
                )
                return self._by_name()
            # A run that found the file unused may have removed it between our open and our
            # lock (see release): then ours is a lock on nothing, so take the file anew.
            if _same_file(fd, self.path):
                # A file found empty is no checkpoint (a run killed before SQLite wrote to the
                # one its lock made): as good as made here, for a run that fails to keep it.
                empty = not self.folder and os.fstat(fd).st_size == 0
                self._fd, self._created = fd, created or empty
                _HELD_HERE.add(key)
                return True
            os.close(fd)
        raise OutputError(f"cannot lock {self.path}: it keeps being replaced")

    def _open(self) -> tuple[int, bool]:
        """A descriptor of the checkpoint (created if there is none), and whether we made it."""
        path = self.path
        try:
            if self.folder:
                try:
                    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), False
                except FileNotFoundError:
                    try:
                        path.mkdir()
                        created = True
                    except FileExistsError:
                        created = False
                    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), created
            try:
                return os.open(path, os.O_RDWR | os.O_CLOEXEC), False
            except FileNotFoundError:
                try:  # 0o644 before the umask, as SQLite creates a database
                    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                    return os.open(path, flags, 0o644), True
                except FileExistsError:
                    return os.open(path, os.O_RDWR | os.O_CLOEXEC), False
        except IsADirectoryError:
            raise CheckpointIsFolder(path) from None
        except OSError as exc:
            raise OutputError(
                f"cannot open the checkpoint {path} to lock it: {exc.strerror}"
            ) from None

    def _by_name(self) -> bool:
        self._named = _Named(self.kind, self.path)
        return self._named.try_acquire()

    def _forget(self, created: bool, discard: bool = False) -> None:
        """Remove what only the lock made, if nothing was put in it, or (`discard`) whatever
        this run put in it (while still holding it, so that no other run is using it)."""
        try:
            if self.folder:
                if created or discard:
                    self.path.rmdir()  # only if empty: a folder with parts is a checkpoint
                return
            wal = self.path.with_name(self.path.name + "-wal")
            if created and discard:
                # The log and its index first: a log left beside no database would be read
                # into the next one made under this name.
                wal.unlink(missing_ok=True)
                self.path.with_name(self.path.name + "-shm").unlink(missing_ok=True)
                self.path.unlink()
            elif self.path.stat().st_size == 0 and not wal.exists():
                self.path.unlink()  # an empty file holds nothing: no checkpoint at rest
        except OSError:
            pass

    def release(self, discard: bool = False) -> None:
        if self._named is not None:
            self._named.release()
            self._named = None
        if self._fd is not None:
            if _same_file(self._fd, self.path):
                self._forget(self._created, discard)
            _HELD_HERE.discard(_key(self.path))
            os.close(self._fd)  # frees the lock
            self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), path.stat()
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


class RunLock:
    """Held for the whole run: on the output and on the checkpoint, so two runs can share
    neither an output nor a checkpoint. Taken before the input is read. `folder`: the checkpoint
    is a --ray checkpoint's folder; a URI checkpoint (object store) is locked by name only."""

    def __init__(self, output: Path, checkpoint: Path | str, *, folder: bool = False) -> None:
        held: _Named | _OnDisk
        if isinstance(checkpoint, str) and "://" in checkpoint:
            held = _Named("checkpoint", Path(checkpoint))
        else:
            held = _OnDisk(Path(checkpoint), folder=folder)
        self._held: list[_Named | _OnDisk] = [_Named("output", output), held]
        self.paths = [output, Path(checkpoint)]

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

    def release(self, *, discard: bool = False) -> None:
        """`discard`: the run kept nothing in the checkpoint (it failed before its run began):
        if it made the file, remove it with its log, rather than leave a database with no
        tables or no answers (a disk that filled while it was being made). A --ray checkpoint's
        folder goes if it is empty (--restart emptied it for an input without a row)."""
        for held in reversed(self._held):
            if isinstance(held, _OnDisk):
                held.release(discard)
            else:
                held.release()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def is_locked(checkpoint: Path) -> bool:
    """Does a live run hold this checkpoint? (For `status`; the answer may change right after.)
    Asks without taking the lock and without creating anything."""
    if _OFD_GETLK is None:
        return _named_is_held(checkpoint)
    if _key(checkpoint) in _HELD_HERE:
        return True
    try:
        fd = os.open(checkpoint, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return _named_is_held(checkpoint)  # no checkpoint (or unreadable): no run on it
    try:
        if checkpoint.is_dir():
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                return exc.errno in _BUSY
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        try:
            return _ofd(fd, _OFD_GETLK, fcntl.F_WRLCK) != fcntl.F_UNLCK
        except OSError:  # a file system that refuses locks: the run fell back to a name
            return _named_is_held(checkpoint)
    finally:
        os.close(fd)


def _named_is_held(checkpoint: Path) -> bool:
    held = _Named("checkpoint", checkpoint)
    if held.try_acquire():
        held.release()
        return False
    return True
