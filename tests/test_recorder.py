"""RateRecorder: values equal to rate_summary / learning_rates, no host syncs."""

from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_neuronlr as nlr
from optax_neuronlr._src import recorder as recorder_lib
from optax_neuronlr._src.recorder import RateRecord
from optax_neuronlr._src.recorder import RateRecorder

SIZES = (4, 8, 3)


def mlp_params() -> dict:
  rng = np.random.default_rng(0)
  return {
      f"Dense_{i}": {
          "kernel": jnp.asarray(rng.normal(size=(a, b)), jnp.float32),
          "bias": jnp.zeros((b,), jnp.float32),
      }
      for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:]))
  }


def fake_grads(params: dict, k: int) -> dict:
  """Deterministic gradients whose signs flip for some units."""
  return jax.tree.map(
      lambda p: jnp.sin(jnp.arange(p.size, dtype=p.dtype).reshape(p.shape) + 0.7 * k),
      params,
  )


def run(tx, steps: int, recorder: RateRecorder | None = None):
  """``steps`` updates; returns the state after each."""
  params = mlp_params()
  state = tx.init(params)
  update = jax.jit(tx.update)
  states = []
  for k in range(steps):
    updates, state = update(fake_grads(params, k), state, params)
    params = optax.apply_updates(params, updates)
    states.append(state)
    if recorder is not None:
      recorder.record(k, state)
  return states


TX = nlr.sign_consistency_lr(1e-2, granularity="neuron", max_lr=0.05)


def test_values_equal_rate_summary_and_learning_rates():
  recorder = RateRecorder(leaves=r".*kernel")
  states = run(TX, 6, recorder)
  summaries = recorder.summaries()
  np.testing.assert_array_equal(recorder.steps, np.arange(6))
  assert recorder.paths == ("Dense_0/kernel", "Dense_1/kernel")
  assert recorder.keys == tuple(nlr.rate_summary(states[0]))
  summary_fn, rates_fn = jax.jit(nlr.rate_summary), jax.jit(nlr.learning_rates)
  for i, state in enumerate(states):
    for key, value in summary_fn(state).items():
      np.testing.assert_allclose(summaries[key][i], value, rtol=1e-6)
    rates = rates_fn(state)
    for layer in ("Dense_0", "Dense_1"):
      np.testing.assert_allclose(
          recorder.rates(f"{layer}/kernel")[i], rates[layer]["kernel"], rtol=1e-6)
  assert recorder.rates("Dense_0/kernel").shape == (6, 8)
  np.testing.assert_allclose(recorder.bounds("Dense_1/kernel"), [[1e-6, 0.05]] * 6,
                             rtol=1e-6)


def test_recording_does_not_sync_and_compiles_once(monkeypatch):
  traces = []
  summary_fn = recorder_lib.inspect_lib.rate_summary

  def counting_summary(state):
    traces.append(1)
    return summary_fn(state)

  monkeypatch.setattr(recorder_lib.inspect_lib, "rate_summary", counting_summary)
  recorder = RateRecorder(leaves=r"Dense_0/.*")
  params = mlp_params()
  state = TX.init(params)
  update = jax.jit(TX.update)
  for k in range(20):
    _, state = update(fake_grads(params, k), state, params)
    record = recorder.record(k, state)
    assert isinstance(record, RateRecord)
    for leaf in jax.tree.leaves(record):
      assert isinstance(leaf, jax.Array)  # Device arrays, nothing fetched.
  assert not recorder._steps  # pylint: disable=protected-access
  assert len(recorder._pending) == 20  # pylint: disable=protected-access
  assert len(traces) == 1
  assert recorder._compute_jit._cache_size() == 1  # pylint: disable=protected-access
  assert len(recorder) == 20
  assert recorder.summaries()["Dense_0/kernel/max"].shape == (20,)
  assert not recorder._pending  # pylint: disable=protected-access


def test_inside_a_jitted_step_with_add():
  params = mlp_params()
  recorder = RateRecorder(leaves=r".*/bias")
  plain = RateRecorder()  # Summaries returned by the step as a dict.
  direct = RateRecorder(leaves=r".*/bias")

  @jax.jit
  def step(params, state, k):
    grads = fake_grads(params, k)
    updates, state = TX.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    return params, state, recorder.compute(state), nlr.rate_summary(state)

  state = TX.init(params)
  for k in range(5):
    params, state, record, summary = step(params, state, k)
    recorder.add(k, record)
    plain.add(k, summary)
    direct.record(k, state)
  chex.assert_trees_all_close(recorder.summaries(), direct.summaries())
  chex.assert_trees_all_close(plain.summaries(), direct.summaries())
  assert set(plain.keys) == set(direct.keys)
  for path in direct.paths:
    np.testing.assert_array_equal(recorder.rates(path), direct.rates(path))


