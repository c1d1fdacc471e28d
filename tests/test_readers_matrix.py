"""Every reader on every optimizer of the package, under every optax wrapper.

For each optimizer, the rates read from its plain state are checked against
values worked out here from the schedules and the gradients (Muon's and
AdamW's scheduled rates, Adam-mini's and SCALE's per-block rates, the group
rates of ``param_groups``, layer-wise multipliers). Each wrapper must then
give the same rates on the leaves the optimizer governs (``None`` on a masked
leaf, another optimizer's rate on a partitioned one, the rate times the
multiplier under ``scale_by_leaf``), and every reader (``learning_rates``,
``learning_rates_by_state``, ``leaf_rates``, ``rate_summary``,
``RateRecorder``) must see what ``learning_rates`` sees.

Runs eagerly on a three-leaf tree, two updates per case (the second shows the
schedule's step-1 value), one Newton-Schulz iteration: each primitive is
compiled once for the whole matrix.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_neuronlr as nlr
from optax_neuronlr._src.readers import leaf_rates

PARAMS = {"mlp": {"kernel": jnp.ones((4, 6)), "bias": jnp.zeros(6)},
          "head": {"kernel": jnp.ones((6, 3))}}
GRADS = jax.tree.map(
    lambda p: jnp.sin(jnp.arange(p.size, dtype=p.dtype).reshape(p.shape) + 1.0), PARAMS)
STEPS = 2  # the state after update 2 reports the rate of step 1
SCHED = optax.linear_schedule(0.02, 0.01, 4)
ADAM_SCHED = optax.linear_schedule(1e-3, 5e-4, 4)
LR, ADAM_LR = float(SCHED(STEPS - 1)), float(ADAM_SCHED(STEPS - 1))
PATHS = ("head/kernel", "mlp/bias", "mlp/kernel")


def _get(tree, path):
  for key in path.split("/"):
    tree = tree[key]
  return tree


def _flat(tree):
  """``{path: array or None}`` of a params-shaped tree of rates."""
  return {p: _get(tree, p) for p in PATHS}


# --------------------------------------------------------------------------
# The optimizers, as factories with named arguments (inject_hyperparams binds
# them), and the rates each must report after STEPS updates.


def pg_adam(learning_rate=1e-3):
  return nlr.param_groups(optax.adam, [{"params": "mlp", "learning_rate": 0.01},
                                       {"name": "base"}], rest="base",
                          learning_rate=learning_rate, allow_empty=True)


def pg_muon(learning_rate=0.02):
  return nlr.param_groups(nlr.muon, [{"params": "mlp", "learning_rate": 0.05},
                                     {"name": "base"}], rest="base",
                          learning_rate=learning_rate, ns_steps=1, allow_empty=True)


def layerwise(learning_rate=0.1):
  return optax.chain(
      optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate, momentum=0.9),
      nlr.scale_by_leaf(nlr.layerwise_multipliers(PARAMS, 0.5)))


OPTIMIZERS = {
    "muon": (nlr.muon, {"learning_rate": SCHED, "adam_learning_rate": ADAM_SCHED,
                        "ns_steps": 1}),
    "normuon": (nlr.normuon, {"learning_rate": SCHED, "adam_learning_rate": ADAM_SCHED,
                              "ns_steps": 1}),
    "adam_mini": (nlr.adam_mini, {"learning_rate": SCHED}),
    "scale_sgd": (nlr.scale_sgd, {"learning_rate": SCHED, "adam_learning_rate": ADAM_SCHED}),
    "grad_history": (nlr.grad_history_lr, {"learning_rate": SCHED, "granularity": "neuron"}),
    "sign_consistency": (nlr.sign_consistency_lr, {"learning_rate": SCHED,
                                                   "granularity": "tensor"}),
    "hypergradient": (nlr.sgd_hd, {"learning_rate": 0.01, "hyper_lr": 1e-3,
                                   "granularity": "neuron"}),
    "param_groups_adam": (pg_adam, {}),
    "param_groups_muon": (pg_muon, {}),
    "layerwise": (layerwise, {}),
}


def _rms_rate(lr, g, eps):
  """SCALE's per-neuron rate: lr / max(RMS over the fan-in, eps)."""
  return lr / np.maximum(np.sqrt(np.mean(np.square(g), axis=0)), eps)


