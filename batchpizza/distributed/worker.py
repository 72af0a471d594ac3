"""What each actor of a cluster run does: the engine over one Arrow batch at a time, in memory,
its attempts paced by slots leased from the cluster's controller, its answers written to the
shared checkpoint's parts before its workers send again.

The engine's attempts pass a `ClusterGate` (batchpizza.distributed.gate) instead of a Control of
their own. `Answerer` runs a batch on the actor's one event loop and one session, kept from
batch to batch: the rows already answered (by an earlier run, or by an earlier attempt at this
batch on an actor that died) are taken from the checkpoint, the rest sent where they are (no
file, no job, no database), and the batch comes back with the result columns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from batchpizza.config import RunConfig
from batchpizza.controls.retrying import RetryPolicy
from batchpizza.controls.stop import Stop
from batchpizza.distributed.gate import ClusterGate, Controller, slot_trace
from batchpizza.distributed.parts import DIGEST, ID, PartStore, key_of
from batchpizza.distributed.staging import row_ids, row_objects
from batchpizza.engine.batch import Batch, answer_batch
from batchpizza.engine.loop import new_loop
from batchpizza.engine.session import new_session
from batchpizza.providers.factory import make_provider, remember_secrets
from batchpizza.records import OutputRow, Result, is_answered
from batchpizza.rows import Fields, fingerprint_key
from batchpizza.sinks.values import result_columns, result_fields
from batchpizza.tables import from_data

if TYPE_CHECKING:
    import aiohttp
    import pyarrow as pa

log = logging.getLogger("batchpizza")


SHUTDOWN_WAIT_S = 5.0  # for the session to close and the actor's loop thread to end


class Kept:
    """The answers an earlier run kept, as the driver read them: an Arrow table (in Ray's object
    store, shared by the actors of a node without a copy) and, per actor, only an index from
    row id to its rows. Measured with 200,000 kept rows of 300-character answers: 41 MB an
    actor, where a dict of every row as Python values took 194 MB (1 KB a row)."""

    def __init__(self, table: pa.Table) -> None:
        self._table = table
        self._at: dict[str, list[int]] = {}
        for i, row_id in enumerate(table.column(ID).to_pylist()):
            self._at.setdefault(row_id, []).append(i)

    def of(self, ids: Sequence[str]) -> pa.Table:
        """The kept rows of these ids (each of their answers, for any prompt)."""
        import pyarrow as pa

        # Typed: an empty list of positions would be taken as nulls, which `take` refuses.
        at = pa.array([i for row_id in ids for i in self._at.get(row_id, ())], pa.int64())
        return self._table.take(at)


class Answers:
    """The answers known for one batch's ids, by (id, prompt digest)."""

    def __init__(self, tables: Sequence[pa.Table]) -> None:
        self._rows: dict[tuple[str, bytes | None], dict[str, Any]] = {}
        self._digested: set[str] = set()  # ids with an answer that has a digest
        for table in tables:
            for row in table.to_pylist():
                row_id, digest = row.pop(ID), row.pop(DIGEST, None)
                self._rows.setdefault((row_id, digest), row)
                if digest is not None:
                    self._digested.add(row_id)

    def get(self, row_id: str, digest: bytes | None) -> dict[str, Any] | None:
        """The answer kept for this id and prompt; or for this id from a part without digests,
        unless some answer of this id has a digest (then the prompt is known, and not this)."""
        if digest is None:
            return None
        found = self._rows.get((row_id, digest))
        if found is None and row_id not in self._digested:
            found = self._rows.get((row_id, None))
        return found


class PartWriter:
    """Answered results of one batch, written to the checkpoint as parts: `add` is the engine's
    on_row, `flush` the gate's before_send, so a worker's answer is durable before it sends
    again and a crash re-sends at most what was in flight."""

    def __init__(self, store: PartStore, key: str, schema: pa.Schema) -> None:
        self._store = store
        self._key = key
        self._schema = schema
        self._buffer: list[Result] = []
        self._lock = asyncio.Lock()

    def add(self, pos: int, result: Result) -> None:
        if is_answered(result.finish_reason):
            self._buffer.append(result)

    async def flush(self) -> None:
        async with self._lock:
            if self._buffer:
                rows, self._buffer = self._buffer, []
                table = results_table(rows, self._schema)
                await asyncio.to_thread(self._store.write_part, self._key, table)


