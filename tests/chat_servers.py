"""Small raw chat-completions servers on 127.0.0.1 for tests: a handler of our own at
/v1/chat/completions, to answer in ways the bundled mock does not."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

Chat = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def start_chat_server(chat: Chat) -> tuple[web.AppRunner, str]:
    """A server whose /v1/chat/completions is `chat`, started: its runner (to clean up) and its
    base URL (`http://127.0.0.1:PORT/v1`)."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/v1"


@contextlib.asynccontextmanager
async def chat_servers() -> AsyncIterator[Callable[[Chat], Awaitable[str]]]:
    """`serve(chat)` starts a server (start_chat_server) and gives its base URL; every one
    started is cleaned up at the end of the block."""
    runners: list[web.AppRunner] = []

    async def serve(chat: Chat) -> str:
        runner, url = await start_chat_server(chat)
        runners.append(runner)
        return url

    try:
        yield serve
    finally:
        for runner in runners:
            await runner.cleanup()
