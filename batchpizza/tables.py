"""In-memory inputs for `batchpizza.answer`: DataFrames, Arrow tables, Hugging Face datasets, rows.

pandas, polars and datasets are not dependencies: a value is recognised by the classes of modules
already imported (a pandas DataFrame cannot exist unless pandas is), and each library is used only
when its kind of value is given. pyarrow is imported only for the Arrow-backed kinds.

    data                       kind        read through         restore(result) gives
    pandas.DataFrame           "pandas"    .table, .batches()   a DataFrame, index and dtypes kept
    polars.DataFrame           "polars"    .table, .batches()   a polars DataFrame
    pyarrow.Table              "arrow"     .table, .batches()   a Table, schema metadata kept
    pyarrow.RecordBatchReader  "stream"    .batches(), once     a RecordBatchReader, streamed
    datasets.Dataset           "datasets"  .table, .batches()   a Dataset, Features kept
    list (of dicts)            "rows"      .rows                a new list of new dicts

`restore` takes the results as Arrow (a Table, a RecordBatchReader or an iterator of batches): the
input's columns followed by the result columns, or the result columns alone. The input's columns
are taken from the input itself wherever it is still at hand, so that what Arrow cannot say about
them (a pandas index, a categorical's dtype, a ClassLabel) comes back as it was. The input is never
changed.

The schema metadata pandas and datasets write is carried the same way (schema_metadata.py).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from batchpizza.errors import UsageError
from batchpizza.frames import pandas_to_arrow, restore_dataset, restore_pandas
from batchpizza.schema_metadata import carry_metadata

if TYPE_CHECKING:
    import pyarrow as pa

Kind = Literal["pandas", "polars", "arrow", "stream", "datasets", "rows"]

BATCH_ROWS = 4096
ACCEPTED = (
    "a pandas DataFrame, a polars DataFrame, a pyarrow Table or RecordBatchReader, "
    "a Hugging Face datasets.Dataset, any table with __arrow_c_stream__, "
    "a list of dicts (one per row, as JSONL lines) or a list of prompt strings"
)
# (module, class, kind), matched in order against the modules already imported
_CLASSES: tuple[tuple[str, str, Kind], ...] = (
    ("pandas", "DataFrame", "pandas"),
    ("polars", "DataFrame", "polars"),
    ("pyarrow", "Table", "arrow"),
    ("pyarrow", "RecordBatchReader", "stream"),
    ("datasets", "Dataset", "datasets"),
)
# What to say for values close to an accepted one (by class name).
_HINTS = {
    "Series": "pass a DataFrame (series.to_frame())",
    "LazyFrame": "collect() it first",
    "DatasetDict": "pass one split, e.g. data['train']",
    "IterableDatasetDict": "pass one split of a Dataset, e.g. data['train']",
    "IterableDataset": "load it as a Dataset (streaming=False)",
    "RecordBatch": "pass pyarrow.Table.from_batches([batch])",
    "dict": "pass a list of dicts, one per row",
}


def kind_of(data: object) -> Kind | None:
    """The kind of in-memory input `data` is, without importing any library; None if none."""
    if isinstance(data, list):
        return "rows"
    for module_name, class_name, kind in _CLASSES:
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if isinstance(cls, type) and isinstance(data, cls):
            return kind
    return None


def from_data(data: object) -> InMemory:
    """`data` as an InMemory input; UsageError naming the accepted types for anything else. Any
    other table that speaks the Arrow C stream interface (`__arrow_c_stream__`: a DuckDB relation,
    an ibis table, a pyarrow dataset's scanner) is read as a stream, and comes back as a pyarrow
    RecordBatchReader."""
    kind = kind_of(data)
    # A value close to an accepted one (a Series, a RecordBatch) gets its hint, stream or not.
    if kind is None and hasattr(data, "__arrow_c_stream__") and type(data).__name__ not in _HINTS:
        import pyarrow as pa

        return InMemory("stream", pa.RecordBatchReader.from_stream(data))
    if kind is None:
        cls = type(data)
        name = (
            cls.__qualname__
            if cls.__module__ == "builtins"
            else f"{cls.__module__}.{cls.__qualname__}"
        )
        hint = _HINTS.get(cls.__name__)
        raise UsageError(
            f"batchpizza.answer takes {ACCEPTED}; not a {name}" + (f": {hint}" if hint else "")
        )
    return InMemory(kind, data)


class InMemory:
    """One in-memory input, made by `from_data`. `data` is the caller's own object: it is read,
    never changed. Arrow-backed kinds are read through `.table` or `.batches()`, "rows" through
    `.rows`; `restore` turns the results into the caller's type."""

    __slots__ = ("_read", "_table", "data", "kind")

    def __init__(self, kind: Kind, data: Any) -> None:
        self.kind: Kind = kind
        self.data: Any = data
        self._table: pa.Table | None = None  # converted once, for the passes that need it all
        self._read = False  # a stream's batches have been taken

    def __repr__(self) -> str:
        return f"InMemory({self.kind!r}, {type(self.data).__name__})"

    # -- reading ------------------------------------------------------------------------------

    @property
    def rows(self) -> list[Any]:
        """kind "rows": the caller's list itself (each item is checked as a JSONL line is)."""
        if self.kind != "rows":
            raise TypeError(f"a {self.kind} input has no .rows; read .table or .batches()")
        return self.data  # type: ignore[no-any-return]

    @property
    def num_rows(self) -> int | None:
        """None for a stream, whose length is known only once it is read."""
        return None if self.kind == "stream" else len(self.data)

    @property
    def names(self) -> list[str]:
        """The column names as Arrow has them (a pandas label as its text)."""
        if self.kind == "pandas":
            return [str(label) for label in self.data.columns]
        if self.kind == "polars":
            return list(self.data.columns)
        if self.kind == "datasets":
            return list(self.data.column_names)
        return list(self.schema.names)

    @property
    def schema(self) -> pa.Schema:
        if self.kind == "stream":
            return self.data.schema
        if self.kind == "datasets":
            return self.data.features.arrow_schema
        return self.table.schema

    @property
    def table(self) -> pa.Table:
        """The input as one Arrow table (for pandas, without its index: restore brings it back).
        Not for a stream, which may not fit in memory: read .batches()."""
        if self._table is None:
            self._table = self._to_table(None)
        return self._table

    def batches(
        self, columns: Sequence[str] | None = None, batch_rows: int = BATCH_ROWS
    ) -> Iterator[pa.RecordBatch]:
        """The input's record batches, of `columns` only if given; only those are converted, so a
        pandas column Arrow cannot hold matters only if asked for. A stream can be read once."""
        wanted = None if columns is None else list(columns)
        if self.kind == "stream":
            if self._read:
                raise RuntimeError("a RecordBatchReader can be read only once")
            self._read = True
            return (b if wanted is None else b.select(wanted) for b in self.data)
        if self.kind == "datasets":  # read in slices: a dataset on disk need not fit in memory
            chunks = self.data.with_format("arrow", columns=wanted).iter(batch_size=batch_rows)
            return itertools.chain.from_iterable(chunk.to_batches() for chunk in chunks)
        if self._table is not None or wanted is None:
            table = self.table if wanted is None else self.table.select(wanted)
        else:
            table = self._to_table(wanted)
        return iter(table.to_batches(max_chunksize=batch_rows))

    def head(self, n: int) -> InMemory:
        """The first `n` rows, as an input of the same kind (not for a stream: read it first)."""
        if self.kind == "stream":
            raise TypeError("a RecordBatchReader has no head; read it into a Table first")
        data = self.data
        if self.kind == "rows":
            return InMemory("rows", data[:n])
        if self.kind == "pandas":
            return InMemory("pandas", data.iloc[:n])
        if self.kind == "polars":
            return InMemory("polars", data.head(n))
        if self.kind == "datasets":
            return InMemory("datasets", data.select(range(min(n, len(data)))))
        return InMemory(self.kind, data.slice(0, n))

    def _to_table(self, columns: list[str] | None) -> pa.Table:
        if self.kind == "arrow":
            return self.data if columns is None else self.data.select(columns)
        if self.kind == "polars":
            return _plain_strings(
                self.data.to_arrow() if columns is None else self.data.select(columns).to_arrow()
            )
        if self.kind == "datasets":
            return self.data.with_format("arrow", columns=columns)[:]
        if self.kind == "pandas":
            return pandas_to_arrow(self.data, columns)
        raise TypeError(f"a {self.kind} input has no .table; read .batches() or .rows")

    # -- writing ------------------------------------------------------------------------------

    def repeated(self, times: int) -> InMemory:
        """The input with each row `times` times in a row, as the same type (--repeat: a row's
        samples). Not for a stream: read it into a table first."""
        if times == 1:
            return self
        order = [
            i for i in range(len(self.data) if self.kind != "stream" else 0) for _ in range(times)
        ]
        if self.kind == "rows":
            return InMemory("rows", [self.data[i] for i in order])
        if self.kind == "pandas":
            return InMemory("pandas", self.data.iloc[order])
        if self.kind == "polars":
            return InMemory("polars", self.data[order])
        if self.kind == "datasets":
            return InMemory("datasets", self.data.select(order))
        return InMemory("arrow", self.table.take(order))

    def restore(
        self,
        result: pa.Table | pa.RecordBatchReader | Iterable[pa.RecordBatch] | list[dict[str, Any]],
    ) -> Any:
        """The input with the result columns added, as the same type. For kind "rows", `result`
        is a list of dicts (one per row, in order); otherwise see the module docstring."""
        if self.kind == "rows":
            return restore_rows(self.data, result)  # type: ignore[arg-type]
        if self.kind == "stream":
            return _restore_stream(self.data.schema, result)
        new = _new_columns(_as_table(result), self.names, len(self.data))
        if self.kind == "pandas":
            return restore_pandas(self.data, new)
        if self.kind == "polars":
            return self.data.hstack(sys.modules["polars"].from_arrow(new))
        if self.kind == "datasets":
            return restore_dataset(self.data, new)
        return _append(self.data, new)


def restore_rows(rows: list[Any], results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each row as a new dict, its result keys added; a row that is not an object (a bad row)
    holds only its result. The rows are not changed (nested values are shared, not copied)."""
    if len(rows) != len(results):
        raise ValueError(f"{len(results)} results for {len(rows)} rows")
    return [
        {**(row if isinstance(row, Mapping) else {}), **res}
        for row, res in zip(rows, results, strict=True)
    ]


# -- Arrow helpers -----------------------------------------------------------------------------


def _as_table(result: Any) -> pa.Table:
    import pyarrow as pa

    if isinstance(result, pa.Table):
        return result
    if isinstance(result, pa.RecordBatchReader):
        return result.read_all()
    batches = list(result)
    if not batches:
        raise ValueError("no record batches, so no schema: pass a Table or RecordBatchReader")
    return pa.Table.from_batches(batches)


def _new_columns(result: pa.Table, input_names: list[str], num_rows: int) -> pa.Table:
    """The result columns of `result`: what follows the input's columns, or all of it when it
    holds none of them."""
    names = result.column_names
    if names[: len(input_names)] == input_names:
        new = result.select(list(range(len(input_names), len(names))))
    elif not set(names) & set(input_names):
        new = result
    else:
        clash = sorted(set(names) & set(input_names))
        raise ValueError(
            f"the result holds input columns {clash} but not the input's columns in order first"
        )
    if new.num_rows != num_rows:
        raise ValueError(f"{new.num_rows} result rows for {num_rows} input rows")
    return new


def _append(table: pa.Table, new: pa.Table) -> pa.Table:
    """The input table's own columns, then the new ones; its metadata carried."""
    import pyarrow as pa

    schema = carry_metadata(table.schema, pa.schema([*table.schema, *new.schema]))
    return pa.Table.from_arrays([*table.columns, *new.columns], schema=schema)


def _restore_stream(input_schema: pa.Schema, result: Any) -> pa.RecordBatchReader:
    """A reader of the result batches (input columns first: a stream's input is gone once read),
    with the input's metadata. Batches are passed on as they come, never gathered."""
    import pyarrow as pa

    if isinstance(result, pa.Table):
        result = result.to_reader()
    if isinstance(result, pa.RecordBatchReader):
        first: list[pa.RecordBatch] = []
        schema, rest = result.schema, iter(result)
    else:
        rest = iter(result)
        first = list(itertools.islice(rest, 1))
        if not first:
            raise ValueError("no record batches, so no schema: pass a Table or RecordBatchReader")
        schema = first[0].schema
    if schema.names[: len(input_schema)] != input_schema.names:
        raise ValueError("a stream's result must hold the input's columns first")
    out = carry_metadata(input_schema, schema)

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in itertools.chain(first, rest):
            yield pa.RecordBatch.from_arrays(batch.columns, schema=out)

    return pa.RecordBatchReader.from_batches(out, batches())


def _plain_strings(table: pa.Table) -> pa.Table:
    """Arrow's view types (polars may export them) as the large types every reader knows."""
    import pyarrow as pa

    views = {pa.string_view(): pa.large_string(), pa.binary_view(): pa.large_binary()}
    if not any(f.type in views for f in table.schema):
        return table
    return table.cast(pa.schema([f.with_type(views.get(f.type, f.type)) for f in table.schema]))


# -- pandas ------------------------------------------------------------------------------------
