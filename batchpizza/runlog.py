"""What a run writes to its log (stderr), for an operator reading a cron mail hours later: a start
line (what the run is about to send, and why), progress lines, the summary line, and the -v retry
lines; each as timestamped text or, with --log-format json, one JSON object a line.

The counts of rows (done, answered, failed, misuse, invalid, to send) are over the whole output,
in every line alike; requests and retries are this run's, and said so ("this run: ...").
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TextIO

from batchpizza.plurals import plural
from batchpizza.pricing import dollars
from batchpizza.records import iso
from batchpizza.redact import RedactingFilter, inert, redact
from batchpizza.version import version

log = logging.getLogger("batchpizza")
_TEXT_TIME = "%Y-%m-%d %H:%M:%S"  # local time, as cron's own mail and syslog show it


@dataclass(frozen=True)
class RunStart:
    """What a run is about to do: the start line's fields."""

    version: str
    input: str | None
    output: str | None
    rows: int  # in the output
    to_send: int
    why: str  # the plan's reasons: "30 to send: 30 new model (model-A -> model-B)"
    new: int
    changed: int
    retry: int  # failed or refused before
    renewed: int  # asked before with another provider, model or parameters, or not known
    reused: int  # rows that take the answer of an identical request of this run
    answered: int  # kept from earlier runs, not sent again
    refused: int  # refused as misuse by an earlier run, not sent again (no --retry-refused)
    invalid: int
    rate: str  # as asked: "2/s", "0", "auto:20/s"
    rate_per_s: float | None  # the rate it starts at (the learned one under auto); None: unlimited
    deadline: str | None  # when no new request starts any more (UTC, ISO 8601)
    via: str = "online"  # online, batch (the Batch API alone: no rate applies) or auto


@dataclass(frozen=True)
class Snapshot:
    """Where a run stands: the rows over the whole output, the requests of this run."""

    rows: int
    done: int  # answered + failed + misuse + invalid
    answered: int
    failed: int
    misuse: int
    invalid: int
    finished_this_run: int  # rows this run sent and finished
    requests: int  # this run
    retries: int  # this run
    in_flight: int
    elapsed_s: float  # this run
    rate: float | None  # requests/s allowed now; None: unlimited
    waiting: str | None  # what the whole run waits for (a Retry-After, the breaker)
    tokens: int = 0  # this run's answers', input and output
    spent: float | None = None  # dollars spent on the checkpoint so far, under --max-cost

    @property
    def to_send(self) -> int:
        return self.rows - self.done

    @property
    def requests_per_s(self) -> float:
        return self.requests / max(self.elapsed_s, 1e-9)


def run_start(
    config: Any,
    plan: Any,
    rows: int,
    invalid: int,
    rate_per_s: float | None,
    deadline_in_s: float | None,
) -> RunStart:
    """The start line's fields, from the run's config and its plan (checkpoint.plan.Plan: the
    counts by why a request is sent)."""
    to_send = plan.to_send
    deadline = None if deadline_in_s is None else iso(time.time() + max(0.0, deadline_in_s))
    return RunStart(
        version=version(),
        input=config.input_label or config.input,
        output=config.output,
        rows=rows,
        to_send=to_send,
        why=plan.reasons(retry_refused=bool(getattr(config, "retry_refused", False))),
        new=plan.new,
        changed=plan.changed,
        retry=plan.retry,
        renewed=plan.identity + plan.unknown,
        reused=plan.reused,
        answered=rows - plan.unanswered - plan.reused - invalid - plan.refused,
        refused=plan.refused,
        invalid=invalid,
        rate=str(config.rate),
        rate_per_s=rate_per_s,
        deadline=deadline,
        via=str(getattr(config, "via", "online")),
    )


def _local(unix: float) -> str:
    return time.strftime(_TEXT_TIME, time.localtime(unix))


def _unix(iso_time: str) -> float:
    return dt.datetime.fromisoformat(iso_time.replace("Z", "+00:00")).timestamp()


