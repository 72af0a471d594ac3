"""A batch made of an uploaded file, at most once. The checkpoint marks the file `creating` before
the create is sent, so a run stopped before that mark makes the batch without looking for it,
and only one stopped after it needs the server's listing of batches to find out whether the
server made it. A server that lists no batches (some gateways) cannot say: the run then stops
rather than risk submitting the file's requests twice, and says what the user can do. So does a
file an earlier batchpizza (without the mark) left `uploaded`: its create may have been sent.
A create the server refused, or one that never reached it (no connection could be made), made
nothing: its mark is taken back, so that the retry or the rerun simply sends it again."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from batchpizza.batchapi.budget import BatchBudget
from batchpizza.batchapi.client import BatchClient
from batchpizza.checkpoint import Checkpoint
from batchpizza.checkpoint.batches import BatchFile
from batchpizza.errors import BatchAPIError
from batchpizza.plurals import noun, plural

log = logging.getLogger("batchpizza")
_T = TypeVar("_T")

CREATING = "creating"
STORED = "stored"  # uploaded, no create sent (checkpoint/batches.py set_file_id)


async def create(
    client: BatchClient, checkpoint: Checkpoint, f: BatchFile, file_id: str
) -> dict[str, Any]:
    checkpoint.mark_file(f.seq, CREATING)
    # Durable before the create goes out: a mark lost to a power loss after it went out would
    # have the rerun make a second batch of the file, every line billed twice.
    checkpoint.sync()
    try:
        return await client.create(file_id, f.name)
    except BatchAPIError as exc:
        refused = exc.status is not None and 400 <= exc.status < 500 and exc.status != 409
        if refused or not exc.sent:
            # Refused (a 429, a 400), or never sent (no connection could be made): nothing
            # made, so a retry or a rerun need not look for it. A 5xx, or no reply once
            # connected (a reset, a timeout), may have made it, and a 409 may say it exists.
            checkpoint.mark_file(f.seq, STORED)
        raise


async def find(
    client: BatchClient, checkpoint: Checkpoint, f: BatchFile, file_id: str
) -> dict[str, Any] | None:
    """The batch made of file `f`, if the server made one; None when no create was sent."""
    try:
        return await client.find_batch(f.name, f.created, file_id)
    except BatchAPIError as exc:
        if exc.status not in (404, 405):
            raise
        if checkpoint.file_state(f.seq) == STORED:
            return None  # the create was never sent: there is nothing to find
        raise BatchAPIError(
            f"{f.name}: a run stopped while its batch was being created, and this server lists "
            f"no batches to tell whether it made one ({exc.message}); its "
            f"{plural(f.lines, 'request')} {noun(f.lines, 'is', 'are')} not submitted again, "
            f"which could run {noun(f.lines, 'it', 'them')} twice. Rerun without --via to send "
            f"{noun(f.lines, 'it', 'them')} online (billed again if that batch was made)",
            wrong=True,
        ) from None


def answered_since(checkpoint: Checkpoint, money: BatchBudget, f: BatchFile) -> bool:
    """Is every row of file `f` (an earlier run's, not made a batch of as far as we know)
    answered since it was recorded? Online, as the stop for a create that may have made a batch
    on a server that lists none advises: the file is then closed, not launched nor looked for
    (a batch of it, if the server made one, could only answer those rows again), and its lines'
    reservation freed (spent, where its create may have made a batch)."""
    if not checkpoint.lines_answered(f.seq):
        return False
    lines = checkpoint.file_lines(f.seq)
    checkpoint.finish_file(f.seq, [(line.custom_id, "online") for line in lines], "abandoned")
    money.cancelled((line.digest for line in lines), created=f.state == CREATING)
    return True


async def find_or_make(
    client: BatchClient,
    tries: int,
    find: Callable[[], Awaitable[_T | None]],
    make: Callable[[], Awaitable[_T]],
    look: bool,
) -> _T:
    """What `make` makes on the server (an upload, a batch), in `tries` tries; found with
    `find` first when `look`, and after a failed call (it may have made it all the same)."""
    for attempt in range(tries):
        if look and (found := await find()) is not None:
            return found
        try:
            return await make()
        except BatchAPIError as exc:
            if exc.exit_code == 2 or attempt + 1 == tries:
                raise
            log.info("%s; trying again", exc.message)
            await client.pause(attempt)
            look = True
    raise AssertionError("unreachable: the last try returns or raises")
