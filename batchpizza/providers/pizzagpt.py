"""The Pizzagpt provider: g4f's seed, made fit for batch work.

`PizzagptAPI` is the runner's provider: one Prompt in, one Answer out, or a typed error from
errors.py that says whether a retry could help. `ask` is the same request for a bare prompt text,
and `Pizzagpt.create_async_generator` is the seed's interface, built on `ask` so they never drift.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Mapping, Sequence
from typing import Any, ClassVar

import aiohttp
from multidict import CIMultiDict
from yarl import URL

import batchpizza.jsoncodec as jsoncodec
from batchpizza.config import DEFAULT_BASE_URL, DEFAULT_MODEL, DEFAULT_TIMEOUT
from batchpizza.errors import BadReply, HTTPStatusError, MisuseDetected, UsageError
from batchpizza.identities import pizzagpt_identity
from batchpizza.messages import format_prompt
from batchpizza.providers.deadline import Deadlines
from batchpizza.providers.http import (
    Reply,
    looks_like_page,
    parse_retry_after,
    post_json,
    reply_json,
    snippet,
)
from batchpizza.records import TOKEN_COLUMNS, Answer, Prompt
from batchpizza.redact import shorten
from batchpizza.structured import Structured
from batchpizza.tokencount import input_estimate, text_tokens

log = logging.getLogger("batchpizza")

API_ENDPOINT = "/api/chatx-completion"
SECRET = "Marinara"
USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
# Texts with which the service refuses instead of answering, folded as `_fold` folds. The site
# invents new ones from time to time: each is one line here.
REFUSALS = (
    "misuse detected",  # "Misuse detected. Please get in touch, we can come up with a solution..."
    "du musst das kästchen anklicken",  # the site's bot check, served as if it were an answer
)
# A reply that merely contains a refusal phrase is the refusal only when it is short: the live
# refusal is two sentences, 88 characters; an answer that discusses the phrase is longer.
_SHORT_REPLY_CHARS = 240
_SHORT_REPLY_SENTENCES = 3
_ERROR_SNIPPET = 200

Message = Mapping[str, Any]

__all__ = [
    "API_ENDPOINT",
    "REFUSALS",
    "FinishReason",
    "Pizzagpt",
    "PizzagptAPI",
    "ask",
    "extract_answer",
    "format_prompt",
    "headers_for",
    "parse_retry_after",
    "refusal_in",
]


class FinishReason:
    """The last item of the generator; prints as nothing so that printing every item prints the
    answer alone, as in the seed's example."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __str__(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"FinishReason({self.reason!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FinishReason) and other.reason == self.reason

    def __hash__(self) -> int:
        return hash(self.reason)


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()


# The longest word of each refusal: a text whose casefolded form holds none of them cannot hold
# a refusal once folded either (folding only merges whitespace), and most answers hold none. The
# check skips the fold (split, join, casefold) for them: 2.9 -> 0.6 us on a 400-character answer.
_REFUSAL_WORDS = tuple(max(marker.split(), key=len) for marker in REFUSALS)


def refusal_in(text: str) -> bool:
    """Is this reply the service refusing? It is when it begins with a refusal text, or is a short
    reply (a couple of sentences) that contains one; an answer that mentions the phrase inside a
    longer text is an answer."""
    cased = text.casefold()
    if not any(word in cased for word in _REFUSAL_WORDS):
        return False
    folded = _fold(text)
    for marker in REFUSALS:
        if folded.startswith(marker):
            return True
        if marker in folded and len(folded) <= _SHORT_REPLY_CHARS:
            sentences = sum(folded.count(end) for end in ".!?")
            if sentences <= _SHORT_REPLY_SENTENCES:
                return True
    return False


def headers_for(base_url: str) -> dict[str, str]:
    """The headers the site's own page sends."""
    origin = str(URL(base_url).with_user(None).origin())
    return {
        "accept": "application/json",
        "content-type": "application/json",
        "origin": origin,
        "referer": f"{origin}/en",
        "user-agent": USER_AGENT,
        "x-secret": SECRET,
    }


def extract_answer(body: bytes, status: int = 200) -> str:
    """The answer text of a 2xx reply body, or the typed error saying what is wrong with it."""
    try:
        reply = reply_json(body)  # every text in it storable (lone surrogates: U+FFFD)
    except ValueError:
        raw = body.decode("utf-8", "replace")
        if refusal_in(raw):
            raise MisuseDetected(" ".join(raw.split())) from None
        raise BadReply(
            f"reply is not JSON: {snippet(body)!r}", status=status, page=looks_like_page(body)
        ) from None
    text: object = None
    if isinstance(reply, dict):
        answer = reply.get("answer")
        if isinstance(answer, dict):
            text = answer.get("content")
        elif answer is None:
            text = reply.get("content")
    if not isinstance(text, str):
        raise BadReply(f"reply without answer text: {snippet(body)!r}", status=status)
    if not text.strip():
        raise BadReply("reply with an empty answer", status=status)
    if refusal_in(text):
        raise MisuseDetected(text)
    return text


@functools.lru_cache(maxsize=16)
def api_url(base_url: str) -> URL:
    """{base_url}/api/chatx-completion, keeping a query the base URL carries (a gateway token)."""
    base = URL(base_url)
    return base.with_path(base.path.rstrip("/") + API_ENDPOINT).with_query(base.query)


