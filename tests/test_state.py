"""State structure, dtypes, donation, retracing and input validation."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import parameterized

import optax_neuronlr as nlr
from tests.conftest import ALIASES, SCALE_BY

PARAMS = {
    "Dense_0": {"kernel": jnp.ones((6, 5)), "bias": jnp.zeros(5)},
    "Conv_0": {"kernel": jnp.ones((3, 3, 2, 4))},
    "scalar": jnp.ones(()),
    "frozen": None,
}
UNIT_SHAPES = {
    "element": {"Dense_0/kernel": (6, 5), "Dense_0/bias": (5,),
                "Conv_0/kernel": (3, 3, 2, 4), "scalar": ()},
    "neuron": {"Dense_0/kernel": (5,), "Dense_0/bias": (5,),
               "Conv_0/kernel": (4,), "scalar": ()},
    "tensor": {"Dense_0/kernel": (), "Dense_0/bias": (),
               "Conv_0/kernel": (), "scalar": ()},
}
STATS = {"magnitude": ("lr",), "history": ("grad_ema",),
         "sign": ("grad_ema", "sign_ema")}


def _grads(params, k=0):
  return jax.tree.map(
      lambda p: (jnp.cos(jnp.arange(p.size).reshape(p.shape) * 0.7 + k)).astype(p.dtype),
      params)


def _flat_shapes(tree):
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {"/".join(str(getattr(k, "key", k)) for k in p): v.shape for p, v in flat}


class StateTest(parameterized.TestCase):

  @parameterized.product(rule=("magnitude", "history", "sign"),
                         granularity=("element", "neuron", "tensor"))
  def test_structure_and_unit_shapes(self, rule, granularity):
    tx = SCALE_BY[rule](1e-3, granularity=granularity)
    state = tx.init(PARAMS)
    self.assertEqual(
        state._fields,
        ("count",) + STATS[rule] + ("applied", "direction_state"))
    for name in STATS[rule]:
      stat = getattr(state, name)
      self.assertIsNone(stat["frozen"])
      self.assertEqual(_flat_shapes(stat), UNIT_SHAPES[granularity])
    _, new_state = tx.update(_grads(PARAMS), state)
    chex.assert_trees_all_equal_shapes_and_dtypes(state, new_state)
    self.assertEqual(_flat_shapes(nlr.learning_rates(new_state)), UNIT_SHAPES[granularity])
    self.assertEqual(int(new_state.count), 1)

  @parameterized.parameters("magnitude", "history", "sign")
  def test_no_shared_buffers_and_donation(self, rule):
    tx = ALIASES[rule](1e-3, granularity="neuron")
    state = tx.init(PARAMS)

    def pointers(tree):
      return [x.unsafe_buffer_pointer() for x in jax.tree.leaves(tree)]

    self.assertEqual(len(set(pointers(state))), len(pointers(state)))

    @jax.jit
    def fresh(params):
      return tx.init(params)

    state = fresh(PARAMS)
    self.assertEqual(len(set(pointers(state))), len(pointers(state)))
    step = jax.jit(tx.update, donate_argnums=(1,))
    for k in range(3):
      updates, state = step(_grads(PARAMS, k), state)
    self.assertEqual(len(set(pointers(state))), len(pointers(state)))
    chex.assert_tree_all_finite(updates)

  @parameterized.parameters("magnitude", "history", "sign")
  def test_no_retracing_over_ten_steps(self, rule):
    traces = []
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     ALIASES[rule](optax.cosine_decay_schedule(1e-3, 100),
                                   granularity="neuron"))

    @jax.jit
    def step(params, state, k):
      traces.append(1)
      updates, state = tx.update(_grads(params), state, params)
      return optax.apply_updates(params, updates), state

    params = jax.tree.map(lambda x: x, PARAMS)
    state = tx.init(params)
    for k in range(10):
      params, state = step(params, state, k)
    self.assertLen(traces, 1)


class DtypeTest(parameterized.TestCase):

  @parameterized.product(rule=("magnitude", "history", "sign"),
                         dtype=("bfloat16", "float16", "float32"))
  def test_half_params_get_float32_state(self, rule, dtype):
    params = jax.tree.map(lambda p: p.astype(dtype), PARAMS)
    tx = SCALE_BY[rule](1e-3, granularity="neuron")
    state = tx.init(params)
    updates, state = tx.update(_grads(params), state)
    for name in STATS[rule]:
      for leaf in jax.tree.leaves(getattr(state, name)):
        self.assertEqual(leaf.dtype, jnp.float32)
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
      self.assertEqual(u.dtype, p.dtype)

  @parameterized.parameters("magnitude", "history", "sign")
  def test_explicit_state_dtype(self, rule):
    tx = SCALE_BY[rule](1e-3, state_dtype=jnp.bfloat16)
    state = tx.init(PARAMS)
    updates, state = tx.update(_grads(PARAMS), state)
    for name in STATS[rule]:
      for leaf in jax.tree.leaves(getattr(state, name)):
        self.assertEqual(leaf.dtype, jnp.bfloat16)
    for leaf in jax.tree.leaves(updates):
      self.assertEqual(leaf.dtype, jnp.float32)

  def test_bf16_matches_float32_statistics(self):
    """bf16 gradients, float32 statistics: rates equal the float32 run fed the
    same (bf16-rounded) gradients."""
    g32 = jax.tree.map(lambda g: g.astype(jnp.bfloat16).astype(jnp.float32),
                       _grads(PARAMS))
    g16 = jax.tree.map(lambda g: g.astype(jnp.bfloat16), g32)
    tx = nlr.grad_history_lr(1e-3, granularity="neuron")
    _, s32 = tx.update(g32, tx.init(PARAMS))
    _, s16 = tx.update(g16, tx.init(jax.tree.map(lambda p: p.astype(jnp.bfloat16), PARAMS)))
    chex.assert_trees_all_close(nlr.learning_rates(s16), nlr.learning_rates(s32), rtol=1e-6)


class ValidationTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("negative_lr", dict(learning_rate=-1e-3), "learning_rate"),
      ("nan_lr", dict(learning_rate=math.nan), "learning_rate"),
      ("negative_min", dict(learning_rate=1e-3, min_lr=-1.0), "min_lr"),
      ("min_above_max", dict(learning_rate=1e-3, min_lr=0.5, max_lr=0.1),
       r"min_lr.*max_lr"),
      ("granularity", dict(learning_rate=1e-3, granularity="layer"),
       r"granularity must be one of \('element', 'neuron', 'tensor', 'global'\)"),
  )
  def test_shared_arguments(self, kwargs, message):
    for alias in ALIASES.values():
      with self.assertRaisesRegex(ValueError, message):
        alias(**kwargs)

  @parameterized.named_parameters(
      ("alpha", nlr.grad_magnitude_lr, dict(alpha=-0.1), r"alpha must lie in \[0, inf\]"),
      ("beta_one", nlr.grad_history_lr, dict(beta=1.0), r"beta must lie in \[0, 1\)"),
      ("beta_neg", nlr.sign_consistency_lr, dict(beta=-0.1), r"beta must lie in \[0, 1\)"),
      ("sign_beta", nlr.sign_consistency_lr, dict(sign_beta=1.5), r"sign_beta must lie in \[0, 1\)"),
      ("eps", nlr.grad_history_lr, dict(eps=0.0), r"eps must lie in \(0, inf\]"),
  )
  def test_rule_arguments(self, alias, kwargs, message):
    with self.assertRaisesRegex(ValueError, message):
      alias(1e-3, **kwargs)

  def test_direction_type(self):
    with self.assertRaisesRegex(TypeError, "direction must be an optax"):
      nlr.grad_history_lr(1e-3, direction="adam")

  def test_traced_values_are_not_checked(self):
    # Under inject_hyperparams the values are arrays; they pass through.
    tx = optax.inject_hyperparams(nlr.grad_history_lr)(learning_rate=1e-3, beta=0.5)
    tx.update(_grads(PARAMS), tx.init(PARAMS))

  def test_valid_edge_values(self):
    nlr.grad_history_lr(0.0, beta=0.0, min_lr=0.0, max_lr=math.inf)
    nlr.grad_magnitude_lr(1e-3, alpha=0.0, min_lr=0.1, max_lr=0.1)
    nlr.grad_history_lr(np.float32(1e-3), beta=np.float64(0.5))
    with self.assertRaisesRegex(ValueError, "learning_rate"):
      nlr.grad_history_lr(np.float32(-1.0))
