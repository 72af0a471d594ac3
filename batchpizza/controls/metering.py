"""What a request costs before it is sent, and what it cost once answered: the money budget
(budget.py) and the token pacer (tokens.py) that Control consults when a run has `--max-cost`
or `--tpm`. A run with neither has no Meter, and pays nothing for it.

Per request, before the breaker and the request pacer:
  1. the budget reserves its worst-case cost: input tokencount.input_bound plus the schema as
     sent (Structured.overhead: the server counts it as input), output its max_tokens, else
     OutputEstimate's running 99th percentile (so the cap holds for sure only with max_tokens
     set; README says so);
  2. the token pacer books its estimate: tokencount.input_estimate plus the same output.
When it ends: an answer settles both with the server's usage; an HTTP error frees both (a refused
request is not billed); a timeout or a dropped connection keeps the worst case spent (the
server may have done the work) and the booking standing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from batchpizza.controls.budget import Budget, Reservation
from batchpizza.controls.tokens import OutputEstimate, TokenPacer
from batchpizza.errors import HTTPStatusError, ProviderError
from batchpizza.records import Prompt, RateInfo
from batchpizza.tokencount import input_bound, input_estimate, max_output


class Ticket(NamedTuple):
    """What a request holds while in flight: the gate's token, and what it booked."""

    permit: object
    booked: int  # tokens booked on the token pacer
    reservation: Reservation | None


class Meter:
    def __init__(
        self,
        *,
        params: Mapping[str, Any],
        budget: Budget | None = None,
        pacer: TokenPacer | None = None,
        output: OutputEstimate | None = None,
        overhead: tuple[int, int] = (0, 0),
    ) -> None:
        self.params = params
        # (bound, estimate) of what every request carries beyond its messages (--schema's
        # response_format or instruction): the server counts it as input.
        self._extra_bound, self._extra_estimate = overhead
        self.budget = budget
        self.pacer = pacer
        self.output = output or OutputEstimate()
        self._last_booked = 0
        self._cap = max_output(params)  # --param max_tokens: the same for every request

    def worst_output(self, prompt: Prompt) -> int:
        if self._cap is not None:
            return self._cap
        return (max_output({}, prompt) if prompt.body else None) or self.output.value

    def admit_now(self, prompt: Prompt, permit: object = None) -> Ticket | None:
        """`admit` when it can be done at once (the budget has room and the pacer a free
        instant): the usual case at full speed, without a coroutine; None: call `admit`."""
        out = self.worst_output(prompt)
        budget, pacer = self.budget, self.pacer
        reservation = None
        if budget is not None:
            reservation = budget.try_reserve(input_bound(prompt) + self._extra_bound, out)
            if reservation is None:
                return None
        booked = 0
        if pacer is not None:
            booked = input_estimate(prompt) + self._extra_estimate + out
            if not pacer.try_now(booked):
                if reservation is not None and budget is not None:
                    budget.release(reservation)
                return None
            self._last_booked = booked
        return Ticket(permit, booked, reservation)

    async def admit(self, prompt: Prompt) -> tuple[int, Reservation | None]:
        """Reserve and book `prompt`'s request; BudgetReached when the cap is reached."""
        out = self.worst_output(prompt)
        reservation = None
        if self.budget is not None:
            reservation = await self.budget.reserve(input_bound(prompt) + self._extra_bound, out)
        booked = 0
        if self.pacer is not None:
            booked = input_estimate(prompt) + self._extra_estimate + out
            try:
                await self.pacer.acquire(booked)
            except BaseException:
                if reservation is not None and self.budget is not None:
                    self.budget.release(reservation)
                raise
        self._last_booked = booked
        return booked, reservation

    def cancel(self, ticket: Ticket) -> None:
        """The request was never sent (the run stopped while it waited)."""
        if ticket.reservation is not None and self.budget is not None:
            self.budget.release(ticket.reservation)
        if self.pacer is not None:
            self.pacer.settle(ticket.booked, 0)

    def settle(
        self,
        ticket: Ticket,
        error: ProviderError | None,
        rate: RateInfo | None,
        usage: tuple[int | None, int | None] | None,
    ) -> None:
        prompt_tokens, completion_tokens = usage or (None, None)
        known = prompt_tokens is not None and completion_tokens is not None
        if error is None and completion_tokens is not None and self._cap is None:
            self.output.observe(completion_tokens)
        billed = error is None or not isinstance(error, HTTPStatusError)
        budget, reservation = self.budget, ticket.reservation
        if budget is not None and reservation is not None:
            if error is None and known:
                budget.settle(reservation, prompt_tokens or 0, completion_tokens or 0)
            elif billed:
                budget.charge_reserved(reservation)
            else:
                budget.release(reservation)
        pacer = self.pacer
        if pacer is not None:
            used = (prompt_tokens or 0) + (completion_tokens or 0) if known else None
            pacer.settle(ticket.booked, used if billed else 0)
            if rate is not None:
                pacer.observe(
                    rate.limit_tokens,
                    rate.remaining_tokens,
                    rate.reset_tokens_s,
                    self._last_booked,
                )
            elif error is None and pacer.auto and pacer.rate is None:
                pacer.observe(None, None, None, 0)  # an answer with no limit announced