def test_every_and_reads_in_between():
  recorder = RateRecorder(leaves=".*", every=3)
  params = mlp_params()
  state = TX.init(params)
  update = jax.jit(TX.update)
  for k in range(10):
    _, state = update(fake_grads(params, k), state, params)
    got = recorder.record(k, state)
    assert (got is None) == (k % 3 != 0)
    if k == 4:
      np.testing.assert_array_equal(recorder.steps, [0, 3])
  np.testing.assert_array_equal(recorder.steps, [0, 3, 6, 9])
  assert recorder.rates("Dense_1/bias").shape == (4, 3)
  assert recorder.summaries()["Dense_1/bias/mean"].shape == (4,)
  recorder.clear()
  assert len(recorder) == 0 and recorder.summaries() == {}


def test_leaves_selection_and_errors():
  summaries_only = RateRecorder()
  run(TX, 2, summaries_only)
  assert summaries_only.paths == ()
  with pytest.raises(KeyError, match="leaves="):
    summaries_only.rates("Dense_0/kernel")
  rates_only = RateRecorder(leaves="Dense_1/bias", summary=False)
  run(TX, 2, rates_only)
  assert rates_only.paths == ("Dense_1/bias",) and rates_only.summaries() == {}
  assert RateRecorder(leaves="bias").compute(TX.init(mlp_params())).rates == {}
  with pytest.raises(ValueError, match="every"):
    RateRecorder(every=0)
  with pytest.raises(TypeError, match="leaves"):
    RateRecorder(leaves=3)  # type: ignore[arg-type]



def test_numpy_arguments_and_argument_errors():
  """``every=np.int64(5)`` (e.g. from a config array) is an int."""
  recorder = RateRecorder(leaves=re.compile(r".*kernel"), every=np.int64(2),
                          summary=np.bool_(True))
  assert recorder.every == 2 and isinstance(recorder.every, int)
  run(TX, 5, recorder)
  np.testing.assert_array_equal(recorder.steps, [0, 2, 4])
  assert recorder.paths == ("Dense_0/kernel", "Dense_1/kernel")
  assert RateRecorder(every=jnp.array(3)).every == 3
  assert RateRecorder(every=2.0).every == 2
  for bad in (0, -1, 2.5, np.int64(0)):
    with pytest.raises(ValueError, match="every must be an int >= 1"):
      RateRecorder(every=bad)
  for bad in ("5", None, True):
    with pytest.raises(TypeError, match="every must be an int >= 1"):
      RateRecorder(every=bad)
  for bad in ("yes", 1, None):
    with pytest.raises(TypeError, match="summary must be True or False"):
      RateRecorder(summary=bad)
  with pytest.raises(ValueError, match="leaves: invalid regular expression"):
    RateRecorder(leaves="(")
  with pytest.raises(TypeError, match="leaves must be a regular expression"):
    RateRecorder(leaves=["a"])


def test_leaves_follow_the_path_rule():
  """``leaves="Dense_0"`` selects the leaves below it, as everywhere else."""
  recorder = RateRecorder(leaves="Dense_0")
  run(TX, 2, recorder)
  assert recorder.paths == ("Dense_0/bias", "Dense_0/kernel")

def test_one_recorder_per_state_structure():
  recorder = RateRecorder(leaves=".*")
  run(TX, 1, recorder)
  other = {"w": jnp.ones((2, 2))}
  state = nlr.grad_history_lr(1e-2).init(other)
  with pytest.raises(ValueError, match="one recorder per"):
    recorder.record(1, state)


def test_nested_strategies_use_rate_summary_keys():
  tx = optax.multi_transform(
      {"a": nlr.grad_history_lr(1e-2, granularity="neuron"),
       "b": nlr.sign_consistency_lr(1e-2, granularity="tensor")},
      {"Dense_0": "a", "Dense_1": "b"},
  )
  recorder = RateRecorder(leaves=r".*kernel")
  states = run(tx, 3, recorder)
  want = nlr.rate_summary(states[-1])
  assert set(recorder.keys) == set(want)
  for key, value in want.items():
    np.testing.assert_allclose(recorder.summaries()[key][-1], value, rtol=1e-6)
  assert len(recorder.paths) == 2
  assert all(p.endswith("kernel") for p in recorder.paths)
  shapes = sorted(recorder.rates(p).shape for p in recorder.paths)
  assert shapes == [(3,), (3, 8)]
