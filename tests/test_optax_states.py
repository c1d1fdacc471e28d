"""States that behave like optax's: tree_get/tree_set, map_params, flax
serialization, donation and explicit sharding (issue: one open engine)."""

from __future__ import annotations

import json
import pathlib

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_neuronlr as nlr
from tests import mesh_helpers

PARAMS = {"dense": {"kernel": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4),
                    "bias": jnp.zeros(4)}, "scale": jnp.ones(())}

STRATEGIES = {
    "magnitude": lambda **kw: nlr.grad_magnitude_lr(0.1, **kw),
    "history": lambda **kw: nlr.grad_history_lr(0.1, bias_correction=True, **kw),
    "sign": lambda **kw: nlr.sign_consistency_lr(0.1, **kw),
    "sgd_hd": lambda **kw: nlr.sgd_hd(0.1, 1e-2, **kw),
    "adam_hd": lambda **kw: nlr.adam_hd(0.1, 1e-4, **kw),
}
GRANULARITIES = ("element", "neuron", "tensor", "global")


def _grads(k: int = 0):
  return jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size, dtype=p.dtype)
                                        .reshape(p.shape) + k) * 0.5, PARAMS)


def _run(tx, steps=3, state=None):
  state = tx.init(PARAMS) if state is None else state
  for k in range(steps):
    _, state = tx.update(_grads(k), state, PARAMS)
  return state


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", ["magnitude", "history", "sgd_hd"])
def test_tree_set_learning_rate_drives_the_update_under_inject(name):
  factory = {"magnitude": nlr.grad_magnitude_lr, "history": nlr.grad_history_lr,
             "sgd_hd": nlr.sgd_hd}[name]
  kwargs = {"hyper_lr": 0.0} if name == "sgd_hd" else {"min_lr": 0.0, "max_lr": jnp.inf}
  tx = optax.inject_hyperparams(factory)(learning_rate=0.1, granularity="tensor", **kwargs)
  state = _run(tx)
  assert float(optax.tree_utils.tree_get(state, "learning_rate")) == pytest.approx(0.1)
  halved = optax.tree_utils.tree_set(state, learning_rate=0.05)
  u_full, s_full = tx.update(_grads(9), state, PARAMS)
  u_half, s_half = tx.update(_grads(9), halved, PARAMS)
  # Each rule's rate is proportional to the base rate (magnitude: its units
  # follow the change of the base rate, here from 0.1 to 0.05).
  ratio = u_half["dense"]["kernel"] / u_full["dense"]["kernel"]
  if name == "magnitude":
    rates = nlr.learning_rates(s_half)["dense"]["kernel"]
    before = nlr.learning_rates(s_full)["dense"]["kernel"]
    np.testing.assert_allclose(before - rates, 0.05, rtol=1e-5)
    assert float(rates) > 1e-6  # not driven to min_lr
  else:
    np.testing.assert_allclose(ratio, 0.5, rtol=1e-5)


def test_tree_get_finds_one_learning_rate_and_no_copy_outside_inject():
  tx = optax.inject_hyperparams(nlr.sign_consistency_lr)(learning_rate=0.1)
  state = _run(tx)
  found = optax.tree_utils.tree_get_all_with_path(state, "learning_rate")
  assert len(found) == 1
  plain = _run(nlr.grad_history_lr(0.1))
  with pytest.raises(KeyError):  # never silently ignored
    optax.tree_utils.tree_set(plain, learning_rate=0.5)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_map_params(name, granularity):
  tx = STRATEGIES[name](granularity=granularity)
  state = _run(tx)
  mapped = optax.tree_utils.tree_map_params(
      tx, lambda x: jnp.full_like(x, 7.0), state,
      transform_non_params=lambda x: x)
  assert jax.tree.structure(mapped) == jax.tree.structure(state)
  inner = mapped[0]
  rule = type(inner).rule
  for stat in rule.element_stats:  # params-shaped: mapped
    for leaf in jax.tree.leaves(getattr(inner, stat)):
      assert np.all(np.asarray(leaf) == 7.0)
  np.testing.assert_array_equal(mapped[0].count, state[0].count)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("granularity", ("element", "neuron", "global"))
def test_flax_serialization_round_trip(name, granularity):
  tx = STRATEGIES[name](granularity=granularity)
  state = _run(tx)
  restored = flax.serialization.from_bytes(tx.init(PARAMS), flax.serialization.to_bytes(state))
  _assert_trees_equal(state, restored)
  assert type(restored[0]) is type(state[0])


