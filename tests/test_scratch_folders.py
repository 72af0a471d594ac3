"""Scratch folders in the system temp folder (a dry run's scan, --ray's staging): what a killed
process left is removed by the next one, never what a live one holds."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from batchpizza.files import scratch_folder

NO_SUCH_PID = 2**22 + 1  # past the largest pid_max Linux allows: never a live process


@pytest.fixture
def system_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_a_killed_process_folder_is_removed_by_the_next(system_temp: Path) -> None:
    killed = system_temp / f"batchpizza-scratch-{NO_SUCH_PID}-abc"
    killed.mkdir()
    (killed / "scan.sqlite").write_bytes(b"left by a kill")

    with scratch_folder() as mine:
        assert [p.name for p in system_temp.iterdir()] == [Path(mine).name]
    assert list(system_temp.iterdir()) == []


def test_a_live_process_folder_whose_id_names_no_process_here_is_kept(system_temp: Path) -> None:
    # A run in another PID namespace (a container sharing this /tmp): its process id names no
    # process here, but the run is alive and holds its folder.
    with scratch_folder() as theirs:
        elsewhere = system_temp / f"batchpizza-scratch-{NO_SUCH_PID}-def"
        Path(theirs).rename(elsewhere)  # the lock is the folder's, whatever its name
        (elsewhere / "scan.sqlite").write_bytes(b"a live run's scan")
        with scratch_folder():
            pass
        assert (elsewhere / "scan.sqlite").read_bytes() == b"a live run's scan"
        elsewhere.rename(theirs)
