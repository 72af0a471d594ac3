"""The token and money options of a run, read apart from RunConfig: `--tpm N|auto` and
`--max-cost USD` with `--price IN,OUT` (or the price table, pricing.py)."""

from __future__ import annotations

import math

from batchpizza.errors import UsageError
from batchpizza.numbers import decimal, is_number, strip
from batchpizza.pricing import FREE, Price, parse_price, price_for, table_price


def parse_tpm(value: float | str | None) -> tuple[float | None, bool]:
    """(tokens per second, auto) of `--tpm`: a number of tokens per minute (`20000`, `20k`,
    `1.5M`), `auto` (learned from the server's headers), or None / 0 for no token limit."""
    if value is None:
        return None, False
    if is_number(value):
        per_minute = float(value)
    else:
        text = strip(str(value)).lower()
        if text == "auto":
            return None, True
        scale = 1.0
        if text[-1:] in ("k", "m"):
            scale, text = (1e3 if text[-1] == "k" else 1e6), text[:-1]
        number = decimal(text)
        if number is None:
            raise UsageError(
                f"--tpm {value!r}: expected tokens per minute in digits 0-9 (20000, 20k, 1.5M) "
                "or auto"
            )
        per_minute = number * scale
    if not math.isfinite(per_minute) or per_minute < 0:
        raise UsageError(f"--tpm {value!r}: must be a finite number of tokens per minute, >= 0")
    return (per_minute / 60.0 if per_minute > 0 else None), False


def check_cost(
    max_cost: float | None, price: str | None, provider: str, model: str | None
) -> Price | None:
    """The price the run is charged at: needed by --max-cost (a usage error when none is
    known), else used for the summary's cost where one is known; None when not."""
    if max_cost is not None and not (math.isfinite(max_cost) and max_cost >= 0):
        raise UsageError(f"--max-cost {max_cost!r}: a number of US dollars, 0 or more")
    if provider == "pizzagpt" and price is None:
        # The service is free: its answers cost nothing, whatever the model behind it costs
        # elsewhere. A cap then caps nothing, which is surely not what was meant.
        if max_cost is not None:
            raise UsageError(
                "--max-cost: Pizzagpt is free, so nothing would ever reach the cap; give "
                "--price IN,OUT to count its tokens at a price of your choosing"
            )
        return FREE
    if max_cost is not None:
        return price_for(model, price)
    if price is not None:
        return parse_price(price)
    return table_price(model)
