"""Ctrl-C in a script calling the blocking doors, `run()` and `answer()`: the job stops as the
command line's run does on SIGINT (the requests in flight finish and are kept), not cancelled
with their answers dropped; a second Ctrl-C is out at once."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import pytest
from conftest import FAST, write_jsonl

import batchpizza
from batchpizza.job.ctrlc import first_stop
from batchpizza.mock.server import ThreadedMockServer

if TYPE_CHECKING:
    from batchpizza.job.stages import Job

PROMPTS = [f"[[slow:150]] question {i}" for i in range(40)]


@pytest.fixture
def ctrl_c_at(mock_api: ThreadedMockServer) -> Iterator[Callable[..., None]]:
    """ctrl_c_at(n, times=1): SIGINT to this process (the main thread, as a script's Ctrl-C)
    once the server has seen n requests, `times` times; Python's own SIGINT handler in place,
    as in a script."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    done = threading.Event()
    watchers: list[threading.Thread] = []

    def arm(n: int, times: int = 1) -> None:
        def watch() -> None:
            while not done.wait(0.005):
                if mock_api.stats.requests >= n:
                    for _ in range(times):  # apart, or the kernel may merge them into one
                        os.kill(os.getpid(), signal.SIGINT)
                        done.wait(0.3)
                    return

        watchers.append(threading.Thread(target=watch, daemon=True))
        watchers[-1].start()

    try:
        yield arm
    finally:
        done.set()
        for watcher in watchers:
            watcher.join()
        signal.signal(signal.SIGINT, previous)


def options(mock_api: ThreadedMockServer, **more: Any) -> dict[str, Any]:
    return {**FAST, "base_url": mock_api.base_url, "concurrency": 4, **more}


@pytest.mark.slow
def test_ctrl_c_in_run_keeps_the_answers_in_flight_writes_the_summary_and_raises_interrupted(
    mock_api: ThreadedMockServer,
    ctrl_c_at: Callable[..., None],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"prompt": p} for p in PROMPTS])
    out, summary = tmp_path / "out.parquet", tmp_path / "summary.json"
    ctrl_c_at(6)  # the sixth request is in flight (150 ms) when the Ctrl-C comes
    with pytest.raises(batchpizza.Interrupted) as raised:
        batchpizza.run(inp, out, **options(mock_api, quiet=False), summary_json=str(summary))
    assert raised.value.exit_code == 130
    assert (
        "\nbatchpizza: Ctrl-C: finishing requests in flight, then saving (Ctrl-C again to stop "
        "at once)...\n" in capsys.readouterr().err
    )
    said = json.loads(summary.read_text())
    assert (said["stopped"], said["exit_code"], said["interrupted"]) == ("signal", 130, True)
    first = mock_api.stats.requests
    assert 6 <= first < len(PROMPTS)
    assert said["answered"] == first  # every request sent was answered and kept
    # Its message says how many (it said "finished rows are saved", even when none was).
    assert f"; {first} answered rows saved in {out}.checkpoint. Rerun" in raised.value.message

    batchpizza.run(inp, out, **options(mock_api))
    assert mock_api.stats.requests == len(PROMPTS)  # so the rerun sends only the rest


@pytest.mark.slow
def test_ctrl_c_before_any_answer_says_no_row_has_an_answer_saved(
    mock_api: ThreadedMockServer, ctrl_c_at: Callable[..., None], tmp_path: Path
) -> None:
    # No grace: the requests in flight (300 ms each) are dropped, none answered.
    inp = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"[[slow:300]] q{i}"} for i in range(8)])
    ctrl_c_at(1)
    with pytest.raises(batchpizza.Interrupted) as raised:
        batchpizza.run(inp, tmp_path / "out.jsonl", **options(mock_api, grace=0.0))
    assert "; no row has an answer saved yet. Rerun the same command" in raised.value.message
    assert "saved in" not in raised.value.message


@pytest.mark.slow
def test_ctrl_c_in_answer_keeps_the_answers_in_flight_and_raises_keyboard_interrupt(
    mock_api: ThreadedMockServer, ctrl_c_at: Callable[..., None], tmp_path: Path
) -> None:
    rows = [{"prompt": p} for p in PROMPTS]
    opts = options(mock_api, checkpoint=str(tmp_path / "cell.checkpoint"))
    ctrl_c_at(6)
    with pytest.raises(KeyboardInterrupt, match=r"cell\.checkpoint"):
        batchpizza.answer(rows, **opts)
    assert 6 <= mock_api.stats.requests < len(PROMPTS)

    out = batchpizza.answer(rows, **opts)
    assert [row["finish_reason"] for row in out] == ["stop"] * len(PROMPTS)
    assert mock_api.stats.requests == len(PROMPTS)  # none sent twice


@pytest.mark.slow
def test_a_second_ctrl_c_in_run_is_out_at_once(
    mock_api: ThreadedMockServer, ctrl_c_at: Callable[..., None], tmp_path: Path
) -> None:
    # Replies that would hold the first Ctrl-C's grace for a minute; the second does not wait.
    inp = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"[[slow:60000]] {i}"} for i in range(4)])
    ctrl_c_at(4, times=2)
    with pytest.raises(KeyboardInterrupt):
        batchpizza.run(inp, tmp_path / "out.jsonl", **options(mock_api, grace=120.0, timeout=120.0))