def _check_values(name, rates):
  """The plain optimizer's rates after STEPS updates, worked out by hand."""
  g = {p: np.asarray(_get(GRADS, p)) for p in PATHS}
  got = {p: None if r is None else np.asarray(r) for p, r in _flat(rates).items()}
  close = functools.partial(np.testing.assert_allclose, rtol=1e-5)
  if name == "muon":  # Muon's rate on the hidden kernel, AdamW's elsewhere
    close(got["mlp/kernel"], LR)
    close(got["mlp/bias"], ADAM_LR)
    close(got["head/kernel"], ADAM_LR)
  elif name == "normuon":
    close(got["mlp/bias"], ADAM_LR)
    close(got["head/kernel"], ADAM_LR)
    assert got["mlp/kernel"].shape == (6,)  # one per output neuron
    assert np.all(got["mlp/kernel"] > 0)
  elif name == "adam_mini":  # same gradient twice: v_hat = mean of g^2 per block
    close(got["mlp/kernel"], LR / (np.sqrt(np.mean(g["mlp/kernel"] ** 2, 0)) + 1e-8))
    close(got["mlp/bias"], LR / (np.abs(g["mlp/bias"]) + 1e-8))
  elif name == "scale_sgd":
    close(got["mlp/kernel"], _rms_rate(LR, g["mlp/kernel"], 1e-8))
    m = (1 - 0.9 ** 2) * g["head/kernel"]  # the head's momentum after two steps
    close(got["head/kernel"], _rms_rate(LR, m, 1e-8))
    close(got["mlp/bias"], ADAM_LR / (np.abs(g["mlp/bias"]) + 1e-8))
  elif name in ("grad_history", "hypergradient"):
    assert got["mlp/kernel"].shape == (6,) and got["head/kernel"].shape == (3,)
  elif name == "sign_consistency":
    assert all(got[p].shape == () for p in PATHS)
  elif name == "param_groups_adam":
    close(got["mlp/kernel"], 0.01)
    close(got["mlp/bias"], 0.01)
    close(got["head/kernel"], 1e-3)
  elif name == "param_groups_muon":  # a group's Muon and AdamW take its rate
    close(got["mlp/kernel"], 0.05)
    close(got["mlp/bias"], 0.05)
    close(got["head/kernel"], 0.02)
  elif name == "layerwise":  # modules "head" (layer 0) and "mlp" (layer 1)
    close(got["head/kernel"], 0.1)
    close(got["mlp/kernel"], 0.05)
    close(got["mlp/bias"], 0.05)
  for p in PATHS:
    assert got[p] is not None and np.all(np.isfinite(got[p])), (name, p)


# --------------------------------------------------------------------------
# The wrappers: (build, steps per update, expected rates from the plain ones).

HEAD_MASK = {"mlp": {"kernel": True, "bias": True}, "head": {"kernel": False}}
MULTIPLIERS = {"mlp": 0.5, "head": 2.0}
SGD_RATE = 0.3


def _labels(params):
  return jax.tree_util.tree_map_with_path(
      lambda p, _: "other" if jax.tree_util.keystr(p).startswith("['head']") else "tx",
      params)


WRAPPERS = {
    "plain": lambda f, kw: f(**kw),
    "inject_hyperparams": lambda f, kw: optax.inject_hyperparams(f)(**kw),
    "multi_steps": lambda f, kw: optax.MultiSteps(f(**kw), every_k_schedule=2),
    "chain": lambda f, kw: optax.chain(optax.clip_by_global_norm(1e6), f(**kw)),
    "partition": lambda f, kw: optax.partition(
        {"tx": f(**kw),
         "other": optax.inject_hyperparams(optax.sgd)(learning_rate=SGD_RATE, momentum=0.9)},
        _labels),
    "masked": lambda f, kw: optax.masked(f(**kw), HEAD_MASK),
    "apply_if_finite": lambda f, kw: optax.apply_if_finite(f(**kw), 3),
    "scale_by_leaf": lambda f, kw: optax.chain(f(**kw), nlr.scale_by_leaf(MULTIPLIERS)),
}


def _expected(wrapper, plain):
  out = dict(plain)
  if wrapper == "partition":
    out["head/kernel"] = np.asarray(SGD_RATE)
  elif wrapper == "masked":
    out["head/kernel"] = None
  elif wrapper == "scale_by_leaf":
    out = {p: r * MULTIPLIERS[p.split("/")[0]] for p, r in out.items()}
  return out


