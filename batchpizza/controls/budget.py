"""The money cap of `--max-cost`: every request reserves its worst-case cost before it is sent and
settles with what the server reports as used when its reply comes.

The guarantee: what was spent (by earlier runs on the checkpoint, and settled in this one) plus
what is reserved by the requests in flight never passes the cap, so the server's usage priced at
the run's price cannot pass it either, at any concurrency, as long as no request uses more than
it reserved (its input is bounded by tokencount.input_bound, its output by max_tokens). The
check and the reservation are one synchronous step on the event loop: no other worker can
reserve in between.

A Batch API line (batchapi/budget.py) reserves and settles at the batch price; the lines a batch
already has when a run starts are reserved whether they fit or not (they will be billed).

A request that does not fit while others are in flight waits for them to settle (most use less
than their worst case, which frees room); one that does not fit with nothing in flight means the
cap is reached: `BudgetReached`, and the run stops sending.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from batchpizza.pricing import BATCH_DISCOUNT, Price


class BudgetReached(Exception):
    """The next request's worst case would pass the cap, with nothing in flight to free room."""


@dataclass(slots=True)
class Reservation:
    dollars: float
    input_tokens: int = 0  # the worst case reserved, kept as spent if no usage comes
    output_tokens: int = 0
    batch: bool = False  # a Batch-API line's: priced at the batch price (pricing.BATCH_DISCOUNT)


class Budget:
    """`cap` dollars, of which `spent` were spent before this run (the checkpoint's spend).

    Its state is this object's alone, but a request sent online is reserved and settled by
    Meter.admit_now and Meter.settle, which do `try_hold` and `settle` written out (every
    attempt of a metered run passes them, and a call each was a tenth of the meter's cost):
    a change to either here is made there too (tests/test_budget.py compares them)."""

    def __init__(
        self,
        cap: float,
        price: Price,
        *,
        spent: float = 0.0,
        on_charge: Callable[[int, int, bool], None] | None = None,
    ) -> None:
        self.cap = cap
        # Told the tokens of every worst case charged (no usage to settle with), and of answers
        # no result will carry (`keep`), for the checkpoint to keep: a rerun must count them.
        self.on_charge = on_charge
        self.price = price
        # The price's two figures as attributes: pricing.cost's sum, without a call or a
        # NamedTuple's lookups, on every attempt's path.
        self.input_price, self.output_price = price
        self.spent = spent  # settled: earlier runs' and this run's
        self.reserved = 0.0  # the worst cases of the requests in flight
        self.in_flight = 0
        self.waiting: asyncio.Event | None = None  # set (`wake`) when room is freed

    @property
    def left(self) -> float:
        """Dollars neither spent nor reserved."""
        return self.cap - self.spent - self.reserved

    def try_reserve(
        self, input_tokens: int, output_tokens: int, *, batch: bool = False, force: bool = False
    ) -> Reservation | None:
        """A reservation of this worst case (at the batch price for a Batch-API line) if it
        fits now; None if it does not. `force`: reserved whether it fits or not (lines a batch
        already has: they are out, and will be billed)."""
        reservation = Reservation(0.0, input_tokens, output_tokens, batch)
        return reservation if self.try_hold(reservation, force=force) else None

    def try_hold(self, reservation: Reservation, *, force: bool = False) -> bool:
        """`try_reserve` into a reservation made by the caller (a request's Ticket, which is
        one: one object per attempt, not two): its `dollars` are set if it fits now."""
        dollars = (
            reservation.input_tokens * self.input_price
            + reservation.output_tokens * self.output_price
        ) / 1e6
        if reservation.batch:
            dollars *= BATCH_DISCOUNT
        if not force and self.spent + self.reserved + dollars > self.cap:
            return False
        self.reserved += dollars
        self.in_flight += 1
        reservation.dollars = dollars
        return True

    async def reserve(self, input_tokens: int, output_tokens: int) -> Reservation:
        """Reserve this worst case, waiting for requests in flight to settle while it does not
        fit; BudgetReached when it cannot fit even with none in flight."""
        reservation = Reservation(0.0, input_tokens, output_tokens)
        await self.hold(reservation)
        return reservation

    async def hold(self, reservation: Reservation) -> None:
        """`reserve` into a reservation made by the caller (see `try_hold`)."""
        while not self.try_hold(reservation):
            if self.in_flight == 0:
                raise BudgetReached
            if self.waiting is None:
                self.waiting = asyncio.Event()
            settled = self.waiting
            await settled.wait()

    def settle(self, reservation: Reservation, input_tokens: int, output_tokens: int) -> float:
        """The request ended with this usage: its reservation is freed and its cost spent.
        Returns the cost."""
        dollars = (input_tokens * self.input_price + output_tokens * self.output_price) / 1e6
        if reservation.batch:
            dollars *= BATCH_DISCOUNT
        self._free(reservation)
        self.spent += dollars
        return dollars

    def release(self, reservation: Reservation) -> None:
        """The request ended without a reply that is billed (an error): nothing is spent."""
        self._free(reservation)

    def charge_reserved(self, reservation: Reservation) -> None:
        """The request ended without a usage to go by (a reply without one): its worst case is
        counted as spent, the safe side."""
        dollars = reservation.dollars
        self._free(reservation)
        self.spent += max(0.0, dollars)
        if dollars >= 0 and self.on_charge is not None:
            self.on_charge(reservation.input_tokens, reservation.output_tokens, reservation.batch)

    def keep(self, input_tokens: int | None, output_tokens: int | None) -> None:
        """Tokens settled (spent) that no result will carry (the answers of a row stopped while
        re-asked): told `on_charge`, for the checkpoint to keep, as a worst case charged is."""
        if self.on_charge is not None:
            self.on_charge(input_tokens or 0, output_tokens or 0, False)

    def _free(self, reservation: Reservation) -> None:
        dollars = reservation.dollars
        if dollars < 0:
            return  # freed already
        reservation.dollars = -1.0
        self.in_flight -= 1
        # No float dust left over when nothing is in flight.
        self.reserved = self.reserved - dollars if self.in_flight else 0.0
        if self.waiting is not None:
            self.wake()

    def wake(self) -> None:
        """Room was freed: every request waiting for some asks again."""
        if self.waiting is not None:
            settled, self.waiting = self.waiting, None
            settled.set()
