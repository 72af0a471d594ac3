"""A file an earlier run recorded but did not see through (a kill, an upload or a create that
failed) whose requests are no longer all ones this run's plan asks: the input changed since (a
prompt, the template, a row removed, --limit), or some of its rows got an answer online
meanwhile. Submitted as it was, it paid for requests no row asks any more; it is dropped
instead, and the rows of it that the plan still asks go into new files with the rest. So are
the lines a collected batch left to resubmit (failed, or not run) whose requests the plan no
longer asks: not submitted again.

Only a file no batch was made of is dropped. One a run stopped while its batch was being
created is looked for first: a batch the server made of it is billed whatever this run does,
so it stands, followed and collected as any other (its answers kept under their requests). On
a server that lists no batches it cannot be looked for: the run stops (creating.py), unless
none of its requests is asked any more (then nothing can be paid for twice: it is dropped).
The file is marked dropped in the checkpoint before the server is asked to delete its upload
(the Files API; tidiness, best effort): a kill between leaves a stored file there, which no
batch is made of, and a rerun neither submits nor looks for it again."""

from __future__ import annotations

import logging

from batchpizza.batchapi import creating
from batchpizza.batchapi.budget import BatchBudget
from batchpizza.batchapi.client import BatchClient
from batchpizza.checkpoint import Checkpoint
from batchpizza.checkpoint.batches import DROPPED, UNLAUNCHED, BatchFile, BatchLine
from batchpizza.errors import BatchAPIError
from batchpizza.plurals import noun, plural

log = logging.getLogger("batchpizza")


async def dropped(
    client: BatchClient, checkpoint: Checkpoint, money: BatchBudget, f: BatchFile
) -> bool:
    """Whether file `f` (an earlier run's, not made a batch of as far as we know) is settled
    without being launched: dropped, or its batch found made after all. False: every request
    in it is one the plan asks, and it is launched as it was recorded."""
    lines = checkpoint.file_lines(f.seq)
    asked = checkpoint.slots_of(line.digest for line in lines)
    stale = sum(1 for line in lines if line.digest not in asked)
    if not stale:
        return False
    made = f.state not in UNLAUNCHED and f.file_id is not None  # a create may have been sent
    if made:
        try:
            batch = await creating.find(client, checkpoint, f, f.file_id or "")
        except BatchAPIError:
            # Not to be known (a server that lists no batches): where no request in it is
            # asked, no row can be paid for twice, and the file is dropped all the same; it
            # stopped every run before (never answered, those requests never closed it).
            if asked:
                raise
        else:
            if batch is not None:
                checkpoint.set_batch(f.seq, batch)
                return True
            made = False
    checkpoint.finish_file(f.seq, [(line.custom_id, DROPPED) for line in lines], DROPPED)
    money.cancelled((line.digest for line in lines), created=made)  # (billed, if it was)
    log.warning(
        "%s, recorded by an earlier run and not submitted: %s of its %s %s no longer asked "
        "as %s (the input changed, or answered since); dropped, not submitted, and the rows "
        "of it still asked go in new files",
        f.name,
        stale,
        plural(len(lines), "request"),
        noun(stale, "is", "are"),
        noun(stale, "it was", "they were"),
    )
    await _delete(client, f)
    return True


async def _delete(client: BatchClient, f: BatchFile) -> None:
    """The upload of dropped file `f` deleted at the server, where it got there (a file
    recorded without an id may have, by a run killed during its upload)."""
    try:
        file_id = f.file_id or await client.find_file(f.name)
        if file_id is not None:
            await client.delete_file(file_id)
    except BatchAPIError as exc:
        log.info("%s; the file stays at the server (no batch is made of it)", exc.message)


def still_asked(
    checkpoint: Checkpoint, money: BatchBudget, lines: list[BatchLine]
) -> list[BatchLine]:
    """Of `lines` (waiting to be resubmitted), those whose requests the plan asks; the others
    dropped, their reservations freed."""
    asked = checkpoint.slots_of(line.digest for line in lines)
    stale = [line for line in lines if line.digest not in asked]
    if not stale:
        return lines
    checkpoint.drop_lines([(line.seq, line.custom_id) for line in stale])
    money.cancelled((line.digest for line in stale), created=False)
    n = len(stale)
    log.warning(
        "%s a batch did not answer %s no longer asked as %s (the input changed since): "
        "dropped, not submitted again",
        plural(n, "request"),
        noun(n, "is", "are"),
        noun(n, "it was", "they were"),
    )
    return [line for line in lines if line.digest in asked]
