"""Prices (pricing.py), the token estimate and bound (tokencount.py), and their options."""

from __future__ import annotations

import pytest

from batchpizza.budgeting import parse_tpm
from batchpizza.config import RunConfig
from batchpizza.errors import UsageError
from batchpizza.pricing import (
    PRICES,
    Price,
    cost,
    dollars,
    parse_price,
    price_for,
    table_price,
)
from batchpizza.records import Prompt
from batchpizza.tokencount import input_bound, input_estimate, max_output, text_tokens


def test_a_usage_is_priced_per_million_and_a_batch_row_at_half() -> None:
    assert cost(Price(0.15, 0.60), 1_000_000, 500_000) == pytest.approx(0.45)
    assert cost(Price(0.15, 0.60), 1_000_000, 500_000, batch=True) == pytest.approx(0.225)


def test_the_table_knows_a_model_and_its_dated_versions() -> None:
    assert table_price("gpt-4o-mini") == PRICES["gpt-4o-mini"]
    assert table_price("gpt-4o-mini-2024-07-18") == PRICES["gpt-4o-mini"]  # not gpt-4o's
    assert table_price("openai/gpt-4o") == PRICES["gpt-4o"]
    assert table_price("llama3") is None


@pytest.mark.parametrize(
    ("model", "price"),
    [
        ("gpt-4o-2024-05-13", Price(5.00, 15.00)),
        ("gpt-3.5-turbo-1106", Price(1.00, 2.00)),
        ("gpt-3.5-turbo-0613", Price(1.50, 2.00)),
        ("gpt-3.5-turbo-16k-0613", Price(3.00, 4.00)),
    ],
)
def test_a_snapshot_billed_apart_from_its_family_is_priced_as_billed(
    model: str, price: Price
) -> None:
    # gpt-4o's first snapshot still costs $5/$15 where gpt-4o costs $2.50/$10: priced as its
    # family, `--max-cost 10` reserved half of what the server bills, and let it bill ~$20.
    assert table_price(model) == price
    assert table_price(model.upper()) == price


def test_price_beats_the_table_and_an_unknown_model_needs_one() -> None:
    assert price_for("gpt-4o", "1,2") == Price(1.0, 2.0)
    with pytest.raises(UsageError, match="--price IN,OUT"):
        price_for("my-finetune", None)


@pytest.mark.parametrize("text", ["1", "a,b", "1,2,3", "-1,2", "inf,1"])
def test_a_bad_price_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="--price"):
        parse_price(text)


def test_max_cost_for_an_unknown_model_without_a_price_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no price known"):
        RunConfig(provider="openai", model="my-finetune", max_cost=1.0)
    config = RunConfig(provider="openai", model="my-finetune", max_cost=1.0, price="1,2")
    assert config.price_per_m == Price(1.0, 2.0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, (None, False)), ("auto", (None, True)), ("20k", (20000 / 60, False)),
     (600, (10.0, False)), ("0", (None, False)), ("1.5M", (25000.0, False))],
)  # fmt: skip
def test_tpm_values(value: object, expected: tuple[float | None, bool]) -> None:
    per_s, auto = parse_tpm(value)  # type: ignore[arg-type]
    assert auto == expected[1]
    assert per_s == (pytest.approx(expected[0]) if expected[0] is not None else None)


@pytest.mark.parametrize("value", ["fast", "-5", "nan"])
def test_a_bad_tpm_is_a_usage_error(value: str) -> None:
    with pytest.raises(UsageError, match="--tpm"):
        parse_tpm(value)


def test_the_estimate_counts_a_quarter_of_the_characters_and_the_bound_every_byte() -> None:
    prompt = Prompt("r", "x" * 40, ())
    assert input_estimate(prompt) == 10 + 4 + 3
    assert input_bound(prompt) == 40 + 8 + 8
    chat = Prompt("r", "", ({"role": "system", "content": "ab"}, {"role": "user", "content": "é"}))
    assert input_estimate(chat) == 1 + 4 + 1 + 4 + 3
    assert input_bound(chat) == 2 + 8 + 2 + 8 + 8  # é is two bytes
    assert text_tokens("") == 0 and text_tokens("abcde") == 2


def test_the_bound_counts_a_messages_name_which_is_sent() -> None:
    named = Prompt("r", "hi", ({"role": "user", "content": "hi", "name": "n" * 40},))
    assert input_bound(named) == 40 + 2 + 8 + 8
    assert input_estimate(named) == 11 + 4 + 3


def test_max_output_reads_the_params_over_the_line() -> None:
    line = Prompt("r", "q", (), {"max_tokens": 50})
    assert max_output({}, line) == 50
    assert max_output({"max_completion_tokens": 20}, line) == 20
    assert max_output({"max_tokens": True}, None) is None  # a bool is no count


def test_a_cap_the_params_name_replaces_the_lines_under_either_name() -> None:
    # The request carries --param's cap only (OpenAIAPI.body), so the worst case is its cap:
    # a null one sends no cap at all, and the line's is not what the server will hold to.
    line = Prompt("r", "q", (), {"max_completion_tokens": 500})
    assert max_output({"max_tokens": 20}, line) == 20
    assert max_output({"max_tokens": None}, line) is None


def test_max_output_counts_every_choice_a_request_asks_for() -> None:
    # --param n=3: three answers, each up to the cap, all billed: the worst case is three caps.
    assert max_output({"max_tokens": 20, "n": 3}) == 60
    line = Prompt("r", "q", (), {"max_tokens": 50, "n": 2})
    assert max_output({}, line) == 100
    assert max_output({"n": 4}, line) == 200  # --param's n over the line's
    assert max_output({"n": 3}) is None  # no cap: the running estimate (of whole usages) stands
    assert max_output({"max_tokens": 20, "n": True}) == 20  # a bool is no count


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (5.7e-05, "$0.000057"),  # a small run's cost: "$5.7e-05" before
        (2e-05, "$0.00002"),
        (0.1429, "$0.1429"),
        (0.98, "$0.98"),
        (1.0, "$1"),
        (1234.5678, "$1235"),
        (12345.6, "$12346"),  # "$1.235e+04" before
        (0.0, "$0"),
        (-0.0, "$0"),  # --max-cost -0 (a cap of zero) read "$-0"
        (9.99996, "$10"),
    ],
)
def test_dollars_are_never_written_in_exponent_form(amount: float, text: str) -> None:
    assert dollars(amount) == text
