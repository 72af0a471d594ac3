"""The finished batches of other identities (an earlier run's model or parameters), collected by a
run of this one at their server (--via batch or auto, or online: collecting.py), so that a cron
job whose --model or --param changed, or which went back to sending online, does not leave the
answers it paid for to expire at the provider.

At the start of the run (and at each poll while a --via batch run waits for its own), each
batch of another identity still out is polled, if it was made at
this run's server (the checkpoint records the API root each file went to: a batch cannot be
fetched from another server, nor with another server's key); one made elsewhere, or by a
batchpizza that did not record where, is left as it is, and said once. A batch that ended is
collected as the run's own are (the same judging of the same lines), but every result is kept
under the identity that asked it, never this run's, and so never in this run's output; a run of
that identity finds those rows answered and sends nothing. Its lines that failed or expired are
left to be resubmitted by a run of their own identity (this one would pay for another model's
requests); a batch refused as a whole, or lines refused for an unknown model, are failed rows of
that identity, said in the log, not a reason to stop this run. A batch still running stays out
(--max-cost holds it); one the server answers 404 for, or whose output file it answers 404 for,
is left for a run of its own identity to judge (it may hold the key that sees it).

The tokens of what is collected are spent at the submitting run's price, at the Batch API's half
(checkpoint/foreign.py): on the checkpoint, in --max-cost's spent, not in this run's own counts.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from typing import Any

from batchpizza.batchapi.budget import BatchBudget
from batchpizza.batchapi.client import BatchClient
from batchpizza.batchapi.download import results_of, said_collected
from batchpizza.batchapi.files import ResultLine
from batchpizza.batchapi.lost import Lost
from batchpizza.batchapi.quota import over_enqueued_limit
from batchpizza.batchapi.results import Judge
from batchpizza.batchapi.statuses import Statuses
from batchpizza.checkpoint import Checkpoint
from batchpizza.checkpoint.batches import BatchFile
from batchpizza.controls.stop import Stop
from batchpizza.errors import BatchAPIError, ProviderError
from batchpizza.plurals import noun, plural
from batchpizza.pricing import Price, cost
from batchpizza.providers.openai import OpenAIAPI
from batchpizza.records import Attempt, Result, is_answered
from batchpizza.redact import redact

log = logging.getLogger("batchpizza")


def origin_of(provider: OpenAIAPI) -> str:
    """The API root the provider's batches go to, as the checkpoint keeps it: no credentials."""
    base = provider.api_base.with_user(None).with_query(None).with_fragment(None)
    return redact(str(base)).rstrip("/")