def clock(seconds: float) -> str:
    """`72.4` -> `1:12`, `3723` -> `1:02:03`."""
    minutes, secs = divmod(int(max(seconds, 0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# -- the lines ---------------------------------------------------------------------------------


def start_text(s: RunStart) -> str:
    rate = f"rate {s.rate}" if s.rate_per_s or s.rate.startswith("auto") else "rate unlimited"
    if s.rate.startswith("auto") and s.rate_per_s:
        rate += f", starting at {s.rate_per_s:.3g}/s"
    if s.via == "batch":
        rate = "through the Batch API (no rate)"
    deadline = "no deadline"
    if s.deadline is not None:
        left = _unix(s.deadline) - time.time()
        deadline = f"deadline {_local(_unix(s.deadline))} (in {clock(left)})"
    where = f"{s.input} -> {s.output}" if s.output else f"{s.input}"
    refused = f"{s.refused} refused before (not sent again), " if s.refused else ""
    return (
        f"start: batchpizza {s.version}: {where}: {plural(s.rows, 'row')}: {s.why}; "
        f"{s.answered} answered before, {refused}{s.invalid} invalid; {rate}; {deadline}"
    )


def progress_text(s: Snapshot) -> str:
    text = (
        f"progress: {s.done}/{s.rows} rows done (answered {s.answered}, failed {s.failed}, "
        f"misuse {s.misuse}, invalid {s.invalid}), {s.to_send} to send; this run: "
        f"{plural(s.requests, 'request')}, {plural(s.retries, 'retry', 'retries')}, "
        f"{s.requests_per_s:.2f} req/s, "
        f"{s.in_flight} in flight"
    )
    text += f"; rate {s.rate:.3g}/s" if s.rate else "; rate unlimited"
    if s.tokens:
        text += f"; {s.tokens:,} tokens ({s.tokens / max(s.elapsed_s, 1e-9):.0f}/s)"
    if s.spent is not None:
        text += f"; {dollars(s.spent)} spent"
    if s.waiting:
        text += f"; WAIT {s.waiting}"
    return text


def progress_fields(s: Snapshot) -> dict[str, Any]:
    fields = asdict(s)
    fields["to_send"] = s.to_send
    fields["requests_per_s"] = round(s.requests_per_s, 3)
    fields["elapsed_s"] = round(s.elapsed_s, 3)
    return fields


def summary_line(s: Mapping[str, Any], log_format: str = "text") -> str:
    """The last line of a run: timestamped like the log lines above it (at the summary's
    `ended`), or its JSON object."""
    ended = s.get("ended")
    unix = _unix(ended) if ended else time.time()
    if log_format == "json":
        return json.dumps({"time": iso(unix), "event": "summary", **dict(s)})
    # Exit 1 and 2 are errors (I/O, bad input, usage), said before this line: not "done".
    failed = s.get("exit_code") in (1, 2) and not s.get("interrupted") and not s.get("stopped")
    if failed and not s["rows"] and not s["requests"]:
        # Nothing was read or sent (its input refused): no counts to give, rather than zeros.
        return f"{_local(unix)} batchpizza: failed: nothing sent (exit {s['exit_code']})"
    head = (
        "interrupted"
        if s.get("interrupted")
        else f"stopped ({s['stopped']})"
        if s.get("stopped")
        else "failed"
        if failed
        else "done"
    )
    parts = [
        f"{s['answered']} answered",
        f"{s['failed']} failed",
        f"{s['misuse']} misuse",
        f"{s['invalid']} invalid",
    ]
    if s.get("pending"):
        parts.append(f"{s['pending']} pending")
    fit = s.get("structured")
    if fit:  # --schema
        parts.append(f"{fit['invalid']} invalid output ({fit['reasked']} fitted after a re-ask)")
    where = f" -> {s['output']}" if s.get("output") and not s.get("interrupted") else ""
    if others := (s.get("batches") or {}).get("others"):  # kept under their model, not output
        where = f", {plural(others, 'result')} of other models collected from batches{where}"
    rate = f" at {s['rate']:.3g}/s" if s.get("rate") else ""
    tokens = s.get("tokens")
    if tokens and (tokens["input"] or tokens["output"]):
        estimated = " (estimated)" if tokens["estimated"] else ""
        rate += f", {tokens['input']:,} tokens in + {tokens['output']:,} out{estimated}"
    cost = s.get("cost")
    if cost:
        cap = f" of {dollars(cost['cap'], 6)}" if cost.get("cap") is not None else ""
        rate += f", {dollars(cost['run'])} ({dollars(cost['total'])} on the checkpoint{cap})"
    return (
        f"{_local(unix)} batchpizza: {head}: {plural(s['rows'], 'row')}: {', '.join(parts)}; "
        f"this run: {plural(s['requests'], 'request')}, {plural(s['retries'], 'retry', 'retries')} "
        f"in {s['elapsed_s']:.1f}s{rate}{where} "
        f"(exit {s['exit_code']})"
    )


def log_start(start: RunStart) -> None:
    log.warning(start_text(start), extra={"event": "start", "fields": asdict(start)})


def log_progress(snapshot: Snapshot) -> None:
    fields = progress_fields(snapshot)
    log.warning(progress_text(snapshot), extra={"event": "progress", "fields": fields})


# -- the handler -------------------------------------------------------------------------------


if TYPE_CHECKING:
    _StreamHandler = logging.StreamHandler[TextIO]
else:  # not subscriptable at run time before Python 3.11
    _StreamHandler = logging.StreamHandler


class _StderrHandler(_StreamHandler):
    """Writes to whatever sys.stderr is at the time, not the one of the first run in this process
    (test runners and notebooks swap and close it between runs); a closed stderr loses the line
    rather than failing the run."""

    def __init__(self) -> None:
        import sys

        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        import sys

        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass

    def handleError(self, record: logging.LogRecord) -> None:
        pass


class _TextFormatter(logging.Formatter):
    """Log lines carry what servers said (a retry's error): shown, never obeyed by the terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s batchpizza: %(message)s", _TEXT_TIME)

    def format(self, record: logging.LogRecord) -> str:
        return inert(super().format(record), lines=True)


class _JsonFormatter(logging.Formatter):
    """One JSON object a line: `time` (UTC), `event` (start, progress, or log for any other
    line, with its `level` and `message`), and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {"time": iso(record.created)}
        event = getattr(record, "event", None)
        if event is None:
            obj |= {"event": "log", "level": record.levelname.lower()}
            obj["message"] = redact(record.getMessage())
        else:
            obj["event"] = event
            for key, value in getattr(record, "fields", {}).items():
                obj[key] = redact(value) if isinstance(value, str) else value
        return json.dumps(obj)  # ASCII: no byte of a server's text can act on a terminal


def setup_logging(quiet: bool, verbose: bool, log_format: str = "text") -> None:
    """One stderr handler for the package's logger, every record passing the redacting filter,
    each line with a timestamp (cron logs are read hours later) or a JSON object."""
    logger = logging.getLogger("batchpizza")
    handler = next((h for h in logger.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        handler.addFilter(RedactingFilter())
        logger.addHandler(handler)
        logger.propagate = False
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter())
    logger.setLevel(logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING)
