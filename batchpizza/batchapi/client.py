"""The Batch API's HTTP calls (OpenAI's /files and /batches), on the run's one session, with the
provider's key and its masking: nothing here ever puts the key into a message.

Every call is tried again after a transport error, a timeout or a retryable status (429, 5xx),
after a backoff or the server's Retry-After, a few times; a wait ends early when the run stops
(`Halted`). Any other status is a BatchAPIError saying what the server said.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

import batchpizza.jsoncodec as jsoncodec
from batchpizza.batchapi.files import ENDPOINT
from batchpizza.batchapi.settings import COMPLETION_WINDOW
from batchpizza.batchapi.statuses import normalised
from batchpizza.controls.stop import Stop
from batchpizza.errors import RETRYABLE_STATUSES, BatchAPIError, describe
from batchpizza.providers.errorreply import error_detail
from batchpizza.providers.http import never_sent, reply_json
from batchpizza.providers.limits import retry_after_of
from batchpizza.providers.openai import OpenAIAPI

if TYPE_CHECKING:
    from batchpizza.config import RunConfig

log = logging.getLogger("batchpizza")

PAGE = 100  # batches listed a page at a time (OpenAI's most)
_HINTS = {
    401: " [the API key is wrong]",
    404: " [no Batch API here; is the base URL right (often .../v1)?]",
    413: " [the server takes smaller files: set BATCHPIZZA_BATCH_LIMITS=LINES,BYTES below its "
    "limits]",
}


class Halted(Exception):
    """The run stopped (a deadline, a signal) while a call waited to be tried again."""


class BatchClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        provider: OpenAIAPI,
        stop: Stop,
        *,
        tries: int = 6,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        retry_after_cap: float = 300.0,
        sleep: Callable[[float], Any] | None = None,
    ) -> None:
        self.session = session
        self.provider = provider
        self.stop = stop
        self.base = provider.api_base
        self.tries = max(1, tries)
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.retry_after_cap = retry_after_cap
        self._sleep = sleep or stop.sleep
        timeout = provider.timeout
        # A file may be large: no total, only a limit on each connect and each read.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        self.calls = 0  # HTTP calls made (the summary's requests)

    @classmethod
    def of(
        cls, session: aiohttp.ClientSession, provider: OpenAIAPI, stop: Stop, config: RunConfig
    ) -> BatchClient:
        """The client of a run with these options: its retries and backoff, as online."""
        return cls(
            session,
            provider,
            stop,
            tries=config.max_retries + 1,
            backoff_base=config.backoff_base,
            backoff_cap=config.backoff_cap,
            retry_after_cap=config.retry_after_cap,
        )

    def _url(self, path: str) -> URL:
        return self.base.with_path(self.base.path.rstrip("/") + path).with_query(self.base.query)

    async def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        json_body: Any = None,
        form: Callable[[], aiohttp.FormData] | None = None,
        params: dict[str, str] | None = None,
        once: bool = False,
    ) -> bytes:
        url = self._url(path)
        if params:
            url = url.update_query(params)
        said = ""
        tries = 1 if once else self.tries
        sent = False  # whether any try may have reached the server
        for attempt in range(tries):
            retry_after: float | None = None
            status = None  # of the last reply; None when there was none (a dropped connection)
            try:
                headers = self.provider.api_headers()
                data: Any = None
                if json_body is not None:
                    data = jsoncodec.dumps(json_body)
                    headers["content-type"] = "application/json"
                elif form is not None:
                    data = form()
                self.calls += 1
                async with self.session.request(
                    method,
                    url,
                    data=data,
                    headers=headers,
                    timeout=self._timeout,
                    proxy=self.provider.proxy,
                ) as resp:
                    body = await resp.read()
                    status, reason, reply_headers = resp.status, resp.reason or "", resp.headers
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                said = describe(exc) if str(exc) else type(exc).__name__
                sent = sent or not never_sent(exc, method)
            else:
                sent = True
                if 200 <= status < 300:
                    return body
                _, message = error_detail(body)
                said = f"HTTP {status} {reason}".strip() + f": {self.provider._said(message)}"
                if status not in RETRYABLE_STATUSES:
                    # A 404 for one batch or file is about it, not about the URL.
                    known = status != 404 or path in ("/files", "/batches")
                    hint = _HINTS.get(status, "") if known else ""
                    raise BatchAPIError(f"{what}: {said}{hint}", status)
                retry_after = retry_after_of(reply_headers)
            if attempt + 1 == tries:
                break
            wait = self.backoff(attempt)
            if retry_after is not None:
                wait = min(max(wait, retry_after), self.retry_after_cap)
            log.info("%s: %s; trying again in %.1fs", what, said, wait)
            if self.stop.sending_stopped:
                raise Halted
            await self._sleep(wait)
            if self.stop.sending_stopped:
                raise Halted
        error = BatchAPIError(f"{what}: {said}" + (f" ({tries} tries)" if tries > 1 else ""))
        error.status = status  # whether the server answered (creating.py); the exit code stands
        error.sent = sent
        raise error

    def backoff(self, attempt: int) -> float:
        return float(min(self.backoff_cap, self.backoff_base * 2**attempt))

    async def pause(self, attempt: int) -> None:
        """The backoff before try `attempt + 2`; Halted when the run stops."""
        if self.stop.sending_stopped:
            raise Halted
        await self._sleep(self.backoff(attempt))
        if self.stop.sending_stopped:
            raise Halted

    async def _json(self, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any]:
        # Masked: a batch object is kept in the checkpoint, and a server may echo the key in it.
        body = self.provider._masked(await self._call(method, path, what, **kwargs))
        try:
            data = reply_json(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise BatchAPIError(f"{what}: the reply is not a JSON object")
        return data

    async def files(self) -> list[dict[str, Any]]:
        """The server's batch input files (to find one uploaded by a run killed before it
        recorded the file's id)."""
        found: list[dict[str, Any]] = []
        params = {"purpose": "batch", "limit": "10000"}
        while True:
            page = await self._json("GET", "/files", "listing the uploaded files", params=params)
            data = page.get("data")
            items = [f for f in data if isinstance(f, dict)] if isinstance(data, list) else []
            found.extend(items)
            if not _next_page(page, items, params):
                return found

    async def upload(self, name: str, content: bytes) -> str:
        def form() -> aiohttp.FormData:
            data = aiohttp.FormData()
            data.add_field("purpose", "batch")
            data.add_field("file", content, filename=name, content_type="application/jsonl")
            return data

        # Once: what a failed upload left on the server is looked for before another (flow.py).
        reply = await self._json("POST", "/files", f"uploading {name}", form=form, once=True)
        file_id = reply.get("id")
        if not isinstance(file_id, str):
            raise BatchAPIError(f"uploading {name}: the reply has no file id")
        return file_id

    async def _batch_pages(self) -> AsyncIterator[list[dict[str, Any]]]:
        """The batches the server lists, a page at a time (newest first at OpenAI)."""
        params = {"limit": str(PAGE)}
        while True:
            page = await self._json("GET", "/batches", "listing the batches", params=params)
            data = page.get("data")
            items = [b for b in data if isinstance(b, dict)] if isinstance(data, list) else []
            yield items
            if not _next_page(page, items, params):
                return

    async def find_file(self, name: str) -> str | None:
        """The id of the file uploaded under `name`, if the server has one; None too where the
        server lists no files (some gateways only take uploads): uploading again bills nothing,
        only a batch made of it would."""
        try:
            listed = await self.files()
        except BatchAPIError as exc:
            if exc.status not in (404, 405):
                raise
            log.info("%s: uploading %s again", exc.message, name)
            return None
        for item in listed:
            if item.get("filename") == name and isinstance(item.get("id"), str):
                return str(item["id"])
        return None

    async def find_batch(self, name: str, since: float, file_id: str) -> dict[str, Any] | None:
        """The batch made of file `name` (`file_id`, recorded at `since`), if there is one."""
        async for page in self._batch_pages():
            for batch in page:
                metadata = batch.get("metadata")
                named = isinstance(metadata, dict) and metadata.get("batchpizza") == name
                if named or batch.get("input_file_id") == file_id:
                    return normalised(batch)
            # A page listed newest first (OpenAI's order) that ends with a batch made an hour
            # before the file was recorded: the pages after it hold none made of it. A server
            # listing oldest first is read to its end.
            times = [b.get("created_at") for b in page]
            stamps = [t for t in times if isinstance(t, (int, float)) and not isinstance(t, bool)]
            newest_first = len(stamps) == len(times) and stamps == sorted(stamps, reverse=True)
            if newest_first and stamps and stamps[-1] < since - 3600:
                return None
        return None

    async def create(self, file_id: str, name: str) -> dict[str, Any]:
        body = {
            "input_file_id": file_id,
            "endpoint": ENDPOINT,
            "completion_window": COMPLETION_WINDOW,
            "metadata": {"batchpizza": name},
        }
        # Once: a batch made by a call whose reply was lost would submit its rows twice if made
        # again; the caller looks for it first (flow.py).
        reply = await self._json(
            "POST", "/batches", f"creating the batch of {name}", json_body=body, once=True
        )
        if not isinstance(reply.get("id"), str):
            raise BatchAPIError(f"creating the batch of {name}: the reply has no batch id")
        return normalised(reply)

    async def get(self, batch_id: str) -> dict[str, Any]:
        batch = await self._json("GET", f"/batches/{batch_id}", f"polling batch {batch_id}")
        return normalised(batch)

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        batch = await self._json(
            "POST", f"/batches/{batch_id}/cancel", f"cancelling batch {batch_id}"
        )
        return normalised(batch)

    async def delete_file(self, file_id: str) -> None:
        await self._call("DELETE", f"/files/{file_id}", f"deleting {file_id}")

    async def content(self, file_id: str) -> bytes:
        content = await self._call("GET", f"/files/{file_id}/content", f"downloading {file_id}")
        return self.provider._masked(content)  # a server may echo the key in a reply body


def _next_page(page: dict[str, Any], items: list[dict[str, Any]], params: dict[str, str]) -> bool:
    """Whether a listing goes on after `page`, `params` set to ask for the next one: not when
    the server says it has no more, nor when it ignored `after` and gave the same page again
    (a server that always says has_more would be asked for ever)."""
    last = items[-1].get("id") if items else None
    if not page.get("has_more") or not isinstance(last, str) or last == params.get("after"):
        return False
    params["after"] = last
    return True
