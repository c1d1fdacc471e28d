"""The strategies inside optax's combinators, and learning_rates through them."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import parameterized

import optax_neuronlr as nlr
from tests.conftest import ALIASES, SCALE_BY

PARAMS = {
    "backbone": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)},
    "head": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)},
}


def grads(k: int = 0, params=PARAMS):
  return jax.tree.map(
      lambda p: jnp.sin(jnp.arange(p.size, dtype=p.dtype).reshape(p.shape) + k) * 3,
      params,
  )


def run(tx, steps: int = 5, params=PARAMS):
  state = tx.init(params)
  out = []
  for k in range(steps):
    updates, state = jax.jit(tx.update)(grads(k, params), state, params)
    out.append(updates)
  return out, state


class CompositionTest(parameterized.TestCase):

  @parameterized.parameters("magnitude", "history", "sign")
  def test_after_global_norm_clipping(self, rule):
    clipped = optax.chain(optax.clip_by_global_norm(1.0), ALIASES[rule](1e-3))
    got, state = run(clipped)
    # The same strategy fed gradients clipped by hand.
    tx = ALIASES[rule](1e-3)
    s = tx.init(PARAMS)
    for k in range(5):
      g = grads(k)
      norm = optax.tree.norm(g)
      g = jax.tree.map(lambda x: x * jnp.minimum(1.0, 1.0 / norm), g)
      want, s = tx.update(g, s)
      chex.assert_trees_all_close(got[k], want, rtol=1e-6)
    chex.assert_trees_all_close(nlr.learning_rates(state), nlr.learning_rates(s))

  @parameterized.parameters("magnitude", "history", "sign")
  def test_multi_transform_two_labels(self, rule):
    labels = {"backbone": {"kernel": "nlr", "bias": "nlr"},
              "head": {"kernel": "sgd", "bias": "sgd"}}
    tx = optax.multi_transform(
        {"nlr": ALIASES[rule](1e-3, granularity="neuron"), "sgd": optax.sgd(0.1)},
        labels)
    got, state = run(tx)
    alone, alone_state = run(ALIASES[rule](1e-3, granularity="neuron"),
                             params=PARAMS["backbone"])
    for k in range(5):
      chex.assert_trees_all_close(got[k]["backbone"], alone[k], rtol=1e-6)
      chex.assert_trees_all_close(
          got[k]["head"], jax.tree.map(lambda g: -0.1 * g, grads(k)["head"]))
    rates = nlr.learning_rates(state)
    self.assertIsNone(rates["head"]["kernel"])
    chex.assert_trees_all_close(rates["backbone"], nlr.learning_rates(alone_state))

  def test_two_strategies_merge_in_learning_rates(self):
    labels = {"backbone": {"kernel": "a", "bias": "a"},
              "head": {"kernel": "b", "bias": "b"}}
    tx = optax.multi_transform(
        {"a": nlr.grad_history_lr(1e-3, granularity="neuron"),
         "b": nlr.sign_consistency_lr(1e-3, granularity="tensor")}, labels)
    _, state = run(tx, steps=2)
    rates = nlr.learning_rates(state)
    self.assertEqual(rates["backbone"]["kernel"].shape, (3,))
    self.assertEqual(rates["head"]["kernel"].shape, ())
    self.assertLen(nlr.learning_rates_by_state(state), 2)
    summary = nlr.rate_summary(state)
    self.assertTrue(any(k.endswith("backbone/kernel/median") for k in summary))
    self.assertTrue(any(k.endswith("head/bias/frac_at_max_lr") for k in summary))

  def test_same_leaf_twice_is_an_error(self):
    tx = optax.chain(nlr.scale_by_grad_history_lr(1e-3), nlr.grad_history_lr(1e-3))
    _, state = run(tx, steps=1)
    with self.assertRaisesRegex(ValueError, "same leaf"):
      nlr.learning_rates(state)
    self.assertLen(nlr.learning_rates_by_state(state), 2)

  def test_no_strategy_is_an_error(self):
    with self.assertRaisesRegex(ValueError, "no per-unit"):
      nlr.learning_rates(optax.adam(1e-3).init(PARAMS))

  @parameterized.parameters("magnitude", "history", "sign")
  def test_inject_hyperparams_changed_rate(self, rule):
    tx = optax.inject_hyperparams(ALIASES[rule])(learning_rate=1e-3, max_lr=10.0)
    state = tx.init(PARAMS)
    plain = ALIASES[rule](1e-3, max_lr=10.0)
    plain_state = plain.init(PARAMS)
    for k in range(3):
      u, state = tx.update(grads(k), state)
      want, plain_state = plain.update(grads(k), plain_state)
      chex.assert_trees_all_close(u, want, rtol=1e-6)
    # Double the rate at run time: the EMA rules' rates double; the
    # magnitude rule's accumulated rates shift by the change, 1e-3.
    before = nlr.learning_rates(state)
    state.hyperparams["learning_rate"] = jnp.asarray(2e-3)
    u, state = tx.update(grads(3), state)
    after = nlr.learning_rates(state)
    if rule == "magnitude":
      grown = jax.tree.map(lambda r, g: r + 1e-3 + 0.01 * jnp.abs(g), before, grads(3))
      chex.assert_trees_all_close(after, grown, rtol=1e-5)
    else:
      _, plain_state = plain.update(grads(3), plain_state)
      chex.assert_trees_all_close(
          after, jax.tree.map(lambda r: 2 * r, nlr.learning_rates(plain_state)), rtol=1e-5)
    chex.assert_trees_all_close(
        u, jax.tree.map(lambda r, g: -r * g, after, grads(3)), rtol=1e-5)

  def test_inject_hyperparams_beta(self):
    tx = optax.inject_hyperparams(nlr.grad_history_lr)(learning_rate=1e-3, beta=0.5)
    _, state = tx.update(grads(0), tx.init(PARAMS))
    want = 1e-3 / (0.5 * jnp.abs(grads(0)["head"]["bias"]) + 1e-8)
    np.testing.assert_allclose(
        nlr.learning_rates(state)["head"]["bias"], jnp.clip(want, 1e-6, 1.0), rtol=1e-6)

  @parameterized.parameters("magnitude", "history", "sign")
  def test_apply_if_finite_skips_nan_step(self, rule):
    tx = optax.apply_if_finite(ALIASES[rule](1e-3), max_consecutive_errors=3)
    state = tx.init(PARAMS)
    _, state = tx.update(grads(0), state)
    bad = grads(1)
    bad["head"]["bias"] = bad["head"]["bias"].at[0].set(jnp.nan)
    updates, new_state = jax.jit(tx.update)(bad, state)
    chex.assert_trees_all_equal(new_state.inner_state, state.inner_state)
    for leaf in jax.tree.leaves(updates):
      np.testing.assert_array_equal(leaf, 0.0)
    self.assertEqual(int(new_state.notfinite_count), 1)

  @parameterized.parameters("magnitude", "history", "sign")
  def test_masked(self, rule):
    mask = {"backbone": {"kernel": True, "bias": False},
            "head": {"kernel": True, "bias": False}}
    tx = optax.masked(ALIASES[rule](1e-3, granularity="neuron"), mask)
    updates, state = run(tx, steps=2)
    chex.assert_trees_all_equal(updates[1]["head"]["bias"], grads(1)["head"]["bias"])
    rates = nlr.learning_rates(state)
    self.assertIsNone(rates["head"]["bias"])
    self.assertEqual(rates["head"]["kernel"].shape, (2,))

  @parameterized.parameters("magnitude", "history", "sign")
  def test_direction_scales_adam(self, rule):
    tx = SCALE_BY[rule](1e-3, granularity="neuron", direction=optax.scale_by_adam())
    adam = optax.scale_by_adam()
    s, a = tx.init(PARAMS), adam.init(PARAMS)
    for k in range(4):
      u, s = tx.update(grads(k), s)
      d, a = adam.update(grads(k), a)
    rates = nlr.learning_rates(s)
    want = jax.tree.map(lambda r, x: r * x, rates, d)  # (out,) broadcasts on (in, out)
    chex.assert_trees_all_close(u, want, rtol=1e-6)
    # The rates follow the raw gradients, exactly as without a direction.
    _, plain = run(SCALE_BY[rule](1e-3, granularity="neuron"), steps=4)
    chex.assert_trees_all_close(rates, nlr.learning_rates(plain), rtol=1e-6)

  def test_direction_gets_extra_args_and_unknown_ones_are_ignored(self):
    tx = nlr.grad_history_lr(1e-3, direction=optax.trace(0.9))
    state = tx.init(PARAMS)
    updates, _ = tx.update(grads(0), state, PARAMS, value=1.0, unknown="x")
    chex.assert_tree_all_finite(updates)

  def test_learning_rates_under_jit_and_nesting(self):
    inner = optax.inject_hyperparams(nlr.sign_consistency_lr)(
        learning_rate=1e-3, granularity="neuron")
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.apply_if_finite(inner, 2))
    _, state = run(tx, steps=2)
    rates = jax.jit(nlr.learning_rates)(state)
    self.assertEqual(rates["backbone"]["kernel"].shape, (3,))
    summary = jax.jit(nlr.rate_summary)(state)
    self.assertIn("backbone/kernel/frac_at_max_lr", summary)
