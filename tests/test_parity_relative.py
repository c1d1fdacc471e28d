"""Parity rows of the rules that see the weights: ``nero`` and
``nero-unconstrained`` (pytorch-optimizer's ``Nero``), ``lars-tensor``,
``lars-tensor-default`` and ``lamb-tensor`` (optax): float64 to rounding,
float32 within the harness' tolerance."""

import pytest

pytest.importorskip("torch")
from optax_neuronlr.parity import harness  # pylint: disable=g-import-not-at-top
from optax_neuronlr.parity import relative  # pylint: disable=g-import-not-at-top

STEPS = 20


def _needs_reference(name):
  if name.startswith("nero"):
    pytest.importorskip("pytorch_optimizer")


@pytest.mark.parametrize("name", relative.NAMES)
def test_float64_to_rounding(name):
  _needs_reference(name)
  result = harness.run_case(relative.CASES[name], STEPS, ("float64",))
  assert result.ok, result.verdict
  assert result.diffs["float64"].max_abs < 1e-13, result.diffs


@pytest.mark.parametrize("name", ["nero", "lamb-tensor"])
def test_float32_within_tolerance(name):
  _needs_reference(name)
  result = harness.run_case(relative.CASES[name], STEPS, ("float32",))
  assert result.ok, result.verdict


def test_planted_difference_is_caught():
  """A Nero side 1% off at one step fails the row (the row cannot pass vacuously)."""
  pytest.importorskip("pytorch_optimizer")
  import dataclasses  # pylint: disable=g-import-not-at-top

  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  import optax_neuronlr as nlr  # pylint: disable=g-import-not-at-top
  spike = optax.scale_by_schedule(lambda c: jnp.where(c == 3, 1.01, 1.0))
  side = harness.JaxSide(lambda p: optax.chain(
      nlr.scale_by_nero(0.01), spike, optax.scale(-1.0), nlr.project_neurons()))
  case = dataclasses.replace(relative.CASES["nero"], jax_side=side)
  assert not harness.run_case(case, 6, ("float64",)).ok


def test_rows_are_in_the_table():
  from optax_neuronlr.parity import __main__ as cli  # pylint: disable=g-import-not-at-top
  assert set(relative.NAMES) <= set(cli.NAMES)
  assert all(c.status == "exact" for c in relative.CASES.values())
