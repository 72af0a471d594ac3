"""Parquet output: the carried columns with their types, then the result columns."""

from __future__ import annotations

import contextlib
from typing import IO, TYPE_CHECKING

from batchpizza.records import OutputRow
from batchpizza.sinks.values import fields_of
from batchpizza.sources.base import Carried, Columns
from batchpizza.structured.columns import ParsedColumns, parquet_dictionary

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq


class ParquetSink:
    def __init__(
        self,
        handle: IO[bytes],
        columns: Columns,
        results: tuple[str, ...],
        parsed: ParsedColumns | None = None,
    ) -> None:
        import pyarrow as pa

        self.handle = handle
        self.columns = columns
        self.results = results
        self.parsed = parsed
        fields = [pa.field("id", pa.string()), *columns.arrow_fields(), *fields_of(results)]
        fields += parsed.fields() if parsed is not None else []
        self.schema = columns.carry(pa.schema(fields))
        self.writer: pq.ParquetWriter | None = None
        self.dictionary = True if parsed is None else parquet_dictionary(self.schema)

    def write(self, carried: Carried, rows: list[OutputRow]) -> None:
        import pyarrow as pa

        arrays: list[pa.Array] = [pa.array([r.id for r in rows], pa.string())]
        arrays += carried.arrays(self.columns)
        for field in fields_of(self.results):
            arrays.append(pa.array([getattr(r, field.name) for r in rows], field.type))
        if self.parsed is not None:
            arrays += self.parsed.arrays(rows)
        batch = pa.RecordBatch.from_arrays(arrays, schema=self.schema)
        if self.writer is None:
            self.writer = self._writer()
        self.writer.write_batch(batch)

    def _writer(self) -> pq.ParquetWriter:
        import pyarrow.parquet as pq

        return pq.ParquetWriter(
            self.handle, self.schema, compression="zstd", use_dictionary=self.dictionary
        )

    def close(self) -> None:

        if self.writer is None:  # an empty input still gets every column
            self.writer = self._writer()
        writer, self.writer = self.writer, None
        writer.close()

    def abandon(self) -> None:
        """Drop the writer without finishing the file (it is deleted anyway), so that its
        finaliser does not complain about a closed handle at exit."""
        writer, self.writer = self.writer, None
        if writer is not None:
            # The file is being thrown away; only the noise matters here.
            with contextlib.suppress(Exception):
                writer.close()
