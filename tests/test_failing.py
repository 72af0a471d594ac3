"""When nothing a run sends can succeed (controls/failing.py): stop early, with one message."""

from __future__ import annotations

from batchpizza.controls.failing import DOWN_FOR, FIRST_ROWS, FailingWatch
from batchpizza.errors import ConnectionRefused, HTTPStatusError


def test_the_first_rows_all_rejected_with_400_stop_the_run() -> None:
    watch = FailingWatch()
    said = [watch.record(HTTPStatusError(400, "unknown parameter")) for _ in range(FIRST_ROWS)]
    assert said[:-1] == [None] * (FIRST_ROWS - 1)
    assert said[-1] is not None and "HTTP 400" in said[-1]


def test_one_answer_among_them_means_the_parameters_are_fine() -> None:
    watch = FailingWatch()
    watch.record(None)
    assert all(watch.record(HTTPStatusError(422, "bad")) is None for _ in range(3 * FIRST_ROWS))


def test_refused_connections_for_the_whole_stretch_stop_the_run() -> None:
    now = [0.0]
    watch = FailingWatch(clock=lambda: now[0])
    said = None
    while said is None and now[0] < 10 * DOWN_FOR:
        said = watch.record(ConnectionRefused("refused"))
        now[0] += 1.0
    assert said is not None and "connection refused" in said
    assert DOWN_FOR <= now[0] <= DOWN_FOR + 2


def test_a_reply_within_the_stretch_starts_it_again() -> None:
    now = [0.0]
    watch = FailingWatch(clock=lambda: now[0])
    for _ in range(int(DOWN_FOR) * 3):
        assert watch.record(ConnectionRefused("refused")) is None
        now[0] += 0.5
        if now[0] % (DOWN_FOR / 2) == 0:
            watch.record(HTTPStatusError(503, "busy"))  # the server is there after all