async def ask(
    session: aiohttp.ClientSession,
    prompt: str,
    *,
    base_url: str = DEFAULT_BASE_URL,
    timeout: float = DEFAULT_TIMEOUT,
    proxy: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> str:
    """Send one prompt; return the answer text. Raises a ProviderError subclass on any failure."""
    reply = await post_json(
        session,
        api_url(base_url),
        jsoncodec.dumps({"question": prompt}),
        headers=headers or headers_for(base_url),
        # Its own, not shared: calls may come from threads each running its own event loop.
        timeout=Deadlines(timeout),
        proxy=proxy,
    )
    return answer_text(reply)


def answer_text(reply: Reply) -> str:
    """The answer text of a reply, or the typed error saying why there is none."""
    if 200 <= reply.status < 300:
        return extract_answer(reply.body, reply.status)
    text = reply.body.decode("utf-8", "replace")
    if refusal_in(text):
        raise MisuseDetected(shorten(text, _ERROR_SNIPPET * 2))
    raise HTTPStatusError(
        reply.status,
        f"HTTP {reply.status} {reply.reason}".strip(),
        retry_after=parse_retry_after(reply.headers.get("Retry-After")),
    )


class PizzagptAPI:
    """The Provider the runner uses for Pizzagpt: the headers, URL and timeout made once per run."""

    name = "pizzagpt"
    model: str | None = DEFAULT_MODEL
    extra_columns: tuple[str, ...] = TOKEN_COLUMNS  # Pizzagpt's estimated
    fatal_statuses: frozenset[int] = frozenset()
    detects_refusals = True

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        proxy: str | None,
        structured: Structured | None = None,
    ) -> None:
        self.base_url = base_url
        # --schema: Pizzagpt has no field for one, so each question ends asking for it.
        self.structured = structured
        self.timeout = timeout
        self.proxy = proxy
        self.headers = headers_for(base_url)
        # Made once for the run, not per request: the URL, the timeout, and the headers as the
        # case-insensitive dict aiohttp would otherwise build from a plain one each time (1.1 ->
        # 0.7 us a request in ClientSession._prepare_headers).
        self._url = api_url(base_url)
        self._timeout = Deadlines(timeout)  # a run's provider serves one event loop at a time
        self._headers = CIMultiDict(self.headers)
        self._warned = False

    async def ask(self, session: aiohttp.ClientSession, prompt: Prompt) -> Answer:
        if prompt.body and not self._warned:
            self._warned = True
            unused = sorted(k for k in prompt.body if k != "model")
            if unused:
                log.warning(
                    "OpenAI Batch lines carry %s; Pizzagpt cannot honour them, so they are not "
                    "sent (use --provider openai for a server that does)",
                    ", ".join(unused),
                )
        reply = await post_json(
            session,
            self._url,
            jsoncodec.dumps({"question": self.question(prompt)}),
            headers=self._headers,
            timeout=self._timeout,
            proxy=self.proxy,
        )
        text = answer_text(reply)
        # The service reports no usage: the estimate stands in, marked as one.
        return Answer(
            text,
            "stop",
            DEFAULT_MODEL,
            prompt_tokens=input_estimate(prompt)
            + (0 if self.structured is None else self.structured.overhead[1]),
            completion_tokens=text_tokens(text),
            tokens_estimated=True,
        )

    def question(self, prompt: Prompt) -> str:
        structured = self.structured
        return prompt.text if structured is None else structured.instructed(prompt.text)

    @property
    def identity(self) -> Mapping[str, Any]:
        return pizzagpt_identity(self.structured)

    def preview(self, prompt: Prompt) -> tuple[str, dict[str, str], bytes]:
        return (
            str(api_url(self.base_url)),
            dict(self.headers),
            jsoncodec.dumps({"question": self.question(prompt)}),
        )


class AnswerStream:
    """The seed's generator, usable both as `async for x in create_async_generator(...)` and as
    `gen = await create_async_generator(...)` followed by `async for x in gen`."""

    def __init__(self, agen: AsyncGenerator[str | FinishReason, None]) -> None:
        self._agen = agen

    def __aiter__(self) -> AsyncIterator[str | FinishReason]:
        return self._agen

    async def __anext__(self) -> str | FinishReason:
        return await self._agen.__anext__()

    def __await__(self) -> Generator[Any, None, AnswerStream]:
        async def itself() -> AnswerStream:
            return self

        return itself().__await__()

    async def aclose(self) -> None:
        await self._agen.aclose()


class Pizzagpt:
    """g4f's Pizzagpt provider, same attributes and call, with typed errors and session reuse."""

    label = "Pizzagpt"
    url = DEFAULT_BASE_URL
    api_endpoint = API_ENDPOINT
    working = True
    supports_stream = False
    default_model = DEFAULT_MODEL
    models: ClassVar[list[str]] = [DEFAULT_MODEL]

    @classmethod
    def create_async_generator(
        cls,
        model: str,
        messages: Sequence[Message],
        proxy: str | None = None,
        **kwargs: Any,
    ) -> AnswerStream:
        """Yields the answer text, then FinishReason("stop"). Keyword arguments: `base_url=`,
        `session=` (an aiohttp.ClientSession to reuse; else one is opened and closed), `timeout=`.
        Other keyword arguments g4f passes (stream=..., etc.) are accepted and ignored."""
        if model and model not in cls.models:
            raise UsageError(f"model {model!r}: Pizzagpt serves only {cls.default_model}")
        return AnswerStream(cls._generate(messages, proxy, **kwargs))

    @classmethod
    async def _generate(
        cls,
        messages: Sequence[Message],
        proxy: str | None = None,
        *,
        base_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        **_ignored: Any,
    ) -> AsyncGenerator[str | FinishReason, None]:
        prompt = format_prompt(messages)
        options: dict[str, Any] = {
            "base_url": base_url or cls.url,
            "timeout": timeout,
            "proxy": proxy,
        }
        if session is not None:
            text = await ask(session, prompt, **options)
        else:
            async with aiohttp.ClientSession(trust_env=True) as own:
                text = await ask(own, prompt, **options)
        yield text
        yield FinishReason("stop")
