"""Hypergradient descent against a NumPy implementation of Baydin et al. (2018).

The loss is a softmax regression on fixed data, with its gradient written out
in NumPy; both sides follow their own trajectory for 40 steps.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import parameterized

import optax_neuronlr as nlr

STEPS = 40
RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 6))
Y = np.eye(4)[RNG.integers(0, 4, 64)]
INIT = {"w": RNG.normal(size=(6, 4)) * 0.1, "b": np.zeros(4)}


def _grad_np(p):
  logits = X @ p["w"] + p["b"]
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  err = (probs - Y) / len(X)
  return {"w": X.T @ err, "b": err.sum(0)}


def _loss_jax(p):
  logits = jnp.asarray(X, p["w"].dtype) @ p["w"] + p["b"]
  return optax.softmax_cross_entropy(logits, jnp.asarray(Y, p["w"].dtype)).mean()


def _unit_sum(x, granularity):
  """Sum over each unit: all (global/tensor), the fan-in axis 0 (neuron)."""
  if granularity in ("global", "tensor"):
    return x.sum()
  if granularity == "neuron":
    return x.sum(axis=0) if x.ndim > 1 else x
  return x


def _numpy_hd(adam: bool, lr0, beta, granularity, steps=STEPS, multiplicative=False,
              min_lr=0.0, max_lr=np.inf, b1=0.9, b2=0.999, eps=1e-8):
  """The paper's Algorithms 2 (SGD-HD) and 3 (Adam-HD), per unit."""
  p = {k: v.copy() for k, v in INIT.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  prev = {k: np.zeros_like(x) for k, x in p.items()}
  alpha = {k: np.full(np.shape(_unit_sum(x, granularity)), lr0) for k, x in p.items()}
  history = []
  for t in range(1, steps + 1):
    g = _grad_np(p)
    if adam:
      d = {}
      for k in p:
        m[k] = b1 * m[k] + (1 - b1) * g[k]
        v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
        d[k] = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
    else:
      d = g
    dots = {k: _unit_sum(g[k] * prev[k], granularity) for k in p}
    norms = {k: np.sqrt(_unit_sum(g[k] ** 2, granularity)) *
             np.sqrt(_unit_sum(prev[k] ** 2, granularity)) for k in p}
    if granularity == "global":
      total, denom = sum(dots.values()), np.sqrt(sum(_unit_sum(g[k] ** 2, "global") for k in p)) * \
          np.sqrt(sum(_unit_sum(prev[k] ** 2, "global") for k in p))
      dots = {k: total for k in p}
      norms = {k: denom for k in p}
    for k in p:
      if multiplicative:
        cos = np.where(norms[k] > 0, dots[k] / np.where(norms[k] > 0, norms[k], 1), 0)
        alpha[k] = alpha[k] * (1 + beta * cos)
      else:
        alpha[k] = alpha[k] + beta * dots[k]
      alpha[k] = np.clip(alpha[k], min_lr, max_lr)
      rate = alpha[k] if alpha[k].shape == p[k].shape or alpha[k].ndim == 0 else alpha[k][None]
      p[k] = p[k] - rate * d[k]
    prev = d
    history.append({k: a.copy() for k, a in alpha.items()})
  return p, history


def _run_jax(tx, steps=STEPS, dtype=jnp.float64):
  params = {k: jnp.asarray(v, dtype) for k, v in INIT.items()}
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(jax.grad(_loss_jax)(p), s, p))
  history = []
  for _ in range(steps):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
    history.append(nlr.learning_rates(state))
  return params, state, history


