"""A finished batch's output and error files, read back for its lines: what a server that lost a
file, or fails for a while, leaves of them.

A file the batch announced but the server answers 404 for (deleted, or never kept) has nothing
to give: its lines count as unanswered (resubmitted, as a lost batch's are) rather than stop
every run for good; but only once it is gone for good by lost.py's rule (a server that keeps a
new file a little late would otherwise have its lines run, and billed, twice). A download that keeps failing otherwise (5xx, a dropped connection, past the
client's own tries) leaves the batch to be collected at the next poll, or by the next run."""

from __future__ import annotations

import logging
from collections.abc import Callable, Container
from typing import Any

from batchpizza.batchapi.client import BatchClient
from batchpizza.batchapi.files import ResultLine, read_results
from batchpizza.errors import BatchAPIError

log = logging.getLogger("batchpizza")


async def results_of(
    client: BatchClient, batch: dict[str, Any], ours: Container[str], gone: Callable[[], bool]
) -> dict[str, ResultLine] | None:
    """The result line of each of `ours` (custom_ids) the batch's files hold (`_better` where a
    server repeats one); None when they cannot be read now (collected later). `gone`: one more
    404 for a file of this batch, and whether it is gone for good now."""
    seen: dict[str, ResultLine] = {}
    for file_id in (batch.get("output_file_id"), batch.get("error_file_id")):
        if not isinstance(file_id, str) or not file_id:
            continue
        try:
            content = await client.content(file_id)
        except BatchAPIError as exc:
            if exc.status == 404 and not gone():
                log.warning("%s; batch %s is collected later", exc.message, batch.get("id"))
                return None
            if exc.status == 404:
                log.warning(
                    "%s: batch %s announced it, the server does not have it; the requests it "
                    "held are submitted again",
                    exc.message,
                    batch.get("id"),
                )
                continue
            if exc.exit_code == 2:
                raise
            log.warning("%s; batch %s is collected later", exc.message, batch.get("id"))
            return None
        for got in read_results(content):
            if got.custom_id in ours and _better(got, seen.get(got.custom_id)):
                seen[got.custom_id] = got
    return seen


def _better(got: ResultLine, before: ResultLine | None) -> bool:
    """Whether `got` counts over the line of the same custom_id read before: the first, unless
    only `got` holds an answer (a server writing each of its own tries, the failure first: an
    answer billed is never dropped for it)."""
    return before is None or (not _answered(before) and _answered(got))


def _answered(line: ResultLine) -> bool:
    return line.status is not None and 200 <= line.status < 300 and line.body is not None


def said_collected(batch: dict[str, Any], status: str, outcomes: list[str]) -> None:
    """The log's line for a batch collected: its lines' outcomes, counted."""
    log.info(
        "batch %s %s: %d answered, %d failed, %d to resubmit",
        batch.get("id"),
        status,
        outcomes.count("answered"),
        outcomes.count("error"),
        outcomes.count("failed") + outcomes.count("expired"),
    )
