"""The package's public face, kept honest as httpx's test_exported_members.py keeps its own:
`__all__` is exactly what `batchpizza/__init__.py` offers, the SPEC's Python API is in it, the
version comes from the package metadata, and the package ships `py.typed`."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import types

import pytest
from click.testing import CliRunner

import batchpizza
from batchpizza.cli import cli

# The Python API the SPEC promises (section "Python API").
SPEC_NAMES = (
    "Pizzagpt",
    "FinishReason",
    "MisuseDetected",
    "format_prompt",
    "run",
    "arun",
    "answer",
    "aanswer",
    "stream",
)


def public_names() -> set[str]:
    """Every public name batchpizza/__init__.py offers (each imported on first use, so listed by
    dir(), not yet bound). Submodules are left out: importing `batchpizza.job.stages` anywhere
    binds `job` on the package as a side effect."""
    return {
        name
        for name in dir(batchpizza)
        if not name.startswith("_") and not isinstance(getattr(batchpizza, name), types.ModuleType)
    }


def test_all_lists_every_public_name_and_nothing_else() -> None:
    assert sorted(batchpizza.__all__) == sorted(public_names())
    assert len(set(batchpizza.__all__)) == len(batchpizza.__all__)


def test_every_name_in_all_is_importable() -> None:
    namespace: dict[str, object] = {}
    exec("from batchpizza import *", namespace)
    for name in batchpizza.__all__:
        assert namespace[name] is getattr(batchpizza, name)


def test_all_holds_the_python_api_of_the_spec() -> None:
    missing = [name for name in SPEC_NAMES if name not in batchpizza.__all__]
    assert missing == []
    for name in SPEC_NAMES:
        assert callable(getattr(batchpizza, name))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'answers'"):
        batchpizza.answers  # noqa: B018


def test_version_is_the_installed_distributions() -> None:
    assert batchpizza.__version__ == importlib.metadata.version("batchpizza")


def test_cli_version_is_the_packages_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])

    assert result.exit_code == 0, result.output
    assert batchpizza.__version__ in result.output


def test_package_ships_py_typed() -> None:
    assert importlib.resources.files("batchpizza").joinpath("py.typed").is_file()
