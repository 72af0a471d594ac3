"""Parquet input: one file, or a folder's files (recursively, in sorted path order) whose
columns are unified before anything is sent. pyarrow is imported only here and in the Parquet
sink: a JSONL job never pays for it."""

from __future__ import annotations

import itertools
import json
from collections.abc import Generator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchpizza.errors import InputError
from batchpizza.records import Prompt
from batchpizza.rows import Fields, ScanBatch, collision
from batchpizza.schema_metadata import carry_metadata
from batchpizza.sources.base import (
    BATCH_ROWS,
    Columns,
    files_key,
    prompt_of,
    read_errors,
    scan_batches,
    with_arrow_errors,
)
from batchpizza.sources.maps import map_converters, with_maps_as_objects

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

NOT_UTF8 = object()  # a row whose strings cannot be decoded


class ArrowColumns:
    """The carried columns of an Arrow input: its own fields, types kept exactly."""

    def __init__(self, schema: pa.Schema, id_name: str) -> None:
        self.schema = schema
        self.names = [n for n in schema.names if n != id_name]

    def arrow_fields(self) -> list[pa.Field]:
        return [self.schema.field(n) for n in self.names]

    def carry(self, schema: pa.Schema) -> pa.Schema:
        """`schema` with the input's metadata (pandas', Hugging Face's) made to fit it, so that
        pandas and datasets read the output back as they wrote the input, plus the results."""
        return carry_metadata(self.schema, schema)


class ArrowBatch:
    """Carried rows of an Arrow input: a record batch of one file."""

    def __init__(self, batch: pa.RecordBatch) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return int(self.batch.num_rows)

    def rows(self) -> list[Mapping[str, Any]]:
        return [o if isinstance(o, Mapping) else {} for o in pylist(self.batch)]

    def head(self, n: int) -> ArrowBatch:
        return ArrowBatch(self.batch.slice(0, n))

    def arrays(self, columns: Columns) -> list[pa.Array]:
        assert isinstance(columns, ArrowColumns)
        table = _conform(self.batch, columns.schema)
        return [table.column(n).combine_chunks() for n in columns.names]


