"""Files that appear whole or not at all, scratch folders a kill does not leave for good, and the
checks made before a run reads anything."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from batchpizza.errors import OutputError, UsageError

try:
    import fcntl

    _FLOCK = True
except ImportError:  # pragma: no cover - Windows: the process id alone tells a live folder
    _FLOCK = False

PARTIAL = ".partial"


def partial_files(path: Path) -> list[Path]:
    """What earlier writes of `path` that were killed left behind."""
    folder = path.parent if str(path.parent) else Path()
    return sorted(folder.glob(f".{path.name}.*{PARTIAL}"))


def clear_partials(path: Path) -> None:
    """Remove what killed writes of `path` left (call it holding the run's lock: a live writer
    of the same path would otherwise lose its file)."""
    for stale in partial_files(path):
        stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A file that replaces `path` only once it is complete and on disk."""
    folder = path.parent if str(path.parent) else Path()
    try:
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=PARTIAL)
    except OSError as exc:
        raise OutputError(f"cannot write in {folder}: {exc.strerror}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb", buffering=1024 * 1024) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _normal_mode(path))
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a folder
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_atomically(path: Path, data: bytes) -> None:
    with atomic_file(path) as handle:
        handle.write(data)


def _normal_mode(path: Path) -> int:
    """The mode an ordinary new file would get (mkstemp's is 0600), or the replaced file's."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def check_writable(folder: Path, what: str) -> None:
    """Fail before sending anything rather than after the whole run."""
    folder = folder if str(folder) else Path()
    if not folder.is_dir():
        raise OutputError(f"the {what} folder {folder} does not exist")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write in the {what} folder {folder}: {exc.strerror}") from None


def same_file(a: Path, b: Path) -> bool:
    """Do `a` and `b` name one file (links and `..` resolved; a missing file by its path)?"""
    try:
        return a.samefile(b)
    except OSError:
        return a.resolve() == b.resolve()


def inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def refuse_own_files(
    target: Path,
    option: str,
    own: Sequence[tuple[str, Path]],
    input_folders: Sequence[Path] = (),
) -> None:
    """A usage error when `target`, a file a command is about to write, is one of a run's own
    files (`own`: what each is, and its path) or lies inside its input folder: writing it would
    destroy the run's output, checkpoint or input, as `run` refuses to."""
    if target.is_dir():
        raise UsageError(f"{option} {target} is a directory; give a file name")
    for what, path in own:
        if same_file(target, path):
            raise UsageError(
                f"{option} {target}: refusing to write over the {what} of this run ({path}); "
                "give another file name"
            )
    for folder in input_folders:
        if inside(target, folder):
            raise UsageError(
                f"{option} {target} is inside the input folder {folder}, where the next run "
                "would read it; give another file name"
            )


# A scratch folder in the system temp folder, named with its process's id: one whose process is
# gone (killed: nothing of it could clean up) is removed by the next that makes one. Its process
# also holds an flock on it while it lives: a process id names no process across PID namespaces
# (containers sharing one /tmp), where a live run's folder looked like a dead one's.
_SCRATCH = "batchpizza-scratch-"


@contextlib.contextmanager
def scratch_folder() -> Iterator[str]:
    """A folder of this process's in the system temp folder, removed on every way out Python
    sees (an error, an interrupt); those of killed processes found there are removed first."""
    temp = Path(tempfile.gettempdir())
    for left in temp.glob(f"{_SCRATCH}*"):
        pid = left.name[len(_SCRATCH) :].split("-", 1)[0]
        with contextlib.suppress(OSError):  # removed meanwhile by another process
            if (
                pid.isdigit()
                and not _alive(int(pid))
                and left.stat().st_uid == os.getuid()
                and not _held(left)
            ):
                shutil.rmtree(left, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f"{_SCRATCH}{os.getpid()}-") as folder:
        if not _FLOCK:
            yield folder
            return
        held = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(held, fcntl.LOCK_EX)  # the kernel lets go of it when the process dies
            yield folder
        finally:
            os.close(held)


def _held(folder: Path) -> bool:
    """Whether a live process holds `folder`'s flock (a scratch folder's owner)."""
    if not _FLOCK:
        return False
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True
