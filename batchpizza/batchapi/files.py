"""The Batch API's request lines (`{"custom_id", "method", "url", "body"}`, one JSON object a
line, the body as the online request's), and their split into files within the limits; and the
result lines read back (`{"id", "custom_id", "response": {"status_code", "request_id", "body"},
"error"}`)."""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import batchpizza.jsoncodec as jsoncodec
from batchpizza.batchapi.settings import Limits
from batchpizza.records import Prompt

ENDPOINT = "/v1/chat/completions"

# (custom_id, row id, position, request key, tries, line): a line as the checkpoint records it.
Line = tuple[str, str, int, bytes, int, bytes]


def custom_id(pos: int, digest: bytes) -> str:
    """A line's custom_id: the row's position and its request key, so that a result line read
    back names its row and request whatever order it comes in (and a human can read it)."""
    return f"{pos}-{digest.hex()[:32]}"


def request_line(cid: str, body: dict[str, Any]) -> bytes:
    line = {"custom_id": cid, "method": "POST", "url": ENDPOINT, "body": body}
    return jsoncodec.dumps(line) + b"\n"


def build_lines(
    rows: Iterable[tuple[int, Prompt]],
    body: Any,
    key: Any,
    skip: set[bytes],
    tries: Mapping[bytes, int],
) -> Iterator[Line]:
    """The request line of each row not in `skip` (requests a batch already has), once per
    request key; its try from `tries` (a request of a dropped line), else the first."""
    for pos, prompt in rows:
        digest = key(prompt)
        if digest in skip:
            continue
        skip.add(digest)
        cid = custom_id(pos, digest)
        yield (cid, prompt.id, pos, digest, tries.get(digest, 1), request_line(cid, body(prompt)))


def split(lines: Iterable[Line], limits: Limits) -> Iterator[list[Line]]:
    """The lines in files of at most `limits.max_lines` lines and `limits.max_bytes` bytes (a
    line larger than that alone goes in a file of its own, for the server to judge)."""
    chunk: list[Line] = []
    size = 0
    for line in lines:
        n = len(line[5])
        if chunk and (len(chunk) >= limits.max_lines or size + n > limits.max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(line)
        size += n
    if chunk:
        yield chunk


@dataclass(frozen=True)
class ResultLine:
    """One line of an output or error file: its custom_id, the HTTP status and body of the
    request's reply where it had one, else the line's error ({"code", "message"})."""

    custom_id: str
    status: int | None
    body: bytes | None
    request_id: str | None
    error: dict[str, Any] | None


def read_results(content: bytes) -> Iterator[ResultLine]:
    """The result lines of an output or error file; a line that is not one is skipped (its
    request then counts as unanswered, and is resubmitted)."""
    # A UTF-8 byte order mark, as some servers (and Windows tools) write: not part of the first
    # line, whose answer would otherwise be unread, and its request submitted again.
    for raw in content.removeprefix(codecs.BOM_UTF8).splitlines():
        if not raw.strip():
            continue
        try:
            data = jsoncodec.loads(raw)
        except ValueError:
            continue
        if not isinstance(data, dict) or not isinstance(data.get("custom_id"), str):
            continue
        response = data.get("response")
        status = body = request_id = None
        if isinstance(response, dict):
            code = response.get("status_code")
            if isinstance(code, str) and code.strip().isdigit():
                code = int(code)  # "200", as a server written by hand may send it
            elif code is None and isinstance(response.get("body"), dict):
                code = 200  # a body without a status: judged as the reply it is (an answer?)
            status = code if isinstance(code, int) and not isinstance(code, bool) else None
            if "body" in response:
                body = jsoncodec.dumps(response["body"])
            rid = response.get("request_id")
            request_id = rid if isinstance(rid, str) else None
        error = data.get("error")
        yield ResultLine(
            data["custom_id"],
            status,
            body,
            request_id,
            error if isinstance(error, dict) else None,
        )
