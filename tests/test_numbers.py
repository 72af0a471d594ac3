"""Numbers in options: plain ASCII decimals only. Python's int() and float() took "1_0" as 10,
other scripts' digits, "nan", "inf" and "1e400"; each is now refused with the option's name and
what it takes (exit 2 on the command line), from the CLI and from Python. ASCII spaces around a
number are taken, as int() took them (an environment file's trailing space)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
from click.testing import CliRunner

from batchpizza.batchapi.settings import Limits
from batchpizza.cli import cli
from batchpizza.commands.mock_server import mock_server
from batchpizza.commands.numbers import PlainFloat, PlainInt
from batchpizza.config import RunConfig
from batchpizza.errors import UsageError
from batchpizza.numbers import decimal, whole

# What int() or float() read as a number and no user means as one in an option.
NOT_PLAIN = ["1_0", "8 8", "\u0661\u0660", "\uff11\uff10", "nan", "inf", "-inf", "1e400"]


@pytest.mark.parametrize("text", NOT_PLAIN)
def test_text_python_would_read_as_a_number_is_not_one(text: str) -> None:
    assert decimal(text) is None
    assert whole(text) is None


@pytest.mark.parametrize(
    ("text", "number"),
    [("2", 2.0), ("1.5", 1.5), ("1e-6", 1e-6), (".5", 0.5), ("5.", 5.0), ("-1", -1.0)],
)
def test_plain_decimals_read_as_before(text: str, number: float) -> None:
    assert decimal(text) == number


def number_options(command: click.Command) -> list[str]:
    return [
        p.opts[-1]
        for p in command.params
        if isinstance(p, click.Option) and isinstance(p.type, (click.IntRange, click.FloatRange))
    ]


def test_every_number_option_of_run_and_mock_server_is_read_plainly() -> None:
    # click's own types read with int() and float(), and a range lets NaN through.
    commands = [cli.commands["run"], mock_server]
    for command in commands:
        for param in command.params:
            if param.type in (click.INT, click.FLOAT) or isinstance(
                param.type, (click.IntRange, click.FloatRange)
            ):
                assert isinstance(param.type, (PlainInt, PlainFloat)), param.name


RUN_NUMBERS = number_options(cli.commands["run"])


def test_the_run_options_taking_numbers_are_those_expected() -> None:
    assert set(RUN_NUMBERS) == {
        "--schema-retries",
        "--concurrency",
        "--max-cost",
        "--max-retries",
        "--timeout",
        "--limit",
        "--repeat",
        "--progress-every",
    }


@pytest.mark.parametrize("option", RUN_NUMBERS)
@pytest.mark.parametrize("text", NOT_PLAIN)
def test_a_number_option_of_run_refuses_what_is_not_a_plain_number(
    option: str, text: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        cli, ["run", "samples/prompts.jsonl", "-o", str(tmp_path / "out.jsonl"), option, text]
    )
    assert result.exit_code == 2, result.output
    assert f"'{option}'" in result.output and "digits 0-9" in result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("option", "text"),
    [
        ("--rate", "1_0"),
        ("--rate", "\uff15/s"),
        ("--rate", "nan"),
        ("--rate", "5 5/s"),
        ("--rate", "auto:inf"),
        ("--deadline", "1_0m"),
        ("--deadline", "\u0665m"),
        ("--deadline", "1e400"),
        ("--patience", "inf"),
        ("--tpm", "20_000"),
        ("--tpm", "20,000"),
        ("--tpm", "nan"),
        ("--tpm", "\uff12\uff10k"),
        ("--price", "1_0,2"),
        ("--price", "\u0661,2"),
        ("--price", "nan,2"),
        ("--price", "1,1e400"),
    ],
)
def test_a_number_written_in_a_text_option_is_read_plainly(
    option: str, text: str, tmp_path: Path
) -> None:
    args = ["run", "samples/prompts.jsonl", "-o", str(tmp_path / "out.jsonl"), option, text]
    result = CliRunner().invoke(cli, [*args, "--provider", "openai", "--model", "gpt-4o-mini"])
    assert result.exit_code == 2, result.output
    assert option in result.output and "digits 0-9" in result.output
    with pytest.raises(UsageError, match=f"{option} .*digits 0-9"):
        RunConfig.from_options(provider="openai", **{option[2:]: text})


@pytest.mark.parametrize(
    "given",
    [
        {"rate": "2/s"},
        {"rate": "300 / min"},
        {"rate": "1e-6"},
        {"rate": "auto:20/s"},
        {"deadline": "50m"},
        {"deadline": "90"},
        {"deadline": "1.5h"},
        {"patience": "0"},
        {"tpm": "20k"},
        {"tpm": "1.5M"},
        {"tpm": 20000},
        {"tpm": "auto"},
        {"price": "0.15,0.60"},
        {"price": "$0.15, $0.60"},
        # ASCII spaces around the whole: what int() and float() took, and nothing is misread.
        {"rate": " 5/s "},
        {"rate": " auto:20/s"},
        {"deadline": "50m\n"},
        {"tpm": "20k "},
        {"price": " 0.15,0.60\t"},
        {"max_cost": 1e-6, "price": "1e-6,2"},
    ],
)
def test_what_was_taken_before_still_is(given: dict[str, Any]) -> None:
    RunConfig.from_options(provider="openai", model="gpt-4o-mini", **given)


def test_a_price_with_an_underscore_is_not_ten_dollars() -> None:
    assert RunConfig(provider="openai", price="10,2").price_per_m == (10.0, 2.0)
    with pytest.raises(UsageError, match="--price '1_0,2'"):
        RunConfig(provider="openai", price="1_0,2")


@pytest.mark.parametrize(
    "name",
    ["timeout", "progress_every", "misuse_backoff", "backoff_base", "backoff_cap", "grace"],
)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_seconds_given_from_python_are_finite_and_not_negative(name: str, value: float) -> None:
    with pytest.raises(UsageError, match=f"{name.replace('_', '-')}|{name}"):
        RunConfig.from_options(**{name: value})


@pytest.mark.parametrize("option", ["--port", "--latency", "--error-rate", "--seed"])
@pytest.mark.parametrize("text", ["1_0", "\uff11", "nan"])
def test_the_mock_servers_numbers_are_read_plainly(option: str, text: str) -> None:
    result = CliRunner().invoke(mock_server, [option, text])
    assert result.exit_code == 2, result.output
    assert f"'{option}'" in result.output and "digits 0-9" in result.output


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ({"rate": np.int64(5)}, ("rate_per_s", 5.0)),
        ({"rate": np.float32(0.5)}, ("rate_per_s", 0.5)),
        ({"deadline": np.float32(90)}, ("deadline_s", 90.0)),
        ({"patience": np.int64(60)}, ("patience_s", 60.0)),
        ({"tpm": np.float32(600)}, ("tpm_per_s", 10.0)),
    ],
)
def test_a_numpy_number_in_a_text_option_is_its_number(
    given: dict[str, Any], said: tuple[str, float]
) -> None:
    # A count straight from a DataFrame (`rate=df.rate.max()`): check_types takes numpy's
    # numbers as numbers; --rate read one as text (AttributeError: no `strip`).
    config = RunConfig.from_options(provider="openai", model="gpt-4o-mini", **given)
    assert getattr(config, said[0]) == pytest.approx(said[1])


@pytest.mark.parametrize(
    "given",
    [{"rate": np.float64("nan")}, {"deadline": np.float32("inf")}, {"tpm": np.float32("nan")}],
)
def test_a_numpy_number_that_is_no_number_is_refused_as_such(given: dict[str, Any]) -> None:
    with pytest.raises(UsageError, match="must be"):
        RunConfig.from_options(provider="openai", **given)


@pytest.mark.parametrize("name", ["grace", "max_cost", "timeout"])
def test_a_signalling_decimal_nan_is_a_usage_error(name: str) -> None:
    # float(Decimal("sNaN")) raises ValueError: a traceback, where a quiet NaN is refused.
    with pytest.raises(UsageError, match=name.replace("_", "-")):
        RunConfig.from_options(provider="openai", price="1,2", **{name: Decimal("sNaN")})


@pytest.mark.parametrize("price", ["1,\t2", "1\t,2", "$ 1,2", "1, $ 2"])
def test_a_price_with_any_ascii_space_beside_its_parts_is_taken(price: str) -> None:
    # The parts were stripped of any space before; a tab beside the comma was refused since.
    assert RunConfig(provider="openai", price=price).price_per_m == (1.0, 2.0)


@pytest.mark.parametrize("text", [",,nan", ",,1,inf", "1_0", "\uff11\uff10", ",1e400", ",,nan,nan"])
def test_the_batch_limits_variable_reads_its_numbers_plainly(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A poll interval of NaN passed `first <= 0` and `cap < first` (NaN compares false).
    monkeypatch.setenv("BATCHPIZZA_BATCH_LIMITS", text)
    with pytest.raises(UsageError, match="BATCHPIZZA_BATCH_LIMITS"):
        Limits.from_env()


def test_the_batch_limits_variable_takes_what_it_took(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHPIZZA_BATCH_LIMITS", " 10 , 2000 , 0.5 ")
    assert Limits.from_env() == Limits(10, 2000, 0.5, Limits().poll_cap)


def test_a_variables_trailing_space_is_no_error(tmp_path: Path) -> None:
    # An environment file's `BATCHPIZZA_CONCURRENCY=8 ` (int() took it before numbers were
    # read plainly): the run goes, at concurrency 8.
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(
        cli,
        ["run", "samples/prompts.jsonl", "-o", str(out), "--mock", "-q", "--dry-run"],
        env={"BATCHPIZZA_CONCURRENCY": "8 ", "BATCHPIZZA_RATE": " 5/s"},
    )
    assert result.exit_code == 0, result.output
    assert whole(" 8\t") == 8 and decimal(" 1.5 ") == 1.5


def test_help_shows_no_range_for_an_unbounded_number() -> None:
    # click's range text for a type with no bounds read "[x<=None]" (mock-server --seed).
    shown = CliRunner().invoke(mock_server, ["--help"], terminal_width=100).output
    seed = shown[shown.index("--seed") :].split("\n  --")[0]
    assert seed.startswith("--seed INTEGER") and "None" not in seed and "x<=" not in seed
    assert "0<=x<=65535" in shown  # a bounded one keeps its range