# Wrappers whose update runs the inner one under lax.cond: their state is
# built from the plain state (what their update keeps there), checked against
# the structure of their own init; test_muon_under_multi_steps_for_real runs one.
GRAFTED = {"multi_steps": "inner_opt_state", "apply_if_finite": "inner_state"}


@functools.cache
def _state(name, wrapper):
  factory, kwargs = OPTIMIZERS[name]
  tx = WRAPPERS[wrapper](factory, kwargs)
  state = tx.init(PARAMS)
  if wrapper in GRAFTED:
    grafted = state._replace(**{GRAFTED[wrapper]: _state(name, "plain")})
    assert jax.tree.structure(grafted) == jax.tree.structure(state)
    return grafted
  params = PARAMS
  for _ in range(STEPS):
    updates, state = tx.update(GRADS, state, params)
    params = optax.apply_updates(params, updates)
  return state


@functools.cache
def _plain_rates(name):
  return {p: None if r is None else np.asarray(r)
          for p, r in _flat(nlr.learning_rates(_state(name, "plain"))).items()}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_plain_rates_have_the_applied_values(name):
  _check_values(name, nlr.learning_rates(_state(name, "plain")))


def _assert_same(got, want, what):
  assert set(got) == set(want), what
  for p in want:
    if want[p] is None:
      assert got[p] is None, f"{what}: {p} should be ungoverned, got {got[p]}"
    else:
      assert got[p] is not None, f"{what}: no rate for {p}"
      np.testing.assert_allclose(np.asarray(got[p]), want[p], rtol=1e-5,
                                 err_msg=f"{what}: {p}")


@pytest.mark.filterwarnings("ignore:scale_sgd found no output head")  # head masked
@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_reader_sees_the_rates(name, wrapper):
  state = _state(name, wrapper)
  want = _expected(wrapper, _plain_rates(name))
  what = f"{name} under {wrapper}"

  # learning_rates: params-shaped, each leaf its applied rate.
  rates = nlr.learning_rates(state)
  assert jax.tree.structure(rates, is_leaf=lambda x: x is None) == jax.tree.structure(
      jax.tree.map(lambda _: 0, PARAMS))
  _assert_same(_flat(rates), want, f"learning_rates, {what}")

  # learning_rates_by_state: the same leaves, each in exactly one tree.
  by_state = nlr.learning_rates_by_state(state)
  merged = {p: None for p in PATHS}
  for tree in by_state.values():
    for p, r in _flat(tree).items():
      if r is not None:
        assert merged[p] is None, f"{what}: {p} in two states of {sorted(by_state)}"
        merged[p] = r
  _assert_same(merged, want, f"learning_rates_by_state, {what}")

  # leaf_rates and rate_summary: one entry per governed leaf, the same values.
  governed = {p for p in PATHS if want[p] is not None}
  found = leaf_rates(state)
  assert set(found) == governed, what
  summary = nlr.rate_summary(state)
  assert {k.rsplit("/", 1)[0] for k in summary} == governed, what
  for p in governed:
    r = np.asarray(want[p])
    np.testing.assert_allclose(summary[f"{p}/min"], r.min(), rtol=1e-5, err_msg=what)
    np.testing.assert_allclose(summary[f"{p}/max"], r.max(), rtol=1e-5, err_msg=what)
    np.testing.assert_allclose(summary[f"{p}/mean"], r.mean(), rtol=1e-5, err_msg=what)

  # RateRecorder: the same summary and per-unit rates (computed eagerly here:
  # record() jits the same compute, test_recorder_jitted_on_muon).
  recorder = nlr.RateRecorder(leaves=".*")
  recorder.add(0, recorder.compute(state))
  assert set(recorder.paths) == governed, what
  history = recorder.summaries()
  assert set(history) == set(summary), what
  for key, value in summary.items():
    np.testing.assert_allclose(history[key][0], value, rtol=1e-6, err_msg=key)
  for p in governed:
    np.testing.assert_allclose(recorder.rates(p)[0], want[p], rtol=1e-5, err_msg=what)


def test_muon_under_multi_steps_for_real():
  """MultiSteps' own update (jitted): the rates of the last inner step."""
  tx = optax.MultiSteps(nlr.muon(SCHED, adam_learning_rate=ADAM_SCHED, ns_steps=1), 2)
  state = tx.init(PARAMS)
  update = jax.jit(tx.update)
  for _ in range(2 * STEPS):
    _, state = update(GRADS, state, PARAMS)
  _assert_same(_flat(nlr.learning_rates(state)), _plain_rates("muon"), "muon, MultiSteps")
  assert len(nlr.rate_summary(state)) == 6 * len(PATHS)


