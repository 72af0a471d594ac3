"""An online run's collection (no --via, the OpenAI provider): the Batch API batches its
checkpoint still has out at this run's server are polled once, at its start, and those that
ended are collected before anything is sent online; no polling loop (that is --via batch
--wait's). Without it, a cron job that went back to sending online left the batches it had paid
for to expire at the provider, and sent their rows online again.

Other identities' batches are collected as a --via batch run collects them (others.py). This
identity's are collected as its own --via batch run would (the same judging, the same commit of
the results with the file marked done); their answers are this run's, in its output, and their
rows are not sent online. What such a batch did not answer (lines failed or expired) is sent
online by this run, instead of being resubmitted by a later --via batch run (which would pay for
those rows twice); a batch refused as a whole, or lines refused for an unknown model, are failed
rows, said in the log and sent online again. A batch still running, or one the server answers
404 for, is left to a --via batch run; one lost for good by lost.py's rule is closed as an
expired batch is, its rows sent online by this run (left open, every online run polled it, for
ever). A poll that fails is a warning, once a batch and status (statuses.py). Its tokens are spent at the Batch API's price, as that
run's would be; --max-cost reserves the worst case of what stays out after the collection.
"""

from __future__ import annotations

import logging
from collections import Counter

from batchpizza.batchapi.client import BatchClient, Halted
from batchpizza.batchapi.display import files_left
from batchpizza.batchapi.flow import BatchFlow
from batchpizza.errors import BatchAPIError
from batchpizza.plurals import plural

log = logging.getLogger("batchpizza")


async def collect_at_start(flow: BatchFlow) -> None:
    """The batches of `flow`'s checkpoint that ended, collected: the rows they answered leave
    the run's plan, made after this (job/stages.py)."""
    flow.failed_go_online = True
    async with flow.opened() as client:
        try:
            await flow.others.collect(client)
            await _own(flow, client)
        except Halted:
            pass
        finally:
            flow.money.release_all()  # what stays to do is reserved as it is sent online
            flow.out, flow.waiting = files_left(flow.checkpoint)
    if flow.fatal is not None:
        log.warning("%s", flow.fatal.message.replace("rerun", "they are sent online; rerun"))
        flow.fatal = None  # its rows are this run's to send, online


async def _own(flow: BatchFlow, client: BatchClient) -> None:
    checkpoint = flow.checkpoint
    batches = 0
    outcomes: Counter[str] = Counter()
    for f in flow.others.here():
        if flow.stop.sending_stopped:
            break
        if f.batch_id is None:
            continue  # never made a batch: a --via batch run launches it
        try:
            batch = await client.get(f.batch_id)
        except BatchAPIError as exc:
            if exc.status != 404 or not flow.lost.gone(f):
                flow.statuses.poll_failed(f, exc, "left to a --via batch run")
                continue
            # Lost for good (lost.py's rule): closed as an expired batch is, its rows sent online
            # by this run; left open, every run polled it again, for ever.
            flow.statuses.poll_failed(f, exc, "taken for lost: its rows are sent online")
            batch = {"id": f.batch_id, "status": "lost"}
        else:
            checkpoint.set_batch(f.seq, batch)
            if not flow.statuses.ended(f, batch):
                continue
        flow.money.reserve_out(checkpoint.file_lines(f.seq))  # settled with what it used
        said = await flow.collect_file(f, batch)
        if said is None:
            continue  # its results could not be read now: the next run collects it
        checkpoint.lines_online(f.seq)  # what it did not answer: sent online, not resubmitted
        batches += 1
        outcomes.update(said)
    if batches:
        answered, failed = outcomes["answered"], outcomes["error"]
        unrun = outcomes["failed"] + outcomes["expired"]
        log.warning(
            "collected %s of this model and parameters: %s (not sent online), %s and %s to "
            "run again (sent online)",
            plural(batches, "finished Batch API batch", "finished Batch API batches"),
            plural(answered, "answer"),
            plural(failed, "failed row"),
            plural(unrun, "line"),
        )