class HypergradientTest(parameterized.TestCase):

  @parameterized.product(
      adam=(False, True),
      granularity=("global", "tensor", "neuron", "element"),
      multiplicative=(False, True),
  )
  def test_matches_numpy_algorithm(self, adam, granularity, multiplicative):
    beta = (1e-2 if multiplicative else (1e-4 if adam else 0.5))
    lr0 = 1e-2 if adam else 0.05
    with jax.enable_x64(True):
      alias = nlr.adam_hd if adam else nlr.sgd_hd
      params, _, history = _run_jax(
          alias(lr0, beta, granularity=granularity, multiplicative=multiplicative))
      want, want_history = _numpy_hd(adam, lr0, beta, granularity,
                                     multiplicative=multiplicative)
    chex.assert_trees_all_close(params, want, rtol=1e-9, atol=1e-12)
    for got, exp in zip(history, want_history):
      chex.assert_trees_all_close(got, exp, rtol=1e-9, atol=1e-15)
    # The rate really moved, so the comparison is not vacuous.
    self.assertGreater(abs(float(np.ravel(want_history[-1]["w"])[0]) - lr0), 1e-3 * lr0)

  def test_first_step_leaves_rate_unchanged(self):
    for alias in (nlr.sgd_hd, nlr.adam_hd):
      for granularity in ("global", "neuron"):
        _, state, history = _run_jax(alias(0.03, 10.0, granularity=granularity),
                                     steps=1, dtype=jnp.float32)
        for r in jax.tree.leaves(history[0]):
          np.testing.assert_array_equal(r, np.float32(0.03))

  def test_rate_shapes_per_granularity(self):
    want = {"global": {"w": (), "b": ()}, "tensor": {"w": (), "b": ()},
            "neuron": {"w": (4,), "b": (4,)}, "element": {"w": (6, 4), "b": (4,)}}
    for granularity, shapes in want.items():
      _, state, _ = _run_jax(nlr.sgd_hd(0.1, 0.1, granularity=granularity), steps=2,
                             dtype=jnp.float32)
      self.assertEqual(jax.tree.map(jnp.shape, nlr.learning_rates(state)), shapes)
    self.assertEqual(jax.tree.map(jnp.shape, nlr.sgd_hd(0.1, 0.1).init(INIT)[0].lr), {"w": (), "b": ()})

  def test_clamps_bind(self):
    _, state, _ = _run_jax(nlr.sgd_hd(0.1, 1e3, granularity="neuron", max_lr=0.2,
                                      min_lr=0.05), steps=10, dtype=jnp.float32)
    rates = np.concatenate([np.ravel(r) for r in jax.tree.leaves(nlr.learning_rates(state))])
    self.assertTrue(np.all((rates >= 0.05) & (rates <= 0.2)))
    self.assertTrue(np.any(rates == np.float32(0.2)))
    summary = nlr.rate_summary(state)
    self.assertGreater(float(summary["w/frac_at_max_lr"]), 0.0)

  def test_inject_hyperparams_changes_hyper_lr(self):
    tx = optax.inject_hyperparams(nlr.sgd_hd)(learning_rate=0.05, hyper_lr=0.0)
    params, state, history = _run_jax(tx, steps=5, dtype=jnp.float32)
    np.testing.assert_allclose(history[-1]["w"], 0.05)
    state = nlr.set_hyperparams(state, hyper_lr=0.5)
    g = jax.grad(_loss_jax)(params)
    prev = state.inner_state[0].prev_direction
    _, state = tx.update(g, state, params)
    dot = sum(float(jnp.vdot(g[k], prev[k])) for k in g)
    np.testing.assert_allclose(nlr.learning_rates(state)["w"], 0.05 + 0.5 * dot, rtol=1e-5)

  def test_multi_transform_and_jit(self):
    tx = optax.multi_transform(
        {"hd": nlr.adam_hd(1e-2, 1e-4, granularity="neuron"), "sgd": optax.sgd(0.1)},
        {"w": "hd", "b": "sgd"})
    params, state, history = _run_jax(tx, steps=5, dtype=jnp.float32)
    self.assertEqual(history[-1]["w"].shape, (4,))
    self.assertIsNone(history[-1]["b"])

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, "granularity must be one of"):
      nlr.sgd_hd(0.1, 0.1, granularity="layer")
    with self.assertRaisesRegex(ValueError, r"hyper_lr must lie in \[0, inf\]"):
      nlr.sgd_hd(0.1, -1.0)
    with self.assertRaisesRegex(ValueError, "min_lr must not exceed max_lr"):
      nlr.adam_hd(0.1, 0.1, min_lr=1.0, max_lr=0.5)
    with self.assertRaisesRegex(TypeError, "direction must be an optax"):
      nlr.hypergradient_lr(0.1, 0.1, direction="adam")
    with self.assertRaisesRegex(TypeError, "since 0.2 the direction is the keyword"):
      nlr.hypergradient_lr(optax.identity(), 0.1, 0.1)
