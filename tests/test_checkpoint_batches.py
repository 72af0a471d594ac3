"""The checkpoint's record of the Batch API (checkpoint/batches.py), read and written directly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from batchpizza.checkpoint import Checkpoint
from batchpizza.records import Result


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Checkpoint]:
    store = Checkpoint.open(tmp_path / "c.checkpoint")
    store.use_identity({"provider": "openai", "model": "m"})
    yield store
    store.close()


def test_a_line_whose_row_was_answered_online_meanwhile_is_never_resubmitted(
    store: Checkpoint,
) -> None:
    # Lines waiting to be resubmitted (an expired batch's, or one held for the enqueued-token
    # limit) whose rows an online run then answered were resubmitted by the next --via batch
    # run all the same: paid for twice.
    lines = [("0-a", "q0", 0, b"k0", 1, b"{}\n"), ("1-b", "q1", 1, b"k1", 1, b"{}\n")]
    f = store.intend_file(lines)
    store.finish_file(f.seq, [("0-a", "expired"), ("1-b", "expired")], "expired")
    assert [line.custom_id for line in store.to_resubmit()] == ["0-a", "1-b"]

    store.write([Result("q0", b"k0", "stop", "yes", None, 1, 2.0, "m")])
    store.write([Result("q1", b"k1", "error", None, "HTTP 503", 1, 2.0, None)])

    # An answer takes its line out; a failed attempt online is no answer.
    assert [line.custom_id for line in store.to_resubmit()] == ["1-b"]


def test_a_restart_keeps_the_files_a_batch_may_have_been_made_of_and_drops_the_others(
    store: Checkpoint,
) -> None:
    # A file only recorded or uploaded (no create sent) was kept too, and the next run made a
    # batch of it: paid for requests of rows that may ask others since the restart.
    def intend(n: int) -> int:
        return store.intend_file([(f"{n}-a", f"q{n}", n, b"k%d" % n, 1, b"{}\n")]).seq

    recorded, uploaded, creating, made, collected = (intend(n) for n in range(5))
    store.set_file_id(uploaded, "file-1")
    store.set_file_id(creating, "file-2")
    store.mark_file(creating, "creating")  # its create sent: a batch may exist
    store.set_file_id(made, "file-3")
    store.set_batch(made, {"id": "batch-3", "status": "in_progress"})
    store.finish_file(collected, [("4-a", "answered")], "completed")
    assert [f.kept_by_restart for f in store.batch_files()] == [False, False, True, True, False]

    store.forget()

    assert [f.seq for f in store.open_files()] == [creating, made]
    assert [f.seq for f in store.batch_files()] == [creating, made]
    assert [line.custom_id for line in store.file_lines(recorded)] == []


def test_a_dropped_lines_request_goes_on_at_the_try_it_had_reached(store: Checkpoint) -> None:
    # k0 failed once; its resubmission (try 2) was dropped unsent with its file: its next line
    # is still its second try. k1 failed once and was dropped from the lines to resubmit: its
    # next is its second too. k2's dropped line has a line since: that one counts, not it.
    line = b"{}\n"
    first = store.intend_file([("0-a", "q0", 0, b"k0", 1, line), ("1-b", "q1", 1, b"k1", 1, line)])
    store.finish_file(first.seq, [("0-a", "failed"), ("1-b", "failed")], "completed")
    again = store.intend_file([("0-a", "q0", 0, b"k0", 2, line)], [(first.seq, "0-a")])
    store.finish_file(again.seq, [("0-a", "dropped")], "dropped")
    store.drop_lines([(first.seq, "1-b")])
    gone = store.intend_file([("2-c", "q2", 2, b"k2", 1, line)])
    store.finish_file(gone.seq, [("2-c", "dropped")], "dropped")
    store.intend_file([("2-c", "q2", 2, b"k2", 1, line)])

    assert store.next_tries() == {b"k0": 2, b"k1": 2}
