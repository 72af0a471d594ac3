"""Every exception batchpizza raises on purpose, in one place.

    BatchpizzaError                 a problem the user can act on; the CLI prints it, no traceback
    ├── UsageError                  a bad option value (exit 2)
    ├── InputError                  the input cannot be run as it is (exit 2); carries BadRow list
    ├── LockedError                 another run holds this output or checkpoint (exit 75)
    ├── CheckpointMissing           `status` found no checkpoint (exit 2)
    ├── CheckpointIsFolder          a --ray run's checkpoint (a folder) given without --ray (exit 2)
    ├── CheckpointVersionError      a checkpoint this version does not know (a newer one's) (exit 2)
    ├── OutputError                 the output or checkpoint could not be written (exit 1)
    ├── InputChanged                the input files changed during the run (exit 1)
    ├── Interrupted                 SIGINT / SIGTERM / SIGHUP; checkpoint saved (exit 130 / 143 / 129)
    └── ProviderError               one request to the API failed; `.retryable` says if worth a retry
        ├── TransportError          connection refused, reset, dropped mid-body, TLS (retryable)
        │   ├── RequestTimeout      no complete reply within the timeout (retryable)
        │   └── ConnectionRefused   nothing listens at the server's address (retryable)
        ├── HTTPStatusError         a non-2xx reply; `.status`, `.retry_after`
        │   ├── ModelNotFound       the server does not serve the model asked for (fatal, exit 2)
        │   └── QuotaExhausted      the account's quota or credit is spent (stops the run, exit 4)
        ├── BadReply                a 2xx reply without text: not JSON, wrong shape, empty (retryable)
        ├── RedirectRefused         a redirect to another host (not retryable)
        └── MisuseDetected          the service refused (also a ValueError, as in the seed)

Every ProviderError may carry what the server said besides the failure: `.rate` (its x-ratelimit
headers) and `.request_id` (its x-request-id). One that is `.fatal` means no later request can
succeed either (a wrong key, a model the server does not serve, no API at that URL): the runner
stops the run and exits with its `exit_code` (2) rather than failing every remaining row.

Beside the tree, `RowProblem` is what a source raises for one bad row; it never reaches the user
as such: the scan gathers them into an InputError's BadRows (or `invalid` rows).

Messages pass through `redact` so that no credential reaches a terminal, log or file, and through
`storable.text` so that a server's text quoted in one (a lone surrogate) can always be stored.
"""

from __future__ import annotations

import errno
import sqlite3
from dataclasses import dataclass

import batchpizza.storable as storable
from batchpizza.plurals import plural
from batchpizza.records import RateInfo, Tally
from batchpizza.redact import redact

# Statuses that mean "try again later" rather than "this request is wrong".
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504}) | frozenset(range(505, 600))


class BatchpizzaError(Exception):
    """Base of every error a user can cause or meet; `exit_code` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(redact(storable.text(message)))

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class UsageError(BatchpizzaError):
    exit_code = 2


@dataclass(frozen=True)
class BadRow:
    """One row that cannot be sent. `line` is 1-based for JSONL, `row` 0-based for Parquet;
    `label`, a DataFrame's index label of the row where the index is not its position."""

    path: str
    problem: str
    line: int | None = None
    row: int | None = None
    field: str | None = None
    label: str | None = None

    def where(self) -> str:
        place = self.path
        if self.line is not None:
            place += f":{self.line}"
        elif self.row is not None:
            place += f" row {self.row}"
            if self.label is not None:
                place += f" (index {self.label})"
        return place

    def __str__(self) -> str:
        field = f" field {self.field!r}:" if self.field else ""
        return f"{self.where()}:{field} {self.problem}"


class InputError(BatchpizzaError):
    """The input cannot be run: a file-level problem, or bad rows (the first few kept)."""

    exit_code = 2
    shown = 10

    def __init__(self, message: str, bad_rows: tuple[BadRow, ...] = (), total_bad: int = 0) -> None:
        self.bad_rows = bad_rows
        self.total_bad = total_bad or len(bad_rows)
        if bad_rows:
            lines = [message] + [f"  {row}" for row in bad_rows[: self.shown]]
            if self.total_bad > len(bad_rows[: self.shown]):
                lines.append(f"  ... {self.total_bad} bad rows in all")
            lines.append("Nothing was sent. Fix the rows, or rerun with --skip-bad-rows.")
            message = "\n".join(lines)
        super().__init__(message)

    @classmethod
    def of_rows(cls, bad_rows: tuple[BadRow, ...], total_bad: int) -> InputError:
        """The error of an input with `total_bad` bad rows, `bad_rows` the first of them."""
        return cls(f"{plural(total_bad, 'bad row')} in the input:", bad_rows, total_bad)


class LockedError(BatchpizzaError):
    """Another run holds the output or checkpoint: try again later (EX_TEMPFAIL, for cron)."""

    exit_code = 75


class CheckpointMissing(BatchpizzaError):
    exit_code = 2


class CheckpointIsFolder(BatchpizzaError):
    """A checkpoint path that is a folder, as --ray keeps its answers (Parquet parts): SQLite
    cannot open it, which said only "disk I/O error" or "Is a directory"."""

    exit_code = 2

    def __init__(self, path: object) -> None:
        super().__init__(
            f"checkpoint {path} is a folder, as a --ray run keeps its answers (Parquet parts): "
            "only --ray reads it (batchpizza run INPUT -o OUTPUT --ray; --ray --dry-run says "
            "what it holds), or give another --checkpoint"
        )


class CheckpointVersionError(BatchpizzaError):
    """The checkpoint has a schema this version cannot read (a newer batchpizza wrote it, or no
    schema at all): it is refused, never rewritten."""

    exit_code = 2


