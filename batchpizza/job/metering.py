"""A run's Meter (controls/metering.py) from its options and its checkpoint: the money cap with
what earlier runs spent, the token pacer at --tpm N, or under --tpm auto from the limit the last
run learned."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from batchpizza.checkpoint import Checkpoint
from batchpizza.config import RunConfig
from batchpizza.controls.budget import Budget
from batchpizza.controls.metering import Meter
from batchpizza.controls.tokens import AUTO_SHARE, DEFAULT_OUTPUT_TOKENS, TokenPacer
from batchpizza.pricing import FREE, cost, dollars
from batchpizza.records import Prompt
from batchpizza.tokencount import max_output


def make_meter(
    config: RunConfig, checkpoint: Checkpoint, *, collects: bool = False
) -> Meter | None:
    """`collects`: an online run that collects finished batches first (batchapi/collecting.py)
    takes the batches still out off its cap after that (Sending), not here."""
    if config.max_cost is None and config.tpm_per_s is None and not config.tpm_auto:
        return None
    budget = None
    if config.max_cost is not None:
        assert config.price_per_m is not None  # config refuses a cap without a price
        spent = checkpoint.spend().dollars
        budget = Budget(
            config.max_cost, config.price_per_m, spent=spent, on_charge=checkpoint.charge
        )
    pacer = None
    if config.tpm_per_s is not None:
        pacer = TokenPacer(config.tpm_per_s)
    elif config.tpm_auto:
        learned = checkpoint.meta().get("learned_tpm")
        per_s = float(learned) / 60.0 if learned else None
        pacer = TokenPacer(None if per_s is None else per_s * AUTO_SHARE, auto=True)
        pacer.limit_per_s = per_s
    overhead = (0, 0) if config.structured is None else config.structured.overhead
    meter = Meter(
        params=config.params, budget=budget, pacer=pacer, overhead=overhead, model=config.model
    )
    if budget is not None and config.via == "online" and not collects:
        from batchpizza.batchapi.budget import off_the_cap

        off_the_cap(meter, checkpoint)  # batches out of an earlier --via batch will be billed
    return meter


def token_fields(
    config: RunConfig,
    counters: Any,
    checkpoint: Checkpoint | None,
    batched: tuple[int, int] = (0, 0),
) -> dict[str, Any]:
    """The summary's `tokens` and `cost` (records.Summary); `batched`: the input and output
    tokens of the counters' that came through the Batch API, priced at its price."""
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
        online = (counters.input_tokens - batched[0], counters.output_tokens - batched[1])
        batch = cost(price, *batched, batch=True)
        run = cost(price, *online) + batch
        total = run
        with contextlib.suppress(Exception):  # a closed or broken checkpoint: this run's
            if checkpoint is not None:
                # The spend kept counts worst cases charged without a usage (Budget.on_charge).
                run = max(run, checkpoint.spend(this_run=True).dollars)
                total = max(run, checkpoint.spend().dollars)
        fields["cost"] = {
            "run": round(run, 6),
            "total": round(total, 6),
            **({"batch": round(batch, 6)} if config.via != "online" else {}),
            "cap": config.max_cost,
            "price_per_million": [price.input, price.output],
        }
    return fields


def estimate_lines(
    config: RunConfig, prompts: Iterable[Prompt], checkpoint: Checkpoint, spent: float | None = None
) -> list[str]:
    """What a dry run says of the tokens and the cost of what it would send (the estimate of
    tokencount.py), the cap, what was spent so far and what fits."""
    count = inputs = bound = outputs = worst = 0
    mean_output = checkpoint.mean_output()
    sizes = Meter(
        params=config.params,
        overhead=(0, 0) if config.structured is None else config.structured.overhead,
        model=config.model,
    ).input_sizes  # what the run's meter reserves and books (the schema, --param tools=...)
    for prompt in prompts:
        count += 1
        prompt_bound, prompt_estimate = sizes(prompt)
        inputs += prompt_estimate
        bound += prompt_bound
        cap = max_output(config.params, prompt)
        worst += cap or DEFAULT_OUTPUT_TOKENS
        outputs += round(mean_output) if mean_output is not None else cap or DEFAULT_OUTPUT_TOKENS
    if mean_output is not None:
        how = f"output as the {mean_output:.0f} tokens answers here averaged"
    elif config.params.get("max_tokens") or config.params.get("max_completion_tokens"):
        how = "output at max_tokens: no answer of this model and parameters here to average"
    else:
        how = (
            f"output a guess of {DEFAULT_OUTPUT_TOKENS} a request: no answer of this model and "
            "parameters here yet"
        )
    lines = [f"  tokens      about {inputs:,} in + {outputs:,} out ({how})"]
    price = config.price_per_m
    spent = checkpoint.spend().dollars if spent is None else spent
    if price is None:
        return [*lines, "  cost        no price known for the model (--price IN,OUT to say it)"]
    if config.provider == "pizzagpt" and price == FREE:
        return [
            *lines,
            "  cost        none: Pizzagpt is free (--price IN,OUT to count it at a price)",
        ]
    batch = config.via != "online"  # priced at the Batch API's price (--via auto: but late rows)
    estimate = cost(price, inputs, outputs, batch=batch)
    at = "the Batch API's half of " if batch else ""
    lines.append(
        f"  cost        about {dollars(estimate)} at {at}{dollars(price.input, 6)}/"
        f"{dollars(price.output, 6)} per "
        f"million in/out; {dollars(spent)} spent on this checkpoint so far"
    )
    if config.max_cost is not None and count:
        left, held = _left(config, checkpoint, spent)
        per_row = estimate / count
        fits = count if per_row == 0 else min(count, int(left / per_row))
        holding = f" (batches still out hold {dollars(held)})" if held else ""
        lines.append(
            f"  cap         {dollars(config.max_cost, 6)}: {dollars(left)} left{holding}, about "
            f"{fits:,} of the {count:,} requests fit (each reserves its worst case, about "
            f"{dollars(cost(price, bound, worst, batch=batch) / count, 3)}, while in flight)"
        )
    return lines


def _left(config: RunConfig, checkpoint: Checkpoint, spent: float) -> tuple[float, float]:
    """What of the cap a run would have left at its start, and what of it the Batch API batches
    still out hold (their worst cases: they will be billed), as the run's own meter counts them:
    an online run takes them off its cap, a --via batch/auto run reserves its own."""
    meter = make_meter(config, checkpoint)
    assert meter is not None and meter.budget is not None  # a cap was given
    budget = meter.budget
    budget.spent = spent  # a --restart dry run's: the spend of the file it set aside
    if config.via != "online":
        from batchpizza.batchapi.budget import BatchBudget
        from batchpizza.engine.runner import Counters

        BatchBudget(meter, Counters()).reserve_every_out(checkpoint)
    assert config.max_cost is not None
    return max(0.0, budget.left), config.max_cost - budget.cap + budget.reserved