def part_schema(extra: tuple[str, ...] = ()) -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [pa.field(ID, pa.string()), pa.field(DIGEST, pa.binary()), *result_fields(extra)]
    )


def results_table(results: Sequence[Result], schema: pa.Schema) -> pa.Table:
    import pyarrow as pa

    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    for r in results:
        row = {
            ID: r.id,
            DIGEST: r.digest,
            "answer": r.answer,
            "finish_reason": r.finish_reason,
            "misuse": r.finish_reason == "misuse",
            "error": r.error,
            "attempts": r.attempts,
            "latency_ms": r.latency_ms,
            "model": r.model,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "tokens_estimated": None
            if r.prompt_tokens is None and r.completion_tokens is None
            else bool(r.tokens_estimated),
            "reused_from": None,  # a Ray batch sends every row it asks
        }
        for name, values in columns.items():
            values.append(row[name])
    return pa.table(columns, schema=schema)


class Answerer:
    """The callable Ray Data constructs in each actor: batch in, batch with results out."""

    def __init__(
        self,
        controller: Controller,
        *,
        options: dict[str, Any],
        share: int,
        checkpoint: str | None = None,
        done: pa.Table | None = None,
    ) -> None:
        self._controller = controller
        # Checked on the driver; per actor: its share of the concurrency, no pacing of its own
        # (the controller's slots are the pacing), and bad rows as rows, never a failed task.
        self._options = {
            **options,
            "concurrency": share,
            "rate": 0,
            "skip_bad_rows": True,
            "quiet": True,
            "progress": False,
            "input_label": "<ray batch>",
        }
        config = RunConfig.from_options(**self._options)
        self.id_field = config.fields_named[2]
        remember_secrets(config)  # before the provider, whose errors may quote them
        self._provider = make_provider(config)
        # Parts keep answers by the request's fingerprint: another model or parameters re-ask.
        self._key = fingerprint_key(self._provider)
        self._policy = RetryPolicy.from_config(config)
        self._extra = self._provider.extra_columns
        self._fields = Fields.from_config(config, self._extra)
        self._share = share
        self._store = PartStore(checkpoint) if checkpoint else None
        self._schema = part_schema(self._extra)
        self._kept = Kept(done) if done is not None and done.num_rows else None
        self._loop: asyncio.AbstractEventLoop | None = None  # a thread's, for the actor's life
        self._thread: threading.Thread | None = None
        self._session: aiohttp.ClientSession | None = None

    def __call__(self, batch: pa.Table) -> pa.Table:
        # Ray Data calls this once per batch; the actor's loop and session outlive the call, so
        # connections are kept open from one batch to the next.
        future = asyncio.run_coroutine_threadsafe(self.answer_batch(batch), self._actor_loop())
        return future.result()

    async def close(self) -> None:
        """Close the actor's session, on the loop it was used on (an await-er's own)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def shutdown(self) -> None:
        """Close the session on the actor's loop, then stop that loop and its thread. Ray Data
        calls `__del__` when it shuts an actor down gracefully; a killed actor's process ending
        closes its sockets anyway."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        if threading.current_thread() is thread:
            # Collected on the loop's own thread: waiting there for the loop would hang it (and
            # a thread cannot join itself). The loop closes the session, then stops.
            loop.create_task(self._close_and_stop(loop))
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.close(), loop).result(SHUTDOWN_WAIT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(SHUTDOWN_WAIT_S)
        if not thread.is_alive():
            loop.close()

    async def _close_and_stop(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(Exception):
            await self.close()
        loop.stop()

    def __del__(self) -> None:
        if getattr(self, "_loop", None) is not None:
            self.shutdown()

    def _actor_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = new_loop()  # uvloop's where installed, as a run's
            thread = threading.Thread(target=loop.run_forever, name="batchpizza-actor", daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
        return self._loop

    def _actor_session(self) -> aiohttp.ClientSession:
        """The actor's one session, for every batch it answers: at most its share of the
        cluster's concurrency in connections, each request on time for its slot as it is
        written (gate.slot_trace)."""
        if self._session is None or self._session.closed:
            self._session = new_session(self._share, [slot_trace()])
        return self._session

    async def answer_batch(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        ids = self._ids(batch)
        key = key_of(ids)
        known = [self._kept.of(ids)] if self._kept is not None else []
        if self._store is not None:
            known.append(await asyncio.to_thread(self._store.read_batch, key, self._schema))
        rows, kept, todo = self._match(batch, ids, known)
        fresh = await self._run(rows, todo, key) if todo else {}
        names = list(result_columns(self._extra))
        out: list[dict[str, Any]] = []
        for pos in range(rows.size):
            if pos in kept:
                out.append({name: kept[pos].get(name) for name in names})
            else:
                row = fresh[pos] if pos in fresh else rows.invalid[pos]
                out.append({name: getattr(row, name) for name in names})
        table = pa.Table.from_pylist(out, schema=pa.schema(result_fields(self._extra)))
        if self._store is not None:
            answered = [
                {ID: ids[pos], DIGEST: rows.digests[pos], **row}
                for pos, row in enumerate(out)
                if is_answered(row["finish_reason"])
            ]
            sealed = pa.Table.from_pylist(
                [{n: r.get(n) for n in self._schema.names} for r in answered], schema=self._schema
            )
            await asyncio.to_thread(self._store.seal, key, sealed)
        result: pa.Table = from_data(batch).restore(table)
        return result

    def kept_batch(self, batch: pa.Table) -> pa.Table | None:
        """`batch` with its result columns when the kept answers answer every row of it (each
        for the request the row asks now), else None: what a rerun with nothing to send writes,
        without a cluster (batchpizza.distributed.command)."""
        import pyarrow as pa

        ids = self._ids(batch)
        known = [self._kept.of(ids)] if self._kept is not None else []
        rows, kept, todo = self._match(batch, ids, known)
        if todo or rows.invalid:
            return None
        names = list(result_columns(self._extra))
        out = [{name: kept[pos].get(name) for name in names} for pos in range(rows.size)]
        table = pa.Table.from_pylist(out, schema=pa.schema(result_fields(self._extra)))
        result: pa.Table = from_data(batch).restore(table)
        return result

    def _match(
        self, batch: pa.Table, ids: list[str], known: list[pa.Table]
    ) -> tuple[Batch, dict[int, dict[str, Any]], list[int]]:
        """The batch's rows read once; the answer kept for each good row's request, by position,
        and the positions of the good rows without one (to send)."""
        objects = row_objects(batch, self.id_field)
        rows = Batch(objects, self._fields, key=self._key)  # each row read and hashed once
        answers = Answers(known)
        kept: dict[int, dict[str, Any]] = {}
        todo: list[int] = []
        for pos, digest in rows.digests.items():
            found = answers.get(ids[pos], digest)
            if found is None:
                todo.append(pos)
            else:
                kept[pos] = found
        return rows, kept, todo

    async def _run(self, rows: Batch, todo: list[int], key: str) -> dict[int, OutputRow]:
        """The rows of `todo` sent by the engine where they are, paced by the cluster's
        slots; each answer written to the checkpoint's parts before the worker sends again."""
        writer = PartWriter(self._store, key, self._schema) if self._store is not None else None
        # One stop for the gate and the runner: a stop the gate hears ends the retry waits too.
        stop = Stop()
        gate = ClusterGate(
            self._controller,
            share=self._share,
            before_send=writer.flush if writer is not None else None,
            stop=stop,
        )
        try:
            return await answer_batch(
                rows,
                todo,
                provider=self._provider,
                gate=gate,
                policy=self._policy,
                concurrency=self._share,
                session=self._actor_session(),
                on_result=writer.add if writer is not None else None,
                kept=writer is not None,
                key=self._key,
                stop=stop,
            )
        finally:
            await gate.close()
            if writer is not None:
                await writer.flush()

    def _ids(self, batch: pa.Table) -> list[str]:
        return row_ids(batch, self.id_field)
