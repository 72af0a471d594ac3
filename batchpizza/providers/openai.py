"""The OpenAI-compatible provider: chat completions on any server that speaks them (OpenAI, vLLM,
Ollama, llama.cpp, a gateway).

`OpenAIAPI` is the runner's provider: one Prompt in, one Answer out (with the server's finish
reason, model, token counts, ids and rate-limit headers), or a typed error from errors.py that says
whether a retry could help, and whether any later request could succeed at all (`fatal`).

The API key is held so that it is never put into any text: not in an error message, a repr, a
preview or a log line; what a server echoes of it is cut out of its error messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
from yarl import URL

import batchpizza.jsoncodec as jsoncodec
import batchpizza.storable as storable
from batchpizza.config import DEFAULT_TIMEOUT
from batchpizza.errors import (
    BadReply,
    HTTPStatusError,
    ModelNotFound,
    ProviderError,
    QuotaExhausted,
    UsageError,
)
from batchpizza.identities import openai_identity
from batchpizza.media import shown_body
from batchpizza.providers.deadline import Deadlines
from batchpizza.providers.errorreply import about_model, error_detail
from batchpizza.providers.http import looks_like_page, post_json, reply_json
from batchpizza.providers.limits import parse_rate_info, retry_after_of
from batchpizza.providers.quota import quota_spent, zero_limits, zero_unsure
from batchpizza.providers.sse import looks_like_events, streamed_completion
from batchpizza.records import (
    ENDED_EMPTY,
    TOKEN_COLUMNS,
    UNANSWERED,
    Answer,
    Prompt,
    RateInfo,
)
from batchpizza.redact import MASK, Secret, redact, shorten
from batchpizza.structured import Structured

__all__ = ["CHAT_PATH", "OpenAIAPI"]

CHAT_PATH = "/chat/completions"
USER_AGENT = "batchpizza"
# A server's error message is one line of the `error` column, not a page.
_MESSAGE_CHARS = 300
_SNIPPET_CHARS = 200  # of a body that is not JSON
# An error reply kept for --format openai-batch's lines: a gateway's error page is not worth
# keeping (its line gets an OpenAI-style error body instead).
_KEPT_ERROR_BYTES = 16384
# What a finish_reason of ours means when a server sends it: the generation failed (OpenRouter
# says "error" for a provider that broke mid-answer). Kept from the output's finish_reason column,
# where it would read as our own outcome.
_OUR_OUTCOMES = frozenset(str(outcome) for outcome in UNANSWERED)
# Streaming is a different wire format (server-sent events); a batch reads whole replies.
_STREAMING = ("stream", "stream_options")
# Two names of the answer's token cap: OpenAI refuses a request that sets both.
_OUTPUT_CAPS = ("max_tokens", "max_completion_tokens")


class OpenAIAPI:
    """The Provider for an OpenAI-compatible chat completions server.

    `params` (from --param, already JSON-decoded) go into every request body as given. A Prompt
    with a `body` (an OpenAI Batch input line, less its messages) sends that body's parameters,
    with --param values over them and the provider's `model`, when given, over the line's."""

    name = "openai"
    extra_columns: tuple[str, ...] = TOKEN_COLUMNS
    # A wrong or missing key fails every request alike. (An unknown model or a wrong URL does too:
    # those come as errors with `fatal` set, see _status_error.)
    fatal_statuses: frozenset[int] = frozenset({401})
    detects_refusals = False

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        params: Mapping[str, Any] | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        proxy: str | None = None,
        keep_bodies: bool = False,
        structured: Structured | None = None,
    ) -> None:
        base = URL(base_url)
        if base.scheme not in ("http", "https") or not base.host:
            raise UsageError(f"base URL {base_url!r}: expected http(s)://host[:port]/path")
        path = base.path.rstrip("/")
        if not path.endswith(CHAT_PATH):  # the full endpoint given as the base URL works too
            path += CHAT_PATH
        self.base_url = base_url
        self.url = base.with_path(path).with_query(base.query)
        self.model = model or None
        self.params = dict(params or {})
        # A line's own fields that never reach its request: the messages (sent from the row),
        # streaming, and, when --param sets the answer's token cap under either name, the line's
        # cap under both (the one cap asked for; a line setting the other would get both sent).
        caps = _OUTPUT_CAPS if any(k in self.params for k in _OUTPUT_CAPS) else ()
        self._not_from_line = frozenset(("messages", *_STREAMING, *caps))
        for key, why in (
            ("model", "give the model with --model"),
            ("messages", "the messages come from each row"),
        ):
            if key in self.params:
                raise UsageError(f"--param {key}: {why}")
        if self.params.get("stream"):
            raise UsageError("--param stream: streamed replies are not supported; drop it")
        key_text = (api_key or "").strip()  # a key read from a file often ends in a newline
        if any(ord(c) < 0x21 or ord(c) > 0x7E for c in key_text):
            # Never quote the key, not even in this message.
            raise UsageError("the API key holds spaces or characters a header cannot carry")
        self._key = Secret(key_text) if key_text else None
        if self._key is not None and (base.user or base.password):
            # Both would be the Authorization header (aiohttp refuses to choose, mid-run): which
            # one the gateway wants is the user's to say. Never quote the URL here.
            raise UsageError(
                "--base-url carries credentials (user:***@) and an API key is set: both would "
                "be the Authorization header. Use one: to log in to the gateway with the URL's "
                "credentials, set no key (an empty OPENAI_API_KEY, or --api-key-env naming an "
                "empty variable); to send the key, take the credentials out of --base-url"
            )
        self.timeout = timeout
        self.proxy = proxy
        # Answer.body and ProviderError.body, for --format openai-batch; None without it.
        self.keep_bodies = keep_bodies
        self.structured = structured  # --schema: sent as every request's response_format
        self._format = None if structured is None else structured.response_format()
        self._deadlines = Deadlines(timeout)
        # Limits this server announced as 0 in an answer: placeholders, not quotas (quota.py).
        self._zero_in_answers: set[str] = set()
        self._headers = {
            "accept": "application/json",
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }

    def __repr__(self) -> str:
        key = MASK if self._key else None
        return (
            f"OpenAIAPI({redact(str(self.url))!r}, model={self.model!r}, "
            f"params={self.params!r}, api_key={key!r})"
        )

    @property
    def identity(self) -> Mapping[str, Any]:
        return openai_identity(self.model, self.params, self.structured)

    def body(self, prompt: Prompt) -> dict[str, Any]:
        """The JSON body `ask` sends for `prompt`."""
        messages = [dict(m) for m in prompt.messages] or [{"role": "user", "content": prompt.text}]
        line = {k: v for k, v in (prompt.body or {}).items() if k not in self._not_from_line}
        line_model = line.pop("model", None)
        model = self.model or line_model  # the user's --model wins over the line's
        body: dict[str, Any] = {} if model is None else {"model": model}
        body["messages"] = messages
        body.update(line)
        body.update(self.params)
        if self._format is not None:
            body["response_format"] = self._format
        return body

    async def ask(self, session: aiohttp.ClientSession, prompt: Prompt) -> Answer:
        body = self.body(prompt)
        headers = dict(self._headers)
        if self._key is not None:
            headers["authorization"] = f"Bearer {self._key.reveal()}"
        reply = await post_json(
            session,
            self.url,
            jsoncodec.dumps(body),
            headers=headers,
            timeout=self._deadlines,
            proxy=self.proxy,
        )
        rate = parse_rate_info(reply.headers)
        request_id = reply.headers.get("x-request-id")
        if request_id is not None:  # aiohttp decodes a header's non-UTF-8 bytes as surrogates
            request_id = storable.text(request_id)
        model = body.get("model") if isinstance(body.get("model"), str) else None
        if rate is not None and 200 <= reply.status < 300:
            self._zero_in_answers.update(zero_limits(rate))
        try:
            if not 200 <= reply.status < 300:
                error = self._status_error(
                    reply.status, reply.reason, reply.body, reply.headers, model
                )
                if self.keep_bodies and len(reply.body) <= _KEPT_ERROR_BYTES:
                    error.body = self._masked(reply.body)
                raise error
            return self._answer(reply.status, reply.body, model, rate, request_id)
        except ProviderError as exc:
            exc.rate, exc.request_id = rate, request_id
            raise

    def api_headers(self) -> dict[str, str]:
        """The headers of a request to this server's other APIs (the Batch API's files and
        batches): the key's, the user agent's; never logged."""
        headers = {"accept": "application/json", "user-agent": USER_AGENT}
        if self._key is not None:
            headers["authorization"] = f"Bearer {self._key.reveal()}"
        return headers

    @property
    def api_base(self) -> URL:
        """The API's root (.../v1), where /files and /batches are."""
        path = self.url.path[: -len(CHAT_PATH)] if self.url.path.endswith(CHAT_PATH) else ""
        return self.url.with_path(path or "/").with_query(self.url.query)

    def preview(self, prompt: Prompt) -> tuple[str, dict[str, str], bytes]:
        headers = dict(self._headers)
        if self._key is not None:
            headers["authorization"] = f"Bearer {MASK}"
        # An image's data URL shortened: a dry run shows the request, not megabytes of base64.
        return str(self.url), headers, jsoncodec.dumps(shown_body(self.body(prompt)))

    def _masked(self, payload: bytes) -> bytes:
        """A reply body to keep, without the key (a server may echo what it was sent)."""
        if self._key is not None and len(self._key.reveal()) >= 3:
            return payload.replace(self._key.reveal().encode(), MASK.encode())
        return payload

    def _said(self, text: str | bytes, limit: int = _MESSAGE_CHARS) -> str:
        """What a server said, for a message: on one line, without the key (a server may echo
        what it was sent), then cut. The key goes first: a cut inside it would leave its first
        part, which nothing recognises as the key any more."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if self._key is not None and len(self._key.reveal()) >= 3:
            text = text.replace(self._key.reveal(), MASK)
        return shorten(text, limit, "...")

    def _answer(
        self,
        status: int,
        payload: bytes,
        model: str | None,
        rate: RateInfo | None,
        request_id: str | None,
    ) -> Answer:
        try:
            data = reply_json(payload)  # every text in it storable (lone surrogates: U+FFFD)
        except ValueError:
            if not looks_like_events(payload):
                raise BadReply(
                    f"reply is not JSON: {self._said(payload, _SNIPPET_CHARS)!r}",
                    status=status,
                    page=looks_like_page(payload),
                ) from None
            # Streamed unasked: an answer all the same, and paid for.
            try:
                data = streamed_completion(payload)
            except ValueError as exc:
                raise BadReply(f"streamed reply: {self._said(str(exc))}", status) from None
            payload = jsoncodec.dumps(data)  # the reply as kept: one completion, not chunks
        choice = None
        if isinstance(data, dict):
            choices = data.get("choices")
            if isinstance(choices, list) and choices and isinstance(choices[0], dict):
                choice = choices[0]
        if not isinstance(data, dict) or choice is None:
            _, said = error_detail(payload)  # a gateway's error sent with a 200
            raise BadReply(f"reply without choices: {self._said(said)!r}", status)
        message = choice.get("message")
        if not isinstance(message, dict):
            raise BadReply("reply without choices[0].message", status=status)
        finish = choice.get("finish_reason")
        finish = finish if isinstance(finish, str) and finish else "stop"  # llama.cpp may omit it
        text = message.get("content")
        if isinstance(text, list):  # content parts, as some servers answer
            parts = [p.get("text") for p in text if isinstance(p, dict)]
            text = "".join(p for p in parts if isinstance(p, str)) if parts else None
        if not isinstance(text, str) or not text.strip():
            # Empty or blank text with "stop" is a passing glitch: a retry may answer. A refusal
            # or tool calls beside it are the answer; so is nothing, when the finish reason says
            # the server would end the same again (ENDED_EMPTY).
            refusal, calls = message.get("refusal"), message.get("tool_calls")
            if isinstance(refusal, str) and refusal:
                # The model declined (structured outputs): an answer, marked as what it is, not
                # a row to resend (it would decline again) nor a misuse (the service is fine).
                text, finish = refusal, "refusal"
            elif isinstance(calls, list) and calls:
                # With tools in --param, calls are the answer; kept as JSON so the batch output
                # can rebuild them.
                text, finish = jsoncodec.dumps(calls).decode(), "tool_calls"
            elif finish in ENDED_EMPTY and (text is None or isinstance(text, str)):
                # Empty text, not null, even for a null content: null in the answer column
                # is a row without an answer (failed, pending), and this one was answered
                # and billed. Blank text is kept as it came.
                text = text or ""
            else:
                what = "empty" if isinstance(text, str) else "null" if text is None else "not text"
                raise BadReply(
                    f"reply without answer text (message content is {what}, "
                    f"finish_reason {finish!r})",
                    status,
                )
        if finish in _OUR_OUTCOMES:
            raise BadReply(f"the server ended the answer with finish_reason {finish!r}", status)
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        served = data.get("model")
        response_id = data.get("id")
        return Answer(
            text,
            finish,
            served if isinstance(served, str) and served else model,
            # A count beyond 64 bits (or not a count) is null: no column can hold it.
            prompt_tokens=storable.count(usage.get("prompt_tokens")),
            completion_tokens=storable.count(usage.get("completion_tokens")),
            response_id=response_id if isinstance(response_id, str) else None,
            request_id=request_id,
            rate=rate,
            body=self._masked(payload) if self.keep_bodies else None,
        )

    def _status_error(
        self,
        status: int,
        reason: str,
        payload: bytes,
        headers: Mapping[str, str],
        model: str | None,
    ) -> HTTPStatusError:
        error, said = error_detail(payload)
        said = self._said(said)
        text = f"HTTP {status} {reason}".strip() + (f": {said}" if said else "")
        if about_model(status, error, said, model):
            hint = (
                f"the server does not serve model {model!r}; choose one it serves"
                if model
                else "no model was sent; name one the server serves"
            )
            return ModelNotFound(status, f"{text} [{hint}]", model)
        spent = quota_spent(status, error, said, headers, self._zero_in_answers)
        if spent is not None:
            return QuotaExhausted(status, f"{text} [{spent}]")
        if status == 404:
            # Not the model, so the endpoint: every request would get the same 404.
            hint = f"no chat completions API at {self.url}; is the base URL right (often .../v1)?"
            return HTTPStatusError(status, f"{text} [{hint}]", fatal=True)
        if status in self.fatal_statuses:
            hint = "the API key is wrong" if self._key else "no API key was sent"
            return HTTPStatusError(status, f"{text} [{hint}]", fatal=True)
        refused = HTTPStatusError(status, text, retry_after_of(headers))
        refused.zero_limit = zero_unsure(status, headers, self._zero_in_answers)
        return refused
