"""The retry policy, in one place, built from tenacity's parts.

- retry if: a ProviderError that says it is retryable, or a misuse refusal. Nothing else, so a bug
  or a CancelledError is never retried (tenacity re-raises it untouched: reraise=True).
- stop: after `max_retries` retries of passing failures, or `misuse_retries` retries of misuse
  refusals; the two are counted apart, so a refusal does not eat the budget of a flaky network.
- wait: a server's Retry-After (capped), else exponential backoff with full jitter up to a cap;
  a misuse refusal waits long (the service asks us to back off), with jitter.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from batchpizza.config import RunConfig
from batchpizza.controls.ratelimit import Sleep
from batchpizza.errors import MisuseDetected, ProviderError

T = TypeVar("T")


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, ProviderError) and (exc.retryable or isinstance(exc, MisuseDetected))


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    max_retries: int
    misuse_retries: int
    misuse_backoff: float
    backoff_base: float
    backoff_cap: float
    retry_after_cap: float

    @classmethod
    def from_config(cls, config: RunConfig) -> RetryPolicy:
        return cls(
            max_retries=config.max_retries,
            misuse_retries=config.misuse_retries,
            misuse_backoff=config.misuse_backoff,
            backoff_base=config.backoff_base,
            backoff_cap=config.backoff_cap,
            retry_after_cap=config.retry_after_cap,
        )

    async def call(
        self,
        attempt: Callable[[], Awaitable[T]],
        on_retry: Callable[[BaseException, float], None] | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
    ) -> T:
        """`attempt()` under this policy. The first try runs bare: most rows succeed at once, and
        building a tenacity loop per row measured as a tenth of the run's CPU. Only a retryable
        first failure starts the loop, with that failure already counted and waited for."""
        try:
            return await attempt()
        except Exception as exc:
            first = exc
        return await self.again(first, attempt, on_retry, sleep=sleep)

    async def again(
        self,
        first: Exception,
        attempt: Callable[[], Awaitable[T]],
        on_retry: Callable[[BaseException, float], None] | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
    ) -> T:
        """The rest of `call` once the first `attempt()` failed with `first`: for a caller that
        makes its first attempt itself, so that a row answered at once builds no callables."""
        if not is_retryable(first):
            raise first
        budget = _Budget(self)
        if budget.charge(first):
            raise first
        delay = self._delay(first, _Attempt(1))
        if on_retry is not None:
            on_retry(first, delay)
        await sleep(delay)
        return await self.retrying(on_retry, sleep=sleep, budget=budget, done=1)(attempt)

    def retrying(
        self,
        on_retry: Callable[[BaseException, float], None] | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        budget: _Budget | None = None,
        done: int = 0,
    ) -> AsyncRetrying:
        """A retry loop for one row. `on_retry(error, delay)` is told before each wait. `budget`
        and `done` carry over failures already spent outside the loop (see `call`)."""
        budget = budget or _Budget(self)

        def wait(state: RetryCallState) -> float:
            return self._delay(_exception(state), _Attempt(state.attempt_number + done))

        def before_sleep(state: RetryCallState) -> None:
            exc = _exception(state)
            if on_retry is not None and exc is not None and state.next_action is not None:
                on_retry(exc, state.next_action.sleep)

        return AsyncRetrying(
            retry=retry_if_exception(is_retryable),
            stop=budget.exhausted,
            wait=wait,
            before_sleep=before_sleep,
            sleep=sleep,
            reraise=True,
        )

    def _delay(self, exc: BaseException | None, state: Any) -> float:
        if isinstance(exc, MisuseDetected):
            return self.misuse_backoff * random.uniform(0.75, 1.25)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return min(float(retry_after), self.retry_after_cap)
        backoff = wait_random_exponential(multiplier=self.backoff_base, max=self.backoff_cap)
        return float(backoff(state))


@dataclass(frozen=True)
class _Attempt:
    """What tenacity's waits read of a retry state, for the wait computed outside its loop."""

    attempt_number: int


class _Budget:
    """Counts one row's failed attempts by kind; tenacity asks `exhausted` once per failure."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.passing = 0
        self.misuse = 0

    def exhausted(self, state: RetryCallState) -> bool:
        return self.charge(_exception(state))

    def charge(self, exc: BaseException | None) -> bool:
        """Count one failure; True when its kind's budget is spent."""
        if isinstance(exc, MisuseDetected):
            self.misuse += 1
            return self.misuse > self.policy.misuse_retries
        self.passing += 1
        return self.passing > self.policy.max_retries


def _exception(state: RetryCallState) -> ProviderError | None:
    exc = state.outcome.exception() if state.outcome is not None else None
    return exc if isinstance(exc, ProviderError) else None
