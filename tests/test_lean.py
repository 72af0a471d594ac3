"""What a process imports, never how long it takes: the command line starts without the engine,
a run from file to file keeps numpy and pandas out (pyarrow pulls them in where installed), and
uvloop is a dependency of a plain install."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, write_jsonl

from batchpizza.lean import keep_numpy_and_pandas_out


def imported_after(code: str) -> set[str]:
    """The top-level modules (and batchpizza's own) a fresh interpreter holds after `code`."""
    script = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


HEAVY = ("aiohttp", "pyarrow", "tqdm", "tenacity", "numpy", "pandas", "batchpizza.engine.runner")


@pytest.mark.parametrize(
    "code",
    [
        "import batchpizza",
        "import batchpizza.cli",
        "from batchpizza.cli import cli\ntry:\n    cli(['--help'])\nexcept SystemExit:\n    pass",
    ],
)
def test_the_command_line_starts_without_the_engine_pyarrow_or_aiohttp(code: str) -> None:
    modules = imported_after(code)

    assert [name for name in HEAVY if name in modules] == []


def test_a_public_name_imports_its_module_on_first_use() -> None:
    modules = imported_after("import batchpizza\nassert callable(batchpizza.run)")

    assert "batchpizza.job.stages" in modules and "pyarrow" not in modules


@pytest.mark.slow
def test_a_command_line_run_to_parquet_imports_neither_numpy_nor_pandas(tmp_path: Path) -> None:
    # pyarrow imports pandas (where installed) on its first pa.array(): 45 MiB for a run that
    # never holds a DataFrame. Its allocator is the system's, which gives freed memory back.
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "one"}, {"prompt": "two"}])
    output = tmp_path / "out.parquet"
    code = (
        "import atexit, sys\n"
        "def modules():\n"
        "    print(' '.join(sorted(sys.modules)), file=sys.stderr)\n"
        "    import pyarrow\n"
        "    print(pyarrow.default_memory_pool().backend_name, file=sys.stderr)\n"
        "atexit.register(modules)\n"
        "from batchpizza.cli import main\n"
        f"sys.argv = ['batchpizza', 'run', {str(source)!r}, '-o', {str(output)!r}, '--mock',"
        " '--rate', '0', '-q', '--no-progress']\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 0, done.stderr
    listed, backend = done.stderr.strip().splitlines()[-2:]
    modules = set(listed.split())
    assert backend == "system"
    assert "pyarrow" in modules
    assert "numpy" not in modules and "pandas" not in modules
    assert "jinja2" not in modules  # only --template-file needs it
    import pyarrow.parquet as pq

    assert pq.read_table(output).column("answer").null_count == 0


@pytest.mark.slow
@pytest.mark.parametrize("command", ["status", "report"])
def test_status_and_report_of_a_schema_2_checkpoint_import_no_provider(
    tmp_path: Path, command: str
) -> None:
    # They named the old runs' identities through the providers, which import aiohttp.
    from tests.old_checkpoints import old_checkpoint

    checkpoint = tmp_path / "old.checkpoint"
    old_checkpoint(checkpoint, "2", 20)
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print(' '.join(sorted(sys.modules)), file=sys.stderr))\n"
        "from batchpizza.cli import main\n"
        f"sys.argv = ['batchpizza', {command!r}, 'out', '--checkpoint', {str(checkpoint)!r}]\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 0, done.stderr
    modules = set(done.stderr.strip().splitlines()[-1].split())
    assert "aiohttp" not in modules and "batchpizza.providers" not in modules
    assert "batchpizza.identities" in modules  # the old runs' identities were named


def test_keeping_them_out_changes_nothing_once_pyarrow_is_imported() -> None:
    # The test process holds pyarrow (and pandas): the guard must not stand in their way.
    import pyarrow  # noqa: F401

    before = list(sys.meta_path)
    keep_numpy_and_pandas_out()

    assert sys.meta_path == before


def test_uvloop_is_a_plain_dependency_where_it_builds() -> None:
    # Read as text: tomllib is not in Python 3.10's standard library.
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    dependencies = re.search(r"^dependencies = \[(.*?)^\]", text, re.M | re.S)
    fast = re.search(r"^fast = \[(.*?)\]", text, re.M | re.S)

    assert dependencies is not None and fast is not None
    assert re.search(r'"uvloop>=[^"]*; sys_platform != \'win32\'', dependencies.group(1))
    assert "uvloop" not in fast.group(1)
