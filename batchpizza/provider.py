"""The Pizzagpt provider: g4f's seed, made fit for batch work.

`ask` is the one request: a prompt in, the answer text out, or a typed error from errors.py that
says whether a retry could help. `Pizzagpt.create_async_generator` is the seed's interface, built on
`ask` so the two never drift apart.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Mapping, Sequence
from typing import Any, ClassVar

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from batchpizza import jsoncodec
from batchpizza.config import DEFAULT_BASE_URL, DEFAULT_MODEL, DEFAULT_TIMEOUT
from batchpizza.errors import (
    BadReply,
    HTTPStatusError,
    MisuseDetected,
    RedirectRefused,
    RequestTimeout,
    TransportError,
    UsageError,
)

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
MAX_BODY_BYTES = 8 * 1024 * 1024  # a reply bigger than any answer is a broken server, not a reply
MAX_REDIRECTS = 5
_ERROR_SNIPPET = 200

Message = Mapping[str, Any]


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


def format_prompt(messages: Sequence[Message]) -> str:
    """One message: its content. Several: `Role: content` lines, then `Assistant:` (as the seed)."""
    if len(messages) == 1:
        return str(messages[0]["content"])
    lines = [f"{str(m['role']).capitalize()}: {m['content']}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()


def refusal_in(text: str) -> bool:
    folded = _fold(text)
    return any(marker in folded for marker in REFUSALS)


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


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    if resp.content_length is not None:
        if resp.content_length > MAX_BODY_BYTES:
            raise BadReply(f"reply of {resp.content_length} bytes is too large", status=resp.status)
        return await resp.read()  # the usual case: the length is known and sane, one read
    body = bytearray()
    async for chunk in resp.content.iter_chunked(65536):
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BadReply(f"reply larger than {MAX_BODY_BYTES} bytes", status=resp.status)
    return bytes(body)


def _snippet(body: bytes) -> str:
    text = " ".join(body[: _ERROR_SNIPPET * 2].decode("utf-8", "replace").split())
    return text[:_ERROR_SNIPPET]


def extract_answer(body: bytes, status: int = 200) -> str:
    """The answer text of a 2xx reply body, or the typed error saying what is wrong with it."""
    try:
        reply = jsoncodec.loads(body)
    except ValueError:
        raw = body.decode("utf-8", "replace")
        if refusal_in(raw):
            raise MisuseDetected(" ".join(raw.split())) from None
        raise BadReply(f"reply is not JSON: {_snippet(body)!r}", status=status) from None
    text: object = None
    if isinstance(reply, dict):
        answer = reply.get("answer")
        if isinstance(answer, dict):
            text = answer.get("content")
        elif answer is None:
            text = reply.get("content")
    if not isinstance(text, str):
        raise BadReply(f"reply without answer text: {_snippet(body)!r}", status=status)
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


def _same_origin(url: URL, target: URL) -> bool:
    """Where the prompt and x-secret may follow a redirect: the same scheme, host and port, or
    the same host moving from http to https on the default ports (a safe upgrade)."""
    if target.host is None or url.host is None or target.host.lower() != url.host.lower():
        return False
    if (target.scheme, target.port) == (url.scheme, url.port):
        return True
    upgrade = url.scheme == "http" and target.scheme == "https"
    return upgrade and url.is_default_port() and target.is_default_port()


def env_proxy(base_url: str) -> str | None:
    """The proxy HTTPS_PROXY / HTTP_PROXY / NO_PROXY name for the API, looked up once per run by
    aiohttp's own rules (a session with trust_env=True would look it up again per request).
    Credentials stay in the URL, where aiohttp takes them from (its proxy_auth is deprecated)."""
    try:
        proxy, auth = get_env_proxy_for_url(api_url(base_url))
    except LookupError:
        return None
    if auth is not None:
        proxy = proxy.with_user(auth.login).with_password(auth.password)
    return str(proxy)


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
    url = api_url(base_url)
    body = jsoncodec.dumps({"question": prompt})
    request_headers = headers or headers_for(base_url)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    try:
        for _ in range(MAX_REDIRECTS + 1):
            async with session.post(
                url,
                data=body,
                headers=request_headers,
                proxy=proxy,
                allow_redirects=False,  # followed below, and only within the host the user named
                timeout=client_timeout,
            ) as resp:
                if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                    target = url.join(URL(resp.headers["Location"]))
                    if not _same_origin(url, target):
                        raise RedirectRefused(
                            f"HTTP {resp.status} redirect to another host refused: "
                            f"{target.with_query(None)}"
                        )
                    url = target
                    continue
                payload = await _read_capped(resp)
                if 200 <= resp.status < 300:
                    return extract_answer(payload, resp.status)
                text = payload.decode("utf-8", "replace")
                if refusal_in(text):
                    raise MisuseDetected(" ".join(text.split())[: _ERROR_SNIPPET * 2])
                raise HTTPStatusError(
                    resp.status,
                    f"HTTP {resp.status} {resp.reason or ''}".strip(),
                    retry_after=parse_retry_after(resp.headers.get("Retry-After")),
                )
        raise RedirectRefused(f"more than {MAX_REDIRECTS} redirects")  # a loop: retrying won't help
    except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
        raise RequestTimeout(f"no complete reply within {timeout:g}s") from None
    except aiohttp.ClientSSLError as exc:
        error = TransportError(f"TLS error: {exc}")
        error.retryable = False  # a certificate does not fix itself between attempts
        raise error from None
    except aiohttp.ClientError as exc:
        raise TransportError(
            f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        ) from None


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