class OutputError(BatchpizzaError):
    exit_code = 1

    @classmethod
    def of_checkpoint(cls, path: object, exc: sqlite3.Error | OSError) -> OutputError:
        """The checkpoint could not be read or written: what SQLite or the system said, and
        what the user can do about it."""
        said = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
        hint = ""
        if "malformed" in said:
            hint = ". If it is damaged, move it aside to start over."
        elif "disk I/O error" in said or (isinstance(exc, OSError) and exc.errno == errno.EFBIG):
            # SQLite's words for a failed write (but ENOSPC's, "database or disk is full"). A
            # file-size limit (EFBIG) is the cause a user can fix, and nothing else named it.
            limit = _file_size_limit()
            hint = (
                f" (this process may write files of at most {limit:,} bytes: raise `ulimit -f`)"
                if limit is not None
                else " (a write failed: is the disk failing?)"
            )
        return cls(f"checkpoint {path or 'in memory'}: {said}{hint}")


def _file_size_limit() -> int | None:
    """The largest file this process may write (RLIMIT_FSIZE, `ulimit -f`); None: unlimited."""
    try:
        import resource  # Unix only
    except ImportError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


class InputChanged(BatchpizzaError):
    """The input was edited while the run went on; the output is not written (rows sent are kept)."""

    exit_code = 1


class Interrupted(BatchpizzaError):
    """The run stopped on a signal after saving its checkpoint."""

    def __init__(self, message: str, signum: int, summary: object = None) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
        self.summary = summary


def saved_in(tally: Tally | None, checkpoint: str, *, dry_run: bool = False) -> str:
    """What an interrupted run kept, as its message says it, with --ray or not ("finished rows
    are saved" was said after a first run that saved none). `tally`: None when it could not be
    counted."""
    if dry_run:
        return "nothing was sent or changed"
    if tally is None:
        return f"the answers that came back are saved in {checkpoint}"
    if tally.answered == 0:
        return "no row has an answer saved yet"
    return f"{plural(tally.answered, 'answered row')} saved in {checkpoint}"


class ProviderError(BatchpizzaError):
    """One request failed. Subclasses say whether trying again could help."""

    retryable = False
    status: int | None = None
    retry_after: float | None = None
    rate: RateInfo | None = None  # what the server announced of its limit, if anything
    request_id: str | None = None  # the server's id for the request, for its support desk
    # The server's error reply as it came (the key masked), for --format openai-batch's lines.
    body: bytes | None = None
    # No later request can succeed either: the run stops at once (exit_code says how).
    fatal = False
    # A 429 announcing this kind's limit as 0, which may be a placeholder ("tokens",
    # "requests"): retried, until a row gets a few in a row (providers/quota.py).
    zero_limit: str | None = None


class TransportError(ProviderError):
    retryable = True


class RequestTimeout(TransportError):
    pass


class ConnectionRefused(TransportError):
    pass


class HTTPStatusError(ProviderError):
    def __init__(
        self,
        status: int,
        message: str,
        retry_after: float | None = None,
        *,
        fatal: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.retryable = status in RETRYABLE_STATUSES and not fatal
        if fatal:
            # A wrong key or URL is the user's to fix, like a bad option: exit 2, as for usage.
            self.fatal = True
            self.exit_code = 2


class ModelNotFound(HTTPStatusError):
    """The server does not serve `model` (or not to this key): every row would fail the same way,
    so this is one error that stops the run, not one failed row per prompt."""

    def __init__(self, status: int, message: str, model: str | None) -> None:
        super().__init__(status, message, fatal=True)
        self.model = model


class QuotaExhausted(HTTPStatusError):
    """A 429 (or 402) saying the account's quota, credit or billing is exhausted, not that it
    asks too fast: no retry or later request can succeed until someone pays, so the run stops
    at once with the rows left pending (exit 4)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.retryable = False


class BadReply(ProviderError):
    retryable = True

    def __init__(self, message: str, status: int | None = None, *, page: bool = False) -> None:
        super().__init__(message)
        self.status = status
        # A web page (HTML) where the API's JSON was due: a --base-url that is not the API, or
        # a login or challenge page answering for it (controls/failing.py stops such a run).
        self.page = page


class RedirectRefused(ProviderError):
    pass


class MisuseDetected(ProviderError, ValueError):
    """The service refused the prompt; `.text` is what it said."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = self.message  # masked and storable: it becomes the row's `error`


def describe(exc: BaseException) -> str:
    """A one-line, secret-free account of an error, for logs and the output's `error` column."""
    if isinstance(exc, BatchpizzaError):
        return exc.message
    text = storable.text(str(exc) or type(exc).__name__)
    return redact(f"{type(exc).__name__}: {text}" if str(exc) else text)


class BatchAPIError(BatchpizzaError):
    """A call to the Batch API (a file, a batch) failed for good, or a batch failed as a whole:
    what the server said. Exit 2 where the request itself is wrong (a 4xx, a file the server
    refused), else 1."""

    # False when the request certainly never reached the server (no connection was made), so
    # that a create is known to have made nothing (batchapi/creating.py).
    sent = True

    def __init__(self, message: str, status: int | None = None, *, wrong: bool = False) -> None:
        super().__init__(message)
        self.status = status
        if wrong or (status is not None and 400 <= status < 500 and status not in (408, 429)):
            self.exit_code = 2


class RowProblem(Exception):
    """A bad row, as the sources find it: what is wrong, in which field, and the row's id where it
    could be read. Not a user-facing error itself: the scan turns each into a BadRow of an
    InputError, or an `invalid` row under --skip-bad-rows."""

    def __init__(self, problem: str, field: str | None = None, row_id: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.field = field
        self.id = row_id
