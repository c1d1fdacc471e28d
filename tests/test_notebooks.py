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
      notebook, timeout=300, kernel_name="python3",
      resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  errors = [o for c in notebook.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]
  assert not errors, errors


def test_the_notebooks_start_with_normuon():
  """The first notebook trains the recommended optimizers; the reference-000
  material follows it."""
  assert [p.stem for p in NOTEBOOKS] == [
      "01_train_with_normuon", "02_reference_rules", "03_porting_from_pytorch",
      "04_learned_rates", "05_write_your_own_rule"]
  first = nbformat.read(NOTEBOOKS[0], as_version=4)
  code = "\n".join(c.source for c in first.cells if c.cell_type == "code")
  for call in ("nlr.normuon(", "nlr.muon(", "nlr.adam_mini(", "nnx.Optimizer(",
               "nlr.model_layout(", "nlr.RateRecorder(", "nlr.learning_rates("):
    assert call in code, call
