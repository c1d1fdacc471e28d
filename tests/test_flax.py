"""Flax NNX and linen training loops with every strategy."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import parameterized
from flax import linen, nnx
from flax.training import train_state

import optax_neuronlr as nlr
from tests.conftest import ALIASES

X = jnp.asarray(np.random.default_rng(0).normal(size=(16, 5)), jnp.float32)
Y = jnp.asarray(np.random.default_rng(1).normal(size=(16, 2)), jnp.float32)


class MLP(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.l1 = nnx.Linear(5, 8, rngs=rngs)
    self.l2 = nnx.Linear(8, 2, rngs=rngs)

  def __call__(self, x):
    return self.l2(jax.nn.relu(self.l1(x)))


def _loss(model, x, y):
  return jnp.mean((model(x) - y) ** 2)


class FlaxTest(parameterized.TestCase):

  @parameterized.product(rule=sorted(ALIASES), granularity=("element", "neuron"))
  def test_nnx_optimizer_matches_plain_optax(self, rule, granularity):
    tx = ALIASES[rule](1e-2, granularity=granularity, max_lr=0.1)
    model = MLP(nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
      loss, grads = nnx.value_and_grad(_loss)(model, x, y)
      optimizer.update(model, grads)
      return loss

    # The same steps with plain optax on the split state.
    plain_params = jax.tree.map(lambda v: v, params)
    plain_state = tx.init(plain_params)

    def plain_loss(p):
      return _loss(nnx.merge(graphdef, p), X, Y)

    losses = []
    for _ in range(5):
      losses.append(float(step(model, optimizer, X, Y)))
      grads = jax.grad(plain_loss)(plain_params)
      updates, plain_state = tx.update(grads, plain_state, plain_params)
      plain_params = optax.apply_updates(plain_params, updates)

    self.assertLess(losses[-1], losses[0])
    _, trained = nnx.split(model, nnx.Param)
    chex.assert_trees_all_close(
        jax.tree.leaves(trained), jax.tree.leaves(plain_params), rtol=1e-5, atol=1e-7)
    rates = nlr.learning_rates(optimizer.opt_state)
    want = nlr.learning_rates(plain_state)
    chex.assert_trees_all_close(jax.tree.leaves(rates), jax.tree.leaves(want), rtol=1e-5)
    if granularity == "neuron":
      self.assertEqual(rates["l1"]["kernel"].shape, (8,))
    self.assertIn("l1/kernel/frac_at_max_lr", nlr.rate_summary(optimizer.opt_state))

  @parameterized.parameters(*sorted(ALIASES))
  def test_linen_train_state(self, rule):
    model = linen.Sequential([linen.Dense(8), linen.relu, linen.Dense(2)])
    params = model.init(jax.random.key(0), X)["params"]
    state = train_state.TrainState.create(
        apply_fn=model.apply, params=params,
        tx=ALIASES[rule](1e-2, granularity="neuron", max_lr=0.1))

    @jax.jit
    def step(state):
      def loss(p):
        return jnp.mean((state.apply_fn({"params": p}, X) - Y) ** 2)
      value, grads = jax.value_and_grad(loss)(state.params)
      return state.apply_gradients(grads=grads), value

    losses = []
    for _ in range(5):
      state, value = step(state)
      losses.append(float(value))
    self.assertLess(losses[-1], losses[0])
    rates = nlr.learning_rates(state.opt_state)
    self.assertEqual(rates["layers_0"]["kernel"].shape, (8,))


# ---------------------------------------------------------------------------
# Every public optimizer of the registry, in both Flax APIs.

from tests import registry  # noqa: E402


@parameterized.parameters(*[(e.name,) for e in registry.ENTRIES])
class EveryOptimizerTest(parameterized.TestCase):

  def test_nnx_optimizer_inside_nnx_jit(self, name):
    entry = registry.BY_NAME[name]
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, entry.make(), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
      loss, grads = nnx.value_and_grad(_loss)(model, x, y)
      optimizer.update(model, grads, **entry.extra(loss))
      return loss

    losses = [float(step(model, optimizer, X, Y)) for _ in range(4)]
    self.assertTrue(np.all(np.isfinite(losses)))
    self.assertNotEqual(losses[0], losses[-1])
    if entry.per_unit:
      rates = jax.tree.leaves(nlr.learning_rates(optimizer.opt_state))
      self.assertTrue(rates and all(bool(jnp.all(jnp.isfinite(r))) for r in rates))

  def test_linen_train_state(self, name):
    entry = registry.BY_NAME[name]
    model = linen.Sequential([linen.Dense(8), linen.relu, linen.Dense(2)])
    state = train_state.TrainState.create(
        apply_fn=model.apply, params=model.init(jax.random.key(0), X)["params"],
        tx=entry.make())

    @jax.jit
    def step(state):
      def loss(p):
        return jnp.mean((state.apply_fn({"params": p}, X) - Y) ** 2)
      value, grads = jax.value_and_grad(loss)(state.params)
      if not entry.needs_value:
        return state.apply_gradients(grads=grads), value
      # TrainState.apply_gradients passes no extra args: call tx.update.
      updates, opt_state = state.tx.update(grads, state.opt_state, state.params,
                                           **entry.extra(value))
      return state.replace(step=state.step + 1, opt_state=opt_state,
                           params=optax.apply_updates(state.params, updates)), value

    values = []
    for _ in range(4):
      state, value = step(state)
      values.append(float(value))
    self.assertTrue(np.all(np.isfinite(values)))
    self.assertNotEqual(values[0], values[-1])