def test_recorder_jitted_on_muon():
  recorder = nlr.RateRecorder(leaves="mlp")
  state = _state("muon", "inject_hyperparams")
  for step in range(2):
    recorder.record(step, state)
  np.testing.assert_allclose(recorder.rates("mlp/kernel"), [LR, LR], rtol=1e-6)
  np.testing.assert_allclose(recorder.rates("mlp/bias"), [ADAM_LR, ADAM_LR], rtol=1e-6)
  np.testing.assert_allclose(recorder.summaries()["head/kernel/max"], [ADAM_LR] * 2,
                             rtol=1e-6)


def test_logging_loop_switched_from_normuon_to_muon():
  """The same logging code runs on both, and reports the same leaves."""
  keys = {}
  for name in ("normuon", "muon"):
    summary = nlr.rate_summary(_state(name, "plain"))
    keys[name] = {k.rsplit("/", 1)[0] for k in summary}
  assert keys["muon"] == keys["normuon"] == set(PATHS)


def test_the_rate_follows_the_schedule_step_by_step():
  tx = nlr.muon(SCHED, adam_learning_rate=ADAM_SCHED, ns_steps=1)
  state = tx.init(PARAMS)
  rates = nlr.learning_rates(state)  # before the first update: the rate of step 0
  np.testing.assert_allclose(rates["mlp"]["kernel"], SCHED(0))
  for step in range(3):
    _, state = tx.update(GRADS, state, PARAMS)
    rates = nlr.learning_rates(state)
    np.testing.assert_allclose(rates["mlp"]["kernel"], SCHED(step), rtol=1e-6)
    np.testing.assert_allclose(rates["head"]["kernel"], ADAM_SCHED(step), rtol=1e-6)


def test_readers_of_param_groups_of_optax_adam_agree():
  """learning_rates reads the group rates; the other readers read the same."""
  state = _state("param_groups_adam", "plain")
  assert nlr.rate_summary(state)["mlp/kernel/median"] == pytest.approx(0.01)
  assert len(nlr.learning_rates_by_state(state)) == 2
  recorder = nlr.RateRecorder(leaves="head")
  recorder.record(0, state)
  assert recorder.rates("head/kernel")[0] == pytest.approx(1e-3)


# --------------------------------------------------------------------------
# The recorded rate: a state that behaves like optax's.


def test_tree_set_of_the_injected_rate_drives_update_and_readers():
  tx = optax.inject_hyperparams(nlr.muon)(learning_rate=0.02, ns_steps=1)
  state = tx.init(PARAMS)
  state = optax.tree_utils.tree_set(state, learning_rate=0.5)
  _, state = tx.update(GRADS, state, PARAMS)
  rates = nlr.learning_rates(state)
  np.testing.assert_allclose(rates["mlp"]["kernel"], 0.5)
  np.testing.assert_allclose(rates["head"]["kernel"], 0.5)  # adam_learning_rate=None
  # The record is not a hyperparameter: tree_get finds only the injected one.
  np.testing.assert_allclose(optax.tree_utils.tree_get(state, "learning_rate"), 0.5)


def test_record_is_not_params_shaped_for_tree_map_params():
  tx = nlr.muon(SCHED, ns_steps=1)
  state = tx.init(PARAMS)
  mapped = optax.tree_utils.tree_map_params(tx, lambda v: v + 1.0, state)
  np.testing.assert_allclose(nlr.learning_rates(mapped)["mlp"]["kernel"], SCHED(0))
  assert optax.tree_utils.tree_get(state, "learning_rate") is None


