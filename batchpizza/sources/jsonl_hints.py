"""What a JSONL line that is no row most likely is, said so that the fix is plain: lines ended
by a lone CR, a JSON document (an array, a pretty-printed object) rather than one object a line.
Asked only of lines already found bad, so it costs nothing on good ones."""

from __future__ import annotations

from typing import Any

_ONE_A_LINE = "JSONL has one object a line (jq -c '.[]' turns an array into it)"


def invalid_json_hint(text: str, message: str) -> str | None:
    """A plainer problem for a line json.loads refused with `message`, or None."""
    if message == "Extra data" and "\r" in text:
        return "lines end with a lone CR (\\r): JSONL lines end with \\n (or \\r\\n)"
    if text.strip() == "[":
        return f"invalid JSON: a lone '[': a JSON array over several lines? {_ONE_A_LINE}"
    if text.strip() == "{":
        return (
            "invalid JSON: a lone '{': an object over several lines? JSONL has one object a "
            "line (jq -c . puts each on one)"
        )
    return None


def not_an_object_hint(value: Any) -> str:
    """What follows 'not a JSON object but a list' for a line holding an array of objects."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return f" of objects: {_ONE_A_LINE}"
    return ""
