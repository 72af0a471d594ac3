"""What a server may send that no store can hold, and the one rule that makes it fit.

A reply is JSON, and JSON can carry what no UTF-8 file can: a lone surrogate escape ("\\ud83d" with
no partner, which is what a server sends when it cuts an emoji in half at max_tokens) decodes to a
Python string that SQLite, Arrow and every JSON writer refuse to encode. aiohttp makes the same of a
header's or status line's bytes that are not UTF-8 (it decodes them with surrogateescape). And
JSON has integers of any size, where SQLite's INTEGER and Arrow's int64 stop at 64 bits.

So every text and count taken from a server is passed through here where its reply is read
(providers/), and the checkpoint applies the same rules to a group it could not write:
- a lone surrogate (U+D800..U+DFFF) becomes U+FFFD, the replacement character, as a UTF-8 decoder
  does with a broken byte sequence: the rest of the text, the answer paid for, is kept;
- a count outside 0..2**63-1 becomes None (null): no server means it, and no column holds it.
"""

from __future__ import annotations

import re
from typing import Any

INT64_MAX = (1 << 63) - 1
REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")


def text(value: str) -> str:
    """`value` with every lone surrogate replaced by U+FFFD; itself when it has none."""
    if value.isascii():  # the usual case, answered in C without a scan for surrogates
        return value
    return _SURROGATE.sub(REPLACEMENT, value)


def has_surrogate(value: str) -> bool:
    return not value.isascii() and _SURROGATE.search(value) is not None


def count(value: object) -> int | None:
    """`value` as a count a store can hold: an int (not a bool) in 0..2**63-1, else None. A
    whole float (`10.0`, as a server written in JavaScript or through a float may send a count)
    is that int; a fraction, a string, a negative number is no count."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # finite: inf and nan are not integers
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT64_MAX:
        return value
    return None


def json_value(value: Any) -> Any:
    """Decoded JSON with `text` applied to every string in it, keys included."""
    if isinstance(value, str):
        return text(value)
    if isinstance(value, list):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {text(k): json_value(v) for k, v in value.items()}
    return value
