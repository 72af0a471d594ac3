"""What a Batch API result line means for its row, judged as the online request's reply would
be (the provider's own parsing of the same body): an answer, a failure to resubmit within the
line's budget (`--max-retries`, as an online row's retries), or a failed row."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from batchpizza.batchapi.files import ResultLine
from batchpizza.checkpoint.batches import BatchFile, BatchLine
from batchpizza.engine.outcomes import ANSWERED, outcome_of
from batchpizza.errors import BatchAPIError, ProviderError, describe
from batchpizza.plurals import noun, plural
from batchpizza.providers.openai import OpenAIAPI
from batchpizza.records import Attempt, Outcome, Result


class Verdict(NamedTuple):
    outcome: str  # the line's: answered, failed, expired (to resubmit) or error
    result: Result | None  # what is committed for its row; None while it is resubmitted
    attempt: Attempt  # for the report (its times are the batch's)
    fatal: ProviderError | None = None  # a reply after which no request can succeed


class Judge:
    def __init__(self, provider: OpenAIAPI, max_retries: int) -> None:
        self.provider = provider
        self.max_retries = max_retries

    def judge(self, line: BatchLine, got: ResultLine) -> Verdict:
        """A line's result, as the online request's reply would be judged."""
        provider = self.provider
        model = provider.model
        error: ProviderError
        if got.status is not None and 200 <= got.status < 300 and got.body is not None:
            try:
                answer = provider._answer(got.status, got.body, model, None, got.request_id)
            except ProviderError as exc:
                error = exc
            else:
                result = Result(
                    line.id,
                    line.digest,
                    answer.finish_reason,
                    answer.text,
                    None,
                    line.tries,
                    None,
                    answer.model,
                    answer.prompt_tokens,
                    answer.completion_tokens,
                    answer.response_id,
                    answer.request_id,
                    answer.body,
                )
                return Verdict("answered", result, Attempt(line.id, 0.0, 0.0, ANSWERED))
        elif got.status is not None:
            error = provider._status_error(got.status, "", got.body or b"", {}, model)
            if provider.keep_bodies and got.body is not None:
                error.body = provider._masked(got.body)
        else:
            code = (got.error or {}).get("code") or "error"
            message = (got.error or {}).get("message") or "no reply"
            error = ProviderError(f"{code}: {provider._said(str(message))}")
            error.retryable = True
        error.request_id = got.request_id
        attempt = Attempt(line.id, 0.0, 0.0, outcome_of(error), error.status, describe(error))
        if error.retryable and line.tries <= self.max_retries:
            return Verdict("failed", None, attempt)
        fatal = error if error.fatal else None
        return Verdict("error", self.error_result(line, error), attempt, fatal)

    def unanswered(self, line: BatchLine, status: str) -> Verdict:
        """A line the batch ended without (expired, cancelled): resubmitted, within its budget."""
        why = f"not run: the batch was {status}"
        attempt = Attempt(line.id, 0.0, 0.0, "timeout", None, why)
        if line.tries <= self.max_retries:
            return Verdict("expired", None, attempt)
        return Verdict("error", self.error_result(line, ProviderError(why)), attempt)

    def refused(
        self,
        f: BatchFile,
        batch: Mapping[str, Any],
        lines: Mapping[str, BatchLine],
        errors: str | None,
        answered: set[bytes],
    ) -> tuple[list[tuple[int, Result]], BatchAPIError]:
        """A file the server refused as a whole (a bad file): a failed row for each line whose
        request has no answer (one got online meanwhile is kept: `answered`), and the error the
        run exits with, its sentence true of what was recorded."""
        said = (errors or "no reason given").rstrip(". ")
        error = ProviderError(f"the Batch API refused the file {f.name}: {said}")
        results = [
            (line.pos, self.error_result(line, error))
            for line in lines.values()
            if line.digest not in answered
        ]
        kept = (
            f"Its {plural(len(results), 'row')} without an answer "
            f"{noun(len(results), 'is', 'are')} recorded as failed; fix the cause and rerun to "
            f"send {noun(len(results), 'it', 'them')} again."
            if results
            else "Its rows all have an answer already (got online meanwhile); fix the cause "
            "before the next --via batch run."
        )
        failed = f"batch {batch.get('id')} ({f.name}, {plural(f.lines, 'request')}) failed: {said}."
        return results, BatchAPIError(f"{failed} {kept}", wrong=True)

    def error_result(self, line: BatchLine, error: ProviderError) -> Result:
        n = line.tries
        text = f"{describe(error)} after {plural(n, 'submission')} (Batch API)"
        return Result(
            line.id,
            line.digest,
            Outcome.ERROR.value,
            None,
            text,
            n,
            None,
            self.provider.model,
            request_id=error.request_id,
            body=error.body,
        )
