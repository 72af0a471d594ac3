"""A local JSON lines input of a cluster run, read as the run without --ray reads it.

Arrow's JSON reader (Ray Data's) refused a field whose type changes between rows, read `1` and
`"two"` in a field no row could be run with, and typed what the single-process run types
otherwise (ids as numbers, nested objects with every key of every row). So the driver reads the
file with the JSONL source itself: the same scan, so the same bad rows and the same message
(exit 2 unless --skip-bad-rows), the same ids (a row's position where it has none), the same
field types (JSON text where shapes clash, said once on stderr). It stages the rows for the
cluster as one Parquet file of three columns:

    id                   the row's id as the output shows it
    __batchpizza_row     the row's JSON object (null for a line that is not one)
    __batchpizza_problem what is wrong with the row (null for a good row)

The actors read each row from its JSON (`row_objects`), and the output's parts carry its fields
as the single-process output does (`CarriedColumns`): JSON values in JSON lines, the scanned
Arrow types in Parquet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import batchpizza.jsoncodec as jsoncodec
from batchpizza.errors import InputError, OutputError, RowProblem
from batchpizza.files import scratch_folder

if TYPE_CHECKING:
    import pyarrow as pa

    from batchpizza.config import RunConfig

ID = "id"  # the staged id column, named as the output's
ROW = "__batchpizza_row"
PROBLEM = "__batchpizza_problem"
STAGED = "staged-input.parquet"  # in the folder given to `stage` (the checkpoint's)
# The scan's index (44 B a row), beside the staged file: the system temp folder may be a tmpfs
# (RAM), and a kill left it there for good; here the next staging replaces it, --restart empties
# the folder with it. A dot name: no reader of the checkpoint takes it for a part.
SCAN = ".staged-scan.sqlite"
_NOT_UTF8 = "invalid UTF-8 in a string column"  # a row's problem, as the scan of a file says it


@dataclass(frozen=True)
class CarriedColumns:
    """The input's fields as the output carries them, after the id: their names and Arrow types
    (None: JSON text) as the scan inferred them. Sent to the tasks that write the parts."""

    types: dict[str, pa.DataType | None]

    def output(self, block: pa.Table) -> pa.Table:
        """A staged block with its results as the output's table: the id, the input's fields
        typed, the result columns."""
        import pyarrow as pa

        from batchpizza.fieldtypes.inference import FieldTypes

        objects = _objects(block)
        arrays = [block.column(ID).combine_chunks()]
        fields = [pa.field(ID, pa.string())]
        for name, kind in self.types.items():
            arrays.append(FieldTypes.to_array([obj.get(name) for obj in objects], kind))
            fields.append(pa.field(name, kind or pa.string()))
        results = [n for n in block.column_names if n not in (ID, ROW, PROBLEM)]
        arrays += [block.column(n).combine_chunks() for n in results]
        fields += [block.schema.field(n) for n in results]
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))

    def records(self, block: pa.Table) -> Iterator[dict[str, Any]]:
        """Each row of a staged block as a JSON lines output's object: every field of the
        input's, its value as the row has it (null where it has none), then the results."""
        results = [n for n in block.column_names if n not in (ID, ROW, PROBLEM)]
        ids = block.column(ID).to_pylist()
        values = block.select(results).to_pylist()
        for row_id, obj, result in zip(ids, _objects(block), values, strict=True):
            yield {ID: row_id, **{name: obj.get(name) for name in self.types}, **result}


@dataclass(frozen=True)
class Staged:
    """A staged input: where it is, how many rows, and how the output carries their fields."""

    place: str
    rows: int
    carried: CarriedColumns

    def remove(self) -> None:
        """The staged file goes (it is written again by every run that needs it)."""
        from batchpizza.distributed.folders import filesystem

        fs, path = filesystem(self.place)
        with contextlib.suppress(OSError):  # none written (no row), or gone already
            fs.delete_file(path)


def is_staged(names: list[str]) -> bool:
    return ROW in names and PROBLEM in names


