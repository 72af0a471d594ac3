"""The typed records that travel between the stages: what a row asks, what a provider answers,
how a row ended. Frozen and slotted dataclasses, or named tuples where one is made for every row
sent, so a stage cannot change what another one handed it."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

from batchpizza.plurals import noun, plural


class Outcome(str, enum.Enum):
    """How a row ended, as the `finish_reason` column says it. A provider may add its own reasons
    for an answered row (OpenAI's "length", "content_filter"): those travel as plain strings."""

    STOP = "stop"
    ERROR = "error"
    MISUSE = "misuse"
    INVALID = "invalid"
    PENDING = "pending"
    INVALID_OUTPUT = "invalid_output"  # answers that never fit --schema, re-asks spent

    def __str__(self) -> str:
        return self.value


# A finish reason outside these is an answer (stop, length, content_filter, ...).
UNANSWERED = frozenset(
    {Outcome.ERROR, Outcome.MISUSE, Outcome.INVALID, Outcome.PENDING, Outcome.INVALID_OUTPUT}
)


# A server's finish reasons that make an empty answer final: the answer's token cap was spent
# (by a reasoning model, on its reasoning) or the server's filter withheld the text. Asked again,
# the server ends the same way, and bills each time: a retry (or a rerun) cannot help.
ENDED_EMPTY = frozenset({"length", "content_filter"})
# Under --schema, answers that are not the model's try at the schema: kept as they are, not
# validated nor re-asked (the model declined, or called tools).
NOT_VALIDATED = frozenset({"refusal", "tool_calls"})


def is_answered(finish_reason: str) -> bool:
    return finish_reason not in UNANSWERED


@dataclass(frozen=True, slots=True)
class Prompt:
    """One row as a provider sends it."""

    id: str
    text: str  # the formatted prompt: a prompt row's text, or format_prompt(messages)
    messages: tuple[Mapping[str, Any], ...]  # a prompt row is one user message
    body: Mapping[str, Any] | None = None  # an OpenAI Batch line's body, less its messages
    sample: int = 0  # which of the request's samples (--repeat); part of its key

    @property
    def attempt_id(self) -> str:
        """What its attempts are recorded under: a sample after the first is a row of its own to
        the report, which counts attempts beyond a row's first in a run as retries."""
        return f"{self.id}\x1f{self.sample}" if self.sample else self.id


@dataclass(frozen=True, slots=True)
class RateInfo:
    """What a server announced of its request and token limits (OpenAI's x-ratelimit-*
    headers)."""

    limit: float | None = None  # requests per window
    remaining: float | None = None
    reset_s: float | None = None  # seconds until `remaining` is back to `limit`
    limit_tokens: float | None = None  # tokens per window (a minute at OpenAI)
    remaining_tokens: float | None = None
    reset_tokens_s: float | None = None


class Answer(NamedTuple):
    """A provider's answer to one prompt. A tuple, as Result, because one is made for every row
    answered (1.1 us as a frozen dataclass, 0.3 us as a tuple)."""

    text: str
    finish_reason: str = "stop"
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    response_id: str | None = None
    request_id: str | None = None
    rate: RateInfo | None = None
    # The server's reply body as it came (an OpenAI-compatible server's chat.completion), kept for
    # --format openai-batch; None where a provider keeps none (Pizzagpt's reply is no such body).
    body: bytes | None = None
    tokens_estimated: bool = False  # the token counts are our estimate (the server gave none)


# The result columns of every output, in order; a provider may add its own after them.
RESULT_COLUMNS = (
    *("answer", "finish_reason", "misuse", "error", "attempts", "latency_ms", "model"),
    "reused_from",  # the row an identical request was sent for, when another (else null)
)
# Every output's token columns: the server's usage, or our estimate where it gave none (marked).
TOKEN_COLUMNS = ("prompt_tokens", "completion_tokens", "tokens_estimated")


class Result(NamedTuple):
    """How one row ended in this run, as the checkpoint stores it: its fields in the order of the
    results table's columns. A tuple, as OutputRow, because one is made for every row sent: a
    frozen dataclass took 1.1 us to build against 0.26 us, and the checkpoint takes the tuple as
    it is."""

    id: str
    digest: bytes
    finish_reason: str
    answer: str | None
    error: str | None
    attempts: int
    latency_ms: float | None
    model: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    response_id: str | None = None
    request_id: str | None = None
    body: bytes | None = None  # the server's reply body (Answer.body, or an error reply's)
    tokens_estimated: bool | None = None  # the token counts are our estimate (Pizzagpt's)


class OutputRow(NamedTuple):
    """One output row's id and result columns, in input order (a tuple: millions are made)."""

    id: str | None  # None: a bad row whose id could not be read
    answer: str | None
    finish_reason: str
    misuse: bool
    error: str | None
    attempts: int
    latency_ms: float | None
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    response_id: str | None
    request_id: str | None
    digest: bytes | None  # None for an invalid row
    # The row whose identical request this answer was asked for, when it is another row's.
    reused_from: str | None = None
    sample: int | None = None  # which sample of the row's request (--repeat N, N > 1)
    body: bytes | None = None  # the server's reply body, where it was kept (Result.body)
    # Whether the token counts are our estimate (the server said none); None without counts.
    tokens_estimated: bool | None = None


def answered_row(r: Result) -> OutputRow:
    """The output row of a row that was sent and ended (answered, failed or refused)."""
    return OutputRow(
        r.id,
        r.answer,
        r.finish_reason,
        r.finish_reason == Outcome.MISUSE,
        r.error,
        r.attempts,
        r.latency_ms,
        r.model,
        r.prompt_tokens,
        r.completion_tokens,
        r.response_id,
        r.request_id,
        r.digest,
        None,
        None,
        r.body,
        None
        if r.prompt_tokens is None and r.completion_tokens is None
        else bool(r.tokens_estimated),
    )


def invalid_row(row_id: str | None, problem: str) -> OutputRow:
    """The output row of a bad input row (kept under --skip-bad-rows)."""
    return OutputRow(
        row_id, None, Outcome.INVALID.value, False, problem, 0, None, None, None, None, None, None,
        None,
    )  # fmt: skip


def pending_row(row_id: str, digest: bytes | None) -> OutputRow:
    """The output row of a row not sent yet (the run stopped early)."""
    return OutputRow(
        row_id, None, Outcome.PENDING.value, False, None, 0, None, None, None, None, None, None,
        digest,
    )  # fmt: skip


class Attempt(NamedTuple):
    """One request sent, for the report: when, how long, and how it ended; the attempts table's
    columns after the run's id. A tuple for the same reason as Result (one for every request)."""

    row_id: str
    started: float  # unix time
    duration_ms: float
    outcome: str  # answered, http, timeout, transport, bad_reply, refusal, redirect
    status: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Tally:
    """The output's rows by how they ended."""

    rows: int = 0
    answered: int = 0
    failed: int = 0
    misuse: int = 0
    invalid: int = 0

    @property
    def pending(self) -> int:
        return self.rows - self.answered - self.failed - self.misuse - self.invalid


# Of the summary's JSON (batchpizza/schemas/summary.schema.json): raised when a key changes
# meaning or goes, so that a monitor can tell which summary it reads.
SUMMARY_SCHEMA_VERSION = 1


@dataclass(frozen=True, kw_only=True, eq=False)
class Summary(Mapping[str, Any]):
    """What a run did: the summary line, --summary-json, `run()`'s return value. Also a read-only
    mapping (`summary["exit_code"]`), as `run()` returned a dict before. The row counts are over
    the whole output; requests and retries are this run's."""

    schema_version: int = SUMMARY_SCHEMA_VERSION
    rows: int = 0
    answered: int = 0
    failed: int = 0
    misuse: int = 0
    invalid: int = 0
    pending: int = 0
    requests: int = 0
    retries: int = 0
    elapsed_s: float = 0.0
    # When the run began and ended, UTC ISO 8601 (`2026-05-01T02:00:00.123Z`); when not given,
    # ended is now and started elapsed_s before it.
    started: str | None = None
    ended: str | None = None
    output: str | None = None
    checkpoint: str | None = None
    exit_code: int = 0
    # None, "deadline", "refusals", "budget", "quota", "failing", "batches", "signal" or "locked"
    stopped: str | None = None
    rate: float | None = None  # requests/s at the end (the learned rate under auto)
    interrupted: bool = False
    # What this run planned to send, by reason (new, changed, retry, identity, unknown), with
    # `reused` (rows answered by an identical request's answer) and `change` (what the identity
    # change was); None before the plan.
    plan: dict[str, Any] | None = None
    # --via batch / auto: lines submitted, resubmitted, collected, batches out, files waiting to
    # be submitted, rows sent online.
    batches: dict[str, int] | None = None
    # --schema: the output's answers that fit it (`valid`), of those the ones that fit after a
    # re-ask (`reasked`), and rows that never did (`invalid`, finish_reason invalid_output).
    structured: dict[str, int] | None = None
    # This run's tokens {"input", "output", "estimated"}; its cost {"run", "total" (every run on
    # the checkpoint), "cap", "price_per_million"} where a price is known; else None.
    tokens: dict[str, Any] | None = None
    cost: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.ended is None:
            import time

            now = time.time()
            object.__setattr__(self, "ended", iso(now))
            if self.started is None:
                object.__setattr__(self, "started", iso(now - self.elapsed_s))

    @classmethod
    def of(cls, tally: Tally | None, **values: Any) -> Summary:
        counts: dict[str, Any] = {}
        if tally is not None:
            counts = {
                "rows": tally.rows,
                "answered": tally.answered,
                "failed": tally.failed,
                "misuse": tally.misuse,
                "invalid": tally.invalid,
                "pending": tally.pending,
            }
        return cls(**counts, **values)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_json(self) -> bytes:
        """What --summary-json holds, one format for a run on one process or on Ray."""
        import json

        return json.dumps(self.to_dict(), indent=2).encode() + b"\n"

    def __getitem__(self, key: str) -> Any:
        if key not in _SUMMARY_KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_SUMMARY_KEYS)

    def __len__(self) -> int:
        return len(_SUMMARY_KEYS)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self) == dict(other)

    __hash__ = None  # type: ignore[assignment]