def test_flax_serialization_of_a_linen_train_state():
  from flax.training import train_state
  tx = optax.inject_hyperparams(nlr.grad_history_lr)(learning_rate=0.1, granularity="neuron")
  ts = train_state.TrainState.create(apply_fn=lambda *a: None, params=PARAMS, tx=tx)
  ts = ts.apply_gradients(grads=_grads())
  restored = flax.serialization.from_bytes(
      train_state.TrainState.create(apply_fn=lambda *a: None, params=PARAMS, tx=tx),
      flax.serialization.to_bytes(ts))
  _assert_trees_equal(ts.opt_state, restored.opt_state)


def _pointers(tree):
  return [x.unsafe_buffer_pointer() for x in jax.tree.leaves(tree)]


DONATED = {
    "inject magnitude": lambda: optax.inject_hyperparams(nlr.grad_magnitude_lr)(0.1),
    "inject sgd_hd": lambda: optax.inject_hyperparams(nlr.sgd_hd)(0.1, 1e-3),
    "inject adam_hd": lambda: optax.inject_hyperparams(nlr.adam_hd)(0.1, 1e-3),
    "inject plateau": lambda: optax.inject_hyperparams(nlr.reduce_lr_on_plateau)(0.1),
    "groups magnitude": lambda: nlr.param_groups(
        nlr.grad_magnitude_lr, [{"params": "dense", "learning_rate": 0.2}],
        rest="freeze", learning_rate=0.1),
    "groups sgd_hd": lambda: nlr.param_groups(
        nlr.sgd_hd, [{"params": "dense", "learning_rate": 0.2}],
        rest="freeze", learning_rate=0.1, hyper_lr=1e-3),
    "groups adam_hd": lambda: nlr.param_groups(
        nlr.adam_hd, [{"params": "dense", "learning_rate": 0.2}],
        rest="freeze", learning_rate=0.1, hyper_lr=1e-3),
}


@pytest.mark.parametrize("name", sorted(DONATED))
def test_donation_and_distinct_buffers(name):
  tx = DONATED[name]()
  extra = {"value": jnp.asarray(1.0)} if "plateau" in name else {}
  state = tx.init(PARAMS)
  assert len(set(_pointers(state))) == len(_pointers(state))
  plain = jax.jit(lambda g, s: tx.update(g, s, PARAMS, **extra))
  step = jax.jit(lambda g, s: tx.update(g, s, PARAMS, **extra), donate_argnums=1)
  _, state = plain(_grads(), state)  # an undonated step may forward buffers
  for k in range(3):
    _, state = step(_grads(k), state)
  assert len(set(_pointers(state))) == len(_pointers(state))


def test_param_groups_of_optax_adam_in_bfloat16():
  params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), PARAMS)
  tx = nlr.param_groups(optax.adam, [{"params": "dense", "learning_rate": 0.2}],
                        rest="freeze", learning_rate=0.1)
  state = tx.init(params)
  updates, _ = tx.update(jax.tree.map(lambda p: p + 0.5, params), state, params)
  kernel = np.asarray(updates["dense"]["kernel"], np.float32)
  assert np.all(np.isfinite(kernel))
  grads = np.asarray(params["dense"]["kernel"], np.float32) + 0.5
  np.testing.assert_allclose(kernel, -0.2 * np.sign(grads), rtol=2e-2)  # -lr*sign(g)
  abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  shapes = jax.eval_shape(tx.init, abstract)
  concrete = tx.init(abstract)
  assert jax.tree.structure(shapes) == jax.tree.structure(concrete)


SCRIPT = pathlib.Path(__file__).with_name("explicit_sharding_run.py")


def test_explicit_sharding_init_matches_update():
  out = mesh_helpers.run_script(SCRIPT, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  assert len(rows) >= 8
  for r in rows:
    assert r["init_equals_update"], r
    assert r["compiles"] == 1, r
    assert r["fori_loop"], r


def test_param_groups_under_masked_partition_and_map_params():
  params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
  tx = nlr.param_groups(optax.sgd, [{"params": "w"}, {"params": "b"}], learning_rate=0.1)
  optax.masked(tx, {"w": True, "b": False}).init(params)  # 'b' is masked out, not a typo
  optax.partition({"g": tx, "s": optax.sgd(0.1)}, {"w": "g", "b": "s"}).init(params)
  optax.tree_utils.tree_map_params(tx, lambda x: x, tx.init(params))
  typo = nlr.param_groups(optax.sgd, [{"params": "w"}, {"params": "bias"}], learning_rate=0.1)
  with pytest.raises(ValueError, match="claims no parameter"):
    optax.masked(typo, {"w": True, "b": False}).init(params)