@pytest.mark.parametrize("quiet", [False, True])
def test_the_first_stop_is_said_unless_quiet_then_stops_the_job(
    capsys: pytest.CaptureFixture[str], quiet: bool
) -> None:
    # What the command line (for SIGINT and SIGTERM) and a script (for Ctrl-C) both do first.
    stops: list[int] = []
    job = SimpleNamespace(config=SimpleNamespace(quiet=quiet), interrupt=stops.append)

    first_stop(cast("Job", job), signal.SIGTERM, "SIGTERM")

    assert stops == [signal.SIGTERM]
    said = "\nbatchpizza: SIGTERM: finishing requests in flight, then saving...\n"
    assert capsys.readouterr().err == ("" if quiet else said)


def test_the_first_stop_stops_the_job_when_stderr_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    # The reader of a stderr pipe gone, a hung-up terminal: the message cannot be said, and the
    # stop must happen anyway (else SIGTERM is lost and only SIGKILL ends the run).
    class Gone(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stderr", Gone())
    stops: list[int] = []
    job = SimpleNamespace(config=SimpleNamespace(quiet=False), interrupt=stops.append)

    first_stop(cast("Job", job), signal.SIGTERM, "SIGTERM")

    assert stops == [signal.SIGTERM]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signals", "code"),
    [((signal.SIGTERM,), 143), ((signal.SIGTERM, signal.SIGINT), 130)],
    ids=["sigterm", "then-ctrl-c"],
)
def test_the_command_stops_on_its_signals_with_stderr_gone(
    mock_api: ThreadedMockServer, tmp_path: Path, signals: tuple[int, ...], code: int
) -> None:
    # Every write to stderr fails (its reader closed it): SIGTERM still stops the run (143, not
    # the 0 of a run left to finish), and a Ctrl-C after it is still out at once (130).
    inp = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"[[slow:4000]] {i}"} for i in range(4)])
    args = [sys.executable, "-m", "batchpizza", "run", str(inp), "-o", str(tmp_path / "o.jsonl")]
    args += ["--base-url", mock_api.base_url, "--rate", "0", "--concurrency", "4"]
    proc = subprocess.Popen(
        [*args, "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None
    proc.stderr.close()
    try:
        gone = threading.Event()
        while mock_api.stats.requests < 4 and not gone.wait(0.01):  # all four in flight
            assert proc.poll() is None
        for signum in signals:
            proc.send_signal(signum)
            gone.wait(1.0)  # handled one by one: signals pending together come in number order
        assert proc.wait(60) == code
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_a_second_ctrl_c_of_a_ray_run_is_out_at_once_when_stderr_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The --ray driver's handler: its "interrupted again" failing to be said must not turn the
    # exit at once into a BrokenPipeError raised wherever the driver was.
    from batchpizza.distributed.driver import Signals

    class Gone(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    exits: list[int] = []
    monkeypatch.setattr(sys, "stderr", Gone())
    monkeypatch.setattr(os, "_exit", exits.append)
    signals = Signals()
    with pytest.raises(KeyboardInterrupt):  # the first: the run unwinds
        signals._on_signal(signal.SIGTERM, None)
    signals._on_signal(signal.SIGINT, None)
    assert exits == [130]


def _run_with_four_in_flight(
    mock_api: ThreadedMockServer, tmp_path: Path, signum: int, preexec: Callable[[], Any] | None
) -> tuple[int, dict[str, Any]]:
    """A command line run of four slow rows, sent `signum` once all four are in flight: its
    exit code and summary JSON."""
    inp = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"[[slow:1500]] {i}"} for i in range(4)])
    summary = tmp_path / "summary.json"
    args = [sys.executable, "-m", "batchpizza", "run", str(inp), "-o", str(tmp_path / "o.jsonl")]
    args += ["--base-url", mock_api.base_url, "--rate", "0", "--concurrency", "4"]
    args += ["--no-progress", "--summary-json", str(summary)]
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=preexec
    )
    try:
        waiting = threading.Event()
        while mock_api.stats.requests < 4 and not waiting.wait(0.01):
            assert proc.poll() is None
        proc.send_signal(signum)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    return code, json.loads(summary.read_text())


@pytest.mark.slow
def test_a_closed_terminal_stops_the_run_as_sigterm_does_keeping_the_requests_in_flight(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # SIGHUP (the terminal the run was started from closed) used to kill it on the spot: the
    # four answers in flight lost though paid for, and no summary JSON for the monitoring.
    code, summary = _run_with_four_in_flight(mock_api, tmp_path, signal.SIGHUP, None)

    assert code == 129
    assert (summary["exit_code"], summary["stopped"]) == (129, "signal")
    assert summary["answered"] == 4


@pytest.mark.slow
def test_a_run_under_nohup_ignores_sighup_and_finishes(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    def nohup() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    code, summary = _run_with_four_in_flight(mock_api, tmp_path, signal.SIGHUP, nohup)

    assert (code, summary["exit_code"], summary["stopped"]) == (0, 0, None)
    assert summary["answered"] == 4
