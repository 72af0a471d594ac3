"""What tokens cost: `--price IN,OUT` (US dollars per million input and output tokens), else a
small dated table of well-known models, and the one function that prices a usage.

The table is what the providers published when it was written (PRICES_AS_OF); prices change, so
`--price` overrides it, and a model the table does not know needs `--price` for `--max-cost`.
A Batch-API row costs half (`batch=True`), as OpenAI and Anthropic bill batches.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from batchpizza.errors import UsageError
from batchpizza.numbers import dollar_pair

PRICES_AS_OF = "2025-08-01"
BATCH_DISCOUNT = 0.5


class Price(NamedTuple):
    """US dollars per million tokens."""

    input: float
    output: float


FREE = Price(0.0, 0.0)  # Pizzagpt's


# Standard (not cached, not batch) prices per million tokens, as published on PRICES_AS_OF.
PRICES: dict[str, Price] = {
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "gpt-5": Price(1.25, 10.00),
    "gpt-5-mini": Price(0.25, 2.00),
    "gpt-5-nano": Price(0.05, 0.40),
    "o3": Price(2.00, 8.00),
    "o3-mini": Price(1.10, 4.40),
    "o4-mini": Price(1.10, 4.40),
    "gpt-3.5-turbo": Price(0.50, 1.50),
    # The bundled mock server's model, at the price it reports in its stats (mock/tokens.py).
    "batchpizza-mock": Price(1.00, 2.00),
}


# Snapshots billed apart from their family, which the family rule below would price lower (and a
# cap would reserve too little for): gpt-4o's first snapshot costs twice gpt-4o's price.
SNAPSHOTS: dict[str, Price] = {
    "gpt-4o-2024-05-13": Price(5.00, 15.00),
    "gpt-3.5-turbo-0301": Price(1.50, 2.00),
    "gpt-3.5-turbo-0613": Price(1.50, 2.00),
    "gpt-3.5-turbo-1106": Price(1.00, 2.00),
    "gpt-3.5-turbo-16k": Price(3.00, 4.00),  # and its dated gpt-3.5-turbo-16k-0613
}
_PRICED = {**PRICES, **SNAPSHOTS}


def parse_price(text: str) -> Price:
    """`IN,OUT` in dollars per million tokens: `0.15,0.60`."""
    prices = dollar_pair(str(text))
    if prices is None:
        raise UsageError(
            f"--price {text!r}: expected IN,OUT in dollars per million input and output "
            "tokens in digits 0-9, e.g. 0.15,0.60"
        )
    price = Price(*prices)
    if not all(0 <= p < float("inf") for p in price):
        raise UsageError(f"--price {text!r}: prices must be finite and not negative")
    return price


def table_price(model: str | None) -> Price | None:
    """The table's price of `model`, or of the family a dated name belongs to
    (`gpt-4o-mini-2024-07-18` is `gpt-4o-mini`) unless it is a snapshot billed apart (SNAPSHOTS);
    None when it knows neither."""
    if not model:
        return None
    name = model.strip().lower().rsplit("/", 1)[-1]  # "openai/gpt-4o" as gateways name it
    if name in _PRICED:
        return _PRICED[name]
    family = [key for key in _PRICED if name.startswith(key + "-")]
    return _PRICED[max(family, key=len)] if family else None


def price_for(model: str | None, price: str | Price | None) -> Price:
    """The price a run is charged at: `--price`, else the table's; a usage error naming what
    to do when neither knows it."""
    if isinstance(price, Price):
        return price
    if price is not None:
        return parse_price(price)
    found = table_price(model)
    if found is None:
        what = f"model {model!r}" if model else "the server's default model (no --model)"
        raise UsageError(
            f"--max-cost: no price known for {what}; give --price IN,OUT (dollars per million "
            f"input and output tokens). Known (as of {PRICES_AS_OF}): {', '.join(PRICES)}"
        )
    return found


def cost(price: Price, input_tokens: int, output_tokens: int, *, batch: bool = False) -> float:
    """US dollars for a usage at `price`; half for a Batch-API row."""
    dollars = (input_tokens * price.input + output_tokens * price.output) / 1_000_000
    return dollars * BATCH_DISCOUNT if batch else dollars


def dollars(amount: float, digits: int = 4) -> str:
    """`amount` as "$" and `digits` significant digits, never in exponent form: a small run's
    cost read "$5.7e-05" in a log, where "$0.000057" is what a user reads as money."""
    if amount == 0:
        return "$0"  # -0.0 too (--max-cost -0): "$-0"
    if not math.isfinite(amount):
        return f"${amount:g}"
    places = max(0, digits - 1 - math.floor(math.log10(abs(amount))))
    text = f"{amount:.{places}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"${text}"