_SUMMARY_KEYS = tuple(f.name for f in fields(Summary))


def iso(unix: float) -> str:
    """A unix time as UTC ISO 8601, to the millisecond: `2026-05-01T02:00:00.123Z`."""
    import datetime as dt

    moment = dt.datetime.fromtimestamp(unix, dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Plan:
    """Why each request of a run is sent (counts of requests); `reused`: rows that take the
    answer of an identical request of this run instead of being sent."""

    new: int = 0  # rows never asked
    changed: int = 0  # the prompt (messages, body) changed since the row was asked
    retry: int = 0  # failed (or refused, under --retry-refused) before
    identity: int = 0  # asked before with another provider, model or parameters
    unknown: int = 0  # answered before fingerprints, with a request that is not known
    reused: int = 0  # rows not sent: an identical request of this run answers them
    change: str | None = None  # what the identity change is: "new model (a -> b)"
    refused: int = 0  # rows refused as misuse before, not sent again (no --retry-refused)
    # --via batch / auto: of the requests above, those in Batch API batches still out, which the
    # run collects instead of sending (Checkpoint.in_batches_out).
    out: int = 0

    @property
    def to_send(self) -> int:
        return self.unanswered - self.out

    @property
    def unanswered(self) -> int:
        """The requests without an answer: sent by this run, or collected from its batches."""
        return self.new + self.changed + self.retry + self.identity + self.unknown

    def reasons(self, *, retry_refused: bool = False) -> str:
        """`300 to send: 300 new model (model-A -> model-B), 12 prompt changed, ...`."""
        parts = [
            f"{n} {what}"
            for n, what in (
                (self.identity, self.change or "new request"),
                (self.unknown, "asked before fingerprints (request not known)"),
                (self.changed, "prompt changed"),
                (self.new, noun(self.new, "new row")),
                (self.retry, "failed or refused before" if retry_refused else "failed before"),
            )
            if n
        ]
        text = f"{self.to_send} to send" + (f": {', '.join(parts)}" if parts else "")
        if self.out:
            text = (
                f"{self.to_send} to send ({self.unanswered} without an answer: {', '.join(parts)}"
                f"; {self.out} of them in Batch API batches still out: collected, not sent)"
            )
        if self.reused:
            reuse = f"{plural(self.reused, 'row')} {noun(self.reused, 'reuses', 'reuse')}"
            text += f"; {reuse} the answer of an identical request"
        return text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
