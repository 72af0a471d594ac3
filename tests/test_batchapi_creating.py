"""A batch made of an uploaded file at most once (batchapi/creating.py): the file's `creating` mark,
when it is taken back, and what a rerun on a server that lists no batches then does. Against
real sockets on 127.0.0.1: a port with nothing listening, a server that reads the create and
closes without a word, and the raw Batch API (tests/batchapi_raw.py)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from batchpizza.batchapi import creating
from batchpizza.batchapi.client import BatchClient
from batchpizza.checkpoint import Checkpoint
from batchpizza.checkpoint.batches import BatchFile
from batchpizza.controls.stop import Stop
from batchpizza.errors import BatchAPIError
from batchpizza.providers.openai import OpenAIAPI
from tests.batchapi_raw import KEY, RawServer


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Checkpoint]:
    store = Checkpoint.open(tmp_path / "c.checkpoint")
    store.use_identity({"provider": "openai", "model": "m"})
    yield store
    store.close()


def uploaded(store: Checkpoint) -> BatchFile:
    """A file recorded and uploaded (`stored`), its batch not asked for yet."""
    f = store.intend_file([("0-ab", "q0", 0, b"k", 1, b"{}\n")])
    store.set_file_id(f.seq, "file-1")
    return f


def client_of(session: aiohttp.ClientSession, base_url: str) -> BatchClient:
    return BatchClient(session, OpenAIAPI(f"{base_url}/v1", api_key=KEY), Stop(), tries=1)


@pytest.fixture
def nothing_listening() -> Iterator[str]:
    """The URL of a port bound but not listening: every connection to it is refused (and no
    other test or process can take the port meanwhile)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


class Closing:
    """A server that reads a whole request, then closes the connection without replying (a
    gateway that dies after passing it on); `then_gone`: and stops listening (every later
    connection refused)."""

    def __init__(self, then_gone: bool = False) -> None:
        self.then_gone = then_gone
        self.got: list[bytes] = []  # the requests it read
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        self.got.append(head + await reader.readexactly(length))
        if self.then_gone:
            self.server.close()
        writer.close()

    async def __aenter__(self) -> Closing:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()


async def _no_listing(request: web.Request, n: int) -> web.StreamResponse | None:
    return web.json_response({"detail": "Method Not Allowed"}, status=405)


async def found_on_a_server_listing_no_batches(store: Checkpoint, f: BatchFile) -> object:
    """What a rerun finds of file `f`'s batch on a server that lists no batches."""
    with RawServer() as raw:
        raw.hooks["batches"] = _no_listing
        async with aiohttp.ClientSession() as session:
            return await creating.find(client_of(session, raw.base_url), store, f, "file-1")


async def test_a_create_whose_connection_was_refused_is_made_by_the_rerun(
    store: Checkpoint, nothing_listening: str
) -> None:
    # Nothing was sent, so no batch can exist: the mark goes back to `stored`, and a server
    # that lists no batches does not stop every rerun with exit 2 for a batch never asked for.
    f = uploaded(store)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(BatchAPIError) as caught:
            await creating.create(client_of(session, nothing_listening), store, f, "file-1")

    assert caught.value.status is None and not caught.value.sent
    assert store.file_state(f.seq) == creating.STORED
    assert await found_on_a_server_listing_no_batches(store, f) is None


async def test_a_create_closed_without_a_reply_stays_creating_and_the_rerun_stops(
    store: Checkpoint,
) -> None:
    # The server read the whole create: it may have made the batch. The mark stays, and where
    # the server cannot list batches the rerun stops (exit 2) rather than submit twice.
    f = uploaded(store)
    async with Closing() as closing, aiohttp.ClientSession() as session:
        with pytest.raises(BatchAPIError) as caught:
            await creating.create(client_of(session, closing.url), store, f, "file-1")

    assert len(closing.got) == 1 and closing.got[0].startswith(b"POST /v1/batches ")
    assert caught.value.status is None and caught.value.sent
    assert store.file_state(f.seq) == creating.CREATING
    with pytest.raises(BatchAPIError) as stopped:
        await found_on_a_server_listing_no_batches(store, f)
    assert stopped.value.exit_code == 2
    assert "lists no batches to tell whether it made one" in stopped.value.message


async def test_the_creating_mark_is_made_durable_before_the_create_is_sent(
    store: Checkpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Committed is not durable (synchronous=NORMAL): without a sync between the two, a power
    # loss could keep the create's batch on the server and lose the mark, and the rerun would
    # make a second batch of the same lines.
    f = uploaded(store)
    calls: list[str] = []
    mark, sync = store.mark_file, store.sync

    def marking(seq: int, state: str) -> None:
        calls.append(f"mark {state}")
        mark(seq, state)

    def syncing() -> None:
        calls.append("sync")
        sync()

    monkeypatch.setattr(store, "mark_file", marking)
    monkeypatch.setattr(store, "sync", syncing)
    with RawServer() as raw:

        async def created(request: web.Request, n: int) -> web.StreamResponse | None:
            calls.append("create")
            return None

        raw.hooks["create"] = created
        raw.store()  # the uploaded file the batch is made of
        async with aiohttp.ClientSession() as session:
            await creating.create(client_of(session, raw.base_url), store, f, "file-0")

    assert calls == ["mark creating", "sync", "create"]


@pytest.mark.parametrize("call", ["cancel", "get"])
async def test_a_call_refused_after_a_try_that_reached_the_server_may_have_been_sent(
    call: str,
) -> None:
    # The first try is read and dropped, the next one refused: by ours (a cancel, POST, tried
    # twice here), or by aiohttp's own (it sends a GET again at once after a dropped
    # connection). Only the last failure is said, but the first may have done the work.
    async def no_wait(delay: float) -> None:
        pass

    async with Closing(then_gone=True) as closing, aiohttp.ClientSession() as session:
        provider = OpenAIAPI(f"{closing.url}/v1", api_key=KEY)
        client = BatchClient(session, provider, Stop(), tries=2, sleep=no_wait)
        with pytest.raises(BatchAPIError) as caught:
            await getattr(client, call)("batch-1")

    assert len(closing.got) == 1
    assert "Connect call failed" in caught.value.message  # the last try was refused
    assert caught.value.sent
