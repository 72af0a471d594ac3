"""The engine over one batch of rows held in memory, with no checkpoint of its own: each row read
once into what it asks, the good ones sent, every row's output row back in order. A Ray actor
runs its batches through here; where answers are kept is its caller's business (`on_result`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from batchpizza.controls.gate import Gatekeeper
from batchpizza.controls.retrying import RetryPolicy
from batchpizza.controls.stop import Stop
from batchpizza.engine.runner import Runner
from batchpizza.errors import RowProblem, UsageError
from batchpizza.providers import Provider
from batchpizza.records import OutputRow, Prompt, Result, answered_row, invalid_row, pending_row
from batchpizza.rows import Fields, digest_of, interpret, to_prompt


class MemoryStore:
    """A store that keeps nothing: each result reaches the caller through `on_result`."""

    path: Path | None = None

    def write(self, results: Sequence[Result], attempts: Sequence[Any] = (), run: int = 0) -> None:
        pass

    def sync_due(self) -> bool:
        return False

    def sync_delay(self) -> float:
        return 1.0  # nothing to make durable: the timer's sync does nothing

    def sync(self) -> None:
        pass


class Batch:
    """The rows of one batch, read once: what each good row asks, and each bad row's output."""

    def __init__(
        self,
        objects: Sequence[Any],
        fields: Fields,
        where: str = "row",
        key: Callable[[Prompt], bytes] = digest_of,
    ) -> None:
        """`objects`: each row as a dict, or as the problem (a str) of a row that could not be
        read as one, or a RowProblem (a row its reader found bad, with its id); `key` makes what
        a row's answer is kept by (its request's fingerprint)."""
        self.size = len(objects)
        self.prompts: dict[int, Prompt] = {}
        self.digests: dict[int, bytes] = {}
        self.invalid: dict[int, OutputRow] = {}
        first: dict[str, int] = {}
        for pos, obj in enumerate(objects):
            try:
                if isinstance(obj, RowProblem):
                    raise obj
                if isinstance(obj, str):
                    raise RowProblem(obj)
                prompt = to_prompt(interpret(obj, fields, pos))
            except RowProblem as exc:
                problem = (f"field {exc.field!r}: " if exc.field else "") + exc.problem
                self.invalid[pos] = invalid_row(exc.id, problem)  # None: no id read
                continue
            if prompt.id in first:  # ids are unique within a batch as within a file
                problem = (
                    f"field 'id': duplicate id {prompt.id!r} (first on {where} {first[prompt.id]})"
                )
                self.invalid[pos] = invalid_row(prompt.id, problem)
                continue
            first[prompt.id] = pos
            self.prompts[pos] = prompt
            self.digests[pos] = key(prompt)

    def id_of(self, pos: int) -> str:
        """A good row's id."""
        return self.prompts[pos].id


async def answer_batch(
    batch: Batch,
    todo: Sequence[int],
    *,
    provider: Provider,
    gate: Gatekeeper,
    policy: RetryPolicy,
    concurrency: int,
    session: aiohttp.ClientSession | None = None,
    on_result: Callable[[int, Result], None] | None = None,
    kept: bool = False,
    key: Callable[[Prompt], bytes] | None = None,
    stop: Stop | None = None,
) -> dict[int, OutputRow]:
    """Send the rows of `batch` at positions `todo` (good rows, ascending); each one's output
    row by position, `pending` for those a stop left unsent. A reply after which nothing can
    succeed (a wrong key) raises UsageError, saying whether answers so far are `kept`. Each
    result's digest is `key`'s (by default the request key, as the checkpoint keeps it)."""
    finished: dict[int, OutputRow] = {}

    def done(pos: int, result: Result) -> None:
        finished[pos] = answered_row(result)
        if on_result is not None:
            on_result(pos, result)

    runner = Runner(
        provider,
        MemoryStore(),
        policy,
        gate,
        concurrency=concurrency,
        stop=stop if stop is not None else Stop(),  # a gate's, which it stops when told to
        on_result=done,
        session=session,
        key=key,
    )
    await runner.run(iter([(pos, batch.prompts[pos]) for pos in todo]))
    if runner.fatal is not None:
        raise UsageError(runner.fatal_message(kept=kept))
    for pos in todo:
        if pos not in finished:
            finished[pos] = pending_row(batch.id_of(pos), batch.digests[pos])
    return finished
