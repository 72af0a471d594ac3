"""What a request costs before it is sent, and what it cost once answered: the money budget
(budget.py) and the token pacer (tokens.py) that Control consults when a run has `--max-cost`
or `--tpm`. A run with neither has no Meter, and pays nothing for it.

Per request, once the breaker and the request pacer let it go (Control.enter_for; a booking
made before a Retry-After pause would be spent on a timeline nobody used):
  1. the budget reserves its worst-case cost: input tokencount.input_bound plus the schema as
     sent (Structured.overhead: the server counts it as input), output its max_tokens, else
     OutputEstimate's running 99th percentile (so the cap holds for sure only with max_tokens
     set; README says so);
  2. the token pacer books its estimate: tokencount.input_estimate plus the same output.
When it ends: an answer settles both with the server's usage; an HTTP error frees both (a refused
request is not billed); a timeout, a dropped connection or a request cut off after a stop
keeps the worst case spent (the server may have done the work) and the booking standing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from batchpizza.controls.budget import Budget, Reservation
from batchpizza.controls.tokens import SLACK, OutputEstimate, TokenPacer
from batchpizza.errors import HTTPStatusError, ProviderError
from batchpizza.records import Prompt, RateInfo
from batchpizza.tokencount import (
    BOUND_MESSAGE_OVERHEAD,
    BOUND_REPLY_OVERHEAD,
    CHARS_PER_TOKEN,
    MESSAGE_OVERHEAD,
    REPLY_OVERHEAD,
    input_sizes,
    max_output,
    params_sizes,
)

# What tokencount.input_sizes adds to a prompt row's one message, for the bound and the estimate.
_ROW_BOUND = BOUND_MESSAGE_OVERHEAD + BOUND_REPLY_OVERHEAD
_ROW_ESTIMATE = MESSAGE_OVERHEAD + REPLY_OVERHEAD
_new = object.__new__


@dataclass(slots=True)
class Ticket(Reservation):
    """What a request holds while in flight: its reservation of the budget (a Ticket is one, so
    that an attempt makes one object, not two), the tokens it booked on the token pacer, and
    the gate's token."""

    booked: int = 0
    permit: object = None


