"""Every notebook in notebooks/ runs from top to bottom (nbclient)."""

from __future__ import annotations

import pathlib

import nbclient
import nbformat
import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path):
  notebook = nbformat.read(path, as_version=4)
  assert any(c.cell_type == "code" for c in notebook.cells), "a notebook without code"
  client = nbclient.NotebookClient(
      notebook, timeout=120, kernel_name="python3",
      resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  errors = [o for c in notebook.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]
  assert not errors, errors


def test_four_notebooks():
  assert [p.stem for p in NOTEBOOKS] == [
      "01_quickstart", "02_porting_from_pytorch", "03_learned_rates",
      "04_write_your_own_rule"]
