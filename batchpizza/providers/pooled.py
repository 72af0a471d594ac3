"""Sends over pooled (kept-alive) connections, and what to do when one was stale.

A server closes a kept-alive connection after it sat idle a while (uvicorn after 5 s, gunicorn
after 2 s, some proxies after 50 ms). A request sent on one in the moment it closes fails before
any reply, unread; aiohttp sends it again on its own only for idempotent methods, and a POST's
failure was a failed attempt: backed off, counted against --max-retries (against a proxy closing
after 50 ms, 200 rows took 391 requests and 12.4 s instead of 4). `sent` sends such a request
again at once. Whether a connection came from the pool is told by the session's `Connector`;
aiohttp's documented trace signal (on_connection_reuseconn) tells it too, but tracing cost 7 to
9 us of CPU a request (of about 100 us a POST takes here; 30 us on a loaded machine), this about
1 us (tracing builds an object and awaits a signal for every step of every request).
"""

from __future__ import annotations

import contextvars
import time
import weakref
from collections.abc import Mapping
from typing import NamedTuple

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from yarl import URL

# A pooled connection may be as stale as the last one: sent again as often as the pool may hold
# them, up to this many times (each stale one is dropped from the pool as it fails).
_STALE_RESENDS = 8
# A connection closed as idle fails the send within a round trip of it. One that fails later was
# read and worked on (a proxy ending a long request, a server dying mid-answer): possibly paid
# for, it is a failed attempt like any other, backed off and counted, never sent again at once.
_STALE_WITHIN = 1.0
# aiohttp's own limits off (its session's default is five minutes): the request's Deadlines
# bounds it whole, redirects included.
_UNBOUNDED = aiohttp.ClientTimeout()


class Resend(NamedTuple):
    """A send that failed on a stale pooled connection and was sent again at once."""

    started: float  # unix time
    duration_ms: float
    error: str


# Where `sent` tells of its resends, for the one counting requests (the runner, per attempt):
# each one was a request, but no failed attempt. Unset, they are told to no one.
RESENDS: contextvars.ContextVar[list[Resend] | None] = contextvars.ContextVar(
    "batchpizza_resends", default=None
)


class _Send:
    """One send's connection, as the Connector tells it."""

    __slots__ = ("reused",)

    def __init__(self) -> None:
        self.reused = False


_SENDING: contextvars.ContextVar[_Send | None] = contextvars.ContextVar(
    "batchpizza_sending", default=None
)


class Connector(aiohttp.TCPConnector):
    """aiohttp's TCPConnector that tells the send being made (`sent`, in the same task) whether
    its connection came from the pool: one it handed out before."""

    def __init__(self, *, limit: int, limit_per_host: int) -> None:
        super().__init__(limit=limit, limit_per_host=limit_per_host)
        self._handed_out: weakref.WeakSet[ResponseHandler] = weakref.WeakSet()

    async def connect(
        self, req: aiohttp.ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> Connection:
        conn = await super().connect(req, traces, timeout)
        send, protocol = _SENDING.get(), conn.protocol
        if send is not None and protocol is not None:
            send.reused = protocol in self._handed_out
            if not send.reused:
                self._handed_out.add(protocol)
        return conn


async def sent(
    session: aiohttp.ClientSession,
    url: URL,
    body: bytes,
    headers: Mapping[str, str],
    proxy: str | None,
) -> aiohttp.ClientResponse:
    """The response to one POST, its headers read; sent again at once while it fails on a
    stale pooled connection before any reply came, within _STALE_WITHIN of being sent. A session without the Connector cannot tell
    one, and sends once."""
    send = _Send()
    sending = _SENDING.set(send)
    try:
        for resends in range(_STALE_RESENDS + 1):
            started, wall = time.monotonic(), time.time()
            send.reused = False
            try:
                return await session.post(
                    url,
                    data=body,
                    headers=headers,
                    proxy=proxy,
                    allow_redirects=False,  # followed by post_json, and only within the origin
                    timeout=_UNBOUNDED,
                )
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                # A connect failure is a new connection's; a reply cut off once it began fails
                # later, while it is read.
                if not send.reused or isinstance(exc, aiohttp.ClientConnectorError):
                    raise
                if time.monotonic() - started > _STALE_WITHIN:
                    raise
                if resends == _STALE_RESENDS:
                    raise
                told = RESENDS.get()
                if told is not None:
                    said = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    spent = (time.monotonic() - started) * 1000.0
                    told.append(Resend(wall, spent, f"{said} on a reused connection; sent again"))
        raise AssertionError("unreachable")  # the last pass returns or raises
    finally:
        _SENDING.reset(sending)
