"""The mock's OpenAI-compatible routes: ``POST /v1/chat/completions`` (``Authorization: Bearer
KEY`` when ``api_key`` is set; the model echoed, or 404 model_not_found when ``models`` is set
and lacks it; ``max_tokens`` cuts the answer to that many tokens, finish_reason "length"; usage,
a token limit, a quota and prices as mock/tokens.py counts them; x-request-id;
x-ratelimit-*-requests with ``rate_limit``) and ``GET /v1/models``.
A chat's messages are read as their formatted prompt, so the same directives and random faults
as on the Pizzagpt route apply, worded as OpenAI words them (429s add retry-after-ms).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time

from aiohttp import web

from batchpizza.media import shown_url
from batchpizza.messages import format_prompt
from batchpizza.mock import tokens
from batchpizza.mock.faults import Live, MockConfig, delay, directives, draw
from batchpizza.mock.replies import (
    BOT_CHECK_TEXT,
    MISUSE_TEXT,
    STATE,
    State,
    fault,
    handle,
    scripted,
)
from batchpizza.mock.structured import bound_prompt
from batchpizza.mock.tokens import TokenLedger

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
DEFAULT_MOCK_MODEL = "batchpizza-mock"
_CHAT_GARBAGE = '{"id": "chatcmpl-0", "object": "chat.completion", "choices": [{"message": {"content": "the oven caught fi'

_CHAT_ERROR_TYPES = {
    401: "invalid_request_error",
    403: "permission_denied",
    404: "invalid_request_error",
    429: "rate_limit_exceeded",
}


class _Chat:
    """OpenAI's wording for one request: its model, prompt, max_tokens and request id."""

    def __init__(
        self, request_id: str, model: str = "", prompt: str = "", max_tokens: int | None = None
    ) -> None:
        self.request_id = request_id
        self.model = model
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.suffix = ""  # what the request said besides the prompt (MockConfig.by_request)
        self.contents = [prompt]  # the messages' texts, for the usage
        self.media = 0  # the tokens of their images and audio
        self.ledger: TokenLedger | None = None  # where its tokens are counted

    def _headers(self, retry_after: str | None = None) -> dict[str, str]:
        headers = {"x-request-id": self.request_id}
        if retry_after is not None:
            headers["retry-after"] = retry_after
            with contextlib.suppress(ValueError):  # an HTTP date has no millisecond twin
                headers["retry-after-ms"] = f"{float(retry_after) * 1000:g}"
        return headers

    def error(
        self,
        status: int,
        message: str,
        retry_after: str | None = None,
        *,
        code: str | None = None,
        param: str | None = None,
    ) -> web.Response:
        headers = self._headers(retry_after)
        if status in (204, 304):  # these may not carry a body
            return web.Response(status=status, headers=headers)
        kind = _CHAT_ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request")
        error = {"message": message, "type": kind, "param": param, "code": code}
        return web.json_response({"error": error}, status=status, headers=headers)

    def _completion(self, content: object, finish: str, choices: bool = True) -> web.Response:
        digest = hashlib.sha256(self.prompt.encode("utf-8", "surrogatepass")).hexdigest()
        message = {"role": "assistant", "content": content, "refusal": None}
        prompt_tokens = tokens.prompt_usage(self.contents) + self.media
        words = tokens.count(content) if isinstance(content, str) else 0
        headers = self._headers()
        if self.ledger is not None:
            refused = self._over(self.ledger, prompt_tokens, words)
            if refused is not None:
                return refused
            headers.update(self.ledger.headers())
        body = {
            "id": f"chatcmpl-{digest[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]
            if choices
            else [],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": words,
                "total_tokens": prompt_tokens + words,
            },
        }
        return web.json_response(body, headers=headers)

    def _over(self, ledger: TokenLedger, prompt: int, completion: int) -> web.Response | None:
        """The 429 this answer gets instead, for a spent quota or the token limit; else None."""
        if ledger.quota_gone():
            return self.error(429, tokens.QUOTA_MESSAGE, code="insufficient_quota")
        if ledger.admit(prompt, completion):
            return None
        message = f"Rate limit reached for tokens per min (TPM): Limit {ledger.limit:g}."
        response = self.error(429, message, "1", code="rate_limit_exceeded")
        response.headers.update(ledger.headers())
        return response

    def answer(self, content: str, shape: str | None = None) -> web.Response:
        finish = "stop"
        content += self.suffix
        if self.max_tokens is not None and tokens.count(content) > self.max_tokens:
            content, finish = tokens.cut(content, self.max_tokens), "length"
        if shape == "content":
            return self._completion([{"type": "text", "text": content}], finish)
        return self._completion(content, finish)

    def fault(self, kind: str) -> web.Response:
        if kind == "misuse":
            return self.answer(MISUSE_TEXT)
        if kind == "botcheck":
            return web.Response(text=BOT_CHECK_TEXT, content_type="text/html")
        if kind == "garbage":
            return web.Response(text=_CHAT_GARBAGE, content_type="application/json")
        if kind == "empty":
            return self._completion(None, "stop")
        if kind == "wrong":
            return self._completion(None, "stop", choices=False)
        raise AssertionError(kind)


def _rate_headers(live: Live, now: float) -> dict[str, str]:
    """OpenAI's x-ratelimit-*-requests for the window as it stands: the limit per second, what
    is left of it, and when the window is empty again (Go duration text, as OpenAI sends)."""
    limit = live.config.rate_limit
    if limit <= 0:
        return {}
    window = live.window
    while window and window[0] <= now - 1.0:
        window.popleft()
    reset = max(0.0, window[-1] + 1.0 - now) if window else 0.0
    return {
        "x-ratelimit-limit-requests": f"{limit:g}",
        "x-ratelimit-remaining-requests": str(max(0, int(limit) - len(window))),
        "x-ratelimit-reset-requests": _go_duration(reset),
    }


