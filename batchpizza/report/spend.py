"""The report's section on money: the tokens every run on the checkpoint was billed for and what
they cost at each run's price, of which through the Batch API at its (half) price."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batchpizza.checkpoint import Checkpoint
from batchpizza.pricing import dollars
from batchpizza.report.fmt import int_text


def spend_numbers(store: Checkpoint) -> dict[str, Any] | None:
    """The section's numbers (as `status` gives them); None when no answer carried tokens."""
    spent = store.spend()
    if not (spent.prompt_tokens or spent.completion_tokens):
        return None
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


def text_spend(spend: Mapping[str, Any] | None) -> list[str]:
    if not spend:
        return []
    estimated = " (estimated)" if spend["estimated"] else ""
    out = [
        "Spend (every run, at its price)",
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
    return out
