"""Numbers as a user writes them in an option: plain ASCII decimals, nothing else.

Python's int() and float() take more than a user ever means as a number in an option: "1_0"
(10: `--price 1_0,2` read as ten dollars), other scripts' digits ("١٠", full-width "１０"),
"nan", "inf", and "1e400" (infinity). ASCII spaces around a number are taken (an environment
file's trailing space): they change nothing of what it says. Every numeric option, from the command
line (commands/numbers.py) or as text from Python, is read through these, so what is refused is
refused alike.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

from batchpizza.errors import UsageError

# [0-9], not \d: \d is any script's digits. A sign is read here and refused (or not) by each
# option's own range, with the message it always gave.
_WHOLE = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")

_SPACE = " \t\r\n"

# IN,OUT in dollars (--price): each may carry a dollar sign, ASCII spaces beside the comma and
# the sign (as the parts were stripped before numbers were read plainly).
_DOLLAR_PAIR = re.compile(r"\$?[ \t]*(?P<first>[^\s,$]+)[ \t]*,[ \t]*\$?[ \t]*(?P<second>[^\s,$]+)")

WHOLE = "a whole number in digits 0-9"
DECIMAL = "a finite number in digits 0-9 (such as 2, 1.5 or 1e-6)"


def is_number(value: Any) -> bool:
    """Whether `value` is a number given from Python, numpy's too (np.int64 is no int), not a bool:
    taken as its float, where text is read by `decimal`."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def strip(text: str) -> str:
    """`text` without the ASCII spaces around it."""
    return text.strip(_SPACE)


def whole(text: str) -> int | None:
    """`text` as an integer when it is one written plainly in ASCII digits; else None."""
    text = strip(text)
    return int(text) if _WHOLE.fullmatch(text) else None


def decimal(text: str) -> float | None:
    """`text` as a float when it is a finite number written plainly in ASCII (digits, a point,
    an exponent); else None ("1e400" too: it reads as infinity)."""
    text = strip(text)
    if not _DECIMAL.fullmatch(text):
        return None
    number = float(text)
    return number if math.isfinite(number) else None


def dollar_pair(text: str) -> tuple[float, float] | None:
    """`0.15,0.60` or `$0.15, $0.60` as two numbers read by `decimal`; else None."""
    match = _DOLLAR_PAIR.fullmatch(strip(text))
    first = decimal(match["first"]) if match else None
    second = decimal(match["second"]) if match else None
    return None if first is None or second is None else (first, second)


def check_seconds(value: float, option: str) -> None:
    """A usage error for a number of seconds that is not finite or is negative (given from
    Python: `grace=float("nan")` compared false with every bound and went through)."""
    if not (math.isfinite(value) and value >= 0):
        raise UsageError(f"{option}: {value!r} is not a finite number of seconds, 0 or more")
