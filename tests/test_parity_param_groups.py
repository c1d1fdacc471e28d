"""Parity rows for optimizers that change during training
(:mod:`optax_neuronlr.parity.param_group_changes`).

``nlr.add_param_group`` against ``optimizer.add_param_group`` (SGD with
momentum, Adam with the new group's own betas) and ``nlr.reset_param_group``
against ``optimizer.state[p].clear()``: exact in float64 and float32, every
parameter after every step. Negative controls show that the comparison catches
an implementation that re-initialises the whole optimizer at the change, or
that does not reset, and that the torch side does change its state.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optax_neuronlr.parity import __main__ as cli
from optax_neuronlr.parity import harness
from optax_neuronlr.parity import param_group_changes as pgc

STEPS = 20
K = pgc.change_step(STEPS)


@pytest.mark.parametrize("dtype", harness.DTYPES)
@pytest.mark.parametrize("name", pgc.NAMES)
def test_row_is_exact(name, dtype):
  result = pgc.run_case(name, STEPS, (dtype,))
  assert result.ok and result.verdict.startswith("exact"), result.verdict
  diff = result.diffs[dtype]
  assert len(diff.rel_by_step) == STEPS
  assert diff.max_rel <= harness.TOLERANCE[dtype], (diff.max_rel, diff.first_step_over(
      harness.TOLERANCE[dtype]))
  if dtype == "float64":
    assert diff.max_rel <= 1e-13


@pytest.mark.parametrize("name", ["003-add-group-sgd", "003-add-group-adam"])
def test_head_is_compared_after_the_change(name):
  reference = pgc.torch_trajectory(pgc.ROWS[name], STEPS, "float64")
  head = {"head/kernel", "head/bias"}
  assert all(not head & set(p) for p in reference[:K])
  assert all(head <= set(p) for p in reference[K:])
  # The head trains: the comparison is not of its initial values.
  assert np.abs(reference[-1]["head/kernel"] - reference[K]["head/kernel"]).max() > 1e-2


def _reinit(row):
  """A wrong add_param_group: the new transformation, re-initialised (all
  statistics of the old groups lost)."""
  good = row.jax_change

  def change(tx, state, params):
    new_tx, _ = good(tx, state, params)
    return new_tx, new_tx.init(params)

  return change


@pytest.mark.parametrize("name", ["003-add-group-sgd", "003-add-group-adam"])
def test_reinitialising_the_optimizer_is_caught(name):
  row = pgc.ROWS[name]
  reference = pgc.torch_trajectory(row, STEPS, "float64")
  wrong = harness.compare(pgc.jax_trajectory(row, STEPS, "float64", change=_reinit(row)),
                          reference)
  assert wrong.first_step_over(harness.TOLERANCE["float32"]) == K + 1
  assert wrong.max_rel > 1e-3


def test_not_resetting_is_caught():
  row = pgc.ROWS["003-reset-group"]
  reference = pgc.torch_trajectory(row, STEPS, "float64")
  kept = harness.compare(
      pgc.jax_trajectory(row, STEPS, "float64", change=lambda tx, state, params: (tx, state)),
      reference)
  assert kept.first_step_over(harness.TOLERANCE["float32"]) == K + 1
  assert kept.max_rel > 1e-3


def test_resetting_every_group_is_caught():
  row = pgc.ROWS["003-reset-group"]
  import optax_neuronlr as nlr  # pylint: disable=g-import-not-at-top

  def reset_all(tx, state, params):
    return tx, nlr.reset_param_group(tx, state, params, ["layer0", "layer2"])

  diff = harness.compare(pgc.jax_trajectory(row, STEPS, "float64", change=reset_all),
                         pgc.torch_trajectory(row, STEPS, "float64"))
  assert diff.first_step_over(harness.TOLERANCE["float32"]) == K + 1


def test_torch_restarts_a_cleared_adam_state():
  """torch 2.13's Adam re-initialises a state that ``.clear()`` emptied: the
  second layer's step count restarts at the change, the first layer's does not."""
  row = pgc.ROWS["003-reset-group"]
  model = harness.Problem().torch_model("float64")
  optimizer = row.case.reference_side.optimizer(model)
  x, target = (torch.as_tensor(a) for a in harness.Problem().data())
  for i in range(STEPS):
    if i == K:
      row.torch_change(optimizer, None)
      assert all(not optimizer.state[p] for p in model[2].parameters())
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(x), target).backward()
    optimizer.step()
  steps = {name: optimizer.state[p]["step"].item() for name, p in model.named_parameters()}
  assert steps == {"0.weight": STEPS, "0.bias": STEPS,
                   "2.weight": STEPS - K, "2.bias": STEPS - K}


def test_cli_runs_the_rows(capsys):
  assert set(pgc.NAMES) <= set(cli.NAMES)
  assert cli.main(["--case", "003-add-group-adam", "--case", "003-reset-group",
                   "--steps", "4", "--dtype", "float64"]) == 0
  out = capsys.readouterr().out
  assert "| 003-add-group-adam |" in out and "| 003-reset-group |" in out
  assert "FAIL" not in out


def test_one_step_runs_without_change():
  """``steps=1``: the change would come after the last step; nothing breaks."""
  result = pgc.run_case("003-add-group-sgd", 1, ("float32",))
  assert result.ok
  assert pgc.change_step(1) == 1 and pgc.change_step(2) == 1
