"""The folders of a cluster run, through pyarrow alone (no Ray): the input's row ids and the
checkpoint's answered ids as the driver reads them, the output's parts as Ray tasks write them,
and the output folder written aside.

Every place is a local path or a URI pyarrow.fs understands (s3://, gs://, abfs://, hdfs://).
A local output is written into a hidden sibling, `.NAME.partial-<random>`, and renamed over
NAME only once complete, as the single-process run's files are: a reader never finds a half
folder under NAME, and an earlier output is replaced only by a complete one. An object store
has no rename: a URI output is written in place (its earlier parts deleted first).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from batchpizza.distributed.parts import ID, PARTS
from batchpizza.errors import InputError, OutputError, UsageError
from batchpizza.files import check_writable, inside, same_file

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    from batchpizza.config import RunConfig

PARTIAL = ".partial-"
_FLUSH_BYTES = 1 << 20  # of JSON lines, written a chunk at a time
OLD = ".old-"  # the output being replaced, for the moment between two renames
JSON_LINES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")


def is_uri(place: str) -> bool:
    return "://" in place


def filesystem(place: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path on it; a local path made absolute (Ray's workers do not
    share the driver's working folder)."""
    import pyarrow.fs as pafs

    if is_uri(place):
        fs, path = pafs.FileSystem.from_uri(place)
        return fs, str(path).rstrip("/")
    return pafs.LocalFileSystem(), str(Path(place).resolve())


def is_json_lines(place: str) -> bool:
    return place.rstrip("/").lower().endswith(JSON_LINES)


def input_dataset(place: str) -> pads.Dataset:
    """The input as pyarrow.dataset reads it: JSON lines by the name, else Parquet (a file or a
    folder of parts); an input that cannot be opened is an input error."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    fs, path = filesystem(place)
    json_lines = is_json_lines(place)
    kind = "JSON lines" if json_lines else "Parquet"
    try:
        dataset = pads.dataset(path, filesystem=fs, format="json" if json_lines else "parquet")
    except FileNotFoundError:
        raise InputError(f"the input {place} does not exist") from None
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read the input {place} as {kind}: {exc}") from None
    if not dataset.files:
        raise InputError(f"the input folder {place} holds no {kind} files")
    return dataset


def input_ids(place: str, id_field: str, limit: int | None = None) -> pa.Array:
    """The row ids of the input (its first `limit` rows) as strings, as the actors key them."""
    import pyarrow as pa

    from batchpizza.distributed import staging

    dataset = input_dataset(place)
    if staging.is_staged(dataset.schema.names):  # the ids its scan gave, as the actors read them
        id_field = staging.ID
    require_id(dataset.schema.names, id_field)
    try:
        if limit is None:
            column = dataset.to_table(columns=[id_field]).column(id_field)
        else:
            column = dataset.head(limit, columns=[id_field]).column(id_field)
        return column.combine_chunks().cast(pa.string())
    except (OSError, pa.ArrowException) as exc:
        raise InputError(
            f"cannot read the ids ({id_field!r}) of the input {place}: {exc}"
        ) from None


def check_input(place: str, config: RunConfig, limit: int | None) -> None:
    """Refuses what the actors would find row by row once a cluster had started (every row
    invalid), or not at all (an id repeated in another batch). (A local JSON lines input is
    read and checked as without --ray: distributed.staging.)"""
    refuse_columns(place, config)
    refuse_repeated_ids(place, config.fields_named[2], limit)


def refuse_columns(place: str, config: RunConfig) -> None:
    """InputError for an input no row of which could be sent, as a Parquet file is refused
    without --ray: no prompt column (a --prompt-field typo), a prompt column of numbers, a column
    named like a result column. The actors found it row by row, once the cluster had started:
    every row `invalid`, exit 3."""
    from batchpizza.providers.factory import extra_columns
    from batchpizza.rows import Fields
    from batchpizza.sources.parquet import wanted_columns

    schema = input_dataset(place).schema
    wanted_columns(Fields.from_config(config, extra_columns(config.provider)), schema, place)


def refuse_repeated_ids(place: str, id_field: str, limit: int | None = None) -> None:
    """InputError naming the first id the input repeats. Each actor sees only its batches, so a
    repeat in another batch was answered as a row of its own, under an id whose answers the
    checkpoint could no longer tell apart (a rerun counted one of them pending)."""
    import pyarrow.compute as pc

    ids = input_ids(place, id_field, limit).drop_null()  # a null id is a bad row of its own
    if len(pc.unique(ids)) == len(ids):
        return
    first: dict[str, int] = {}
    for pos, value in enumerate(input_ids(place, id_field, limit).to_pylist()):
        if value is None:
            continue
        if value in first:
            raise InputError(
                f"the input {place} repeats the id {value!r} (rows {first[value]} and {pos}, "
                "counted from 0): --ray keeps answers by id, and no actor sees the whole input "
                "to write the repeat as a bad row; make the ids unique (or run without --ray)"
            )
        first[value] = pos


def require_id(names: list[str], id_field: str) -> None:
    # The checkpoint keys answers by id: without one a rerun could not tell rows apart.
    if id_field not in names:
        raise UsageError(
            f"--ray keeps its checkpoint by row id, and the input has no {id_field!r} column; "
            "add one, or name it with --id-field"
        )


def answered_ids(checkpoint: str) -> pa.Array:
    """The ids the checkpoint holds answers for (empty when there is none). Only the id column
    is read, and nothing is created: a dry run changes nothing."""
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    fs, root = filesystem(checkpoint)
    parts = f"{root}/{PARTS}"
    if fs.get_file_info(parts).type != pafs.FileType.Directory:
        return pa.array([], pa.string())
    try:
        # Parts being written are dot-named: pyarrow skips them as it skips "_" names.
        dataset = pads.dataset(parts, filesystem=fs, format="parquet")
        if not dataset.files:  # a run that answered nothing yet
            return pa.array([], pa.string())
        return dataset.to_table(columns=[ID]).column(ID).combine_chunks().cast(pa.string())
    except (OSError, pa.ArrowException) as exc:
        raise OutputError(f"cannot read the checkpoint {checkpoint}: {exc}") from None


def delete_folder(place: str, *, keep_folder: bool = False) -> None:
    """Remove a folder and everything in it, if it is there; with `keep_folder`, only what is in
    it (--restart's checkpoint: the run's lock is on the folder itself)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(place)
    try:
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            if keep_folder:
                fs.delete_dir_contents(path)
            else:
                fs.delete_dir(path)
    except OSError as exc:
        raise OutputError(f"cannot delete {place}: {exc}") from None


