"""A row's chat messages: checked as the row holds them, kept as they are sent, and formatted
as one text (the prompt a row is identified by, and what a text-only provider sends)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from batchpizza.errors import RowProblem
from batchpizza.media import checked_part, marker, without_nulls
from batchpizza.prompts import MAX_PROMPT_CHARS, too_long


def format_prompt(messages: Sequence[Mapping[str, Any]]) -> str:
    """One message: its content. Several: `Role: content` lines, then `Assistant:` (as the seed).
    A content of parts with an image or audio: its parts in order, one a line, each image or
    audio as a short marker (media.marker)."""
    if len(messages) == 1:
        return _content_text(messages[0]["content"])
    lines = [f"{str(m['role']).capitalize()}: {_content_text(m['content'])}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


def _content_text(content: Any) -> str:
    if not isinstance(content, list):
        return str(content)
    return "\n".join(p["text"] if p.get("type", "text") == "text" else marker(p) for p in content)


# A message's fields of a tool conversation: sent without them, a tool message answers no call
# and an assistant's call is lost (the request would not be the row's): such a row is bad.
_TOOL_FIELDS = ("tool_calls", "tool_call_id", "function_call")


def messages_of(
    value: object, name: str, text_only: bool = False
) -> tuple[str, list[dict[str, Any]]]:
    if not isinstance(value, list) or not value:
        raise RowProblem("must be a non-empty list of {role, content} objects", name)
    clean: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise RowProblem(f"item {i} is not an object", name)
        role, content = item.get("role"), item.get("content")
        if not isinstance(role, str) or not role:
            raise RowProblem(f"item {i} has no role string", name)
        for field in _TOOL_FIELDS:
            # Empty is none: exports give every message of a chat `tool_calls: []` (Parquet's
            # structs, DataFrames), and the server refuses an empty list anyway.
            if item.get(field) not in (None, [], {}, ""):
                raise RowProblem(
                    f"item {i} has {field!r}: tool calls are not sent (a message's role, "
                    "content and name are), so the request would not be the row's",
                    name,
                )
        if isinstance(content, list):  # OpenAI content parts
            content = _parts(content, i, name, text_only) if content else None
        if not isinstance(content, (str, list)):
            raise RowProblem(f"item {i} has no content string", name)
        message: dict[str, Any] = {"role": role, "content": content}
        speaker = item.get("name")  # a participant's name: part of the request, sent
        if speaker is not None:
            if not isinstance(speaker, str) or not speaker:
                raise RowProblem(f"item {i}: name must be a non-empty string", name)
            message["name"] = speaker
        clean.append(message)
    prompt = format_prompt(clean)
    if not prompt.strip():
        raise RowProblem("the messages hold no text", name)
    if len(prompt) > MAX_PROMPT_CHARS:
        raise RowProblem(str(too_long(len(prompt), "messages' text")), name)
    return prompt, clean


def _parts(parts: list[Any], item: int, name: str, text_only: bool) -> str | list[dict[str, Any]]:
    """OpenAI content parts as sent: text parts alone joined by newlines (one text, as before
    images were sent), else the parts in order, each as it is (media.checked_part). A part of
    a kind not sent is a bad row, never dropped: the request would be another one than the
    row's."""
    texts: list[str] = []
    sent: list[dict[str, Any]] = []
    media = False
    for j, part in enumerate(parts):
        where = f"item {item}: content part {j}"
        if not isinstance(part, Mapping):
            raise RowProblem(f"{where} is not an object", name)
        if part.get("type", "text") != "text":
            sent.append(checked_part(part, where, name, text_only))
            media = True
            continue
        text = part.get("text")
        if not isinstance(text, str):
            raise RowProblem(f"{where} has no text string", name)
        texts.append(text)
        sent.append({"type": "text", **without_nulls(part)})
    return sent if media else "\n".join(texts)
