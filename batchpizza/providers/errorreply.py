"""What an OpenAI-compatible server's error reply says, in whichever of the shapes servers use,
and whether it says that the model asked for is not served."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from batchpizza.providers.http import reply_json

# How servers say a model is unknown, whatever the status: "Invalid model name passed in model=x"
# (LiteLLM), "invalid model ID" (OpenAI), "unknown model", "model 'x' not found", "The model `x`
# does not exist". Not "... for model x" (a parameter error that names the model).
_UNKNOWN_MODEL = re.compile(
    r"(?i)\b(?:invalid|unknown) model\b|\bmodel\b[^.;]{0,80}?\b(?:does not exist|not found)\b"
)


def error_detail(body: bytes) -> tuple[Mapping[str, Any], str]:
    """(the error object, its message) of an error reply in any of the shapes servers use:
    OpenAI's {"error": {"message", "type", "param", "code"}}, {"error": "text"}, vLLM's older
    {"object": "error", "message"}, FastAPI's {"detail": ...}; else the body. Whole: the caller
    masks the key before it shortens the message."""
    try:
        data = reply_json(body)
    except ValueError:
        return {}, body.decode("utf-8", "replace")
    if not isinstance(data, dict):
        return {}, body.decode("utf-8", "replace")
    error = data.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error, error["message"]
    if isinstance(error, str):
        return data, error
    if isinstance(data.get("message"), str):
        return data, data["message"]
    detail = data.get("detail")
    if isinstance(detail, str):
        return data, detail
    if isinstance(detail, list):  # FastAPI's validation errors: [{"loc": [...], "msg": ...}]
        msgs = [d.get("msg") for d in detail if isinstance(d, dict)]
        return data, "; ".join(m for m in msgs if isinstance(m, str)) or body.decode(
            "utf-8", "replace"
        )
    return data, body.decode("utf-8", "replace")


def about_model(status: int, error: Mapping[str, Any], message: str, model: str | None) -> bool:
    """Is this error reply the server saying it does not serve the model asked for? OpenAI says
    so with code model_not_found (404, or 403 for a project without access), Azure with
    DeploymentNotFound, vLLM ("The model `x` does not exist.") and Ollama ('model "x" not found')
    in a 404's text, LiteLLM's proxy in a 400 ("Invalid model name passed in model=x"). A 400
    that merely names the model ("max_tokens is too large for gpt-4o") is about a parameter, so a
    400 counts only when its code or param says "model" or its text says the model is unknown."""
    if status not in (400, 403, 404):
        return False
    if error.get("code") in ("model_not_found", "DeploymentNotFound") or error.get("param") == (
        "model"
    ):
        return True
    if _UNKNOWN_MODEL.search(message):
        return True
    if status == 400:
        return False
    # The model's name as a word of its own: a short name ("m", "phi") inside other words is not it.
    if model and re.search(rf"(?<![\w.:/-]){re.escape(model)}(?![\w.:/-])", message):
        return True
    return status == 404 and "model" in message.lower()
