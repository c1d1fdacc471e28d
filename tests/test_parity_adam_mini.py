"""Adam-mini parity against the PyTorch package ``adam-mini==1.1.1`` (issue 12).

The GPT-style model of :mod:`optax_neuronlr.parity.adam_mini` exists twice (PyTorch
and Flax NNX from the standard modules); these tests check that the two agree
(forward pass in float64; a whole AdamW run against ``torch.optim.AdamW``, which
tests the weight mapping, gradients, data stream and loop), that
``adam_mini_blocks`` gives this model the reference's blocks and weight decay,
and that an Adam-mini written directly on those blocks with the engine's
layouts reproduces ``adam_mini.Adam_mini`` step by step, and that
``nlr.adam_mini(lr, ...)`` as it is (blocks read from the paths, the default
weight-decay mask) does too: the ``adam-mini`` row of the parity table.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

adam_mini = pytest.importorskip("adam_mini")

from optax_neuronlr._src import units as units_lib
from optax_neuronlr._src.rules import adam_mini as am
from optax_neuronlr.parity import adam_mini as pm
from optax_neuronlr.parity import harness

STEPS = 50
PROBLEM = pm.GPTProblem()


def test_forward_parity():
  assert pm.forward_difference(PROBLEM, "float64") < 1e-13
  assert pm.forward_difference(PROBLEM, "float32") < 1e-5


def test_mapping_covers_every_parameter():
  model = pm.torch_model(PROBLEM, "float64")
  flax_params = pm.flat(pm.torch_to_flax(model))
  names = [n for n, _ in model.named_parameters()]
  assert sorted(pm.flax_path(n) for n in names) == sorted(flax_params)
  with jax.enable_x64(True):
    abstract = pm.nnx.eval_shape(lambda: pm.NnxGPT(PROBLEM, jnp.float64))
    state = pm.nnx.to_pure_dict(pm.nnx.state(abstract, pm.nnx.Param))
  shapes = {"/".join(am._path_keys(path)): (x.shape, x.dtype)
            for path, x in jax.tree_util.tree_flatten_with_path(state)[0]}
  assert shapes == {k: (v.shape, np.dtype("float64")) for k, v in flax_params.items()}


def test_blocks_are_the_references():
  """Every tensor: the reference's branch and decay, and its number of second moments."""
  model = pm.torch_model(PROBLEM, "float64")
  opt = pm.reference_optimizer(model, PROBLEM)
  pm.torch_loss(model, torch.as_tensor(PROBLEM.tokens(1)[0])).backward()
  opt.step()
  partition = am.adam_mini_partition(pm.torch_to_flax(model), on_unrecognised="error")
  leaves = partition.by_path()
  kinds = {"adam": {"bias"}, "head": {"query", "key"}, "one": {"norm_scale"},
           "row": {"value", "attention_out", "mlp", "head", "embedding"}}
  for name, param in model.named_parameters():
    leaf = leaves[pm.flax_path(name)]
    branch, decayed = pm.reference_blocks(name)
    assert leaf.kind in kinds[branch], (name, leaf.kind, branch)
    assert leaf.weight_decay == decayed, name
    state = opt.state[param]
    second = state["v"] if "v" in state else state["vmean"]
    assert second.numel() == leaf.num_units, (name, second.shape, leaf.num_units)
    group = next(g for g in opt.param_groups if g["params"][0] is param)
    assert (group["weight_decay"] > 0) == decayed, name


def test_harness_is_exact_with_adamw():
  """torch.optim.AdamW against optax.adamw: the harness adds no difference."""
  p = PROBLEM

  def torch_adamw(model, p):
    return torch.optim.AdamW(model.parameters(), lr=p.lr, betas=(p.b1, p.b2), eps=p.eps,
                             weight_decay=p.weight_decay)

  tx = lambda params: optax.adamw(p.lr, p.b1, p.b2, p.eps, weight_decay=p.weight_decay)
  steps = 20
  diff = harness.compare(pm.jax_trajectory(p, steps, tx),
                         pm.torch_trajectory(p, steps, optimizer=torch_adamw))
  assert diff.max_rel <= 1e-10, diff.first_step_over(1e-10)
  # The run moves the weights: a harness that compared the initial values would
  # not notice a wrong optimizer.
  first, last = pm.torch_trajectory(p, 1, optimizer=torch_adamw)[0], pm.reference_trajectory(
      p, STEPS)[-1]
  assert max(np.abs(first[k] - last[k]).max() for k in first) > 0.1


