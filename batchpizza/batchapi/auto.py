"""--via auto near the deadline: the batches still out cancelled and closed, and the rows they and
the lines waiting for room held, to be sent online instead (at full price)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping

from batchpizza.batchapi.budget import BatchBudget
from batchpizza.batchapi.client import BatchClient
from batchpizza.batchapi.quota import online_instead
from batchpizza.checkpoint import Checkpoint
from batchpizza.checkpoint.batches import BatchFile
from batchpizza.engine.runner import PendingRow
from batchpizza.errors import BatchAPIError


async def rows_going_online(
    client: BatchClient,
    checkpoint: Checkpoint,
    out: Iterable[BatchFile],
    money: BatchBudget,
    held: Mapping[bytes, PendingRow],
) -> list[PendingRow]:
    """Cancel the batches of `out`, close their files as abandoned (their lines sent online, their
    reservations given back), and return the rows of this run (`held`, by request key) they and
    the lines waiting for room held, in input order."""
    rows: list[PendingRow] = []
    for f in out:
        if f.batch_id is not None:
            # One not cancelled runs on to its end; its rows go online all the same.
            with contextlib.suppress(BatchAPIError):
                await client.cancel(f.batch_id)
        lines = checkpoint.file_lines(f.seq)
        checkpoint.finish_file(f.seq, [(line.custom_id, "online") for line in lines], "abandoned")
        money.cancelled((line.digest for line in lines), created=f.batch_id is not None)
        rows.extend(held[line.digest] for line in lines if line.digest in held)
    rows.extend(online_instead(checkpoint, held))
    return sorted(rows, key=lambda row: row[0])
