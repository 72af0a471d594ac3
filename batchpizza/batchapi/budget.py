"""Tokens and money through the Batch API (batchapi/flow.py): the tokens of the answers collected,
and `--max-cost` at the batch price.

Every line reserves its worst case at the batch price (pricing.BATCH_DISCOUNT) before its file is
submitted, on the run's one Budget (controls/budget.py), the one --via auto's online rows reserve
on too; a collected line settles with the usage its result reports. The worst case is the online
request's: the meter's input bound of its prompt (Meter.input_sizes: the body parameters the
model reads, its tools, included), and its max_tokens (else the meter's output estimate: the cap
then holds for sure only with max_tokens set, as online).

Lines a batch already has when the run starts (an earlier run's, of another model or parameters
too) are reserved whether they fit or not: they will be billed. Their prompt is not at hand, only the line: the same bound of the
messages in its body (tokencount.messages_bound) and its parameters, its body's max_tokens. A failed or expired line
keeps its reservation until it is resubmitted and answered; one an earlier run left waiting takes
one when it fits.

Rows are reserved in input order: the first that does not fit is withheld with every row after
it (they stay pending), and offered again once a collected batch settled for less than it
reserved. Something that does not fit while no batch is out: the cap is reached, the run stops
"budget".
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import batchpizza.jsoncodec as jsoncodec
from batchpizza.batchapi.display import UNSUBMITTED
from batchpizza.checkpoint.batches import BatchLine, BatchRecords
from batchpizza.controls.budget import Reservation
from batchpizza.controls.metering import Meter
from batchpizza.controls.stop import Stop
from batchpizza.engine.runner import Counters, PendingRow
from batchpizza.pricing import cost, dollars
from batchpizza.records import Prompt, Result
from batchpizza.tokencount import max_output, messages_bound, params_sizes

log = logging.getLogger("batchpizza")
_OTHERS = "a --via batch run at the server they were made at"


class BatchBudget:
    """One run's: `meter` is the run's (None without --max-cost and --tpm)."""

    def __init__(self, meter: Meter | None, counters: Counters) -> None:
        self.meter = meter
        self.budget = meter.budget if meter is not None else None
        self.counters = counters
        self.input_tokens = 0  # of the answers this run collected from batches
        self.output_tokens = 0
        self.withheld: Iterator[PendingRow] | None = None  # rows that did not fit yet
        self.short = False  # something did not fit since the last `take_withheld`
        self._held: dict[bytes, Reservation] = {}  # by request key
        self._foreign: dict[int, float] = {}  # taken off the cap, by file (`reserve_foreign`)
        self._learn = meter is not None and max_output(meter.params) is None

    @property
    def tokens(self) -> tuple[int, int]:
        """The input and output tokens of the answers this run collected from batches."""
        return self.input_tokens, self.output_tokens

    def reserve_out(self, lines: Iterable[BatchLine]) -> None:
        """Lines a batch has already (an earlier run's): reserved, fit or not."""
        budget = self.budget
        if budget is None:
            return
        for line in lines:
            if line.digest not in self._held and line.line is not None:
                held = budget.try_reserve(*self._line_worst(line.line), batch=True, force=True)
                assert held is not None  # forced
                self._held[line.digest] = held

    def reserve_every_out(self, checkpoint: BatchRecords) -> None:
        """The lines every batch still out has, this identity's and every other's."""
        self.reserve_out(_lines_out(checkpoint, others=False, waiting=True))
        self.reserve_foreign(_lines_out(checkpoint, others=True), _OTHERS)

    def reserve_foreign(self, lines: Iterable[BatchLine], whose: str) -> None:
        """Lines another identity's batches have (a run of another model or parameters): they
        will be billed too, so the cap this run has is smaller by their worst cases. Taken off
        the cap, not held: no request of this run settles them, and one that does not fit must
        not wait for them as for requests in flight."""
        budget = self.budget
        if budget is None:
            return
        count, held = 0, 0.0
        for line in lines:
            if line.line is not None:
                count += 1
                worst = cost(budget.price, *self._line_worst(line.line), batch=True)
                self._foreign[line.seq] = self._foreign.get(line.seq, 0.0) + worst
                held += worst
        if count:
            budget.cap -= held
            log.warning(
                "--max-cost: %d requests in Batch API batches still out hold %s of the cap "
                "(they will be billed; %s collects them)",
                count,
                dollars(held),
                whose,
            )

    def foreign_collected(self, seq: int) -> None:
        """Another identity's file `seq` collected: what it held of the cap is given back (its
        cost is spent instead, at its run's price: others.py)."""
        if self.budget is not None:
            self.budget.cap += self._foreign.pop(seq, 0.0)

    def release_all(self) -> None:
        """Every line's reservation freed (an online run's collection, collecting.py: the lines
        left to resubmit are sent online instead, reserved there)."""
        if self.budget is not None:
            for held in self._held.values():
                self.budget.release(held)
        self._held.clear()

    def fitting(
        self, rows: Iterator[PendingRow], skip: set[bytes], key: Callable[[Prompt], bytes]
    ) -> Iterator[PendingRow]:
        """`rows`, each reserved, up to the first that does not fit: it and the rest are
        withheld. A row a batch has already (in `skip`) goes by: it is not put in a file."""
        budget, meter = self.budget, self.meter
        if budget is None or meter is None:
            yield from rows
            return
        for row in rows:
            prompt = row[1]
            digest = key(prompt)
            if digest in skip or digest in self._held:
                yield row
                continue
            held = budget.try_reserve(
                meter.input_sizes(prompt)[0], meter.worst_output(prompt), batch=True
            )
            if held is None:
                self.withheld = itertools.chain((row,), rows)
                self.short = True
                return
            self._held[digest] = held
            yield row

    def resubmittable(self, lines: list[BatchLine]) -> list[BatchLine]:
        """The lines waiting to be resubmitted that hold a reservation, or take one now."""
        budget = self.budget
        if budget is None:
            return lines
        kept = []
        for line in lines:
            if line.digest not in self._held:
                held = budget.try_reserve(*self._line_worst(line.line or b""), batch=True)
                if held is None:
                    self.short = True
                    continue
                self._held[line.digest] = held
            kept.append(line)
        return kept

    def settle(self, outcomes: Iterable[tuple[bytes, str]], results: Iterable[Result]) -> None:
        """A collected file: the tokens of its answers counted, each line's reservation settled
        with its answer's usage (its worst case spent when it has none), freed for a line that
        failed for good (not billed), kept for one to resubmit."""
        counters = self.counters
        used: dict[bytes, tuple[int, int]] = {}
        for r in results:
            if r.prompt_tokens is not None and r.completion_tokens is not None:
                used[r.digest] = (r.prompt_tokens, r.completion_tokens)
                self.input_tokens += r.prompt_tokens
                self.output_tokens += r.completion_tokens
                counters.input_tokens += r.prompt_tokens
                counters.output_tokens += r.completion_tokens
                if self._learn and self.meter is not None:
                    self.meter.output.observe(r.completion_tokens)
        budget = self.budget
        if budget is None:
            return
        for digest, outcome in outcomes:
            if outcome in ("failed", "expired"):
                continue
            held = self._held.pop(digest, None)
            if held is None:
                continue
            if outcome != "answered":
                budget.release(held)
            elif digest in used:
                budget.settle(held, *used[digest])
            else:
                budget.charge_reserved(held)

    def cancelled(self, digests: Iterable[bytes], *, created: bool) -> None:
        """Lines whose file --via auto abandons to send them online (reserved again there, at
        full price). A batch `created` bills the lines it completed before the cancel took
        effect, and which those are cannot be known in time: each line's worst case is spent.
        The lines of a file never made a batch are freed."""
        if self.budget is not None:
            for digest in digests:
                held = self._held.pop(digest, None)
                if held is not None and created:
                    self.budget.charge_reserved(held)
                elif held is not None:
                    self.budget.release(held)

    def take_withheld(self) -> Iterator[PendingRow] | None:
        """The rows withheld, to offer again (None: none)."""
        rows, self.withheld = self.withheld, None
        return rows

    def reached(self, stop: Stop) -> None:
        """Nothing more fits and no batch is out to free room: the run stops "budget"."""
        log.warning("stopping: the next line's worst-case cost would pass --max-cost")
        stop.stop_sending("budget")

    def _line_worst(self, line: bytes) -> tuple[int, int]:
        """A request line's worst case, input and output tokens, as its prompt's would be; a
        line that cannot be read (never one batchpizza wrote): its bytes bound its input."""
        assert self.meter is not None
        try:
            body: Any = jsoncodec.loads(line).get("body")
        except (ValueError, AttributeError):
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return len(line), self.meter.output.value
        model = self.meter.model or body.get("model")
        worst_input = messages_bound(body["messages"], model if isinstance(model, str) else None)
        worst_input += params_sizes(body)[0]  # tools too
        return worst_input, max_output(body) or self.meter.output.value


def _lines_out(
    checkpoint: BatchRecords, *, others: bool, waiting: bool = False
) -> Iterator[BatchLine]:
    """The lines of the batches still out; with `waiting`, of the files waiting to be submitted
    too, which only this identity's --via batch run submits: none is made of them otherwise
    (an upload a gateway refused), and their rows answered online close them, billed once."""
    files = [f for f in checkpoint.open_files(others) if waiting or f.state not in UNSUBMITTED]
    return (x for f in files for x in checkpoint.file_lines(f.seq))


def off_the_cap(meter: Meter, checkpoint: BatchRecords) -> None:
    """An online run's cap less the worst cases of every batch still out (this model's and
    others'): they will be billed whatever this run does, and rows in them sent online are
    billed twice."""
    money = BatchBudget(meter, Counters())
    money.reserve_foreign(_lines_out(checkpoint, others=False), "a run with --via batch")
    money.reserve_foreign(_lines_out(checkpoint, others=True), _OTHERS)
