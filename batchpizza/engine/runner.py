"""The send stage: one session, a fixed pool of workers, pacing, retries, group commits.

`concurrency` workers each take the next row when they are free, from rows read `concurrency` at
a time (backpressure: at most that many read ahead, and no task is created per row). A worker
holds its row, and so its slot, until the row's result is committed: at any moment at most
`concurrency` rows are sent but not yet saved, which bounds what a kill -9 can make us send twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import aiohttp

from batchpizza.controls.gate import Gatekeeper, Stopped
from batchpizza.controls.ratelimit import Sleep
from batchpizza.controls.retrying import RetryPolicy
from batchpizza.controls.stop import Stop
from batchpizza.engine.committer import Committer
from batchpizza.engine.outcomes import ANSWERED, REFUSAL, STOPPED, outcome_of
from batchpizza.engine.session import (
    YOUNG_OBJECTS_PER_REQUEST,
    collector_threshold,
    new_session,
)
from batchpizza.engine.store import Store
from batchpizza.errors import MisuseDetected, ProviderError, QuotaExhausted, describe
from batchpizza.plurals import plural
from batchpizza.providers import Provider
from batchpizza.providers.quota import concluded
from batchpizza.records import (
    ENDED_EMPTY,
    Answer,
    Attempt,
    Outcome,
    Prompt,
    RateInfo,
    Result,
    is_answered,
)
from batchpizza.rows import request_key
from batchpizza.structured import INVALID_OUTPUT, NOT_VALIDATED, Structured, with_tokens_of

log = logging.getLogger("batchpizza")

PendingRow = tuple[int, Prompt]  # (position in the input, what to send)


@dataclass
class Counters:
    """What this run did so far; read by the progress bar and the summary."""

    requests: int = 0
    retries: int = 0
    answered: int = 0
    failed: int = 0
    misuse: int = 0
    in_flight: int = 0
    reasked: int = 0  # rows whose answer fitted the schema after a re-ask
    input_tokens: int = 0  # of the answers this run got, as the server counted them
    output_tokens: int = 0
    tokens_estimated: bool = False  # some counts are our estimate (the server said none)

    @property
    def rows_done(self) -> int:
        """Rows this run finished (and committed): each was sent at least once."""
        return self.answered + self.failed + self.misuse


class Runner:
    def __init__(
        self,
        provider: Provider,
        store: Store,
        policy: RetryPolicy,
        gate: Gatekeeper,
        *,
        concurrency: int,
        stop: Stop,
        run: int = 0,
        on_result: Callable[[int, Result], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep | None = None,
        session: aiohttp.ClientSession | None = None,
        key: Callable[[Prompt], bytes] | None = None,
    ) -> None:
        self.provider = provider
        # A session its caller owns (a Ray actor's, reused batch after batch); else the run
        # opens one of its own and closes it.
        self._session = session
        self.store = store
        self.policy = policy
        self.gate = gate
        self.concurrency = concurrency
        self.stop = stop
        self.run_id = run
        self.counters = Counters()
        self.on_result = on_result
        self._clock = clock
        # Retry waits end early when sending stops, so a stopped run does not wait them out.
        self._sleep = sleep if sleep is not None else stop.sleep
        self.fatal: ProviderError | None = None  # a reply after which nothing can succeed
        # What a result is found again by: its request's key (with the store's identity, its
        # fingerprint), or the whole fingerprint where the store has no identity (a Ray part).
        self._key = key or request_key(provider)
        # --schema: every answer validated, and re-asked when it does not fit.
        self.structured: Structured | None = getattr(provider, "structured", None)

    def fatal_message(self, *, kept: bool) -> str:
        """What to tell the user after a fatal reply: what it said, and where answers are."""
        assert self.fatal is not None
        where = (
            "Answers so far are kept in the checkpoint: fix the cause and rerun."
            if kept
            else "No checkpoint was given, so answers so far are not kept: fix the cause and rerun."
        )
        return f"{self.fatal.message}; stopped after {self.counters.requests} request(s). {where}"

    async def run(self, rows: Iterator[PendingRow]) -> None:
        """Send every row. After a stop, returns once the rows in flight are done; if cancelled,
        abandons them. Either way every finished result is committed before it returns."""
        with collector_threshold(YOUNG_OBJECTS_PER_REQUEST * self.concurrency):
            async with contextlib.AsyncExitStack() as owned:
                session = self._session
                if session is None:
                    session = await owned.enter_async_context(new_session(self.concurrency))
                committer = Committer(self.store, self.run_id)
                ahead = _read_ahead(rows, self.concurrency)
                workers = [
                    asyncio.create_task(self._work(session, ahead, committer), name=f"worker-{i}")
                    for i in range(self.concurrency)
                ]
                try:
                    await asyncio.gather(*workers)
                finally:
                    for task in workers:
                        task.cancel()
                    await asyncio.gather(*workers, return_exceptions=True)
                    await committer.close()

    async def _work(
        self, session: aiohttp.ClientSession, rows: Iterator[PendingRow], committer: Committer
    ) -> None:
        while not self.stop.sending_stopped:
            row = next(rows, None)
            if row is None:
                return
            attempts: list[Attempt] = []
            self.counters.in_flight += 1
            try:
                result = await self._send(session, row[1], attempts)
            except Stopped:
                committer.keep_attempts(attempts)
                return
            except asyncio.CancelledError:
                committer.keep_attempts(attempts)  # cut off at the end of the grace period
                raise
            finally:
                self.counters.in_flight -= 1
            await committer.save(result, attempts)
            self._count(row[0], result)

    async def _send(
        self, session: aiohttp.ClientSession, prompt: Prompt, attempts: list[Attempt]
    ) -> Result:
        got = await self._ask(session, prompt, attempts)
        if isinstance(got, Answer) and self.structured is not None:
            got = await self._fitted(session, prompt, got, attempts)
        if isinstance(got, Result):
            return got._replace(digest=self._key(prompt))  # a re-ask's key is its row's
        return self._answered(prompt, got, attempts)

    async def _ask(
        self, session: aiohttp.ClientSession, prompt: Prompt, attempts: list[Attempt]
    ) -> Answer | Result:
        """`prompt`'s answer, retried under the policy; or the Result of a row that failed."""
        # The first attempt is made here, bare: most rows are answered at once, and only a
        # failed first attempt pays for the retry loop and the callables it needs (see
        # RetryPolicy.again).
        failed: Exception | None = None
        try:
            answer = await self._attempt(session, prompt, attempts)
        except Exception as exc:
            failed = exc
        try:
            if failed is not None:
                answer = await self.policy.again(
                    failed,
                    functools.partial(self._attempt, session, prompt, attempts),
                    functools.partial(self._on_retry, prompt, attempts),
                    sleep=self._sleep,
                )
        except MisuseDetected as exc:
            return self._failed(prompt, attempts, Outcome.MISUSE.value, exc.text)
        except QuotaExhausted:
            raise Stopped from None  # the row waits for the quota, pending, as the rest
        except ProviderError as exc:
            n = len(attempts)
            error = f"{describe(exc)} after {plural(n, 'attempt')}"
            return self._failed(prompt, attempts, Outcome.ERROR.value, error, exc)
        return answer

    async def _fitted(
        self,
        session: aiohttp.ClientSession,
        prompt: Prompt,
        answer: Answer,
        attempts: list[Attempt],
    ) -> Answer | Result:
        """`answer`, or the answer to a re-ask, once one fits the schema; each re-ask a request
        of its own through the gate. Re-asks spent: the row ends invalid_output, the last answer
        and its error kept."""
        structured = self.structured
        assert structured is not None
        for reask in range(structured.retries + 1):
            if answer.finish_reason in NOT_VALIDATED or (
                not answer.text.strip() and answer.finish_reason in ENDED_EMPTY
            ):
                # Re-asked, it would decline or end empty (or blank, as the provider keeps it)
                # the same again.
                return answer
            _, error = structured.check(answer.text)
            if error is None:
                if reask:
                    self.counters.reasked += 1
                return answer
            # The attempt was answered, but not as asked: the report counts its errors.
            attempts[-1] = attempts[-1]._replace(outcome=INVALID_OUTPUT, error=error)
            if reask == structured.retries:
                break
            again = structured.follow_up(prompt, answer.text, error)
            try:
                got = with_tokens_of(answer, await self._ask(session, again, attempts))
            except (Stopped, asyncio.CancelledError):
                # The row stays to do, and no result will carry the answers it had: billed.
                self.gate.spent_unrecorded((answer.prompt_tokens, answer.completion_tokens))
                raise
            if isinstance(got, Result):
                return got
            answer = got
        return self._answered(prompt, answer, attempts)._replace(
            finish_reason=INVALID_OUTPUT, error=error
        )

    def _answered(self, prompt: Prompt, answer: Answer, attempts: list[Attempt]) -> Result:
        return Result(
            prompt.id,
            self._key(prompt),
            answer.finish_reason,
            answer.text,
            None,
            len(attempts),
            attempts[-1].duration_ms,
            answer.model,
            answer.prompt_tokens,
            answer.completion_tokens,
            answer.response_id,
            answer.request_id,
            answer.body,
            answer.tokens_estimated or None,
        )

    async def _attempt(
        self, session: aiohttp.ClientSession, prompt: Prompt, attempts: list[Attempt]
    ) -> Answer:
        """One request for `prompt`, through the gate; told to the gate and recorded in
        `attempts`, however it ends."""
        gate = self.gate
        token = await (gate.enter_for(prompt) if gate.meters else gate.enter())
        if self.stop.sending_stopped:
            # After a stop nothing more is sent; the row stays to do. A retry or re-ask let
            # through at once after the stop was reserved and booked: nothing else gives it back.
            gate.unsent(token)
            raise Stopped
        counters = self.counters
        counters.requests += 1
        if attempts:
            counters.retries += 1  # counted when a retry is sent, not when it is planned
        started, wall = self._clock(), time.time()
        error: ProviderError | None = None
        rate: RateInfo | None = None
        cancelled = answered = False
        try:
            answer = await self.provider.ask(session, prompt)
            answered = True
            rate = answer.rate
            return answer
        except asyncio.CancelledError:
            cancelled = True
            raise
        except ProviderError as failed:
            exc = failed
            tries = self.policy.max_retries
            if exc.zero_limit is not None and (quota := concluded(exc, attempts, tries)):
                quota.rate, quota.request_id, exc = exc.rate, exc.request_id, quota
            error, rate = exc, exc.rate
            if isinstance(exc, QuotaExhausted):
                # Never retried: the row stays pending, and nothing more is sent (exit 4).
                if not self.stop.sending_stopped:
                    log.warning("stopping: %s", describe(exc))
                self.stop.stop_sending("quota")
            elif exc.fatal or (
                exc.status is not None and exc.status in self.provider.fatal_statuses
            ):
                # No later request can succeed (a wrong key, an unknown model): stop at once
                # rather than fail every remaining row.
                self.fatal = exc
                self.stop.stop_sending("fatal")
            if exc is not failed:
                raise exc from None
            raise
        finally:
            latency = (self._clock() - started) * 1000.0
            if cancelled:
                # Cut off at the end of the grace period: recorded, but neither the learned rate
                # nor the breaker hears of it, since it said nothing about the service.
                attempts.append(Attempt(prompt.attempt_id, wall, latency, STOPPED))
                gate.cut_off(token)  # but --max-cost counts it: it may be billed
            elif error is None and answered:
                usage = (answer.prompt_tokens, answer.completion_tokens)
                counters.input_tokens += answer.prompt_tokens or 0
                counters.output_tokens += answer.completion_tokens or 0
                if answer.tokens_estimated:
                    counters.tokens_estimated = True
                gate.finished(token, started, ANSWERED, None, rate, usage=usage)
                attempts.append(Attempt(prompt.attempt_id, wall, latency, ANSWERED))
            elif error is not None:  # else a bug's exception: it goes up as it is
                kind = outcome_of(error)
                # A misuse re-ask: the service refused this row before; refused again, it
                # speaks of this prompt, not of the service (Breaker.record).
                again = kind == REFUSAL and any(a.outcome == REFUSAL for a in attempts)
                gate.finished(token, started, kind, error, rate, again=again)
                attempts.append(
                    Attempt(prompt.attempt_id, wall, latency, kind, error.status, describe(error))
                )

    def _on_retry(
        self, prompt: Prompt, attempts: list[Attempt], exc: BaseException, delay: float
    ) -> None:
        if log.isEnabledFor(logging.INFO):
            log.info(
                "retry %s after attempt %d: %s; next in %.1fs",
                prompt.id,
                len(attempts),
                " ".join(describe(exc).split()),  # a refusal's text may hold line breaks
                delay,
            )

    def _failed(
        self,
        prompt: Prompt,
        attempts: list[Attempt],
        reason: str,
        error: str | None,
        last: ProviderError | None = None,
    ) -> Result:
        """A row that ended without an answer; `last`, its last attempt's error, gives the
        server's request id and error reply where there was one (--format openai-batch)."""
        latency = attempts[-1].duration_ms if attempts else None
        return Result(
            prompt.id,
            self._key(prompt),
            reason,
            None,
            error,
            len(attempts),
            latency,
            self.provider.model,
            request_id=None if last is None else last.request_id,
            body=None if last is None else last.body,
        )

    def _count(self, pos: int, result: Result) -> None:
        counters = self.counters
        if is_answered(result.finish_reason):
            counters.answered += 1
        elif result.finish_reason == Outcome.MISUSE:
            counters.misuse += 1
        else:
            counters.failed += 1
        if self.on_result is not None:
            self.on_result(pos, result)


def _read_ahead(rows: Iterator[PendingRow], n: int) -> Iterator[PendingRow]:
    """`rows`, read `n` at a time: a row read between two requests ran cold (its reading,
    parsing and checks twice the CPU of the same in a loop, measured)."""
    while chunk := list(itertools.islice(rows, n)):
        yield from chunk