class Layout(Protocol):
    """An output block's columns as a run without --ray writes them: `output` for Parquet,
    `records` for JSON lines."""

    def output(self, block: pa.Table) -> pa.Table: ...

    def records(self, block: pa.Table) -> Iterator[dict[str, Any]]: ...


@dataclass(frozen=True)
class IdFirst:
    """A Parquet input's output block as a run without --ray writes its rows: the id as text in
    an `id` column first, then the input's other columns, then the results (Ray Data passes the
    input's columns through as they are: an int64 id, wherever it stood)."""

    id_field: str

    def output(self, block: pa.Table) -> pa.Table:
        import pyarrow as pa

        from batchpizza.schema_metadata import carry_metadata

        rest = [name for name in block.column_names if name != self.id_field]
        ids = block.column(self.id_field).cast(pa.string())
        schema = pa.schema([pa.field(ID, pa.string()), *(block.schema.field(n) for n in rest)])
        columns = [ids, *(block.column(n) for n in rest)]
        return pa.Table.from_arrays(columns, schema=carry_metadata(block.schema, schema))

    def records(self, block: pa.Table) -> Iterator[dict[str, Any]]:
        from batchpizza.sources.maps import with_maps_as_objects

        for batch in self.output(block).to_batches():
            yield from with_maps_as_objects(batch.schema, batch.to_pylist())


def write_part(
    block: pa.Table, folder: str, index: int, fmt: str, layout: Layout | None = None
) -> None:
    """Block `index` of the output as one part of `folder`, named by that index: the parts'
    sorted names are the rows' order. (Ray Data's own writers were seen to put a task's blocks
    in another order: 2 runs in 8 here.) `layout` makes the block's columns the output's of a
    run without --ray (IdFirst; for a staged JSON lines input, staging.CarriedColumns); JSON
    lines carry values as that output does (timestamps as ISO 8601, bytes as base64)."""
    import pyarrow.parquet as pq

    import batchpizza.jsoncodec as jsoncodec
    from batchpizza.sinks.values import json_default
    from batchpizza.sources.maps import with_maps_as_objects

    fs, root = filesystem(folder)
    path = f"{root}/part-{index:06d}.{fmt}"
    if fmt == "parquet":
        table = block if layout is None else layout.output(block)
        pq.write_table(table, path, filesystem=fs, compression="zstd")
        return
    if layout is None:
        records: Iterable[dict[str, Any]] = (
            row
            for batch in block.to_batches()
            for row in with_maps_as_objects(batch.schema, batch.to_pylist())
        )
    else:
        records = layout.records(block)
    with fs.open_output_stream(path) as out:
        lines = bytearray()
        for row in records:
            lines += jsoncodec.dumps(row, json_default)
            lines += b"\n"
            if len(lines) > _FLUSH_BYTES:
                out.write(lines)
                lines = bytearray()
        out.write(lines)


