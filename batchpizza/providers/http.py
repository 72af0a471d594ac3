"""One JSON POST over the run's session, as every provider sends it: redirects followed only
within the origin the user named, the reply read whole under a size cap (decompressed bytes
counted), and every transport failure turned into a typed error that says whether to retry."""

from __future__ import annotations

import asyncio
import codecs
import email.utils
import re
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from aiohttp.http_exceptions import (
    ContentEncodingError,
    ContentLengthError,
    TransferEncodingError,
)
from multidict import CIMultiDictProxy
from yarl import URL

import batchpizza.jsoncodec as jsoncodec
import batchpizza.storable as storable
from batchpizza.errors import (
    BadReply,
    ConnectionRefused,
    RedirectRefused,
    RequestTimeout,
    TransportError,
)
from batchpizza.providers.deadline import Deadlines
from batchpizza.redact import shorten

# A reply bigger than any answer is a broken server, not a reply. Counted after decompression:
# 100 KB of gzip on the wire can inflate to 100 MB (seen), and the cap is about memory.
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_REDIRECTS = 5
_ERROR_SNIPPET = 200
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_NEVER_REPEATED = frozenset({"POST", "PATCH"})  # by aiohttp on its own (never_sent)
# aiohttp's own limits off (its session's default is five minutes): the request's Deadlines
# bounds it whole, redirects included.
_UNBOUNDED = aiohttp.ClientTimeout()
# The escape of a surrogate code point (\ud800 to \udfff), the only way a JSON text that is valid
# UTF-8 can put one in a string (a paired one is decoded to its character, a lone one is not).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class Reply(NamedTuple):
    """A final reply, read whole. A tuple: one is made for every request (a frozen dataclass
    cost three times as much to build)."""

    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    body: bytes


def snippet(body: bytes) -> str:
    """The start of a body, on one line and secrets masked (before the cut), for an error
    message."""
    return shorten(body.decode("utf-8", "replace"), _ERROR_SNIPPET)


def reply_json(payload: bytes) -> Any:
    """A reply body's JSON, every string in it storable (batchpizza.storable): a server's lone
    surrogate escape becomes U+FFFD here, before any text of the reply is used. ValueError when
    the body is not JSON. A UTF-8 byte order mark before it is none of it (RFC 8259 lets a
    reader ignore one; a gateway writing UTF-8 as .NET does sends one)."""
    data = jsoncodec.loads(payload.removeprefix(codecs.BOM_UTF8))
    if b"\\u" in payload and _SURROGATE_ESCAPE.search(payload):  # rare: pay for the walk only then
        data = storable.json_value(data)
    return data


def looks_like_page(body: bytes) -> bool:
    """Whether a body that is not JSON is a web page (HTML): it opens with a tag."""
    return body[:256].lstrip()[:1] == b"<"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None if absent or unreadable,
    and for a date already past or a negative number. Those say nothing of how long to wait (a
    server whose clock is behind ours dates every 429 so); read as "now", they sent each retry at
    once and a row spent its retries in a moment. With None the retry backs off as usual."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    ahead = when.timestamp() - (time.time() if now is None else now)
    return ahead if ahead > 0 else None


async def read_capped(resp: aiohttp.ClientResponse) -> bytes:
    encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
    if resp.content_length is not None and not encoded:
        if resp.content_length > MAX_BODY_BYTES:
            raise BadReply(f"reply of {resp.content_length} bytes is too large", status=resp.status)
        return await resp.read()  # the usual case: the length is known and sane, one read
    body = bytearray()
    # iter_chunked yields decompressed data, so the cap holds for what lands in memory.
    async for chunk in resp.content.iter_chunked(65536):
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BadReply(f"reply larger than {MAX_BODY_BYTES} bytes", status=resp.status)
    return bytes(body)


