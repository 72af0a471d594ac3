"""What a command-line run keeps out of its process: numpy, pandas, and pyarrow's own allocator.

numpy and pandas: pyarrow needs neither (a plain `pip install batchpizza` has neither), but
where they are installed pyarrow imports numpy with itself and pandas on the first `pa.array()` of a process (to ask whether the values
are a pandas Series). A run from a file to a file never holds an array or a DataFrame, yet paid
about 45 MiB of memory and 0.2 to 0.4 s for them (benchmarks/RESULTS.md): the 50 MiB that came
back after the second wave, when the Parquet sink began building its columns with `pa.array()`.
Refused, the run behaves as it does on a plain install.

pyarrow's allocator: its default (mimalloc) keeps what the output's writer thread freed, about
15 MiB at the peak of a run with a Parquet output; the system's allocator gives it back."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

KEPT_OUT = ("numpy", "pandas")


class _Refused:
    """A meta path finder that answers `import numpy` and `import pandas` with
    ModuleNotFoundError, which pyarrow reads as "not installed". (A None entry in sys.modules
    would not do: pyarrow's compiled import takes it for the module.)"""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname.partition(".")[0] in KEPT_OUT:
            raise ModuleNotFoundError(
                f"{fullname} is kept out of a command-line run", name=fullname
            )
        return None


def lean_command_line() -> None:
    """Both of the above, for a process the command line owns from start to end (never the
    Python API, whose caller owns the process, nor a Ray run, whose Data library uses pandas).
    Effective only before pyarrow is imported; ARROW_DEFAULT_MEMORY_POOL set by the user wins."""
    if "pyarrow" not in sys.modules:
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    keep_numpy_and_pandas_out()


def keep_numpy_and_pandas_out() -> None:
    """Make `import numpy` and `import pandas` fail in this process, unless one of them (or
    pyarrow, which may hold numpy) is imported already."""
    if any(name in sys.modules for name in (*KEPT_OUT, "pyarrow")):
        return
    if not any(isinstance(finder, _Refused) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Refused())
