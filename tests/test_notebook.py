"""batchpizza.answer() in a Jupyter notebook: the notebook in tests/notebooks run cell by cell in
a real kernel (ipykernel, through nbclient), where the cell already runs inside an event loop."""

from __future__ import annotations

import os
from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOK = Path(__file__).parent / "notebooks" / "answer_in_a_notebook.ipynb"


@pytest.mark.slow
def test_answer_runs_in_a_notebook_cell_inside_the_kernels_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Jupyter's own paths in the test's folder (and the new ones, without its notice about them).
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env={**os.environ})
    outputs = notebook.cells[-1].outputs
    assert [o.get("text") for o in outputs if o.output_type == "stream"] == ["answered 3\n"]
    assert all(o.output_type != "error" for cell in notebook.cells for o in cell.get("outputs", []))
