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
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from batchpizza.config import RunConfig
from batchpizza.errors import MisuseDetected, ProviderError
from batchpizza.ratelimit import Sleep


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

    def retrying(
        self,
        on_retry: Callable[[BaseException, float], None] | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
    ) -> AsyncRetrying:
        """A fresh retry loop for one row. `on_retry(error, delay)` is told before each wait."""
        budget = _Budget(self)
        backoff = wait_random_exponential(multiplier=self.backoff_base, max=self.backoff_cap)

        def wait(state: RetryCallState) -> float:
            exc = _exception(state)
            if isinstance(exc, MisuseDetected):
                return self.misuse_backoff * random.uniform(0.75, 1.25)
            if exc is not None and exc.retry_after is not None:
                return min(exc.retry_after, self.retry_after_cap)
            return float(backoff(state))

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


class _Budget:
    """Counts one row's failed attempts by kind; tenacity asks `exhausted` once per failure."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.passing = 0
        self.misuse = 0

    def exhausted(self, state: RetryCallState) -> bool:
        if isinstance(_exception(state), MisuseDetected):
            self.misuse += 1
            return self.misuse > self.policy.misuse_retries
        self.passing += 1
        return self.passing > self.policy.max_retries


def _exception(state: RetryCallState) -> ProviderError | None:
    exc = state.outcome.exception() if state.outcome is not None else None
    return exc if isinstance(exc, ProviderError) else None
