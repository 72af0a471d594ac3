"""How `status` and --dry-run show a checkpoint's batches: each one still out, its state and
request counts, and how many were collected; and what a run's plan counts of them. A file recorded but not uploaded, or uploaded
with no create sent, has no batch on the server yet: it waits to be submitted (the next
--via batch run launches it), and is not counted among the batches out."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from batchpizza.checkpoint.batches import DROPPED, UNLAUNCHED, BatchFile, BatchRecords
from batchpizza.errors import BatchpizzaError
from batchpizza.plurals import noun, plural

if TYPE_CHECKING:
    from batchpizza.checkpoint import Checkpoint
    from batchpizza.config import RunConfig
    from batchpizza.providers import Provider
    from batchpizza.records import Plan

SHOWN = 20  # batches listed one a line at most; the rest counted
# Recorded, and uploaded (checkpoint/batches.py intend_file, set_file_id): no create was sent,
# so no batch of the file can exist.
UNSUBMITTED = frozenset(UNLAUNCHED)


def out_and_waiting(files: Sequence[BatchFile]) -> tuple[list[BatchFile], list[BatchFile]]:
    """The files not collected yet: those whose batch may exist on the server, and those
    waiting to be submitted."""
    left = [f for f in files if not f.done]
    waiting = [f for f in left if f.state in UNSUBMITTED]
    return [f for f in left if f.state not in UNSUBMITTED], waiting


def requests_out(checkpoint: BatchRecords) -> int:
    """The requests in this identity's batches still out, which will be billed: not those of a
    file waiting to be submitted (no batch was made of it), nor lines to resubmit."""
    return sum(f.lines for f in out_and_waiting(checkpoint.open_files())[0])


def files_left(checkpoint: BatchRecords) -> tuple[int, int]:
    """The run summary's batches out and files waiting to be submitted, counted as `status`
    counts them; none if the checkpoint fails (never fail the summary)."""
    with contextlib.suppress(BatchpizzaError):
        out, waiting = out_and_waiting(checkpoint.open_files())
        return len(out), len(waiting)
    return 0, 0


def batches_info(files: Sequence[BatchFile]) -> dict[str, Any]:
    """For `status --json`: the batches still out, the files waiting to be submitted, and how
    many were collected."""
    out, waiting = out_and_waiting(files)
    dropped = sum(1 for f in files if f.done and f.state == DROPPED)
    return {
        "out": [f.to_dict() for f in out],
        "waiting": [f.to_dict() for f in waiting],
        "collected": len(files) - len(out) - len(waiting) - dropped,
        "dropped": dropped,  # never submitted: the input no longer asked them (dropping.py)
        "lines_out": sum(f.lines for f in out),
        "lines_waiting": sum(f.lines for f in waiting),
    }


def batches_text(
    files: Sequence[BatchFile],
    indent: str = "  ",
    origins: Mapping[int, str | None] | None = None,
    last: str | None = None,
) -> list[str]:
    """One line a batch still out (or file waiting), then a line of totals; nothing when there
    were none. A batch made at another server than the last run's that looked for them
    (`origins`, `last`) says where: only a run with that --base-url collects it."""
    if not files:
        return []
    out, waiting = out_and_waiting(files)
    said = (
        f"{plural(len(waiting), 'file')} waiting to be submitted "
        f"({plural(sum(f.lines for f in waiting), 'request')}), "
    )
    dropped = sum(1 for f in files if f.done and f.state == DROPPED)
    lines = [
        f"{indent}batches    {len(out)} out ({plural(sum(f.lines for f in out), 'request')}), "
        f"{said if waiting else ''}{len(files) - len(out) - len(waiting) - dropped} collected"
        + (f", {dropped} dropped (the input changed before they were submitted)" if dropped else "")
    ]
    left = [f for f in files if not f.done]
    for f in left[:SHOWN]:
        counts = f.counts
        done = counts.get("completed", 0) if counts else 0
        failed = counts.get("failed", 0) if counts else 0
        origin = (origins or {}).get(f.seq)
        where = (
            f"  made at {origin}, not the last run's server" if origin not in (None, last) else ""
        )
        lines.append(
            f"{indent}  {f.batch_id or '(not created yet)'}  {f.state:<11} "
            f"{done}/{f.lines} done, {failed} failed  {f.name}{where}"
        )
    if len(left) > SHOWN:
        lines.append(f"{indent}  ... and {len(left) - SHOWN} more")
    return lines


def others_text(
    out: Sequence[BatchFile], origins: Mapping[int, str | None], last: str | None
) -> list[str]:
    """`status`'s lines for other identities' batches still out, by where they were made: at
    the server of the last run that looked for them (a run there collects them once they end),
    at another (left there: a run with that --base-url collects them), or where no record says."""
    by_origin: dict[str | None, list[BatchFile]] = {}
    for f in out:
        by_origin.setdefault(origins.get(f.seq), []).append(f)
    lines = []
    for origin, files in sorted(by_origin.items(), key=lambda kv: (kv[0] != last, str(kv[0]))):
        n, requests = len(files), sum(f.lines for f in files)
        what = f"{plural(n, 'batch', 'batches')} of other models or parameters"
        billed = (
            f"({plural(requests, 'request')}, billed when {noun(requests, 'it ends', 'they end')})"
        )
        if origin is None:
            said = (
                f"{what} still out {billed}, made by a batchpizza that did not record where: "
                "a --via batch run of their model and parameters collects them"
            )
        elif origin == last or last is None:
            said = (
                f"{what} still out {billed}: a run at their server (--provider openai) collects "
                "them once they end"
            )
        else:
            said = (
                f"{what} made at {origin}, not at the last run's base URL, still out {billed}: "
                "left there; a run with that --base-url collects them"
            )
        lines.append(f"  others     {said}")
    return lines


def collection_text(checkpoint: BatchRecords, origin: str, *, online: bool) -> list[str]:
    """--dry-run's: the batches still out at this server (`origin`) that the run looks for at
    its start, collecting those that ended: other models' and parameters' (others.py); an
    online run's, its own model's too (collecting.py). Counted from the checkpoint: a dry run
    asks the server nothing, so which have ended is not known yet."""
    origins = checkpoint.file_origins()

    def here(files: Sequence[BatchFile], own: bool) -> list[BatchFile]:
        return [
            f
            for f in out_and_waiting(files)[0]
            if f.batch_id is not None
            and (origins.get(f.seq) == origin or (own and origins.get(f.seq) is None))
        ]

    groups = [
        (
            "other models or parameters",
            here(checkpoint.open_files(others=True), False),
            "kept under their model and parameters",
        )
    ]
    if online:
        own = here(checkpoint.open_files(), True)
        groups.insert(0, ("this model and parameters", own, "their answers not sent online"))
    lines = []
    for whose, files, then in groups:
        if files:
            n, requests = len(files), sum(f.lines for f in files)
            lines.append(
                f"collect     {n} Batch API {noun(n, 'batch', 'batches')} of {whose} out "
                f"at this server ({plural(requests, 'request')}): those that have ended are "
                "collected at "
                f"the start, {then}"
            )
    return lines


def origins_info(out: Sequence[BatchFile], origins: Mapping[int, str | None]) -> dict[str, int]:
    """For `status --json`: other identities' batches still out, by the API root they were made
    at ("unknown" where no record says)."""
    counts: dict[str, int] = {}
    for f in out:
        where = origins.get(f.seq) or "unknown"
        counts[where] = counts.get(where, 0) + 1
    return counts


def dry_run_lines(
    config: RunConfig,
    planning: Checkpoint,
    provider: Provider,
    kept: Sequence[BatchFile] | None,
) -> list[str]:
    """What a dry run says of the Batch API: the run's own files (`kept`: those a --restart
    keeps, else every one), and the batches it would look at to collect."""
    said: list[str] = []
    if config.via != "online":
        said += batches_text(planning.batch_files() if kept is None else kept)
    if config.checkpoint_path is not None:
        from batchpizza.batchapi.others import origin_of

        origin = origin_of(provider)  # type: ignore[arg-type]
        said += collection_text(planning, origin, online=config.via == "online")
    return said


def plan_of(config: RunConfig, provider: Provider, planning: Checkpoint) -> Plan:
    """The run's plan, with the requests a --via batch or auto run collects from its batches
    still out instead of sending them (`out`): what its start line, its dry run and its summary
    say it sends. An online run sends them (paid twice, said in the log): none there."""
    plan = planning.plan(config.limit, retry_refused=config.retry_refused)
    if config.via == "online" or config.provider != "openai":
        return plan
    from batchpizza.batchapi.others import origin_of

    out = planning.in_batches_out(origin_of(provider))  # type: ignore[arg-type]
    return dataclasses.replace(plan, out=out) if out else plan


def positions_of(config: RunConfig, provider: Provider, planning: Checkpoint) -> Iterator[int]:
    """The positions the run sends, as plan_of counts them: a --via batch or auto run's leave
    out the requests in its batches still out, which it collects (its dry run prices and shows
    what it sends, not what it waits for)."""
    if config.via == "online" or config.provider != "openai":
        return planning.todo_positions()
    from batchpizza.batchapi.others import origin_of

    return planning.positions_to_send(origin_of(provider))  # type: ignore[arg-type]