class Others:
    """One run's collection of other identities' batches (`collect`, once, at its start)."""

    def __init__(
        self,
        provider: OpenAIAPI,
        checkpoint: Checkpoint,
        run: int,
        stop: Stop,
        max_retries: int,
        money: BatchBudget,
    ) -> None:
        self.provider = provider
        self.checkpoint = checkpoint
        self.run_id = run
        self.stop = stop
        self.max_retries = max_retries
        self.money = money  # --max-cost's: what is collected is spent
        self.origin = origin_of(provider)
        checkpoint.batch_origin = self.origin  # recorded with each file this run makes
        self.statuses = Statuses()
        self.collected = 0  # results kept under other identities (answers and failed rows)
        self.answered = 0
        self.batches = 0
        self._looked = False  # the first `collect` says what it leaves, once

    def here(self) -> list[BatchFile]:
        """This identity's files not collected yet, but those made at another server: left there
        as other identities' are (polled here, a batch answered 404 until it was taken for lost
        and its lines were submitted again, while that server ran and billed it all the same).
        A file recorded before origins were is taken as made here, as before."""
        origins = self.checkpoint.file_origins()
        mine = self.checkpoint.open_files()
        return [f for f in mine if origins.get(f.seq) in (None, self.origin)]

    async def collect(self, client: BatchClient) -> None:
        """Those that ended, collected: at the run's start, and at each poll while it waits."""
        checkpoint = self.checkpoint
        first, self._looked = not self._looked, True
        if first:
            checkpoint.set_meta(batch_origin=self.origin)  # what `status` tells servers from
            self._say_mine_elsewhere()
        others = checkpoint.open_files(others=True)
        if not others:
            return
        before = (self.collected, self.answered, self.batches)
        origins = checkpoint.file_origins()
        elsewhere: Counter[str | None] = Counter()
        for f in others:
            if self.stop.sending_stopped:
                break
            if f.batch_id is None:
                continue  # never made a batch: a run of its own identity submits it
            origin = origins.get(f.seq)
            if origin != self.origin:
                elsewhere[origin] += 1
                continue
            try:
                batch = await client.get(f.batch_id)
            except BatchAPIError as exc:
                self.statuses.poll_failed(f, exc, "left to a run of its model and parameters")
                continue
            checkpoint.set_batch(f.seq, batch)
            if self.statuses.ended(f, batch):
                await self._collect(client, f, batch)
        self._say_collected(*before)
        if first:
            self._say(elsewhere)

    async def _collect(self, client: BatchClient, f: BatchFile, batch: dict[str, Any]) -> None:
        checkpoint = self.checkpoint
        ident = checkpoint.file_ident(f.seq)
        model = (checkpoint.identity_of(ident) or {}).get("model")
        theirs = copy.copy(self.provider)
        theirs.model = model  # what their answers and failures are recorded with
        judge = Judge(theirs, self.max_retries)
        status = why = str(batch.get("status"))
        lines = {line.custom_id: line for line in checkpoint.file_lines(f.seq)}
        refused = status == "failed" and not over_enqueued_limit(batch)
        errors = ""
        if refused:  # the server's errors, as set_batch kept them
            kept = [b.errors for b in checkpoint.open_files(others=True) if b.seq == f.seq]
            errors = (kept[0] if kept else None) or "no reason given"
        seen: dict[str, ResultLine] = {}
        if not refused:
            if status == "failed":
                why = "failed: token_limit_exceeded (the enqueued-token limit)"
            # A file the server answers 404 for is never taken as lost here (lambda: False):
            # a run of their own may see it.
            found = await results_of(client, batch, lines, lambda: False)
            if found is None:
                return
            seen = found
        results: list[Result] = []
        attempts: list[Attempt] = []
        outcomes: list[tuple[str, str]] = []
        fatal: ProviderError | None = None
        took = ((Lost.ended(batch) or f.created) - f.created) * 1000.0
        for cid, line in lines.items():
            if refused:
                error = ProviderError(f"the Batch API refused the file {f.name}: {errors}")
                result: Result | None = judge.error_result(line, error)
                outcome, attempt = "error", Attempt(line.id, 0.0, 0.0, "error", None, error.message)
            else:
                found_line = seen.get(cid)
                verdict = (
                    judge.unanswered(line, why)
                    if found_line is None
                    else judge.judge(line, found_line)
                )
                outcome, result, attempt = verdict.outcome, verdict.result, verdict.attempt
                fatal = fatal or verdict.fatal
            outcomes.append((cid, outcome))
            attempts.append(attempt._replace(started=f.created, duration_ms=took))
            if result is not None:
                results.append(result)
        results = checkpoint.not_over_answers(f.seq, results)  # answered online meanwhile
        submitter, price = checkpoint.submitter(f.created)
        checkpoint.keep_foreign(
            f.seq,
            results,
            attempts,
            outcomes,
            "failed" if refused else status,
            run=self.run_id if submitter is None else submitter,
            price=price,
        )
        said_collected(batch, status, [o for _, o in outcomes])
        self._spent(f.seq, results, price)
        self.batches += 1
        self.collected += len(results)
        self.answered += sum(1 for _, o in outcomes if o == "answered")
        failed = any(not is_answered(r.finish_reason) for r in results)
        if (refused or fatal is not None) and failed:  # (else answered before: kept)
            said = errors if refused else fatal.message if fatal is not None else ""
            log.warning(
                "batch %s of model %s: %s; its rows not answered otherwise are recorded as "
                "failed under that model, sent again by a run of it",
                batch.get("id"),
                model,
                said,
            )

    def _spent(self, seq: int, results: list[Result], price: tuple[float, float] | None) -> None:
        """--max-cost: what the collected answers cost is spent, at their run's price; where that
        run knew none, at this run's (at which the cap held their lines until now): they were
        billed, and counting them as free let this run spend their share again. The worst case
        their file held of the cap while it was out (collected as the run waited) is given back."""
        budget = self.money.budget
        if budget is None:
            return
        self.money.foreign_collected(seq)
        used_in = sum(r.prompt_tokens or 0 for r in results)
        used_out = sum(r.completion_tokens or 0 for r in results)
        at = budget.price if price is None else Price(*price)
        budget.spent += cost(at, used_in, used_out, batch=True)

    def _say_mine_elsewhere(self) -> None:
        here = {f.seq for f in self.here()}
        origins = self.checkpoint.file_origins()
        left = [f for f in self.checkpoint.open_files() if f.seq not in here]
        for origin in sorted({origins[f.seq] for f in left}, key=str):
            n = sum(1 for f in left if origins[f.seq] == origin)
            log.warning(
                "%s of this model and parameters %s made at %s, not at this run's base URL: "
                "left there (billed when %s); a run with that --base-url collects %s, and %s "
                "rows wait for it",
                plural(n, "Batch API batch", "Batch API batches"),
                noun(n, "was", "were"),
                origin,
                noun(n, "it ends", "they end"),
                noun(n, "it", "them"),
                noun(n, "its", "their"),
            )

    def _say_collected(self, collected: int, answered: int, batches: int) -> None:
        """What this look collected (the counts before it given)."""
        collected, answered = self.collected - collected, self.answered - answered
        batches = self.batches - batches
        if collected:
            log.warning(
                "collected %s (%s) from %s of other models or parameters: kept in the "
                "checkpoint under the model and parameters that asked them, not in this output "
                "(a run of those outputs them, sending nothing)",
                plural(collected, "result"),
                plural(answered, "answer"),
                plural(batches, "finished Batch API batch", "finished Batch API batches"),
            )

    def _say(self, elsewhere: Counter[str | None]) -> None:
        for origin, n in sorted(elsewhere.items(), key=lambda kv: str(kv[0])):
            where = (
                f"made at {origin}, not at this run's base URL: left there; a run with that "
                "--base-url collects"
                if origin is not None
                else "made by a batchpizza that did not record where: left to a --via batch "
                "run of their model and parameters, which collects"
            )
            log.warning(
                "%s of other models or parameters %s %s %s",
                plural(n, "Batch API batch", "Batch API batches"),
                noun(n, "was", "were"),
                where,
                noun(n, "it", "them"),
            )
