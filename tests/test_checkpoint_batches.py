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
