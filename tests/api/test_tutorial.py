"""The tutorial notebook (docs/tutorial.py, jupytext percent format) renders to .ipynb and executes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).resolve().parents[2] / "docs" / "tutorial.py"


def test_tutorial_executes_on_the_bundled_model(tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext", reason="notebook extra not installed (pip install -e .[notebook])")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    notebook = jupytext.read(TUTORIAL)
    jupytext.write(notebook, tmp_path / "tutorial.ipynb")  # the rendered notebook, as users get it
    src = str(Path(__file__).resolve().parents[2] / "src")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])]))
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "patch Green" in text and "runs behavior" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the figure and the drawn image
