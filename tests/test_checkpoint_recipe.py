"""README's checkpoint recipe: orbax and flax.serialization restore a state
bit for bit into a target; without a target, learning_rates says so."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_neuronlr as nlr

serialization = pytest.importorskip("flax.serialization")
ocp = pytest.importorskip("orbax.checkpoint")

PARAMS = {"Dense_0": {"kernel": jnp.linspace(-1, 1, 12).reshape(4, 3), "bias": jnp.ones(3)}}
TX = nlr.param_groups(nlr.sign_consistency_lr, [
    {"params": "Dense_0/kernel", "learning_rate": 1e-3},
    {"params": "Dense_0/bias", "learning_rate": 1e-2}],
    granularity="neuron", bias_correction=True, direction=optax.scale_by_adam())


def _train(params, state, steps):
  step = jax.jit(lambda p, s: _step(p, s))
  for _ in range(steps):
    params, state = step(params, state)
  return params, state


def _step(params, state):
  grads = jax.grad(lambda p: jnp.sum(jnp.sin(p["Dense_0"]["kernel"]) ** 2)
                   + jnp.sum(p["Dense_0"]["bias"] ** 2))(params)
  updates, state = TX.update(grads, state, params)
  return optax.apply_updates(params, updates), state


def _bitwise_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))


def _straight_and_half():
  straight = _train(PARAMS, TX.init(PARAMS), 6)
  half = _train(PARAMS, TX.init(PARAMS), 3)
  return straight, half


def test_orbax_restore_with_a_target_resumes_bit_for_bit(tmp_path):
  straight, (params, state) = _straight_and_half()
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
  checkpointer.wait_until_finished()
  target = {"params": jax.eval_shape(lambda: PARAMS),
            "opt_state": jax.eval_shape(TX.init, PARAMS)}
  restored = checkpointer.restore(tmp_path / "ckpt", target)
  _bitwise_equal(restored["opt_state"], state)
  _bitwise_equal(_train(restored["params"], restored["opt_state"], 3), straight)
  _bitwise_equal(nlr.learning_rates(restored["opt_state"]), nlr.learning_rates(state))

  untargeted = checkpointer.restore(tmp_path / "ckpt")
  with pytest.raises(ValueError, match="restored from a checkpoint without a target"):
    nlr.learning_rates(untargeted["opt_state"])


def test_flax_serialization_with_a_target_resumes_bit_for_bit():
  straight, (params, state) = _straight_and_half()
  data = serialization.to_bytes({"params": params, "opt_state": state})
  target = {"params": PARAMS, "opt_state": TX.init(PARAMS)}
  restored = serialization.from_bytes(target, data)
  _bitwise_equal(restored["opt_state"], state)
  _bitwise_equal(_train(restored["params"], restored["opt_state"], 3), straight)

  untargeted = serialization.msgpack_restore(data)
  with pytest.raises(ValueError, match="restored from a checkpoint without a target"):
    nlr.learning_rates(untargeted["opt_state"])
