"""pandas DataFrames and Hugging Face datasets as in-memory inputs: to Arrow and back, keeping
what Arrow cannot say of them (a pandas index and dtypes, a dataset's Features). Used by
tables.InMemory for those kinds only; neither library is imported unless its data is given."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from batchpizza.errors import BadRow, InputError, UsageError
from batchpizza.rows import json_type, with_article

if TYPE_CHECKING:
    import pyarrow as pa

LABEL = "<data>"  # what messages call rows in memory, as batchpizza.api does


def pandas_to_arrow(frame: Any, columns: list[str] | None) -> pa.Table:
    import pyarrow as pa

    if columns is not None:  # Arrow names are the labels as text: find the labels again
        labels = {str(label): label for label in frame.columns}
        frame = frame[[labels[name] for name in columns]]
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        mixed = mixed_row(frame)
        if mixed is not None:
            # skip_bad_rows cannot help: no row of the frame can be read while one column can't
            raise InputError(f"{mixed}; nothing was sent") from None
        raise UsageError(f"the DataFrame cannot be read as Arrow: {exc}") from None


def mixed_row(frame: Any) -> BadRow | None:
    """The first value of an object column whose type is not that of the column's first value
    (a number among prompts): Arrow takes no column of mixed types, so the frame cannot be read
    at all; the row is named, as a bad row of a file is, rather than the column alone."""
    import pyarrow as pa

    from batchpizza.sources.memory import shown_label

    index = frame.index
    plain = type(index).__name__ == "RangeIndex" and index.start == 0 and index.step == 1
    for at, name in enumerate(frame.columns):
        column = frame.iloc[:, at]
        if column.dtype != object:
            continue
        try:
            pa.array(column, from_pandas=True)
            continue
        except (pa.ArrowException, ValueError, TypeError):
            pass
        first: tuple[int, str] | None = None
        for pos, value in enumerate(column):
            if value is None or (isinstance(value, float) and value != value):
                continue  # None and NaN are pandas' missing values, not a type of their own
            kind = json_type(value)
            if first is None:
                first = (pos, kind)
            elif kind != first[1]:
                problem = (
                    f"{with_article(kind)} where row {first[0]} holds {with_article(first[1])}: "
                    "a pandas column of mixed types cannot be read as Arrow, skip_bad_rows or "
                    "not (make the column one type)"
                )
                label = None if plain else shown_label(index[pos])
                return BadRow(LABEL, problem, row=pos, field=str(name), label=label)
    return None


def restore_pandas(frame: Any, new: pa.Table) -> Any:
    clash = sorted(set(new.column_names) & {str(c) for c in frame.columns})
    if clash:
        raise ValueError(f"the DataFrame already has columns named {clash}")
    pd = sys.modules["pandas"]
    # Arrays, not Series: a Series would be aligned on the frame's index, which may repeat.
    values = {name: pandas_array(new.column(name), pd) for name in new.column_names}
    return frame.assign(**values)


_NULLABLE = {
    "int8": "Int8",
    "int16": "Int16",
    "int32": "Int32",
    "int64": "Int64",
    "uint8": "UInt8",
    "uint16": "UInt16",
    "uint32": "UInt32",
    "uint64": "UInt64",
    "bool": "boolean",
}


def pandas_array(column: pa.ChunkedArray, pd: Any) -> Any:
    """A result column as pandas would hold it: ints and bools with nulls as nullable dtypes
    (not floats and objects), everything else as pyarrow converts it."""
    nullable = _NULLABLE.get(str(column.type)) if column.null_count else None
    if nullable is not None:
        dtype = pd.api.types.pandas_dtype(nullable)
        return column.to_pandas(types_mapper=lambda _type: dtype).array
    return column.to_pandas().array


# -- datasets ----------------------------------------------------------------------------------


def restore_dataset(dataset: Any, new: pa.Table) -> Any:
    """A new in-memory Dataset: the input's rows (its indices applied) and Features, the new
    columns' features from their Arrow types, the same split and format. Nothing is written to
    disk, nothing is shown (datasets' own concatenation would flatten indices with a bar)."""
    import pyarrow as pa

    datasets = sys.modules["datasets"]
    table = dataset.with_format("arrow")[:]
    features = datasets.Features(
        # without metadata: a result table made from the dataset's own carries its Features
        {**dataset.features, **datasets.Features.from_arrow_schema(new.schema.remove_metadata())}
    )
    info = dataset.info.copy()
    info.features = features
    combined = pa.Table.from_arrays(
        [*table.columns, *new.columns], names=[*table.column_names, *new.column_names]
    )
    out = datasets.Dataset(combined, info=info, split=dataset.split)
    fmt = dataset.format
    shown = fmt["columns"]
    return out.with_format(
        fmt["type"],
        columns=None if shown is None else [*shown, *new.column_names],
        output_all_columns=fmt["output_all_columns"],
        **fmt["format_kwargs"],
    )
