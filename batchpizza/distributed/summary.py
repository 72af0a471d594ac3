"""What a cluster run came to, in the single-process run's Summary: the output's rows by how
they ended, and what the controller counted (requests, the rate, why it stopped)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from batchpizza.records import Outcome, Summary, Tally, is_answered

if TYPE_CHECKING:
    import pyarrow as pa

_STOPS = ("deadline", "refusals")  # the controller's reasons for stopping, as "stopped" says them


def tally_of(
    batches: Iterable[pa.Table | pa.RecordBatch], id_field: str, done: pa.Array
) -> tuple[Tally, int]:
    """The output's rows by how they ended (batches with the id, finish_reason and attempts
    columns), and how many of them this run sent: at least one attempt, and no answer in the
    checkpoint before the run (`done`). An answer taken from the checkpoint keeps the attempts
    of the run that paid for it, so only those rows count towards this run's retries."""
    import pyarrow as pa
    import pyarrow.compute as pc

    reasons: Counter[str | None] = Counter()
    sent = 0
    for batch in batches:
        for item in pc.value_counts(batch.column("finish_reason")).to_pylist():
            reasons[item["values"]] += item["counts"]
        ids = batch.column(id_field).cast(pa.string())
        fresh = pc.and_(
            pc.greater(batch.column("attempts"), 0), pc.invert(pc.is_in(ids, value_set=done))
        )
        sent += int(pc.sum(fresh).as_py() or 0)
    tally = Tally(
        rows=sum(reasons.values()),
        answered=sum(n for r, n in reasons.items() if r is not None and is_answered(r)),
        failed=reasons[Outcome.ERROR.value],
        misuse=reasons[Outcome.MISUSE.value],
        invalid=reasons[Outcome.INVALID.value],
    )
    return tally, sent


def summarize(tally: Tally, sent: int, status: Mapping[str, object], **where: Any) -> Summary:
    """The summary of a finished cluster run: the output's `tally`, the rows this run `sent`,
    and what the controller counted (`batchpizza.ray.status`). Exit 4 while rows are pending,
    as a rerun continues them; "stopped" only when the stop left rows unsent."""
    requests = count(status, "attempts_reported")
    reason = status.get("stopped")
    stopped = reason if isinstance(reason, str) and reason in _STOPS and tally.pending else None
    exit_code = 4 if tally.pending else 0 if tally.answered == tally.rows else 3
    return Summary.of(
        tally,
        requests=requests,
        retries=max(0, requests - sent),
        exit_code=exit_code,
        stopped=stopped,
        rate=count(status, "rate") or None,  # 0 is unlimited, as None without --ray
        **where,
    )


def count(status: Mapping[str, object], key: str) -> Any:
    value = status.get(key)
    return value if isinstance(value, (int, float)) else 0
