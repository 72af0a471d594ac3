"""A count and its noun as every line a user reads says them: "1 row", "2 rows" (the log, the
summary line, --dry-run, status, the report, error messages)."""

from __future__ import annotations


def noun(n: int, one: str, many: str | None = None) -> str:
    """The noun `n` takes: `one` for one, else `many` (`one` + "s" when not given)."""
    return one if n == 1 else many or one + "s"


def plural(n: int, one: str, many: str | None = None, *, grouped: bool = False) -> str:
    """`n` and its noun: "1 row", "2 rows". `grouped`: thousands separated ("1,234 rows"), as
    the report writes its counts."""
    return f"{f'{n:,}' if grouped else n} {noun(n, one, many)}"
