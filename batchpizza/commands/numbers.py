"""click's number types, refusing what batchpizza.numbers refuses: click's own INT, FLOAT,
IntRange and FloatRange convert with int() and float(), which take "1_0", "١٠", " 5 ", "nan",
"inf" and "1e400", and a range lets NaN through (it compares false with every bound)."""

from __future__ import annotations

from typing import Any

import click

from batchpizza.numbers import DECIMAL, WHOLE, decimal, whole


class _Plain:
    """What an unbounded one shows in --help: INTEGER or FLOAT, as click's own, and no range
    (click's range text for no bounds reads "x<=None")."""

    name: str
    min: Any
    max: Any

    def _describe_range(self) -> str:
        if self.min is None and self.max is None:
            return ""
        return str(super()._describe_range())  # type: ignore[misc]

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return self.name.split()[0].upper()


class PlainInt(_Plain, click.IntRange):
    """A whole number in ASCII digits, within the range given (none: any)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and whole(value) is None:
            self.fail(f"{value!r}: expected {WHOLE}", param, ctx)
        return super().convert(value, param, ctx)


class PlainFloat(_Plain, click.FloatRange):
    """A finite decimal number in ASCII, within the range given (none: any)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and decimal(value) is None:
            self.fail(f"{value!r}: expected {DECIMAL}", param, ctx)
        return super().convert(value, param, ctx)