def _go_duration(seconds: float) -> str:
    if seconds < 1.0:
        return f"{round(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60.0)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


def _chat_prompt(messages: object) -> str | None:
    """The formatted prompt of a chat's messages (text parts joined, as rows.py reads them; an
    image or audio as a marker, so that the answer depends on it), or None when they are not a
    list of {role, content}."""
    if not isinstance(messages, list) or not messages:
        return None
    clean: list[dict[str, str]] = []
    for item in messages:
        if not isinstance(item, dict) or not isinstance(item.get("role"), str):
            return None
        content = item.get("content")
        if isinstance(content, list):
            content = "\n".join(_part_text(p, marked=True) for p in content)
        if not isinstance(content, str):
            return None
        clean.append({"role": item["role"], "content": content})
    return format_prompt(clean)


def _part_text(part: object, marked: bool = False) -> str:
    """A content part's text; an image's or audio's marker when `marked`, else nothing."""
    if not isinstance(part, dict):
        return ""
    if part.get("type", "text") == "text":
        return part["text"] if isinstance(part.get("text"), str) else ""
    if not marked:
        return ""
    inner = part.get(part.get("type"))
    url = inner.get("url") if isinstance(inner, dict) else None
    if not isinstance(url, str):
        return f"[{part.get('type')}]"
    assert isinstance(inner, dict)
    shown = shown_url(url)
    if shown != url:  # a data URL shortened: its digest, so that the answer depends on all of it
        shown += f" {hashlib.sha256(url.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"
    return f"[image: {shown}, {inner.get('detail', 'auto')}]"


def _contents(messages: list[dict[str, object]]) -> list[dict[str, str]]:
    """The messages' texts (already checked by _chat_prompt)."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "\n".join(_part_text(p) for p in content)
        out.append({"content": str(content)})
    return out


def media_usage(messages: list[dict[str, object]]) -> int:
    """What the mock bills for the messages' images and audio (tokens.media_tokens)."""
    used = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            used += sum(tokens.media_tokens(p) for p in content if isinstance(p, dict))
    return used


def _authorized(request: web.Request, config: MockConfig) -> bool:
    return config.api_key is None or (
        request.headers.get("Authorization") == f"Bearer {config.api_key}"
    )


def _unauthorized(chat: _Chat, request: web.Request) -> web.Response:
    given = "Authorization" in request.headers
    # Like OpenAI's, the message never repeats the key it was given.
    message = "Incorrect API key provided." if given else "You didn't provide an API key."
    return chat.error(401, message, code="invalid_api_key")


async def _chat_respond(
    request: web.Request, state: State, live: Live, over_limit: bool, request_id: str
) -> web.StreamResponse | str:
    cfg = live.config
    await delay(live)
    bare = _Chat(request_id)  # for what is refused before the body is read
    if not _authorized(request, cfg):
        return _unauthorized(bare, request)
    try:
        body = json.loads(await request.read())
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return bare.error(400, "the body must be a JSON object")
    prompt = _chat_prompt(body.get("messages"))
    if prompt is None:
        message = "'messages' must be a non-empty list of {role, content} objects"
        return bare.error(400, message, param="messages")
    model = body.get("model", cfg.models[0] if cfg.models else DEFAULT_MOCK_MODEL)
    if not isinstance(model, str):
        return bare.error(400, "'model' must be a string", param="model")
    if cfg.models and model not in cfg.models:
        message = f"The model `{model}` does not exist or you do not have access to it."
        return bare.error(404, message, code="model_not_found")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        return bare.error(400, "max_tokens must be a positive integer", param="max_tokens")
    prompt = bound_prompt(prompt, body.get("response_format"))  # --schema
    chat = _Chat(request_id, model, prompt, max_tokens)
    chat.contents = [m["content"] for m in _contents(body["messages"])]
    chat.media = media_usage(body["messages"])
    chat.ledger = live.tokens
    if live.tokens.quota_gone():
        return chat.error(429, tokens.QUOTA_MESSAGE, code="insufficient_quota")
    if cfg.by_request:
        chat.suffix = f" [model {model}, temperature {body.get('temperature', 1)}]"
    scripts = directives(prompt)
    if scripts:
        return await scripted(request, state, prompt, scripts, chat)
    if over_limit:
        message = f"Rate limit reached for requests: limit {cfg.rate_limit:g} per second."
        return chat.error(429, message, cfg.retry_after, code="rate_limit_exceeded")
    return fault(draw(live), prompt, state, chat)


async def chat_route(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    live = state.live

    async def respond(over_limit: bool) -> web.StreamResponse | str:
        # Read at arrival (this runs before the first await): what is left of this second.
        rate = _rate_headers(live, time.monotonic())
        resp = await _chat_respond(
            request, state, live, over_limit, f"req_mock_{state.stats.requests}"
        )
        if isinstance(resp, web.Response):
            resp.headers.update(rate)
        return resp

    return await handle(request, respond)


async def models_route(request: web.Request) -> web.Response:
    config = request.app[STATE].live.config
    if not _authorized(request, config):
        return _unauthorized(_Chat("req_mock_models"), request)
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "batchpizza"}
        for name in config.models or (DEFAULT_MOCK_MODEL,)
    ]
    return web.json_response({"object": "list", "data": data})
