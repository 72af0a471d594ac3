"""RetryPolicy: what is retried, how often, and how long it waits; the sleep is faked."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from batchpizza.config import RunConfig
from batchpizza.controls.retrying import RetryPolicy, is_retryable
from batchpizza.errors import (
    BadReply,
    HTTPStatusError,
    MisuseDetected,
    ProviderError,
    RedirectRefused,
    RequestTimeout,
    TransportError,
)

POLICY = RetryPolicy(
    max_retries=3,
    misuse_retries=2,
    misuse_backoff=30.0,
    backoff_base=0.5,
    backoff_cap=4.0,
    retry_after_cap=10.0,
)
OK = "the answer"


@pytest.fixture(autouse=True)
def _seeded_random() -> Iterator[None]:
    """The jitter draws from the global `random`: seed it, and leave it as it was."""
    state = random.getstate()
    random.seed(20240601)
    yield
    random.setstate(state)


def transient(n: int = 0) -> TransportError:
    return TransportError(f"connection reset #{n}")


def misuse(n: int = 0) -> MisuseDetected:
    return MisuseDetected(f"Misuse detected. #{n}")


@dataclass
class Row:
    """One row's attempts: each outcome in turn (an exception is raised, anything else returned);
    records the fake sleeps and the on_retry calls."""

    outcomes: list[object]
    attempts: int = 0
    sleeps: list[float] = field(default_factory=list)
    retries: list[tuple[BaseException, float]] = field(default_factory=list)

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)

    def on_retry(self, error: BaseException, delay: float) -> None:
        self.retries.append((error, delay))

    async def attempt(self) -> object:
        outcome = self.outcomes[self.attempts]
        self.attempts += 1
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def run(self, policy: RetryPolicy = POLICY) -> object:
        result: object = None
        async for attempt in policy.retrying(self.on_retry, sleep=self.sleep):
            with attempt:
                result = await self.attempt()
        return result


# --- what is retried --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        TransportError("connection refused"),
        RequestTimeout("no reply within 60s"),
        BadReply("reply is not JSON", status=200),
        HTTPStatusError(408, "HTTP 408"),
        HTTPStatusError(425, "HTTP 425"),
        HTTPStatusError(429, "HTTP 429"),
        HTTPStatusError(500, "HTTP 500"),
        HTTPStatusError(503, "HTTP 503"),
        HTTPStatusError(599, "HTTP 599"),
        MisuseDetected("Misuse detected."),
    ],
    ids=repr,
)
async def test_passing_failures_are_retried_then_answered(error: ProviderError) -> None:
    assert is_retryable(error)
    row = Row([error, OK])
    assert await row.run() == OK
    assert row.attempts == 2
    assert len(row.sleeps) == 1


@pytest.mark.parametrize(
    "error",
    [
        HTTPStatusError(404, "HTTP 404"),
        HTTPStatusError(400, "HTTP 400"),
        HTTPStatusError(401, "HTTP 401"),
        HTTPStatusError(403, "HTTP 403"),
        HTTPStatusError(407, "HTTP 407"),
        RedirectRefused("redirect to another host refused: http://elsewhere/"),
    ],
    ids=repr,
)
async def test_other_client_errors_are_not_retried(error: ProviderError) -> None:
    assert not is_retryable(error)
    row = Row([error, OK])
    with pytest.raises(type(error)) as caught:
        await row.run()
    assert caught.value is error
    assert row.attempts == 1
    assert row.sleeps == []
    assert row.retries == []


async def test_a_transport_error_marked_not_retryable_is_not_retried() -> None:
    error = TransportError("TLS error: certificate verify failed")
    error.retryable = False
    row = Row([error, OK])
    with pytest.raises(TransportError):
        await row.run()
    assert row.attempts == 1


async def test_a_plain_bug_is_not_retried() -> None:
    row = Row([KeyError("answer"), OK])
    with pytest.raises(KeyError):
        await row.run()
    assert row.attempts == 1
    assert row.sleeps == []


async def test_cancelled_error_inside_the_attempt_is_never_retried() -> None:
    row = Row([asyncio.CancelledError(), OK])
    with pytest.raises(asyncio.CancelledError):
        await row.run()
    assert row.attempts == 1
    assert row.sleeps == []
    assert row.retries == []


async def test_cancelling_a_row_mid_attempt_propagates_and_stops_retrying() -> None:
    started = asyncio.Event()
    attempts = 0

    async def no_sleep(_: float) -> None:
        return None

    async def row() -> None:
        nonlocal attempts
        async for attempt in POLICY.retrying(sleep=no_sleep):
            with attempt:
                attempts += 1
                started.set()
                await asyncio.Event().wait()  # an attempt that never ends on its own

    task = asyncio.create_task(row())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert attempts == 1


async def test_cancelling_a_row_during_its_backoff_propagates() -> None:
    sleeping = asyncio.Event()
    attempts = 0

    async def endless_sleep(_: float) -> None:
        sleeping.set()
        await asyncio.Event().wait()

    async def row() -> None:
        nonlocal attempts
        async for attempt in POLICY.retrying(sleep=endless_sleep):
            with attempt:
                attempts += 1
                raise transient()

    task = asyncio.create_task(row())
    await sleeping.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert attempts == 1


# --- how often --------------------------------------------------------------------------------


async def test_retryable_errors_are_retried_max_retries_times_then_the_last_is_reraised() -> None:
    errors = [transient(i) for i in range(POLICY.max_retries + 1)]
    row = Row([*errors, OK])
    with pytest.raises(TransportError) as caught:
        await row.run()
    assert caught.value is errors[-1]  # the real, last error: not tenacity's RetryError
    assert row.attempts == POLICY.max_retries + 1
    assert len(row.sleeps) == POLICY.max_retries


async def test_max_retries_zero_means_one_attempt() -> None:
    row = Row([transient(), OK])
    with pytest.raises(TransportError):
        await row.run(replace(POLICY, max_retries=0))
    assert row.attempts == 1


async def test_the_last_retry_may_still_succeed() -> None:
    row = Row([*(transient(i) for i in range(POLICY.max_retries)), OK])
    assert await row.run() == OK
    assert row.attempts == POLICY.max_retries + 1


async def test_misuse_is_retried_misuse_retries_times_then_reraised() -> None:
    errors = [misuse(i) for i in range(POLICY.misuse_retries + 1)]
    row = Row([*errors, OK])
    with pytest.raises(MisuseDetected) as caught:
        await row.run()
    assert caught.value is errors[-1]
    assert isinstance(caught.value, ValueError)
    assert row.attempts == POLICY.misuse_retries + 1


async def test_misuse_has_its_own_count_not_max_retries() -> None:
    policy = replace(POLICY, max_retries=10, misuse_retries=1)
    row = Row([misuse(0), misuse(1), OK])
    with pytest.raises(MisuseDetected):
        await row.run(policy)
    assert row.attempts == 2


async def test_mixed_failures_each_follow_their_own_budget_and_the_row_succeeds() -> None:
    policy = replace(POLICY, max_retries=5, misuse_retries=2)
    sequence: list[object] = [
        transient(1),
        misuse(1),
        transient(2),
        transient(3),
        misuse(2),
        transient(4),
        transient(5),
        OK,
    ]
    row = Row(sequence)
    assert await row.run(policy) == OK
    assert row.attempts == 8  # 2 misuses and 5 transient errors, none over its budget
    assert len(row.retries) == 7


async def test_mixed_failures_stop_on_the_sixth_transient_error() -> None:
    policy = replace(POLICY, max_retries=5, misuse_retries=2)
    last = transient(6)
    sequence: list[object] = [
        misuse(1),
        transient(1),
        transient(2),
        misuse(2),
        transient(3),
        transient(4),
        transient(5),
        last,
        OK,
    ]
    row = Row(sequence)
    with pytest.raises(TransportError) as caught:
        await row.run(policy)
    assert caught.value is last
    assert row.attempts == 8


async def test_mixed_failures_stop_on_the_third_misuse() -> None:
    policy = replace(POLICY, max_retries=5, misuse_retries=2)
    last = misuse(3)
    sequence: list[object] = [
        transient(1),
        misuse(1),
        transient(2),
        misuse(2),
        transient(3),
        last,
        OK,
    ]
    row = Row(sequence)
    with pytest.raises(MisuseDetected) as caught:
        await row.run(policy)
    assert caught.value is last
    assert row.attempts == 6


async def test_each_row_gets_a_fresh_budget() -> None:
    policy = replace(POLICY, max_retries=2)
    for _ in range(3):
        row = Row([transient(1), transient(2), OK])
        assert await row.run(policy) == OK
        assert row.attempts == 3


# --- how long ---------------------------------------------------------------------------------


async def test_retry_after_is_the_wait() -> None:
    row = Row([HTTPStatusError(429, "HTTP 429", retry_after=3.0), OK])
    assert await row.run() == OK
    assert row.sleeps == [3.0]


async def test_retry_after_is_capped_at_retry_after_cap() -> None:
    row = Row([HTTPStatusError(503, "HTTP 503", retry_after=86400.0), OK])
    assert await row.run() == OK
    assert row.sleeps == [POLICY.retry_after_cap]


async def test_retry_after_zero_retries_at_once() -> None:
    row = Row([HTTPStatusError(503, "HTTP 503", retry_after=0.0), OK])
    assert await row.run() == OK
    assert row.sleeps == [0.0]


async def test_backoff_is_exponential_full_jitter_and_never_above_the_cap() -> None:
    policy = replace(POLICY, max_retries=12, backoff_base=0.5, backoff_cap=4.0)
    by_retry: dict[int, list[float]] = {}
    for _ in range(60):
        row = Row([*(transient(i) for i in range(13)), OK])
        with pytest.raises(TransportError):
            await row.run(policy)
        for k, delay in enumerate(row.sleeps, start=1):
            by_retry.setdefault(k, []).append(delay)
    everything = [d for ds in by_retry.values() for d in ds]
    assert len(everything) == 60 * 12
    assert all(0.0 <= d <= policy.backoff_cap for d in everything)
    for k, delays in by_retry.items():
        envelope = min(policy.backoff_cap, policy.backoff_base * 2 ** (k - 1))
        assert max(delays) <= envelope + 1e-9, k
        # Full jitter: spread over the whole range below the envelope, not bunched at its top.
        assert min(delays) < 0.25 * envelope, k
        assert max(delays) > 0.75 * envelope, k
    # It grows: late retries wait longer on average than the first.
    mean = {k: sum(ds) / len(ds) for k, ds in by_retry.items()}
    assert mean[8] > 4 * mean[1]


async def test_misuse_waits_the_long_misuse_backoff_with_jitter() -> None:
    delays: list[float] = []
    for _ in range(30):
        row = Row([misuse(1), misuse(2), OK])
        assert await row.run() == OK
        delays += row.sleeps
    low, high = 0.75 * POLICY.misuse_backoff, 1.25 * POLICY.misuse_backoff
    assert all(low <= d <= high for d in delays)
    assert len(set(delays)) > 1
    assert min(delays) > POLICY.backoff_cap  # longer than any passing-failure backoff


async def test_on_retry_is_called_once_per_retry_with_the_error_and_the_delay() -> None:
    errors: list[object] = [
        transient(1),
        HTTPStatusError(429, "HTTP 429", retry_after=2.0),
        misuse(1),
        BadReply("empty", status=200),
    ]
    row = Row([*errors, OK])
    assert await row.run() == OK
    assert [e for e, _ in row.retries] == errors
    assert [d for _, d in row.retries] == row.sleeps
    assert row.retries[1][1] == 2.0


async def test_on_retry_is_not_called_for_the_final_failure() -> None:
    row = Row([transient(i) for i in range(POLICY.max_retries + 1)])
    with pytest.raises(TransportError):
        await row.run()
    assert len(row.retries) == POLICY.max_retries
    assert [d for _, d in row.retries] == row.sleeps


async def test_on_retry_is_optional() -> None:
    sleeps: list[float] = []

    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    outcomes = iter([transient(), OK])
    result = None
    async for attempt in POLICY.retrying(sleep=sleep):
        with attempt:
            outcome = next(outcomes)
            if isinstance(outcome, BaseException):
                raise outcome
            result = outcome
    assert result == OK
    assert len(sleeps) == 1


def test_policy_from_config_takes_every_retry_option() -> None:
    config = RunConfig(
        input="in.jsonl",
        output="out.jsonl",
        max_retries=7,
        misuse_retries=4,
        misuse_backoff=12.0,
        backoff_base=0.25,
        backoff_cap=9.0,
        retry_after_cap=120.0,
    )
    assert RetryPolicy.from_config(config) == RetryPolicy(
        max_retries=7,
        misuse_retries=4,
        misuse_backoff=12.0,
        backoff_base=0.25,
        backoff_cap=9.0,
        retry_after_cap=120.0,
    )


def test_default_policy_matches_the_spec() -> None:
    policy = RetryPolicy.from_config(RunConfig(input="in.jsonl", output="out.jsonl"))
    assert policy.max_retries == 5  # SPEC: --max-retries default 5
    assert 0 < policy.retry_after_cap <= 600  # "capped at a few minutes"
    assert policy.misuse_retries >= 1  # "retried a couple of times"


# --- the fast path: RetryPolicy.call ------------------------------------------------------------


async def _outcome(row: Row, runner: Any) -> tuple[object, int, int, int]:
    try:
        result: object = await runner(row)
    except BaseException as exc:  # the raised error is part of the outcome compared
        result = type(exc)
    return result, row.attempts, len(row.retries), len(row.sleeps)


@pytest.mark.parametrize(
    ("outcomes", "policy"),
    [
        (["ok"], POLICY),
        ([transient(0), "ok"], POLICY),
        ([transient(i) for i in range(4)], POLICY),
        ([transient(0)], replace(POLICY, max_retries=0)),
        ([misuse(0), misuse(1), misuse(2)], POLICY),
        ([misuse(0)], replace(POLICY, misuse_retries=0)),
        ([misuse(0), transient(1), misuse(2), transient(3), "ok"], POLICY),
        ([HTTPStatusError(404, "HTTP 404")], POLICY),
        ([transient(0), HTTPStatusError(404, "HTTP 404")], POLICY),
        ([KeyError("bug")], POLICY),
    ],
)
async def test_call_behaves_exactly_like_the_retry_loop(
    outcomes: list[object], policy: RetryPolicy
) -> None:
    async def loop(row: Row) -> object:
        return await row.run(policy)

    async def call(row: Row) -> object:
        return await policy.call(row.attempt, row.on_retry, sleep=row.sleep)

    assert await _outcome(Row(list(outcomes)), call) == await _outcome(Row(list(outcomes)), loop)


async def test_call_waits_retry_after_for_the_first_failure_too() -> None:
    row = Row([HTTPStatusError(429, "HTTP 429", retry_after=7.0), "ok"])
    assert await POLICY.call(row.attempt, row.on_retry, sleep=row.sleep) == "ok"
    assert row.sleeps == [min(7.0, POLICY.retry_after_cap)]
    assert [delay for _, delay in row.retries] == row.sleeps