def stage(
    input: str, config: RunConfig, limit: int | None, folder: str, *, typed: bool = True
) -> Staged:
    """Scan the JSON lines file `input` (its first `limit` rows) as a run without --ray does,
    and write its rows to `folder`/STAGED. Bad rows raise InputError, having written nothing,
    unless --skip-bad-rows; an input without a row is staged as 0 rows, no file written.
    `typed`: for a Parquet output, whose fields' types are said where they are JSON text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from batchpizza.checkpoint import ScanIndex
    from batchpizza.distributed.folders import filesystem, is_uri
    from batchpizza.providers.factory import extra_columns
    from batchpizza.rows import Fields
    from batchpizza.sources import JsonlSource, open_source
    from batchpizza.sources.base import describe

    fields = Fields.from_config(config, extra_columns(config.provider))
    source = open_source(input, fields)
    assert isinstance(source, JsonlSource)  # a JSON lines file, named so
    with contextlib.ExitStack() as scratch:
        # SQLite needs a local file: beside the staged one, unless that is in an object store.
        local = scratch.enter_context(scratch_folder()) if is_uri(folder) else folder
        scan = ScanIndex(Path(local) / SCAN)
        try:
            scan.scan(source.scan(limit), source.unit, source.names)
            if scan.bad and not config.skip_bad_rows:
                bad = describe(source, scan.first_bad)
                raise InputError.of_rows(bad, scan.bad)
            columns = source.columns()
            # Typed for Parquet only, which says once which fields are JSON text; JSON lines
            # carry the values themselves, and a run without --ray says nothing then.
            types = columns.types() if typed else dict.fromkeys(columns.names)
            carried = CarriedColumns(types)
            place = (
                f"{folder.rstrip('/')}/{STAGED}" if is_uri(folder) else str(Path(folder) / STAGED)
            )
            fs, path = filesystem(place)
            if scan.total == 0:
                return Staged(place, 0, carried)
            schema = pa.schema([(ID, pa.string()), (ROW, pa.string()), (PROBLEM, pa.string())])
            staged = Staged(place, scan.total, carried)
            verdicts = scan.verdicts()
            changed = InputError(f"{input}: the file changed while it was read; rerun")
            try:
                with pq.ParquetWriter(path, schema, filesystem=fs, compression="zstd") as writer:
                    for batch in source.carried():
                        ids: list[str | None] = []
                        rows: list[str | None] = []
                        problems: list[str | None] = []
                        for obj in batch.rows():
                            pos, row_id, problem = next(verdicts, (None, None, None))
                            if pos is None:  # more rows than the scan found
                                raise changed
                            ids.append(row_id)
                            # A line that is no JSON object carries nothing, as without --ray.
                            rows.append(jsoncodec.dumps(obj).decode() if obj else None)
                            problems.append(problem)
                        writer.write_batch(pa.record_batch([ids, rows, problems], schema=schema))
                if next(verdicts, None) is not None:
                    raise changed
            except OSError as exc:  # the source says its own read errors as InputErrors
                staged.remove()
                raise OutputError(f"cannot stage the input in {folder}: {exc}") from None
            except BaseException:
                staged.remove()
                raise
            finally:
                # Before the scan closes: left open, it closed its cursor when collected, on
                # the closed database (a traceback after a ^C).
                verdicts.close()
        finally:
            scan.close()
    return staged


def row_objects(batch: pa.Table | pa.RecordBatch, id_field: str) -> list[Any]:
    """Each row of a batch as the engine reads rows (engine.batch.Batch): a dict, a problem (a
    str), or for a staged row found bad by the scan a RowProblem with its id. A staged good row
    without an id gets the one the scan gave it (its position in the file)."""
    from batchpizza.sources.parquet import NOT_UTF8, pylist

    if not is_staged(batch.schema.names):
        return [_NOT_UTF8 if obj is NOT_UTF8 else obj for obj in pylist(batch)]
    ids = batch.column(ID).to_pylist()
    problems = batch.column(PROBLEM).to_pylist()
    out: list[Any] = []
    for row_id, obj, problem in zip(ids, _objects(batch), problems, strict=True):
        if problem is not None:
            out.append(RowProblem(problem, row_id=row_id))
        else:
            obj.setdefault(id_field, row_id)
            out.append(obj)
    return out


def row_ids(batch: pa.Table | pa.RecordBatch, id_field: str) -> list[str]:
    """The batch's row ids as the checkpoint keys them: the staged id column, else `id_field`
    as text, else the positions."""
    name = ID if is_staged(batch.schema.names) else id_field
    if name not in batch.schema.names:
        return [str(i) for i in range(batch.num_rows)]
    return [str(v) for v in batch.column(name).to_pylist()]


def _objects(batch: pa.Table | pa.RecordBatch) -> list[dict[str, Any]]:
    # As bytes: jsoncodec reads an integer beyond 64 bits exactly only there (a str took orjson,
    # which made it a float).
    loads = jsoncodec.loads
    return [{} if text is None else loads(text.encode()) for text in batch.column(ROW).to_pylist()]
