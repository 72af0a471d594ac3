"""OpenAI Batch API output lines (`{"id", "custom_id", "response", "error"}`), in input order, so
tools built for OpenAI's batch files read ours."""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO

from batchpizza import jsoncodec
from batchpizza.providers.openai import batch_output_line
from batchpizza.records import OutputRow
from batchpizza.sources.base import Carried, Columns


class OpenAIBatchSink:
    def __init__(
        self,
        handle: IO[bytes],
        columns: Columns,
        results: tuple[str, ...],
        statuses: Mapping[str, int] | None = None,
    ) -> None:
        self.handle = handle
        # The HTTP status of each failed row's last attempt (Checkpoint.failure_statuses): its
        # line's response.status_code, as in OpenAI's batch error files.
        self.statuses = statuses or {}

    def write(self, carried: Carried, rows: list[OutputRow]) -> None:
        lines = []
        for obj, row in zip(carried.rows(), rows, strict=True):
            custom_id = obj.get("custom_id")
            line = batch_output_line(
                custom_id if isinstance(custom_id, str) else row.id,
                answer=row.answer,
                finish_reason=row.finish_reason,
                model=row.model,
                prompt_tokens=row.prompt_tokens,
                completion_tokens=row.completion_tokens,
                response_id=row.response_id,
                request_id=row.request_id,
                status_code=None if row.answer is not None else self.statuses.get(row.id),
                error=row.error,
            )
            lines.append(jsoncodec.dumps(line))
        lines.append(b"")
        self.handle.write(b"\n".join(lines))

    def close(self) -> None:
        pass
