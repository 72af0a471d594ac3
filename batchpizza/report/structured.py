"""The report's section on structured outputs (--schema): answers that fit the schema at once,
after a re-ask, or never, and the validation errors heard most."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batchpizza.checkpoint import Checkpoint
from batchpizza.report.fmt import clip, int_text

TOP_ERRORS = 5


def structured_numbers(store: Checkpoint) -> dict[str, Any] | None:
    """The section's numbers; None for a checkpoint whose last run had no schema."""
    fit = store.fit_counts()
    if fit is None:
        return None
    errors = store.validation_errors(TOP_ERRORS)
    return {**fit, "errors": [{"error": error, "count": count} for error, count in errors]}


def text_structured(fit: Mapping[str, Any] | None) -> list[str]:
    if not fit:
        return []
    out = [
        "Structured outputs (--schema)",
        f"  {'valid':<14}{int_text(fit['valid']):>12}",
        f"  {'  re-asked':<14}{int_text(fit['reasked']):>12}  fitted only after a re-ask",
        f"  {'invalid':<14}{int_text(fit['invalid']):>12}  invalid_output: re-asks spent",
    ]
    if fit.get("not_validated"):  # not in the numbers of a report --json saved before them
        out.append(
            f"  {'not validated':<14}{int_text(fit['not_validated']):>12}  answered: a refusal, "
            "tool calls or an empty answer cut off"
        )
    if fit["errors"]:
        out.append("  most common validation errors (attempts)")
        for e in fit["errors"]:
            out.append(f"  {int_text(e['count']):>12}  {clip(e['error'], 80)}")
    return out
