"""The schema metadata that pandas and Hugging Face datasets write into Arrow and Parquet, carried
from an input to an output with more columns, and kept true of it: pandas rebuilds a DataFrame's
index and dtypes from its entry, datasets its Features from its own, and both list the columns, so
an output that merely copied them would read back wrong. `carry_metadata` serves the in-memory
inputs (tables.py) and the Parquet files (sources/parquet.py) alike.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa


def carry_metadata(input_schema: pa.Schema, output_schema: pa.Schema) -> pa.Schema:
    """`output_schema` with what `input_schema` says about its columns carried over, for an output
    of the input's columns (some may be gone) plus new ones:

    - field metadata, where a column keeps its name and type;
    - the schema metadata, with the two entries that list columns made true of the output:
      `pandas` (pd.read_parquet rebuilds the index and dtypes from it) gains an entry for each
      new column and loses those of columns gone, and `huggingface` (datasets reads its
      Features from it) gains a Value feature for each new column, or is dropped when a new
      column is not a plain value (datasets then reads the types from Arrow);
    - any other entry as it was."""
    import pyarrow as pa

    inputs = {f.name: f for f in input_schema}
    fields = []
    for out in output_schema:
        same = inputs.get(out.name)
        if same is not None and same.type.equals(out.type) and not out.metadata:
            out = same.with_nullable(out.nullable)
        fields.append(out)
    schema = pa.schema(fields)
    metadata = {**(output_schema.metadata or {}), **(input_schema.metadata or {})}
    if b"pandas" in metadata:
        metadata[b"pandas"] = _carry_pandas(json.loads(metadata[b"pandas"]), schema)
    if b"huggingface" in metadata:
        carried = _carry_huggingface(json.loads(metadata[b"huggingface"]), schema)
        if carried is None:
            del metadata[b"huggingface"]
        else:
            metadata[b"huggingface"] = carried
    return schema.with_metadata(metadata)


def _carry_pandas(meta: dict[str, Any], schema: pa.Schema) -> bytes:
    present = set(schema.names)
    entries = {c.get("field_name") or c.get("name"): c for c in meta.get("columns", [])}
    levels = meta.get("column_indexes") or []
    columns = []
    for f in schema:
        entry = entries.get(f.name)
        if entry is None:
            entry = _pandas_entry(f.name, f.type, len(levels))
        columns.append(entry)
    meta["columns"] = columns
    # A string names an index column (gone: the index is not rebuilt); a dict is a RangeIndex.
    meta["index_columns"] = [
        i for i in meta.get("index_columns", []) if not isinstance(i, str) or i in present
    ]
    if len(levels) == 1 and levels[0].get("pandas_type") not in ("unicode", "string", "object"):
        # Labels of another type (ints...) are turned back into it on reading, and a new
        # column's name cannot be: the labels come back as text instead.
        meta["column_indexes"] = [{**levels[0], "pandas_type": "unicode", "numpy_type": "object"}]
    return json.dumps(meta).encode()


def _pandas_entry(name: str, type: pa.DataType, levels: int) -> dict[str, Any]:
    """The pandas metadata of a column pandas never saw: the types it reads as by default."""
    import pyarrow as pa

    metadata: dict[str, Any] | None = None
    if pa.types.is_boolean(type) or pa.types.is_integer(type) or pa.types.is_floating(type):
        logical = numpy = _numpy_name(type)
    elif pa.types.is_timestamp(type):
        numpy = f"datetime64[{type.unit}]"
        logical = "datetimetz" if type.tz else "datetime"
        metadata = {"timezone": type.tz} if type.tz else None
    elif pa.types.is_decimal(type):
        logical, numpy = "decimal", "object"
        metadata = {"precision": type.precision, "scale": type.scale}
    elif pa.types.is_date(type):
        logical, numpy = "date", "object"
    elif pa.types.is_string(type) or pa.types.is_large_string(type):
        logical, numpy = "unicode", "object"
    elif pa.types.is_binary(type) or pa.types.is_large_binary(type):
        logical, numpy = "bytes", "object"
    else:
        logical, numpy = "object", "object"
    # With several levels of column labels, each name is the text of a tuple, one per level.
    label = name if levels <= 1 else str((name, *([""] * (levels - 1))))
    return {
        "name": label,
        "field_name": name,
        "pandas_type": logical,
        "numpy_type": numpy,
        "metadata": metadata,
    }


def _numpy_name(type: pa.DataType) -> str:
    import pyarrow as pa

    if pa.types.is_boolean(type):
        return "bool"
    if pa.types.is_floating(type):
        return f"float{type.bit_width}"
    return str(type)  # int8 ... uint64: the same names


# datasets' names of the Arrow types a Value feature may have (see datasets.features.Value)
_VALUE_TYPES = {
    "null",
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "string",
    "large_string",
    "binary",
    "large_binary",
    "date32",
    "date64",
}


def _carry_huggingface(meta: dict[str, Any], schema: pa.Schema) -> bytes | None:
    features = (meta.get("info") or {}).get("features")
    if not isinstance(features, dict):
        return json.dumps(meta).encode()  # no features to keep true
    carried = {}
    for f in schema:
        if f.name in features:
            carried[f.name] = features[f.name]
            continue
        dtype = _value_dtype(f.type)
        if dtype is None:
            return None
        carried[f.name] = {"dtype": dtype, "_type": "Value"}
    meta["info"]["features"] = carried
    return json.dumps(meta).encode()


def _value_dtype(type: pa.DataType) -> str | None:
    import pyarrow as pa

    if pa.types.is_floating(type):
        name = f"float{type.bit_width}"
    elif pa.types.is_timestamp(type):
        return f"timestamp[{type.unit}" + (f", tz={type.tz}]" if type.tz else "]")
    else:
        name = str(type)
    return name if name in _VALUE_TYPES else None
