"""A run's Meter (controls/metering.py) from its options and its checkpoint: the money cap with
what earlier runs spent, the token pacer at --tpm N, or under --tpm auto from the limit the last
run learned."""

from __future__ import annotations

import contextlib
from typing import Any

from batchpizza.checkpoint import Checkpoint
from batchpizza.config import RunConfig
from batchpizza.controls.budget import Budget
from batchpizza.controls.metering import Meter
from batchpizza.controls.tokens import AUTO_SHARE, TokenPacer
from batchpizza.pricing import cost


def make_meter(config: RunConfig, checkpoint: Checkpoint) -> Meter | None:
    if config.max_cost is None and config.tpm_per_s is None and not config.tpm_auto:
        return None
    budget = None
    if config.max_cost is not None:
        assert config.price_per_m is not None  # config refuses a cap without a price
        spent = checkpoint.spend().dollars
        budget = Budget(config.max_cost, config.price_per_m, spent=spent)
    pacer = None
    if config.tpm_per_s is not None:
        pacer = TokenPacer(config.tpm_per_s)
    elif config.tpm_auto:
        learned = checkpoint.meta().get("learned_tpm")
        per_s = float(learned) / 60.0 if learned else None
        pacer = TokenPacer(None if per_s is None else per_s * AUTO_SHARE, auto=True)
        pacer.limit_per_s = per_s
    return Meter(params=config.params, budget=budget, pacer=pacer)


def token_fields(config: RunConfig, counters: Any, checkpoint: Checkpoint | None) -> dict[str, Any]:
    """The summary's `tokens` and `cost` (records.Summary)."""
    if counters is None:
        return {}
    fields: dict[str, Any] = {
        "tokens": {
            "input": counters.input_tokens,
            "output": counters.output_tokens,
            "estimated": counters.tokens_estimated,
        }
    }
    price = config.price_per_m
    if price is not None:
        run = cost(price, counters.input_tokens, counters.output_tokens)
        total = run
        with contextlib.suppress(Exception):  # a closed or broken checkpoint: this run's
            if checkpoint is not None:
                total = max(run, checkpoint.spend().dollars)
        fields["cost"] = {
            "run": round(run, 6),
            "total": round(total, 6),
            "cap": config.max_cost,
            "price_per_million": [price.input, price.output],
        }
    return fields