class Meter:
    def __init__(
        self,
        *,
        params: Mapping[str, Any],
        budget: Budget | None = None,
        pacer: TokenPacer | None = None,
        output: OutputEstimate | None = None,
        overhead: tuple[int, int] = (0, 0),
        model: str | None = None,
    ) -> None:
        self.params = params
        # --model: what an image's tokens are bounded by (media.py); else a batch line's own.
        self.model = model
        # (bound, estimate) of what every request carries beyond its messages (--schema's
        # response_format or instruction): the server counts it as input.
        self._extra_bound, self._extra_estimate = overhead
        # The body parameters the model reads (--param tools=...): input, as the schema is.
        bound, estimate = params_sizes(params)
        self._extra_bound += bound
        self._extra_estimate += estimate
        self.budget = budget
        self.pacer = pacer
        self.output = output or OutputEstimate()
        self._last_booked = 0
        self._cap = max_output(params)  # --param max_tokens: the same for every request

    def worst_output(self, prompt: Prompt) -> int:
        """The output `prompt`'s request may be billed for: its cap (--param over a batch
        line's body, times the answers either asks for: tokencount.max_output), else the
        running estimate."""
        if prompt.body:
            return max_output(self.params, prompt) or self.output.value
        return self.output.value if self._cap is None else self._cap

    def admit_now(self, prompt: Prompt, permit: object = None) -> Ticket | None:
        """`admit` when it can be done at once (the budget has room and the pacer a free
        instant): the usual case at full speed, without a coroutine; None: call `admit`, and
        nothing was reserved nor booked.

        Every attempt of a metered run comes here, so this is the fast path of all three,
        written out without a call: `_ticket` (a prompt row's sizes counted as
        tokencount.input_sizes counts them), Budget.try_hold, and the pacer's booking of a
        free instant (as TokenPacer.acquire books one that waited). The state stays theirs:
        the budget's `reserved` and `in_flight`, the pacer's timeline. Both are asked before
        either is changed: nothing is awaited here, so no other request comes in between."""
        out = self._cap
        if prompt.body:  # a batch line's: its own max_tokens and n count too
            out = self.worst_output(prompt)
        elif out is None:
            out = self.output.value
        text = prompt.text
        messages = prompt.messages
        if (
            (
                not messages
                or (
                    len(messages) == 1
                    and "name" not in messages[0]
                    and type(messages[0].get("content")) is str  # not an image's parts
                )
            )
            and text.isascii()
            and not prompt.body
        ):
            chars = len(text)
            bound = chars + _ROW_BOUND + self._extra_bound
            estimate = -(-chars // CHARS_PER_TOKEN) + _ROW_ESTIMATE + self._extra_estimate
        else:
            bound, estimate = self.input_sizes(prompt)
        pacer = self.pacer
        booked = 0
        if pacer is not None:
            booked = estimate + out
            rate = pacer.rate
            if rate is None:  # --tpm auto, nothing learned yet: one at a time
                return None
            clock = pacer.clock  # called from a local: a slow lookup as a method call
            now = clock()
            if pacer.hold_until > now or (rate and pacer.tat > now + SLACK):
                return None  # a Retry-After of the token limit, or requests queued before
        dollars = 0.0
        budget = self.budget
        if budget is not None:
            dollars = (bound * budget.input_price + out * budget.output_price) / 1e6
            if budget.spent + budget.reserved + dollars > budget.cap:
                return None
            budget.reserved += dollars
            budget.in_flight += 1
        if pacer is not None:
            if rate:
                pacer.tat = end = now + booked / rate
                if end > pacer.sent_tat:
                    pacer.sent_tat = end
            pacer.in_flight += 1
            self._last_booked = booked
        # Filled in here: a dataclass's __init__ (a call, and a frame) cost a tenth of the meter.
        ticket = _new(Ticket)
        ticket.dollars = dollars
        ticket.input_tokens = bound
        ticket.output_tokens = out
        ticket.batch = False
        ticket.booked = booked
        ticket.permit = permit
        return ticket

    async def admit(self, prompt: Prompt) -> Ticket:
        """Reserve and book `prompt`'s request; BudgetReached when the cap is reached."""
        ticket = self._ticket(prompt)
        if self.budget is not None:
            await self.budget.hold(ticket)
        if self.pacer is not None:
            try:
                await self.pacer.acquire(ticket.booked)
            except BaseException:
                if self.budget is not None:
                    self.budget.release(ticket)
                raise
            self._last_booked = ticket.booked
        return ticket

    def _ticket(self, prompt: Prompt) -> Ticket:
        """`prompt`'s worst case for the budget (input bound, output cap), and the estimate it
        books on the pacer, not yet reserved nor booked."""
        out = self._cap
        if prompt.body:  # a batch line's: its own max_tokens and n count too
            out = self.worst_output(prompt)
        elif out is None:
            out = self.output.value
        bound, estimate = self.input_sizes(prompt)
        booked = estimate + out if self.pacer is not None else 0
        return Ticket(0.0, bound, out, False, booked)

    def input_sizes(self, prompt: Prompt) -> tuple[int, int]:
        """(bound, estimate) of the input tokens of `prompt`'s request: its messages, what
        every request of the run carries beside them (the schema, --param tools=...), and a
        batch line's own parameters the model reads (its `tools`) where --param does not
        replace them (OpenAIAPI.body)."""
        model = self.model
        if model is None and prompt.body:
            line_model = prompt.body.get("model")
            model = line_model if isinstance(line_model, str) else None
        bound, estimate = input_sizes(prompt, model)
        bound, estimate = bound + self._extra_bound, estimate + self._extra_estimate
        if prompt.body:
            own = {k: v for k, v in prompt.body.items() if k not in self.params}
            line_bound, line_estimate = params_sizes(own)
            bound, estimate = bound + line_bound, estimate + line_estimate
        return bound, estimate

    def cancel(self, ticket: Ticket) -> None:
        """The request was never sent (the run stopped while it waited)."""
        if self.budget is not None:
            self.budget.release(ticket)
        if self.pacer is not None:
            self.pacer.settle(ticket.booked, 0)

    def cut_off(self, ticket: Ticket) -> None:
        """The request was sent, then cut off (the grace after a stop ran out): as for a
        timeout, the server may have done the work: its worst case is spent (and kept for a
        rerun to count), its booking stands."""
        if self.budget is not None:
            self.budget.charge_reserved(ticket)
        if self.pacer is not None:
            self.pacer.settle(ticket.booked, None)

    def settle(
        self,
        ticket: Ticket,
        error: ProviderError | None,
        rate: RateInfo | None,
        usage: tuple[int | None, int | None] | None,
    ) -> None:
        if error is None and usage is not None:
            prompt_tokens, completion_tokens = usage
            if prompt_tokens is not None and completion_tokens is not None:
                # An answer with its usage: every attempt of a run that goes well.
                if self._cap is None:
                    output = self.output  # its `observe`, without the call
                    kept = output.kept
                    kept.append(completion_tokens)
                    if len(kept) >= output.due_at:
                        output.update()
                budget = self.budget
                if budget is not None:
                    # Budget.settle written out (a Ticket is an online request's: never at the
                    # Batch API's price): its reservation freed, its cost spent.
                    held = ticket.dollars
                    if held >= 0:
                        ticket.dollars = -1.0
                        budget.in_flight = in_flight = budget.in_flight - 1
                        # No float dust left over when nothing is in flight.
                        budget.reserved = budget.reserved - held if in_flight else 0.0
                        if budget.waiting is not None:
                            budget.wake()
                    budget.spent += (
                        prompt_tokens * budget.input_price + completion_tokens * budget.output_price
                    ) / 1e6
                pacer = self.pacer
                if pacer is not None:
                    pacer.settle(ticket.booked, prompt_tokens + completion_tokens)
                    if rate is not None or (pacer.auto and pacer.rate is None):
                        self._observe(pacer, rate)
                return
        self._settle_other(ticket, error, rate, usage)

    def _settle_other(
        self,
        ticket: Ticket,
        error: ProviderError | None,
        rate: RateInfo | None,
        usage: tuple[int | None, int | None] | None,
    ) -> None:
        """`settle` for an error, or an answer without a whole usage."""
        prompt_tokens, completion_tokens = usage or (None, None)
        used = None  # tokens, when the server said both
        if prompt_tokens is not None and completion_tokens is not None:
            used = prompt_tokens + completion_tokens
        if error is None:
            billed = True
            if completion_tokens is not None and self._cap is None:
                self.output.observe(completion_tokens)
        else:
            billed = not isinstance(error, HTTPStatusError)
        budget = self.budget
        if budget is not None:
            if error is None and used is not None:
                budget.settle(ticket, prompt_tokens or 0, completion_tokens or 0)
            elif billed:
                budget.charge_reserved(ticket)
            else:
                budget.release(ticket)
        pacer = self.pacer
        if pacer is not None:
            pacer.settle(ticket.booked, used if billed else 0)
            if rate is not None or (error is None and pacer.auto and pacer.rate is None):
                self._observe(pacer, rate, answered=error is None)

    def _observe(self, pacer: TokenPacer, rate: RateInfo | None, answered: bool = True) -> None:
        """What a reply said of the token limit, for --tpm auto; None: an answer with no limit
        announced."""
        if rate is None:
            pacer.observe(None, None, None, 0)
        else:
            pacer.observe(
                rate.limit_tokens,
                rate.remaining_tokens,
                rate.reset_tokens_s,
                self._last_booked,
                answered=answered,
            )