def _adam_mini_on_layouts(p: pm.GPTProblem, overrides=None):
  """Adam-mini written directly on ``adam_mini_blocks`` and the engine's layouts.

  Not the library's ``nlr.adam_mini`` (that is the engine's rule): a test
  oracle that checks the blocks and the update's arithmetic against the
  reference before the engine lands. ``m`` full, ``v`` per unit (mean of
  ``g**2``), Adam's bias corrections and ``eps``, decoupled weight decay.
  """

  def make(params):
    partition = am.adam_mini_partition(params, overrides=overrides, on_unrecognised="error")
    layouts = [units_lib.leaf_layout(l.shape, l.spec, l.path) for l in partition.leaves]
    treedef = jax.tree.structure(params)

    def init(params):
      leaves = treedef.flatten_up_to(params)
      return (jnp.zeros([], jnp.int32), [jnp.zeros_like(x) for x in leaves],
              [jnp.zeros(l.unit_shape, x.dtype) for l, x in zip(layouts, leaves)])

    def update(grads, state, params=None):
      del params
      count, m, v = state
      count = count + 1
      g = treedef.flatten_up_to(grads)
      m = [p.b1 * mi + (1 - p.b1) * gi for mi, gi in zip(m, g)]
      v = [p.b2 * vi + (1 - p.b2) * l.mean(gi * gi, gi.dtype) for vi, gi, l in zip(v, g, layouts)]
      bc1, bc2 = 1 - p.b1 ** count, 1 - p.b2 ** count
      u = [l.scale(mi / bc1, 1 / (jnp.sqrt(vi / bc2) + p.eps))
           for mi, vi, l in zip(m, v, layouts)]
      return treedef.unflatten(u), (count, m, v)

    return optax.chain(optax.GradientTransformation(init, update),
                       optax.add_decayed_weights(p.weight_decay, partition.weight_decay_mask),
                       optax.scale(-p.lr))

  return make


def test_blocks_reproduce_the_reference_step_by_step():
  diff = harness.compare(pm.jax_trajectory(PROBLEM, STEPS, _adam_mini_on_layouts(PROBLEM)),
                         pm.reference_trajectory(PROBLEM, STEPS))
  assert diff.max_rel <= 1e-10, (diff.max_rel, diff.first_step_over(1e-10))


def test_a_wrong_block_is_caught():
  """Query/key per neuron instead of per head moves the parameters measurably."""
  wrong = _adam_mini_on_layouts(PROBLEM, overrides={r".*/(query|key)/kernel": am.Neurons((1, 2))})
  diff = harness.compare(pm.jax_trajectory(PROBLEM, 10, wrong),
                         pm.reference_trajectory(PROBLEM, STEPS)[:10])
  assert diff.max_rel > 1e-4


@pytest.fixture(scope="module")
def row() -> harness.Result:
  return pm.run_case(STEPS)


def test_parity_row(row):
  assert row.ok and row.verdict.startswith("exact"), row.verdict
  assert set(row.diffs) == {"float64"}
  table = harness.format_table([row], ("float64", "float32"))
  assert "| adam-mini |" in table and "nlr.adam_mini" in table


def test_adam_mini_matches_reference_in_float64(row):
  """nlr.adam_mini as it is: every parameter after each of 50 steps, float64."""
  diff = row.diffs["float64"]
  assert len(diff.rel_by_step) == STEPS
  assert diff.max_rel <= 1e-10, (diff.max_rel, diff.first_step_over(1e-10))


def test_parity_cli_runs_the_row(capsys):
  from optax_neuronlr.parity import __main__ as cli  # pylint: disable=g-import-not-at-top
  assert cli.main(["--case", "adam-mini", "--steps", "3"]) == 0
  out = capsys.readouterr().out
  assert "| adam-mini |" in out and "exact" in out
