"""Parity rows ``muon`` (torch.optim.Muon) and ``normuon`` (the NorMuon reference's
``normuon_update``, restated): float64 trajectories of both sides agree to rounding."""

import pytest

pytest.importorskip("torch")
from optax_neuronlr.parity import normuon as parity  # pylint: disable=g-import-not-at-top


@pytest.mark.parametrize("kind", parity.NAMES)
@pytest.mark.parametrize("problem,steps", [("matrices", 6), ("block", 3)])
def test_float64_parity(kind, problem, steps):
  diff = parity.compare(kind, problem, steps)
  assert len(diff.rel_by_step) == steps
  assert diff.max_rel < parity.TOLERANCE, diff


def test_rows_are_in_the_table():
  from optax_neuronlr.parity import __main__ as cli  # pylint: disable=g-import-not-at-top
  assert set(parity.NAMES) <= set(cli.NAMES)
  for name in parity.NAMES:
    assert parity.CASES[name].status == "exact"


def test_views_of_3d_kernels():
  prob = parity.problem("block")
  views = parity._views(prob.params)  # pylint: disable=protected-access
  query = views["layers/0/attn/query/kernel"]
  assert (query.reduction_axes, query.output_axes) == ((0,), (1, 2))
  x = prob.params["layers"][0]["attn"]["query"]["kernel"]
  w = parity.to_torch(x, query)
  assert tuple(w.shape) == (x.shape[1] * x.shape[2], x.shape[0])
  assert (parity.from_torch(w, x.shape, query) == x).all()
  out = views["layers/0/attn/out/kernel"]
  assert (out.reduction_axes, out.output_axes) == ((0, 1), (2,))


@pytest.mark.parametrize("kind", parity.NAMES)
def test_float64_parity_without_nesterov(kind):
  """Without Nesterov torch hands its momentum buffer itself to Newton-Schulz,
  which divides its input in place: the reference side's bfloat16 switch must
  give it a copy, or the buffer is rescaled every step."""
  diff = parity.compare(kind, "matrices", 5, parity.Settings(nesterov=False))
  assert diff.max_rel < parity.TOLERANCE, diff


def test_bfloat16_switch_copies():
  import torch  # pylint: disable=g-import-not-at-top
  x = torch.ones(3, dtype=torch.float64)
  with parity._no_bfloat16_cast():  # pylint: disable=protected-access
    y = x.bfloat16()
  assert y.dtype == torch.float64 and y is not x
  y.div_(2.0)
  assert float(x[0]) == 1.0
