"""OpenAI Batch API output lines (`{"id", "custom_id", "response", "error"}`), in input order, so
tools built for OpenAI's batch files read ours."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import IO, Any

import batchpizza.jsoncodec as jsoncodec
import batchpizza.storable as storable
from batchpizza.records import OutputRow, is_answered
from batchpizza.sources.base import Carried, Columns

# Error codes for failed rows in batch output lines, by our finish reason. "batch_expired" is
# OpenAI's code for a request not run before its batch window closed, which is what a pending
# row is: tools that resubmit expired requests do the right thing with ours.
_BATCH_ERROR_CODES = {
    "error": "request_failed",
    "misuse": "refused",
    "invalid": "invalid_request",
    "pending": "batch_expired",
}
_BATCH_ERROR_MESSAGES = {
    "error": "the request failed",
    "misuse": "the service refused the request",
    "invalid": "the input row is invalid",
    "pending": "not sent: the run stopped before this row; rerun to continue",
}


def _ids(custom_id: str) -> str:
    """A stable id per row, so rewriting the output gives the same file."""
    return hashlib.blake2b(custom_id.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def batch_output_line(
    custom_id: str | None,
    *,
    answer: str | None,
    finish_reason: str,
    model: str | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    response_id: str | None = None,
    request_id: str | None = None,
    status_code: int | None = None,
    error: str | None = None,
    created: int = 0,
    body: bytes | None = None,
    position: int = 0,
) -> dict[str, Any]:
    """One line of an OpenAI Batch API output file for a stored result.

    An answered row: `response` holds the status (200 unless given), the request id and the
    server's chat.completion `body` as it came, or one rebuilt from the answer where none was kept
    (Pizzagpt's answers, results from before bodies were kept); `error` is null. A row that got an
    HTTP error: as in OpenAI's batch error files, `response` holds its status and the server's
    error body (or an OpenAI-style one), and `error` is null. A row without an HTTP reply (a
    timeout, not sent, an invalid row): `response` is null and `error` is {"code", "message"}.
    Ids the server did not give are derived from `custom_id`, so the same results always make
    the same file; for a bad row whose id could not be read (None), from its `position` in the
    output, so that such rows' line ids differ too."""
    # Led by a NUL, which no real custom_id is: it cannot take another line's ids.
    digest = _ids(custom_id if custom_id is not None else f"\0{position}")
    line_id = f"batch_req_{digest}"
    req_id = request_id or f"req_{digest}"
    kept = _json_object(body)
    if answer is not None and is_answered(finish_reason):
        if kept is None or not isinstance(kept.get("choices"), list):
            kept = _rebuilt(digest, answer, finish_reason, model, prompt_tokens,
                            completion_tokens, response_id, created)  # fmt: skip
        response = {"status_code": status_code or 200, "request_id": req_id, "body": kept}
        return {"id": line_id, "custom_id": custom_id, "response": response, "error": None}
    text = error or _BATCH_ERROR_MESSAGES.get(finish_reason, "no answer")
    code = _BATCH_ERROR_CODES.get(finish_reason, finish_reason)
    if status_code is not None:
        if kept is None:
            kept = {"error": {"message": text, "type": "error", "param": None, "code": code}}
        failed = {"status_code": status_code, "request_id": req_id, "body": kept}
        return {"id": line_id, "custom_id": custom_id, "response": failed, "error": None}
    return {
        "id": line_id,
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": text},
    }


def _json_object(body: bytes | None) -> dict[str, Any] | None:
    """A kept reply body as JSON, or None where there is none or it is no JSON object."""
    if body is None:
        return None
    try:
        data = jsoncodec.loads(body)
    except ValueError:
        return None
    if b"\\u" in body:  # a lone surrogate escape would not encode: U+FFFD, as the answer has it
        data = storable.json_value(data)
    return data if isinstance(data, dict) else None


def _rebuilt(
    digest: str,
    answer: str,
    finish_reason: str,
    model: str | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    response_id: str | None,
    created: int,
) -> dict[str, Any]:
    """A chat.completion body from a stored answer, as OpenAI would have sent it."""
    message: dict[str, Any] = {"role": "assistant", "content": answer, "refusal": None}
    finish = finish_reason
    if finish_reason == "refusal":
        message.update(content=None, refusal=answer)
        finish = "stop"  # what OpenAI sends with a refusal
    elif finish_reason == "tool_calls":
        try:
            calls = jsoncodec.loads(answer)
        except ValueError:
            calls = None
        if isinstance(calls, list):
            message.update(content=None, tool_calls=calls)
    usage = None
    if prompt_tokens is not None and completion_tokens is not None:
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
    return {
        "id": response_id or f"chatcmpl-{digest}",
        "object": "chat.completion",
        "created": created,
        "model": model or "",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
    }


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
        self._written = 0  # output rows so far: a row without an id's line ids derive from it

    def write(self, carried: Carried, rows: list[OutputRow]) -> None:
        lines = []
        for position, (obj, row) in enumerate(zip(carried.rows(), rows, strict=True)):
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
                status_code=None
                if row.answer is not None or row.id is None
                else self.statuses.get(row.id),
                error=row.error,
                body=row.body,
                position=self._written + position,
            )
            lines.append(jsoncodec.dumps(line))
        self._written += len(rows)
        lines.append(b"")
        self.handle.write(b"\n".join(lines))

    def close(self) -> None:
        pass
