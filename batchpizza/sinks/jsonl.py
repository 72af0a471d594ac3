"""JSONL output: one line per input row, every column on every line."""

from __future__ import annotations

from typing import IO, Any

import batchpizza.jsoncodec as jsoncodec
from batchpizza.records import OutputRow
from batchpizza.sinks.values import json_default
from batchpizza.sources.base import Carried, Columns
from batchpizza.structured.columns import ParsedColumns


class JsonlSink:
    def __init__(
        self,
        handle: IO[bytes],
        columns: Columns,
        results: tuple[str, ...],
        parsed: ParsedColumns | None = None,
    ) -> None:
        self.handle = handle
        self.names = columns.names
        self.results = results
        self.parsed = parsed

    def write(self, carried: Carried, rows: list[OutputRow]) -> None:
        names, results = self.names, self.results
        lines = []
        for obj, row in zip(carried.rows(), rows, strict=True):
            record: dict[str, Any] = {"id": row.id}
            for name in names:
                record[name] = obj.get(name)
            for name in results:
                record[name] = getattr(row, name)
            if self.parsed is not None:  # --schema: the answer's value, as an object
                record.update(self.parsed.objects(row))
            lines.append(jsoncodec.dumps(record, json_default))
        lines.append(b"")
        self.handle.write(b"\n".join(lines))

    def close(self) -> None:
        pass
