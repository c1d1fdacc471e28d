"""The three reference-000 rules against an independent NumPy implementation."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

import optax_neuronlr as nlr
from tests import numpy_reference as ref
from tests.conftest import ALIASES, DEFAULT_HP, SHAPES, Quadratic, flatten, nest

STEPS = 35


def _run_jax(tx, quad: Quadratic, steps: int, dtype=jnp.float32, jit=True):
  params = nest({k: jnp.asarray(v, dtype) for k, v in quad.init.items()})
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  for k in range(steps):
    updates, state = update(quad.grad_jax(params, k), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


class ReferenceParityTest(chex.TestCase, parameterized.TestCase):
  """>= 30 closed-loop steps on a nested tree, every rule and granularity."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(
      (rule, granularity, bias_correction)
      for rule in ("magnitude", "history", "sign")
      for granularity in ("element", "neuron", "tensor")
      # The magnitude rule keeps no EMA, so it has no bias correction.
      for bias_correction in ((False,) if rule == "magnitude" else (False, True))
  )
  def test_matches_numpy(self, rule, granularity, bias_correction):
    extra = {} if rule == "magnitude" else {"bias_correction": bias_correction}
    # max_lr below 1 keeps some units off the clamp, so the rule itself shows.
    hp = {**DEFAULT_HP[rule], "max_lr": 0.7, **extra}
    lr = 3e-3
    quad = Quadratic(seed=1, steps=STEPS)
    tx = ALIASES[rule](lr, granularity=granularity, **hp)
    params = nest({k: jnp.asarray(v, jnp.float32) for k, v in quad.init.items()})
    state = tx.init(params)
    update = self.variant(tx.update)
    for k in range(STEPS):
      updates, state = update(quad.grad_jax(params, k), state, params)
      params = optax.apply_updates(params, updates)

    want_params, want_rates = ref.run(
        rule, quad.init, quad.grad_np, STEPS, granularity, hp, lambda k: lr
    )
    got_rates = flatten(nlr.learning_rates(state))
    for name in SHAPES:
      np.testing.assert_allclose(
          flatten(params)[name], want_params[name], rtol=2e-5, atol=2e-6,
          err_msg=name)
      np.testing.assert_allclose(
          got_rates[name], want_rates[name], rtol=2e-5, err_msg=name)
    # The test must be able to fail: some rates are strictly inside the clamps.
    inside = [np.mean((r > hp["min_lr"]) & (r < hp["max_lr"])) for r in want_rates.values()]
    self.assertGreater(max(inside), 0.0)

  @parameterized.parameters("magnitude", "history", "sign")
  def test_reference_defaults_float64(self, rule):
    """Reference defaults, float64: agreement to 1e-10 relative."""
    quad = Quadratic(seed=2, steps=STEPS)
    with jax.enable_x64(True):
      params, state = _run_jax(ALIASES[rule](1e-3), quad, STEPS, jnp.float64)
      self.assertEqual(jax.tree.leaves(state)[1].dtype, jnp.float64)
      want, _ = ref.run(rule, quad.init, quad.grad_np, STEPS, "element",
                        DEFAULT_HP[rule], lambda k: 1e-3)
      for name, value in flatten(params).items():
        np.testing.assert_allclose(value, want[name], rtol=1e-10, err_msg=name)

  @parameterized.parameters("magnitude", "history", "sign")
  def test_schedule(self, rule):
    schedule = optax.linear_schedule(4e-3, 1e-3, transition_steps=20)
    quad = Quadratic(seed=3, steps=30)
    params, state = _run_jax(
        ALIASES[rule](schedule, granularity="neuron", max_lr=0.5), quad, 30)
    hp = {**DEFAULT_HP[rule], "max_lr": 0.5}
    want, rates = ref.run(rule, quad.init, quad.grad_np, 30, "neuron", hp,
                          lambda k: float(schedule(k)))
    for name, value in flatten(params).items():
      np.testing.assert_allclose(value, want[name], rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(
        flatten(nlr.learning_rates(state))["Dense_0/kernel"],
        rates["Dense_0/kernel"], rtol=2e-5)


class SemanticsTest(parameterized.TestCase):

  def test_example1_code_not_text(self):
    """Example 1's text says small gradients raise the rate; its code (and
    this library) raise it by alpha*|g|, so the larger gradient wins."""
    params = {"w": jnp.zeros(2)}
    tx = nlr.grad_magnitude_lr(1e-3, alpha=0.01)
    state = tx.init(params)
    _, state = tx.update({"w": jnp.array([1e-3, 10.0])}, state)
    rate = nlr.learning_rates(state)["w"]
    self.assertGreater(float(rate[1]), float(rate[0]))
    np.testing.assert_allclose(rate, [1e-3 + 1e-5, 1e-3 + 0.1], rtol=1e-6)

  def test_scale_by_is_positive_alias_is_negative(self):
    params = {"w": jnp.ones(3)}
    g = {"w": jnp.array([0.5, -1.0, 2.0])}
    for name, alias in ALIASES.items():
      scale_by = getattr(nlr, alias.__name__.join(["scale_by_", ""]))
      up, _ = scale_by(1e-3).update(g, scale_by(1e-3).init(params))
      down, _ = alias(1e-3).update(g, alias(1e-3).init(params))
      np.testing.assert_array_equal(down["w"], -up["w"], err_msg=name)
      self.assertTrue(bool(jnp.all(jnp.sign(up["w"]) == jnp.sign(g["w"]))))

  @parameterized.parameters("history", "sign")
  def test_first_step_rate_without_bias_correction(self, rule):
    """The documented weak spot: with zero-initialised EMAs the first rate is
    about 10*lr/|g| (here 1e-3 / (0.1 * 0.5))."""
    g = {"w": jnp.full((4,), 0.5)}
    tx = ALIASES[rule](1e-3)
    _, state = tx.update(g, tx.init(g))
    scale = 1.1 if rule == "sign" else 1.0  # |c| = 0.1 after one step
    np.testing.assert_allclose(
        nlr.learning_rates(state)["w"], scale * 1e-3 / 0.05, rtol=1e-5)
    tx = ALIASES[rule](1e-3, bias_correction=True)
    _, state = tx.update(g, tx.init(g))
    scale = 2.0 if rule == "sign" else 1.0  # debiased |c| = 1
    np.testing.assert_allclose(
        nlr.learning_rates(state)["w"], scale * 1e-3 / 0.5, rtol=1e-5)

  def test_rates_before_first_step(self):
    for alias in ALIASES.values():
      state = alias(5e-3, granularity="neuron").init({"k": jnp.ones((3, 2))})
      np.testing.assert_allclose(nlr.learning_rates(state)["k"], [5e-3, 5e-3])


class ClampTest(parameterized.TestCase):
  """Gradients constructed to drive the rates onto each clamp."""

  @parameterized.parameters("history", "sign")
  def test_ema_rules_hit_both_clamps(self, rule):
    # Huge gradient -> rate lr/(0.1*1e6) < min_lr; tiny one -> rate > max_lr.
    g = {"w": jnp.array([1e6, 1e-9, -1e6])}
    tx = ALIASES[rule](1e-3, min_lr=1e-6, max_lr=0.5)
    updates, state = tx.update(g, tx.init(g))
    rate = nlr.learning_rates(state)["w"]
    np.testing.assert_allclose(rate, [1e-6, 0.5, 1e-6], rtol=1e-6)
    np.testing.assert_allclose(updates["w"], -rate * g["w"], rtol=1e-6)
    summary = nlr.rate_summary(state)
    np.testing.assert_allclose(summary["w/frac_at_min_lr"], 2 / 3)
    np.testing.assert_allclose(summary["w/frac_at_max_lr"], 1 / 3)

  def test_magnitude_rule_hits_both_clamps(self):
    tx = nlr.grad_magnitude_lr(1e-8, alpha=1.0, min_lr=1e-6, max_lr=0.2)
    g = {"w": jnp.array([0.0, 5.0])}
    _, state = tx.update(g, tx.init(g))
    np.testing.assert_allclose(nlr.learning_rates(state)["w"], [1e-6, 0.2], rtol=1e-6)
    # The stored rate is the clamped one: a later small gradient starts from it.
    _, state = tx.update({"w": jnp.array([1e-3, 0.0])}, state)
    np.testing.assert_allclose(
        nlr.learning_rates(state)["w"], [1e-6 + 1e-3, 0.2], rtol=1e-5)

  def test_infinite_max_lr_disables_clamp(self):
    g = {"w": jnp.array([1e-9])}
    tx = nlr.grad_history_lr(1e-3, max_lr=float("inf"))
    _, state = tx.update(g, tx.init(g))
    np.testing.assert_allclose(nlr.learning_rates(state)["w"], 1e-3 / (1e-10 + 1e-8),
                               rtol=1e-5)


class NeuronAxesTest(parameterized.TestCase):

  @parameterized.parameters("magnitude", "history", "sign")
  def test_pytorch_layout_equals_transposed_flax(self, rule):
    rng = np.random.default_rng(0)
    flax_k = rng.normal(size=(6, 4)).astype(np.float32)
    grads = [rng.normal(size=(6, 4)).astype(np.float32) for _ in range(5)]
    tx_flax = ALIASES[rule](1e-3, granularity="neuron")
    tx_torch = ALIASES[rule](1e-3, granularity="neuron", neuron_axes=0)
    s_f, s_t = tx_flax.init({"k": flax_k}), tx_torch.init({"k": flax_k.T})
    for g in grads:
      u_f, s_f = tx_flax.update({"k": g}, s_f)
      u_t, s_t = tx_torch.update({"k": g.T}, s_t)
      np.testing.assert_allclose(u_f["k"], u_t["k"].T, rtol=1e-6)
    np.testing.assert_allclose(
        nlr.learning_rates(s_f)["k"], nlr.learning_rates(s_t)["k"], rtol=1e-6)
    self.assertEqual(nlr.learning_rates(s_t)["k"].shape, (4,))

  def test_spec_forms_agree(self):
    params = {"a": jnp.ones((3, 4)), "b": jnp.ones((2, 5, 6))}
    g = jax.tree.map(lambda p: jnp.arange(p.size, dtype=p.dtype).reshape(p.shape) - 7, params)
    specs = {"a": 0, "b": (0, 2)}
    by_tree = nlr.grad_history_lr(1e-3, granularity="neuron", neuron_axes=specs)
    by_fn = nlr.grad_history_lr(1e-3, granularity="neuron", neuron_axes=lambda p: specs)
    u1, s1 = by_tree.update(g, by_tree.init(params))
    u2, s2 = by_fn.update(g, by_fn.init(params))
    chex.assert_trees_all_equal(u1, u2)
    rates = nlr.learning_rates(s1)
    self.assertEqual(rates["a"].shape, (3,))
    self.assertEqual(rates["b"].shape, (2, 6))
    # Unit (i, j) of b averages |g| over axis 1 only.
    want = 1e-3 / (0.1 * np.abs(np.asarray(g["b"])).mean(axis=1) + 1e-8)
    np.testing.assert_allclose(rates["b"], np.clip(want, 1e-6, 1.0), rtol=1e-6)

  def test_out_of_range_axis_names_leaf(self):
    tx = nlr.grad_history_lr(1e-3, granularity="neuron", neuron_axes={"a": 0, "b": {"c": 2}})
    with self.assertRaisesRegex(ValueError, r"neuron_axes 2 .*'b/c'.*-2\.\.1"):
      tx.init({"a": jnp.ones(3), "b": {"c": jnp.ones((2, 2))}})

  def test_missing_spec_names_leaf(self):
    tx = nlr.grad_history_lr(1e-3, granularity="neuron", neuron_axes={"a": 0})
    with self.assertRaisesRegex(ValueError, "selects nothing for leaf 'b'"):
      tx.init({"a": jnp.ones(3), "b": jnp.ones(2)})

  def test_empty_leaf_gives_finite_values(self):
    params = {"e": jnp.ones((0, 3)), "w": jnp.ones((2, 3))}
    for granularity in nlr.GRANULARITIES:
      tx = nlr.sign_consistency_lr(1e-3, granularity=granularity)
      updates, state = tx.update(params, tx.init(params))
      self.assertEqual(updates["e"].shape, (0, 3))
      for leaf in jax.tree.leaves(state):
        self.assertTrue(bool(jnp.all(jnp.isfinite(leaf))))


if __name__ == "__main__":
  pytest.main([__file__])
