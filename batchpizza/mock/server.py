"""The mock as a server you run: `MockServer` in the running loop (``async with``),
`ThreadedMockServer` on a loop of its own for sync code, and `serve` for ``batchpizza
mock-server``; each owns one `Stats`. Used for the offline demo (``--mock``), as the test suite's
fault injector and by the benchmark. Routes, the API ones in pizzagpt.py and openai.py:

    POST /api/chatx-completion   Pizzagpt, like the real service
    POST /v1/chat/completions    OpenAI chat completions
    GET  /v1/models              the models served
    /v1/files, /v1/batches       the Batch API (batches.py)
    GET  /__stats                the counters; ``POST /__reset`` clears them and the
                                 per-question counters

How they misbehave, at random or as a prompt's directives script it, is told in faults.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import threading
from collections.abc import AsyncIterator

from aiohttp import web

from batchpizza.mock.batches import BATCH_MOCK, BatchMock
from batchpizza.mock.batches import install as install_batches
from batchpizza.mock.faults import Live, MockConfig
from batchpizza.mock.openai import CHAT_PATH, MODELS_PATH, chat_route, models_route
from batchpizza.mock.pizzagpt import API_PATH, pizzagpt_route
from batchpizza.mock.replies import STATE, State
from batchpizza.mock.stats import Stats
from batchpizza.mock.tokens import TokenLedger

# Connections waiting to be accepted. aiohttp's default, 128, is below what a client at
# --concurrency 256 opens at once: on uvloop, whose connects leave together, the kernel dropped
# up to 19 SYNs a run and those connections waited for TCP's one-second retry (the latency
# benchmark read 88-95 % instead of 96 %; asyncio's loop staggers its connects and dropped none).
# Servers the mock stands in for accept more: uvicorn (vLLM) 2048, Go's net/http (Ollama) the
# system's limit.
BACKLOG = 2048
# Hung or slow handlers must not hold up stop(); a mock owes nobody a graceful drain.
_SHUTDOWN_TIMEOUT = 0.25


async def _get_stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response({**state.stats.to_dict(), **state.live.tokens.to_dict()})


async def _post_reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return web.json_response({"ok": True})


def make_app(
    config: MockConfig, stats: Stats | None = None, batches: BatchMock | None = None
) -> web.Application:
    # Batch input files up to OpenAI's 200 MB (aiohttp's default cap is 1 MB).
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app[STATE] = State(config, stats if stats is not None else Stats())
    app.router.add_post(API_PATH, pizzagpt_route)
    app.router.add_post(CHAT_PATH, chat_route)
    app.router.add_get(MODELS_PATH, models_route)
    app.router.add_get("/__stats", _get_stats)
    app.router.add_post("/__reset", _post_reset)
    install_batches(app, batches)
    return app


class MockServer:
    """In-process server: `async with MockServer(config) as srv:` then srv.base_url, srv.stats."""

    def __init__(
        self,
        config: MockConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        batches: BatchMock | None = None,
    ) -> None:
        self.stats = Stats()
        self._app = make_app(config or MockConfig(), self.stats, batches)
        self._state = self._app[STATE]
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.base_url = ""

    @property
    def config(self) -> MockConfig:
        return self._state.live.config

    @config.setter
    def config(self, config: MockConfig) -> None:
        self._state.live = Live(config)  # fresh RNG and rate window

    @property
    def batches(self) -> BatchMock:
        """The Batch API's behaviour and record (mock/batches.py)."""
        return self._app[BATCH_MOCK]

    @property
    def tokens(self) -> TokenLedger:
        """The tokens the chat route counted (mock/tokens.py)."""
        return self._state.live.tokens

    def reset(self) -> None:
        """Clear stats, per-question directive counters and the rate-limit window."""
        self._state.reset()

    async def start(self) -> None:
        runner = web.AppRunner(
            self._app,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=_SHUTDOWN_TIMEOUT,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port, backlog=BACKLOG)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._site = runner, site
        port = runner.addresses[0][1]
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.base_url = f"http://{host}:{port}"

    async def go_down(self) -> None:
        """The "down" mode: stop listening and drop every open connection, so that each new
        connection is refused, as at a server that is not there; `come_up` listens again."""
        if self._runner is None or self._site is None:
            return
        await self._site.stop()
        self._site = None
        for handler in list(self._runner.server.connections if self._runner.server else ()):
            handler.force_close()

    async def come_up(self) -> None:
        if self._runner is not None and self._site is None:
            host, port = self._host, int(self.base_url.rsplit(":", 1)[1])
            self._site = web.TCPSite(self._runner, host, port, backlog=BACKLOG)
            await self._site.start()

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for task in list(self._state.tasks):
            task.cancel()
        await runner.cleanup()

    async def __aenter__(self) -> MockServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class ThreadedMockServer:
    """MockServer on its own loop in a daemon thread, for sync code: `with ThreadedMockServer()`."""

    def __init__(
        self, config: MockConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._server = MockServer(config, host=host, port=port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return self._server.base_url

    @property
    def stats(self) -> Stats:
        return self._server.stats

    @property
    def tokens(self) -> TokenLedger:
        return self._server.tokens

    @property
    def config(self) -> MockConfig:
        return self._server.config

    @config.setter
    def config(self, config: MockConfig) -> None:
        self._server.config = config

    @property
    def batches(self) -> BatchMock:
        return self._server.batches

    def reset(self) -> None:
        self._server.reset()

    def go_down(self) -> None:
        """Every new connection refused until `come_up` (MockServer.go_down)."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._server.go_down(), self._loop).result(timeout=10)

    def come_up(self) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._server.come_up(), self._loop).result(timeout=10)

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=self._run, args=(loop,), daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._server.start(), loop).result(timeout=10)
        except BaseException:
            self.stop()  # don't leave the loop thread behind, e.g. when the port is taken
            raise

    def stop(self) -> None:
        loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._server.stop(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            # Finish off stragglers here, on their own thread, so nothing is destroyed pending.
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def __enter__(self) -> ThreadedMockServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    config: MockConfig,
    host: str = "127.0.0.1",
    port: int = 8080,
    batches: BatchMock | None = None,
) -> None:
    """Run until SIGINT/SIGTERM. Stdout line 1 gives the URL; stderr gets stats JSON on exit."""
    # Windows has no loop signal handlers, so there Ctrl+C arrives as KeyboardInterrupt.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(config, host, port, batches))


async def _serve(config: MockConfig, host: str, port: int, batches: BatchMock | None) -> None:
    server = MockServer(config, host=host, port=port, batches=batches)
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopping.set)
    # Only now announce: a caller that signals us right after reading this line must be handled.
    print(f"batchpizza mock server listening on {server.base_url}", flush=True)
    try:
        await stopping.wait()
    finally:
        await server.stop()
        print(json.dumps(server.stats.to_dict(answers=False)), file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def serving(config: MockConfig | None = None) -> AsyncIterator[str]:
    """A mock server on a free local port for the block (`--mock`: the offline demo); its URL."""
    async with MockServer(config or MockConfig()) as server:
        yield server.base_url