def never_sent(exc: BaseException, method: str) -> bool:
    """Whether a `method` request that failed with `exc` certainly never reached the server: no
    connection was made (refused, no route, a name that did not resolve, a proxy or a TLS
    handshake that failed). A reset or a timeout once connected may come after the server read
    the whole request; and aiohttp itself sends an idempotent method (GET, PUT, DELETE) again
    after a dropped connection, so a connect failure of one may follow a try that reached it."""
    return method in _NEVER_REPEATED and isinstance(exc, aiohttp.ClientConnectorError)


def same_origin(url: URL, target: URL) -> bool:
    """Where the prompt and credentials may follow a redirect: the same scheme, host and port, or
    the same host moving from http to https on the default ports (a safe upgrade)."""
    if target.host is None or url.host is None or target.host.lower() != url.host.lower():
        return False
    if (target.scheme, target.port) == (url.scheme, url.port):
        return True
    upgrade = url.scheme == "http" and target.scheme == "https"
    return upgrade and url.is_default_port() and target.is_default_port()


def env_proxy(url: URL) -> str | None:
    """The proxy HTTPS_PROXY / HTTP_PROXY / NO_PROXY name for `url`, looked up once per run by
    aiohttp's own rules (a session with trust_env=True would look it up again per request).
    Credentials stay in the URL, where aiohttp takes them from (its proxy_auth is deprecated)."""
    try:
        proxy, auth = get_env_proxy_for_url(url)
    except LookupError:
        return None
    if auth is not None:
        proxy = proxy.with_user(auth.login).with_password(auth.password)
    return str(proxy)


async def post_json(
    session: aiohttp.ClientSession,
    url: URL,
    body: bytes,
    *,
    headers: Mapping[str, str],
    timeout: Deadlines,
    proxy: str | None = None,
) -> Reply:
    """POST `body`; the final reply of any status, or a ProviderError for what is not a reply
    (RequestTimeout when none came whole within `timeout`, redirects included)."""
    try:
        with timeout.limit():
            for _ in range(MAX_REDIRECTS + 1):
                async with session.post(
                    url,
                    data=body,
                    headers=headers,
                    proxy=proxy,
                    allow_redirects=False,  # followed below, and only within the origin
                    timeout=_UNBOUNDED,
                ) as resp:
                    if resp.status in _REDIRECTS and "Location" in resp.headers:
                        target = url.join(URL(resp.headers["Location"]))
                        if not same_origin(url, target):
                            raise RedirectRefused(
                                f"HTTP {resp.status} redirect to another origin refused: "
                                f"{target.with_query(None)}"
                            )
                        url = target
                        continue
                    payload = await read_capped(resp)
                    reason = storable.text(resp.reason or "")
                    return Reply(resp.status, reason, resp.headers, payload)
            raise RedirectRefused(f"more than {MAX_REDIRECTS} redirects")  # retrying won't help
    except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
        raise RequestTimeout(f"no complete reply within {timeout.seconds:g}s") from None
    except aiohttp.ClientSSLError as exc:
        error = TransportError(f"TLS error: {exc}")
        error.retryable = False  # a certificate does not fix itself between attempts
        raise error from None
    except aiohttp.ClientConnectorError as exc:
        kind = (
            ConnectionRefused
            if isinstance(exc.os_error, ConnectionRefusedError)
            else TransportError
        )
        raise kind(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
    except aiohttp.ClientError as exc:
        cut = exc.__cause__ if isinstance(exc, aiohttp.ClientPayloadError) else None
        if isinstance(cut, (ContentLengthError, TransferEncodingError)):
            # aiohttp's own words carry its parser's code 400, which reads as an HTTP status
            # the server never sent.
            raise TransportError(f"the reply was cut off before its end: {cut.message}") from None
        if isinstance(cut, ContentEncodingError):
            # Its words too carry the code 400, and a line break.
            coding = shorten(cut.message.rpartition(": ")[2], 40)  # "...content-encoding: gzip"
            raise TransportError(
                f"the reply's content-encoding ({coding}) could not be decoded"
            ) from None
        raise TransportError(
            f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        ) from None