def test_record_learning_rate_alone():
  sched = optax.exponential_decay(0.1, 1, 0.5)
  tx = optax.chain(optax.inject_hyperparams(optax.adam)(learning_rate=0.1),
                   nlr.record_learning_rate(sched))
  state = tx.init(PARAMS)
  updates, state = jax.jit(tx.update)(GRADS, state, PARAMS)
  assert isinstance(state[1], nlr.RecordLearningRateState)
  np.testing.assert_allclose(state[1].applied_lr, 0.1)
  _, state = tx.update(GRADS, state, PARAMS)
  np.testing.assert_allclose(state[1].applied_lr, 0.05)
  assert state[1].applied_lr.dtype == jnp.result_type(float)
  assert not state[1].applied_lr.weak_type and not tx.init(PARAMS)[1].applied_lr.weak_type
  plain = optax.adam(0.1)
  ref, _ = plain.update(GRADS, plain.init(PARAMS), PARAMS)  # identity on the updates
  np.testing.assert_allclose(updates["mlp"]["kernel"], ref["mlp"]["kernel"], rtol=1e-4)
  with pytest.raises(ValueError, match="learning_rate"):
    nlr.record_learning_rate(-1.0)


def _without_records(tree):
  """A 0.3 muon state: the same, without the recorded rates."""
  if isinstance(tree, tuple) and not hasattr(tree, "_fields"):
    return tuple(_without_records(x) for x in tree
                 if not isinstance(x, nlr.RecordLearningRateState))
  if hasattr(tree, "_fields"):
    return type(tree)(*(_without_records(x) for x in tree))
  if isinstance(tree, dict):
    return {k: _without_records(v) for k, v in tree.items()}
  return tree


def test_a_state_saved_without_the_records_is_rebuilt_whole():
  tx = nlr.muon(0.02, ns_steps=1)
  state = _state_after(tx, 1)
  old = _without_records(state)
  assert not any(isinstance(x, nlr.RecordLearningRateState) for x in jax.tree.leaves(
      old, is_leaf=lambda x: isinstance(x, nlr.RecordLearningRateState)))
  new = nlr.rebuild_state(tx, old, PARAMS)
  for a, b in zip(jax.tree.leaves(_without_records(new)), jax.tree.leaves(old)):
    np.testing.assert_array_equal(a, b)  # every statistic kept
  np.testing.assert_allclose(nlr.learning_rates(new)["mlp"]["kernel"], 0.02)


def _state_after(tx, steps):
  state = tx.init(PARAMS)
  for _ in range(steps):
    _, state = tx.update(GRADS, state, PARAMS)
  return state


def test_nnx_optimizer_with_muon_inside_and_outside_jit():
  nnx = pytest.importorskip("flax.nnx")

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.fc1 = nnx.Linear(4, 8, rngs=rngs)
      self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
      return self.head(jax.nn.relu(self.fc1(x)))

  model = Model(nnx.Rngs(0))
  hidden = lambda p: jax.tree.map(lambda x: jnp.shape(x) == (4, 8), p)
  opt = nnx.Optimizer(model, nlr.muon(SCHED, adam_learning_rate=ADAM_SCHED, ns_steps=1,
                                      hidden=hidden), wrt=nnx.Param)
  x = jnp.ones((2, 4))

  @nnx.jit
  def step(model, opt):
    opt.update(model, nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model))
    return nlr.rate_summary(opt.opt_state)

  for _ in range(STEPS):
    summary = step(model, opt)
  np.testing.assert_allclose(summary["fc1/kernel/max"], LR, rtol=1e-6)
  np.testing.assert_allclose(summary["head/kernel/max"], ADAM_LR, rtol=1e-6)
  rates = nlr.learning_rates(opt.opt_state)
  np.testing.assert_allclose(rates["fc1"]["kernel"], LR, rtol=1e-6)
  np.testing.assert_allclose(rates["fc1"]["bias"], ADAM_LR, rtol=1e-6)


def test_a_bare_array_and_a_plateau_scale_beside_the_record():
  """One bare array as the params; the plateau's 0-d scale is no template."""
  w, g = jnp.ones((4, 6)), GRADS["mlp"]["kernel"]
  tx = optax.chain(optax.adam(0.1), nlr.reduce_lr_on_plateau(0.1),
                   nlr.record_learning_rate(SCHED))
  state = tx.init(w)
  _, state = tx.update(g, state, w, value=jnp.asarray(1.0))
  np.testing.assert_allclose(nlr.learning_rates(state), SCHED(0))
  assert sorted(nlr.rate_summary(state)) == sorted(
      f"/{s}" for s in ("min", "median", "max", "mean", "frac_at_min_lr", "frac_at_max_lr"))
  alone = optax.chain(nlr.reduce_lr_on_plateau(0.1), nlr.record_learning_rate(0.1))
  with pytest.raises(ValueError, match="no per-unit learning-rate state"):
    nlr.learning_rates(alone.init(w))