class ParquetSource:
    unit = "row"
    rows_from_lines = False

    def __init__(self, paths: list[Path], names: list[str], fields: Fields) -> None:
        import pyarrow as pa

        self.paths = paths
        self.names = names
        self.fields = fields
        # Columns must agree across files, checked now: a clash found only when the output is
        # written would come after every row was sent.
        schemas = [_parquet_file(p, n).schema_arrow for p, n in zip(paths, names, strict=True)]
        for schema, name in zip(schemas, names, strict=True):
            twice = sorted({n for n in schema.names if schema.names.count(n) > 1})
            if twice:  # Parquet allows it; no row could say which one it means
                raise InputError(f"{name}: the file names column {twice[0]!r} twice; rename one")
        try:
            self.schema = pa.unify_schemas(schemas, promote_options="permissive")
        except (pa.ArrowException, TypeError) as exc:
            said = f"{names[0]}: the Parquet files have clashing columns: {exc}"
            raise InputError(_clash(schemas, names) or said) from None
        for schema, name in zip(schemas, names, strict=True):
            wanted_columns(self.fields, schema, name)

    def columns(self) -> ArrowColumns:
        return ArrowColumns(self.schema, self.fields.id)

    def scan_state(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        pass

    def input_key(self) -> str | None:
        files = files_key(self.paths)
        key = {"kind": "parquet", "fields": list(self.fields.key()), "files": files}
        if map_converters(self.schema):  # a scan that read maps as pairs is not reused
            key["maps"] = "objects"
        return json.dumps(key)

    def close(self) -> None:
        pass

    def scan(self, limit: int | None = None) -> Iterator[ScanBatch]:
        rows = itertools.islice(self._rows(check_all=True), limit)
        return scan_batches(
            self.fields,
            (
                (pos, index, at, "invalid UTF-8 in a string column" if obj is NOT_UTF8 else obj)
                for pos, (index, at, obj) in enumerate(rows)
            ),
        )

    def prompts(self, wanted: Iterable[int]) -> Generator[tuple[int, Prompt], None, None]:
        it = iter(wanted)
        target = next(it, None)
        if target is None:
            return
        for pos, (_index, _at, obj) in enumerate(self._rows()):
            if pos != target:
                continue
            prompt = prompt_of(obj, self.fields, pos)
            if prompt is not None:
                yield pos, prompt
            target = next(it, None)
            if target is None:
                return

    def carried(self) -> Iterator[ArrowBatch]:
        for index, path in enumerate(self.paths):
            with read_errors(self.names[index]):
                for batch in _parquet_file(path, self.names[index]).iter_batches(BATCH_ROWS):
                    yield ArrowBatch(batch)

    def _rows(self, check_all: bool = False) -> Iterator[tuple[int, int, Any]]:
        """(file index, row, object) of every row, objects holding the prompt, messages and id
        columns; NOT_UTF8 for a row whose strings are not valid UTF-8. With `check_all`, every
        column is decoded, so that a damaged page anywhere in the file is found now."""
        for index, path in enumerate(self.paths):
            name = self.names[index]
            pf = _parquet_file(path, name)
            columns = wanted_columns(self.fields, pf.schema_arrow, name)
            at = 0
            with read_errors(name):
                for rb in pf.iter_batches(BATCH_ROWS, columns=None if check_all else columns):
                    for obj in pylist(rb.select(columns)):
                        yield index, at, obj
                        at += 1


def wanted_columns(f: Fields, schema: pa.Schema, name: str, *, empty: bool = False) -> list[str]:
    """The columns a row's prompt, messages and id are read from; InputError naming `name` for
    a table that can hold no prompt rows. An `empty` table's prompt column may be of any type:
    it has no row to hold a wrong one (pandas makes an empty column float64)."""
    present = set(schema.names)
    clash = sorted(present & f.reserved - {f.id})
    if clash:
        raise InputError(f"{name}: column {clash[0]!r} {collision(f, clash[0])}")
    if f.build is not None:
        return built_columns(f, schema.names, name)
    if f.prompt not in present and f.messages not in present and "custom_id" not in present:
        raise InputError(f"{name}: no {f.prompt!r} column and no {f.messages!r} column")
    if f.prompt in present and not empty and not _is_string(schema.field(f.prompt).type):
        raise InputError(
            f"{name}: column {f.prompt!r} must hold strings, not {schema.field(f.prompt).type}"
        )
    wanted = [f.prompt, f.messages, f.id, "custom_id", "body", "url"]
    return [c for c in wanted if c in present]


def built_columns(f: Fields, names: list[str], name: str) -> list[str]:
    """The columns a built prompt reads (every one for a function's), and the id's; InputError
    for a table without a column a --template names."""
    assert f.build is not None
    reads = f.build.reads
    if reads is None:
        return list(names)
    if f.build.required:
        absent = [c for c in reads if c not in names]
        if absent:
            raise InputError(f"{name}: no {absent[0]!r} column; the template reads it")
    wanted = {f.id, *reads}
    return [c for c in names if c in wanted]


def pylist(rb: pa.RecordBatch) -> list[Any]:
    """The batch as Python objects, maps with string keys as dicts (maps.py); where a string is
    not valid UTF-8, row by row, NOT_UTF8 for each row that cannot be decoded."""
    try:
        rows: list[Any] = rb.to_pylist()
    except UnicodeDecodeError:
        rows = []
        for i in range(rb.num_rows):
            try:
                rows.extend(rb.slice(i, 1).to_pylist())
            except UnicodeDecodeError:
                rows.append(NOT_UTF8)
    return with_maps_as_objects(rb.schema, rows)


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.Table:
    """A batch from one file of a folder, with the columns of all of them."""
    import pyarrow as pa

    table = pa.Table.from_batches([batch])
    if table.schema.equals(schema):
        return table
    columns = [
        table.column(f.name).cast(f.type)
        if f.name in table.schema.names
        else pa.nulls(len(table), f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _is_string(dtype: pa.DataType) -> bool:
    import pyarrow as pa

    return bool(
        pa.types.is_string(dtype)
        or pa.types.is_large_string(dtype)
        or pa.types.is_string_view(dtype)  # what polars and pyarrow's own writers may keep
        or pa.types.is_null(dtype)  # no value in any row (None each): rows without a prompt
        or (pa.types.is_dictionary(dtype) and _is_string(dtype.value_type))
    )


def _parquet_file(path: Path, name: str) -> pq.ParquetFile:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    except with_arrow_errors(ValueError) as exc:
        raise InputError(f"{name}: not a readable Parquet file: {exc}") from None


def _clash(schemas: list[pa.Schema], names: list[str]) -> str | None:
    """Which file first disagrees with the files before it, on which column: merged one file at
    a time (only once the whole merge failed), so the message names that file, not the first."""
    import pyarrow as pa

    def merge(a: pa.Schema, b: pa.Schema) -> pa.Schema:
        return pa.unify_schemas([a, b], promote_options="permissive")

    merged = schemas[0]
    for index, (schema, name) in enumerate(zip(schemas, names, strict=True)):
        if index == 0:
            continue
        try:
            merged = merge(merged, schema)
            continue
        except (pa.ArrowException, TypeError):
            pass
        for field in schema:
            for before, first in zip(schemas[:index], names[:index], strict=True):
                if field.name not in before.names:
                    continue
                other = before.field(field.name)
                try:
                    merge(pa.schema([other]), pa.schema([field]))
                except (pa.ArrowException, TypeError):
                    return (
                        f"{name}: column {field.name!r} is {field.type} here, {other.type} in "
                        f"{first}; the Parquet files have clashing columns"
                    )
    return None
