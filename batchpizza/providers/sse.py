"""A chat completion streamed as server-sent events though no stream was asked for (a gateway or
server that always streams), read whole into the completion a non-streamed reply would be.

Each such reply is a generated, billed answer: read as "not JSON", it was retried until the
retries ran out (paid each time), failed, and was sent again by every later run."""

from __future__ import annotations

from typing import Any

from batchpizza.providers.http import reply_json

__all__ = ["looks_like_events", "streamed_completion"]

_DONE = "[DONE]"


def looks_like_events(payload: bytes) -> bool:
    """Whether a body that is not JSON is an event stream: its first line a `data:` field, an
    `event:` or `id:` field, or a `:` comment (a keep-alive)."""
    head = payload[:64].lstrip()
    return head.startswith((b"data:", b"event:", b"id:", b":"))


def _events(payload: bytes) -> list[str]:
    """The data of each event, its `data:` lines joined by newlines (the SSE format)."""
    text = payload.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    events: list[str] = []
    for block in text.split("\n\n"):
        lines = [line[5:] for line in block.split("\n") if line.startswith("data:")]
        if lines:
            events.append("\n".join(line[1:] if line[:1] == " " else line for line in lines))
    return events


def streamed_completion(payload: bytes) -> dict[str, Any]:
    """The chat.completion the stream's chunks add up to: choice 0's content and refusal joined,
    its last finish reason, the last usage, id and model. ValueError (with the words to say)
    for a stream that is cut off (no finish reason and no `[DONE]`), holds a chunk that is not
    JSON, or carries an error object (what a server that fails mid-stream sends)."""
    content: list[str] = []
    refusal: list[str] = []
    finish: str | None = None
    done = False
    completion: dict[str, Any] = {"object": "chat.completion"}
    for data in _events(payload):
        if data.strip() == _DONE:
            done = True
            break
        try:
            chunk = reply_json(data.encode())
        except ValueError:
            raise ValueError(f"a streamed chunk is not JSON: {data[:80]!r}") from None
        if not isinstance(chunk, dict):
            raise ValueError(f"a streamed chunk is not a JSON object: {data[:80]!r}")
        if chunk.get("error") is not None:
            error = chunk["error"]
            said = error.get("message") if isinstance(error, dict) else error
            raise ValueError(f"the stream ended with an error: {str(said)[:200]!r}")
        for key in ("id", "model", "usage"):
            if chunk.get(key) is not None:
                completion[key] = chunk[key]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            delta = delta if isinstance(delta, dict) else choice.get("message")
            if isinstance(delta, dict):
                for parts, key in ((content, "content"), (refusal, "refusal")):
                    if isinstance(delta.get(key), str):
                        parts.append(delta[key])
            if isinstance(choice.get("finish_reason"), str):
                finish = choice["finish_reason"]
    if finish is None and not done:
        raise ValueError("the streamed reply was cut off before its end")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content)}
    if refusal:
        message["refusal"] = "".join(refusal)
    completion["choices"] = [{"index": 0, "message": message, "finish_reason": finish}]
    return completion
