"""The Python API's keyword arguments: one typed option per run option, checked by mypy."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from batchpizza import answer
from batchpizza.cli import run as run_command
from batchpizza.config import RunConfig
from batchpizza.errors import UsageError
from batchpizza.options import Options


def test_the_typed_options_are_the_run_options() -> None:
    fields = {f.name for f in dataclasses.fields(RunConfig) if f.init} - {"input", "output"}
    assert set(Options.__annotations__) == fields


def test_every_command_line_option_of_run_is_a_typed_option() -> None:
    # The other way round some are Python's only: the backoff and grace tunings, input_label.
    names = {p.name for p in run_command.params} - {"input", "output", "ray_address"}
    assert names <= set(Options.__annotations__)


@pytest.mark.slow
def test_mypy_refuses_an_option_of_the_wrong_type_or_name(tmp_path: Path) -> None:
    snippet = tmp_path / "use.py"
    snippet.write_text(
        "import batchpizza\n"
        "batchpizza.answer(['q'], concurrency=8, rate='5/s')\n"
        "batchpizza.answer(['q'], concurrency='8')\n"
        "batchpizza.answer(['q'], concurency=8)\n"
        "batchpizza.run('in.jsonl', 'out.jsonl', retries=3)\n"
        "import datetime\n"
        "batchpizza.answer(['q'], deadline=datetime.timedelta(minutes=50), timeout=1.5)\n"
    )
    found = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(snippet)],
        capture_output=True,
        text=True,
    )
    errors = [line for line in found.stdout.splitlines() if ": error:" in line]
    assert [line.split(":")[1] for line in errors] == ["3", "4", "5"], found.stdout


@pytest.mark.parametrize(
    ("option", "said"),
    [
        ({"max_cost": "lots"}, "max_cost='lots': expected float or None, not str"),
        ({"concurrency": "x"}, "concurrency='x': expected int, not str"),
        ({"concurrency": 2.5}, "concurrency=2.5: expected int, not float"),
        ({"concurrency": True}, "concurrency=True: expected int, not bool"),
        ({"timeout": None}, "timeout=None: expected float or timedelta, not NoneType"),
        (
            {"concurrency": timedelta(1)},
            "concurrency=datetime.timedelta(days=1): expected int, not timedelta",
        ),
        ({"params": [1]}, "params=[1]: expected dict or list or None, not list"),
        ({"prompt": "Summarise"}, "prompt='Summarise': expected a function or None, not str"),
        ({"restart": "yes"}, "restart='yes': expected bool, not str"),
    ],
)
def test_a_python_option_of_the_wrong_type_is_a_usage_error_naming_it(
    option: dict[str, Any], said: str
) -> None:
    # From Python nothing checks the types before use: a TypeError from deep inside the
    # config ("'<' not supported between instances of 'str' and 'int'") named no option.
    with pytest.raises(UsageError) as caught:
        answer(["hi"], mock=True, quiet=True, **option)
    assert str(caught.value) == said


def test_numbers_of_any_kind_and_texts_are_accepted_where_the_option_takes_them() -> None:
    numpy = pytest.importorskip("numpy")
    config = RunConfig.from_options(
        concurrency=numpy.int64(3),
        timeout=numpy.float32(5),
        rate="5/s",
        provider="openai",
        params=("temperature=0",),  # the command line's repeated --param
    )
    assert (config.concurrency, config.timeout, config.params) == (3, 5.0, {"temperature": 0})


def test_a_param_under_pizzagpt_is_a_usage_error_not_dropped() -> None:
    # Pizzagpt's request is {"question": ...}: `--param temperature=0.2` was dropped without a
    # word, and the answers of the run without it reused as if it had been sent.
    with pytest.raises(UsageError, match=r"--param temperature: Pizzagpt's requests carry"):
        RunConfig.from_options(params=("temperature=0.2",))
    RunConfig.from_options(params=())  # none is fine


def test_a_path_object_is_taken_where_an_option_names_a_file(tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text('{"type": "object", "properties": {"a": {"type": "string"}}}')
    config = RunConfig.from_options(
        checkpoint=tmp_path / "ck", summary_json=tmp_path / "s.json", schema=schema
    )
    assert (config.checkpoint, config.summary_json) == (
        str(tmp_path / "ck"),
        str(tmp_path / "s.json"),
    )
    answer(["hi"], mock=True, quiet=True, checkpoint=tmp_path / "ck2", summary_json=tmp_path / "s")
    assert (tmp_path / "ck2").exists() and (tmp_path / "s").exists()


def test_values_taken_before_the_type_check_are_taken_still() -> None:
    # Each ran a whole call before the check came (numpy's bool from a frame's .any(), a
    # Decimal cap, None for the default server or no parameters); the check refused them.
    numpy = pytest.importorskip("numpy")
    config = RunConfig.from_options(
        restart=numpy.True_,
        dry_run=numpy.bool_(False),
        max_cost=Decimal("1.5"),
        price="1,2",
        params=None,
        base_url=None,
    )
    assert config.restart is True and config.dry_run is False
    assert config.max_cost == 1.5 and isinstance(config.max_cost, float)
    assert config.params == {} and config.base_url == RunConfig().base_url
    kept_as: dict[str, Any] = {"max_cost": Decimal("1")}  # untyped, as a script's config is
    out = answer(["hi"], mock=True, quiet=True, price="1,2", params=None, **kept_as)
    assert [row["finish_reason"] for row in out] == ["stop"]


DURATIONS = {
    "timeout": "timeout",
    "deadline": "deadline_s",
    "patience": "patience_s",
    "misuse_backoff": "misuse_backoff",
    "backoff_base": "backoff_base",
    "backoff_cap": "backoff_cap",
    "retry_after_cap": "retry_after_cap",
    "grace": "grace",
    "progress_every": "progress_every",
}


@pytest.mark.parametrize(("name", "kept_as"), DURATIONS.items())
def test_a_duration_may_be_a_timedelta(name: str, kept_as: str) -> None:
    # The natural Python type for a duration; the type check refused it.
    config = RunConfig.from_options(**{name: timedelta(minutes=1, milliseconds=500)})
    assert getattr(config, kept_as) == 60.5


@pytest.mark.parametrize("name", DURATIONS)
def test_a_negative_timedelta_is_refused_as_the_number_would_be(name: str) -> None:
    with pytest.raises(UsageError) as caught:
        RunConfig.from_options(**{name: timedelta(seconds=-5)})
    with pytest.raises(UsageError) as as_number:
        RunConfig.from_options(**{name: -5.0})
    assert str(caught.value) == str(as_number.value)


@pytest.mark.parametrize("name", ["timeout", "progress_every"])
def test_a_zero_timedelta_is_refused_where_zero_is(name: str) -> None:
    with pytest.raises(UsageError):
        RunConfig.from_options(**{name: timedelta(0)})
    assert RunConfig.from_options(patience=timedelta(0)).patience_s == 0.0  # 0: stop at once


def test_answer_runs_with_timedeltas() -> None:
    out = answer(
        ["hi"],
        mock=True,
        quiet=True,
        timeout=timedelta(seconds=30),
        deadline=timedelta(minutes=50),
        patience=timedelta(minutes=10),
    )
    assert [row["finish_reason"] for row in out] == ["stop"]


def test_numpy_numbers_run_a_whole_call_as_pythons_own() -> None:
    # Counts straight from a DataFrame: check_types took them, then the run's records (JSON)
    # could not hold them ("Object of type int64 is not JSON serializable", limit=).
    numpy = pytest.importorskip("numpy")
    given: dict[str, Any] = {
        "limit": numpy.int64(2),
        "concurrency": numpy.int32(2),
        "samples": numpy.uint8(1),
        "max_retries": numpy.int64(1),
        "timeout": numpy.float32(30),
        "max_cost": numpy.float64(5),
        "rate": numpy.int64(0),
        "deadline": numpy.int64(600),
    }
    config = RunConfig.from_options(price="1,2", **given)
    for name in given:
        assert type(getattr(config, name)) in (int, float), name
    out = answer(["a", "b", "c"], mock=True, quiet=True, price="1,2", **given)
    assert [row["finish_reason"] for row in out] == ["stop", "stop"]