class OutputFolder:
    """Where the parts are written (`target`), and how they become the output (`commit`)."""

    def __init__(self, place: str) -> None:
        self.place = place
        self.local = None if is_uri(place) else Path(place).resolve()
        self.aside: Path | None = None

    def check(self) -> None:
        """Refuse, before anything is read or sent, what the end of the run could not do."""
        if self.local is None:
            return
        if self.local.exists() and not self.local.is_dir():
            raise UsageError(
                f"output {self.place} is a file; --ray writes a folder of parts: give a folder name"
            )
        check_writable(self.local.parent, "output")

    def recover(self) -> None:
        """Mend what killed runs left: an output renamed aside and not replaced goes back, and
        half-written folders go. Call it holding the run's lock (a live run's folder would go)."""
        if self.local is None:
            return
        out = self.local
        old = sorted(out.parent.glob(f".{out.name}{OLD}*"))
        if old and not out.exists():
            old.pop().rename(out)
        for stale in [*old, *out.parent.glob(f".{out.name}{PARTIAL}*")]:
            shutil.rmtree(stale, ignore_errors=True)

    def target(self) -> str:
        """Where to write the parts: a new hidden sibling, or the URI itself, emptied."""
        if self.local is None:
            delete_folder(self.place)
            return self.place
        self.aside = self.local.with_name(f".{self.local.name}{PARTIAL}{uuid.uuid4().hex[:8]}")
        try:
            self.aside.mkdir()
        except OSError as exc:
            raise OutputError(f"cannot write in {self.local.parent}: {exc.strerror}") from None
        return str(self.aside)

    def commit(self) -> None:
        """The complete folder takes the output's name. A folder cannot be renamed over a full
        one: the old output steps aside first, for the moment between two renames (a kill in
        between is mended by the next run's `recover`)."""
        if self.local is None or self.aside is None:
            return
        out, aside = self.local, self.aside
        try:
            if out.exists():
                old = out.with_name(f".{out.name}{OLD}{uuid.uuid4().hex[:8]}")
                out.rename(old)
                aside.rename(out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                aside.rename(out)
        except OSError as exc:
            raise OutputError(f"cannot move the output into place at {out}: {exc}") from None
        self.aside = None

    def discard(self) -> None:
        """What a failed or interrupted run wrote aside."""
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside = None


def check_places(input: str, output: OutputFolder, checkpoint: str, summary: str | None) -> None:
    """What can be refused before anything is read or sent: two of input, output, checkpoint
    and summary in one place or one inside another (the output replaced by a rename would take
    a checkpoint inside it along), and missing or unwritable folders."""
    if not is_uri(input) and not Path(input).exists():
        raise InputError(f"the input {input} does not exist")
    places = [("input", input), ("output", output.place)]
    places += [("checkpoint", checkpoint), ("summary", summary or "")]
    local = [(what, Path(p).resolve()) for what, p in places if p and not is_uri(p)]
    for i, (what, path) in enumerate(local):
        for other, other_path in local[i + 1 :]:
            if same_file(path, other_path):
                raise UsageError(f"the {what} and the {other} are the same place ({path})")
            for (a, a_path), (b, b_path) in (
                ((what, path), (other, other_path)),
                ((other, other_path), (what, path)),
            ):
                if inside(a_path, b_path):
                    raise UsageError(
                        f"the {a} {a_path} is inside the {b} {b_path}; give each its own place"
                    )
    output.check()
    if not is_uri(checkpoint):
        folder = Path(checkpoint)
        if folder.exists() and not folder.is_dir():
            raise UsageError(
                f"the checkpoint {folder} is a file (a run's without --ray?); --ray keeps "
                "its checkpoint in a folder: give --checkpoint a folder name"
            )
        check_writable(folder.parent, "checkpoint")
    if summary:
        path = Path(summary)
        if path.is_dir():
            raise UsageError(f"--summary-json {path} is a directory")
        check_writable(path.parent, "summary")
