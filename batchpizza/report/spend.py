"""The report's section on money: the tokens every run on the checkpoint was billed for and what
they cost at each run's price, of which through the Batch API at its (half) price."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batchpizza.checkpoint import Checkpoint
from batchpizza.checkpoint.spend import Spend
from batchpizza.pricing import dollars
from batchpizza.report.fmt import int_text, stamp_text


def spend_numbers(store: Checkpoint) -> dict[str, Any] | None:
    """The section's numbers (as `status` gives them); None when no answer carried tokens.
    After a --restart, of the runs since it, as the report's other sections (the runs before
    it are forgotten), with what those spent apart in `before_restart`: forgotten answers, not
    forgotten money (--max-cost counts it)."""
    restarted = store.restarted()
    spent = store.spend(since=restarted)
    before = None if restarted is None else store.spend(until=restarted)
    if not any(s and (s.prompt_tokens or s.completion_tokens) for s in (spent, before)):
        return None
    numbers = _numbers(spent)
    numbers["before_restart"] = None if before is None else _numbers(before)
    return numbers


def _numbers(spent: Spend) -> dict[str, Any]:
    return {
        "input": spent.prompt_tokens,
        "output": spent.completion_tokens,
        "estimated": spent.estimated,
        "dollars": round(spent.dollars, 6),
        "batch": {
            "input": spent.batch_prompt_tokens,
            "output": spent.batch_completion_tokens,
            "dollars": round(spent.batch_dollars, 6),
        },
    }


def text_spend(spend: Mapping[str, Any] | None, restarted: str | None = None) -> list[str]:
    """The section; after a --restart (`restarted`, ISO), of the runs since it, and what the
    runs before it spent on a line of its own."""
    if not spend:
        return []
    estimated = " (estimated)" if spend["estimated"] else ""
    out = [
        f"Spend (the runs since the --restart of {stamp_text(restarted)}, at their price)"
        if restarted
        else "Spend (every run, at its price)",
        f"  {'tokens':<14}{int_text(spend['input']):>12} in  {int_text(spend['output']):>12} out"
        f"{estimated}",
        f"  {'dollars':<14}{dollars(spend['dollars']):>12}",
    ]
    batch = spend["batch"]
    if batch["input"] or batch["output"]:
        out.append(
            f"  {'  Batch API':<14}{int_text(batch['input']):>12} in  "
            f"{int_text(batch['output']):>12} out  {dollars(batch['dollars'])} at half price"
        )
    before = spend.get("before_restart")
    if before and (before["input"] or before["output"]):
        out.append(
            f"  {'before it':<14}{int_text(before['input']):>12} in  "
            f"{int_text(before['output']):>12} out  {dollars(before['dollars'])} "
            "(forgotten runs; --max-cost counts it)"
        )
    return out
