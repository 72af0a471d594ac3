"""What a `--ray --dry-run` counts as answered: the rows whose request the checkpoint's parts
hold an answer for, matched as the actors match them (worker.Answers): by row id and request
fingerprint (provider, model, parameters, prompt as sent), so that a new model or parameters, or
a changed prompt, shows as rows to send. Read in the driver, no cluster started; and the plan
it prints."""

from __future__ import annotations

import types
from typing import TYPE_CHECKING

from batchpizza.config import RunConfig
from batchpizza.distributed import staging
from batchpizza.distributed.folders import (
    answered_ids,
    filesystem,
    input_dataset,
    input_ids,
    require_id,
)
from batchpizza.distributed.parts import DIGEST, ID, PARTS, PartStore
from batchpizza.distributed.staging import Staged, is_staged, row_objects
from batchpizza.engine.batch import Batch
from batchpizza.errors import InputError, OutputError
from batchpizza.identities import identity_of
from batchpizza.progress import sending_time
from batchpizza.providers.factory import extra_columns
from batchpizza.rows import Fields, fingerprint_key

if TYPE_CHECKING:
    import pyarrow as pa


def count_answered(
    place: str,
    checkpoint: str | None,
    config: RunConfig,
    limit: int | None,
    only: pa.Array | None = None,
) -> tuple[int, int]:
    """(rows of the input, or its first `limit`; how many of them have an answer kept for the
    request this run would send). `only`: just the rows of these ids are read and matched (the
    others are counted, not answered)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    answered, undigested, digested = _kept(checkpoint)
    provider = types.SimpleNamespace(
        identity=identity_of(config.provider, config.model, config.params, config.structured)
    )
    key = fingerprint_key(provider)  # as the actors key their parts
    fields = Fields.from_config(config, extra_columns(config.provider))
    dataset = input_dataset(place)
    id_field = config.fields_named[2]
    if not is_staged(dataset.schema.names):  # a staged input has the ids its scan gave
        require_id(dataset.schema.names, id_field)
    ids = staging.ID if is_staged(dataset.schema.names) else id_field
    rows = found = 0
    try:
        for record_batch in dataset.to_batches():
            if limit is not None and rows + record_batch.num_rows > limit:
                record_batch = record_batch.slice(0, limit - rows)
            rows += record_batch.num_rows
            matched = record_batch
            if only is not None:
                column = record_batch.column(ids).cast(pa.string())
                matched = record_batch.filter(pc.is_in(column, value_set=only))
            batch = Batch(row_objects(matched, id_field), fields, key=key)
            for pos, digest in batch.digests.items():
                row_id = batch.id_of(pos)
                if (row_id, digest) in answered or (
                    row_id in undigested and row_id not in digested
                ):
                    found += 1
            if limit is not None and rows >= limit:
                break
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read the input {place}: {exc}") from None
    return rows, found


def count_interrupted(
    place: str,
    checkpoint: str,
    config: RunConfig,
    limit: int | None,
    before: pa.Array,
    staged: Staged | None,
) -> tuple[int, int]:
    """count_answered after an interrupted run, from what the run knows: `before`, the ids the
    checkpoint held answers for when it started, and the rows the staging counted (`staged`).
    An id answered since was answered for the request its row asks now (the actors match
    and write answers so), so only the rows answered before are read and matched (every row was:
    9.3 s after Ctrl-C at 1.5M rows); a first run reads no prompt at all."""
    import pyarrow.compute as pc

    now = pc.unique(answered_ids(checkpoint))
    since = int(pc.sum(pc.invert(pc.is_in(now, value_set=before))).as_py() or 0)
    if len(before) == 0:
        if staged is not None:
            return staged.rows, since
        return len(input_ids(place, config.fields_named[2], limit)), since
    counted, kept = count_answered(place, checkpoint, config, limit, only=pc.unique(before))
    return counted, since + kept


def _kept(checkpoint: str | None) -> tuple[set[tuple[str, bytes]], set[str], set[str]]:
    """The parts' answers: (id, fingerprint) pairs; ids answered in parts from before
    fingerprints (matched by id alone, as the actors do, unless the id also has an answer with
    a fingerprint); ids with a fingerprinted answer. Nothing is created."""
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    if checkpoint is None:
        return set(), set(), set()
    fs, root = filesystem(checkpoint)
    parts = f"{root}/{PARTS}"
    if fs.get_file_info(parts).type != pafs.FileType.Directory:
        return set(), set(), set()
    try:
        # Parts being written are dot-named: pyarrow skips them as it skips "_" names. A part
        # from before fingerprints has no digest column: read as nulls.
        schema = pa.schema([pa.field(ID, pa.string()), pa.field(DIGEST, pa.binary())])
        dataset = pads.dataset(parts, filesystem=fs, format="parquet", schema=schema)
        table = dataset.to_table(columns=[ID, DIGEST])
    except (OSError, pa.ArrowException) as exc:
        raise OutputError(f"cannot read the checkpoint {checkpoint}: {exc}") from None
    answered: set[tuple[str, bytes]] = set()
    undigested: set[str] = set()
    for row_id, digest in zip(
        table.column(ID).to_pylist(), table.column(DIGEST).to_pylist(), strict=True
    ):
        if digest is None:
            undigested.add(row_id)
        else:
            answered.add((row_id, digest))
    return answered, undigested, {row_id for row_id, _ in answered}


def print_plan(rows: int, answered: int, config: RunConfig, checkpoint: str | None) -> None:
    """The dry run's plan on standard output (to be piped; the summary line goes to stderr).
    `checkpoint`: None under --restart, which forgets its answers and its learned rate."""
    todo = rows - answered
    auto = config.auto_max is not None
    rate = config.rate_per_s
    if auto:  # from the rate the last run learned, as the run will, else slow start at 1/s
        learned = None if checkpoint is None else learned_rate(checkpoint)
        rate = min(learned, config.auto_max or learned) if learned else 1.0

    kept = "in the checkpoint, not sent again" if checkpoint else "--restart forgets them"
    lines = [
        "batchpizza: dry run on Ray: nothing sent, nothing written, no cluster started",
        f"  rows        {rows}",
        f"  answered    {answered} ({kept})",
        f"  to send     {todo} (new, changed, asked with another model or parameters, or failed "
        "or refused before; bad rows are written as invalid)",
        f"  time        {sending_time(todo, rate, config.concurrency, auto)}",
    ]
    print("\n".join(lines), flush=True)


def learned_rate(checkpoint: str) -> float | None:
    """The rate an earlier run learned under rate="auto", kept in the checkpoint; else None."""
    saved = PartStore(checkpoint, create=False).meta().get("learned_rate")
    return float(saved) if isinstance(saved, (int, float)) and saved > 0 else None
