"""The driver's signals under --ray (batchpizza.distributed.driver.Signals): once the cluster
runs, a first signal stops the sending and leaves the requests in flight a grace, in this
process (no Ray)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from batchpizza.distributed.driver import Signals, deadline_left


def test_a_signal_before_the_cluster_runs_interrupts_at_once() -> None:
    with Signals() as signals, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        threading.Event().wait(60)  # a signal's handler interrupts the wait
    assert signals.signum == signal.SIGTERM


def test_a_closed_terminal_interrupts_a_cluster_run_as_sigterm_does() -> None:
    # SIGHUP used to kill the driver on the spot: no cluster shutdown, no summary, the lock held
    # until the process was gone.
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        with Signals() as signals, pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGHUP)
            threading.Event().wait(60)
        assert signals.signum == signal.SIGHUP
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL  # put back after the run
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_signal_in_a_run_stops_the_sending_and_the_run_ends_when_the_batches_are_back() -> None:
    stopped = threading.Event()
    with Signals() as signals:
        signals.grace(stopped.set, 60.0)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stopped.wait(60)  # the cluster was told; no interrupt yet: answers come back
        assert signals.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            signals.check()  # the work returned: the run ends as interrupted, no output
        signals.check()  # ... once


def test_a_grace_that_runs_out_interrupts_the_run() -> None:
    stopped = threading.Event()
    with Signals() as signals, pytest.raises(KeyboardInterrupt):
        signals.grace(stopped.set, 0.01)
        os.kill(os.getpid(), signal.SIGINT)
        threading.Event().wait(60)  # the batches never come back: the grace ends it
    assert stopped.is_set()
    signals.check()  # raised already: not again


def test_without_a_signal_check_lets_the_run_go_on_and_a_later_signal_interrupts_at_once() -> None:
    with Signals() as signals:
        signals.grace(lambda: None, 60.0)
        signals.check()
        assert signals.signum is None
        with pytest.raises(KeyboardInterrupt):  # writing the output: no grace, none in flight
            os.kill(os.getpid(), signal.SIGTERM)
            threading.Event().wait(60)


def test_the_deadline_counts_from_the_commands_start_not_the_clusters() -> None:
    # Found measuring --ray auto --deadline 45: the controller stopped 6 s after the deadline,
    # the time Ray took to start (2 to 30 s here), so a cron run overran by as much.
    ten_seconds_ago = time.monotonic() - 10
    options = {"deadline": "30s", "rate": 2}
    left = deadline_left(options, 30.0, ten_seconds_ago)
    assert left["rate"] == 2 and 0 < left["deadline"] <= 20
    assert deadline_left(options, 5.0, ten_seconds_ago)["deadline"] == 0  # passed already
    assert deadline_left({"rate": 2}, None, ten_seconds_ago) == {"rate": 2}
    assert options == {"deadline": "30s", "rate": 2}  # the caller's, unchanged
