"""Optimizer states that follow the model: add, drop and reset parameter groups.

The PyTorch comparison (``add_param_group`` with SGD momentum and Adam, a
cleared group state) is in ``test_parity_param_groups.py``. Here: every kept
statistic is bit for bit the old one, new ones equal a fresh ``init``, and a
run with a group added (or dropped) mid-training matches, step by step, a run
in which each group had its own optimizer all along (per-unit strategies,
where torch has no equivalent).
"""

from __future__ import annotations

import functools

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import optax_neuronlr as nlr

K = 4  # the step at which the model changes
STEPS = 9


def _params(seed=0, dtype=jnp.float32, head=False):
  k = jax.random.split(jax.random.PRNGKey(seed), 4)
  params = {
      "body": {"kernel": jax.random.normal(k[0], (4, 6), dtype),
               "bias": jnp.zeros(6, dtype)},
      "out": {"kernel": jax.random.normal(k[1], (6, 3), dtype),
              "bias": jnp.zeros(3, dtype)},
  }
  if head:
    params["head"] = {"kernel": jax.random.normal(k[2], (3, 2), dtype) * 0.5,
                      "bias": jnp.full(2, 0.1, dtype)}
  return params


def _loss(params, x):
  h = jnp.tanh(x @ params["body"]["kernel"] + params["body"]["bias"])
  out = h @ params["out"]["kernel"] + params["out"]["bias"]
  if "head" in params:
    out = jnp.tanh(out) @ params["head"]["kernel"] + params["head"]["bias"]
  return jnp.mean((out - 0.3) ** 2) + 0.01 * jnp.mean(out**3)


def _x(dtype=jnp.float32):
  return jax.random.normal(jax.random.PRNGKey(7), (8, 4), dtype)


@functools.lru_cache(maxsize=None)
def _step(tx):
  def step(params, state, x):
    grads = jax.grad(_loss)(params, x)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return jax.jit(step)


def _train(tx, params, state, steps, x=None):
  x = _x(jax.tree.leaves(params)[0].dtype) if x is None else x
  for _ in range(steps):
    params, state = _step(tx)(params, state, x)
  return params, state


def _with_head(params, dtype=jnp.float32):
  return {**params, "head": _params(dtype=dtype, head=True)["head"]}


def _leaves_equal(a, b):
  """Equal leaves, bit for bit, with equal dtypes (the trees may differ in
  ``optax.MaskedNode`` placeholders, which hold nothing, when one has more
  parameters)."""
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _group(state, name):
  """The injected state of a param group."""
  return state.inner_states[name].inner_state


FACTORIES = {
    "adam": (optax.adam, {}),
    "sgd_momentum": (optax.sgd, {"momentum": 0.9}),
    "grad_history_neuron": (nlr.grad_history_lr, {"granularity": "neuron", "max_lr": 0.1}),
    "sign_consistency_adam": (
        functools.partial(nlr.sign_consistency_lr, direction=optax.scale_by_adam()),
        {"granularity": "neuron", "max_lr": 0.1}),
    "adam_hd": (nlr.adam_hd, {"hyper_lr": 1e-6}),
    "grad_magnitude_global": (nlr.grad_magnitude_lr, {"granularity": "global", "max_lr": 0.1}),
}


def _groups(factory, defaults):
  return nlr.param_groups(factory, [
      {"params": "body", "name": "body", "learning_rate": 1e-2},
      {"params": "out", "name": "out", "learning_rate": 3e-2},
  ], **{"learning_rate": 1e-3, **defaults})


# ---------------------------------------------------------------------------
# Adding a group.


@pytest.mark.parametrize("name", FACTORIES)
def test_add_param_group_keeps_old_statistics_bit_for_bit(name):
  factory, defaults = FACTORIES[name]
  tx = _groups(factory, defaults)
  params, state = _train(tx, _params(), tx.init(_params()), K)
  state = nlr.set_hyperparams(state, "out", learning_rate=0.02)  # a runtime edit
  grown = _with_head(params)
  new_tx, new_state = nlr.add_param_group(tx, state, grown, {"params": "head", "lr": 0.05})
  assert isinstance(new_tx, nlr.ParamGroups) and new_tx.names == ("body", "out", "group_2")
  for group in ("body", "out"):  # every leaf: moments, rates, EMAs, counts, hyperparameters
    _leaves_equal(_group(new_state, group), _group(state, group))
  fresh = new_tx.init(grown)
  _leaves_equal(_group(new_state, "group_2"), _group(fresh, "group_2"))
  assert float(nlr.get_hyperparams(new_state)["group_2"]["learning_rate"]) == pytest.approx(0.05)
  assert float(nlr.get_hyperparams(new_state)["out"]["learning_rate"]) == pytest.approx(0.02)
  # The new state has exactly the types a fresh init has, so a jitted step
  # compiles once over the steps that follow.
  assert jax.tree.structure(new_state) == jax.tree.structure(fresh)
  for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(fresh)):
    assert (a.shape, a.dtype, a.weak_type) == (b.shape, b.dtype, b.weak_type)
  _train(new_tx, grown, new_state, 3)
  assert _step(new_tx)._cache_size() == 1


@pytest.mark.parametrize("name", FACTORIES)
def test_adding_a_group_matches_separate_uninterrupted_optimizers(name):
  """Each group's statistics evolve as if nothing happened: the run equals one
  in which the old groups and the new one had their own optimizers from the
  start (the head's from step K), fed the same gradients (float64)."""
  factory, defaults = FACTORIES[name]
  with jax.enable_x64(True):
    params = _params(dtype=jnp.float64)
    x = _x(jnp.float64)
    tx = _groups(factory, defaults)
    p, state = _train(tx, params, tx.init(params), K, x)
    grown = _with_head(p, jnp.float64)
    new_tx, state = nlr.add_param_group(tx, state, grown, {"params": "head", "lr": 0.05})
    ours, _ = _train(new_tx, grown, state, STEPS - K, x)

    # The reference: the old groups' optimizer never rebuilt; the head's own
    # optimizer started at step K.
    old_tx = _groups(factory, defaults)
    head_tx = nlr.param_groups(factory, [{"params": "head", "lr": 0.05}], **defaults)
    body = {k: params[k] for k in ("body", "out")}
    body_state = old_tx.init(body)
    for k in range(STEPS):
      if k == K:
        head = {"head": grown["head"]}
        head_state = head_tx.init(head)
      full = body if k < K else {**body, **head}
      grads = jax.grad(_loss)(full, x)
      u, body_state = old_tx.update({n: grads[n] for n in body}, body_state, body)
      body = optax.apply_updates(body, u)
      if k >= K:
        u, head_state = head_tx.update({"head": grads["head"]}, head_state, head)
        head = optax.apply_updates(head, u)
    reference = {**body, **head}
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)


def test_add_param_group_takes_defaults_and_its_own_hyperparameters():
  tx = nlr.param_groups(optax.adam, [{"params": "body"}, {"params": "out"}],
                        learning_rate=1e-3, b2=0.99)
  grown = _with_head(_params())
  _, state = nlr.add_param_group(tx, tx.init(_params()), grown,
                                 {"params": "head", "name": "head", "lr": 0.1, "b1": 0.5})
  hp = nlr.get_hyperparams(state)["head"]
  assert float(hp["learning_rate"]) == pytest.approx(0.1)
  assert float(hp["b1"]) == pytest.approx(0.5)
  assert float(hp["b2"]) == pytest.approx(0.99)  # the optimizer's default


def test_add_param_group_unfreezes_frozen_parameters():
  """A block kept frozen by ``rest="freeze"`` joins with its own rate."""
  tx = nlr.param_groups(optax.adam, [{"params": "body", "name": "body"}],
                        rest="freeze", learning_rate=1e-2)
  params = _with_head(_params())
  p, state = _train(tx, params, tx.init(params), K)
  for k in ("out", "head"):
    _leaves_equal(p[k], params[k])  # frozen so far
  new_tx, state = nlr.add_param_group(tx, state, p, {"params": "out", "lr": 0.1, "name": "out"})
  q, _ = _train(new_tx, p, state, 2)
  assert not np.allclose(q["out"]["kernel"], p["out"]["kernel"])
  _leaves_equal(q["head"], p["head"])
  assert new_tx.labels(p)["out"]["kernel"] == "out"


def test_add_param_group_keys_that_sort_between_old_ones():
  """Statistics are matched by path, not by leaf order."""
  params = {"a": jnp.ones(3), "c": {"w": jnp.ones((2, 3))}}
  tx = nlr.param_groups(optax.adam, [{"params": "a"}, {"params": "c"}], learning_rate=0.1)
  _, state = _train_quadratic(tx, params, 3)
  grown = {"a": params["a"], "b": jnp.ones(5), "c": params["c"], "d": jnp.ones(1)}
  _, new_state = nlr.add_param_group(tx, state, grown, {"params": "b|d", "name": "new"})
  for group in ("group_0", "group_1"):
    _leaves_equal(_group(new_state, group), _group(state, group))


def test_add_param_group_to_a_list_of_layers():
  params = {"layers": [{"w": jnp.ones((2, 2))}, {"w": jnp.ones((2, 3))}]}
  tx = nlr.param_groups(optax.sgd, [{"params": "layers"}], learning_rate=0.1, momentum=0.9)
  _, state = _train_quadratic(tx, params, 3)
  grown = {"layers": [*params["layers"], {"w": jnp.ones((3, 1))}]}
  new_tx, new_state = nlr.add_param_group(tx, state, grown, {"params": "layers/2", "lr": 1.0})
  _leaves_equal(_group(new_state, "group_0"), _group(state, "group_0"))
  assert new_tx.labels(grown)["layers"][2]["w"] == "group_1"


def _train_quadratic(tx, params, steps):
  state = tx.init(params)
  for _ in range(steps):
    grads = jax.tree.map(lambda p: 2 * p + 1, params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def test_add_param_group_errors():
  tx = _groups(optax.adam, {})
  params, state = _params(), tx.init(_params())
  grown = _with_head(params)
  with pytest.raises(ValueError, match=r"already in a group.*'body': \['body/kernel'\]"):
    nlr.add_param_group(tx, state, grown, {"params": "body/kernel|head", "name": "x"})
  with pytest.raises(ValueError, match="claims no parameter"):
    nlr.add_param_group(tx, state, grown, {"params": "haed"})
  with pytest.raises(ValueError, match="used twice"):
    nlr.add_param_group(tx, state, grown, {"params": "head", "name": "body"})
  with pytest.raises(ValueError, match="unknown hyperparameters"):
    nlr.add_param_group(tx, state, grown, {"params": "head", "momentum": 0.9})
  with pytest.raises(ValueError, match=r"left the model.*'out': \['out/bias'\]"):
    # out/bias left the model while a group was added: its statistics would be lost.
    nlr.add_param_group(tx, state, {**grown, "out": {"kernel": params["out"]["kernel"]}},
                        {"params": "head"})
  with pytest.raises(ValueError, match="claims no parameter"):
    nlr.add_param_group(tx, state, {"body": params["body"], "head": grown["head"]},
                        {"params": "head"})
  history = _groups(nlr.grad_history_lr, {})  # The library's factories check their numbers.
  with pytest.raises(ValueError, match="beta"):
    nlr.add_param_group(history, history.init(params), grown, {"params": "head", "beta": 1.5})
  plain = optax.multi_transform({"a": optax.adam(1e-3)}, lambda p: jax.tree.map(lambda _: "a", p))
  with pytest.raises(TypeError, match="nlr.param_groups.*rebuild_state"):
    nlr.add_param_group(plain, plain.init(params), grown, {"params": "head"})
  with pytest.raises(TypeError, match="dict"):
    nlr.add_param_group(tx, state, grown, "head")


def test_add_param_group_to_a_rest_group_keeps_its_statistics():
  """``rest=<group>`` takes the leaves no group claims; a new group for new
  parameters leaves the rest group's statistics as they were."""
  tx = nlr.param_groups(optax.adam, [{"params": "body", "name": "body"},
                                     {"params": "never", "name": "rest"}],
                        rest="rest", allow_empty=True, learning_rate=1e-2)
  params, state = _train(tx, _params(), tx.init(_params()), K)
  grown = _with_head(params)
  new_tx, new_state = nlr.add_param_group(tx, state, grown, {"params": "head", "name": "head"})
  _leaves_equal(_group(new_state, "rest"), _group(state, "rest"))
  assert new_tx.labels(grown)["out"]["kernel"] == "rest"
  with pytest.raises(ValueError, match=r"'rest': \['out/bias', 'out/kernel'\]"):
    nlr.add_param_group(tx, state, grown, {"params": "head|out", "name": "head"})


# ---------------------------------------------------------------------------
# Dropping and resetting a group.


def test_drop_param_group_releases_its_state_and_keeps_the_others():
  tx = _groups(optax.adam, {})
  grown = _with_head(_params())
  tx, state = nlr.add_param_group(tx, tx.init(_params()), grown, {"params": "head", "name": "head"})
  p, state = _train(tx, grown, state, K)
  shrunk = {k: p[k] for k in ("body", "out")}
  new_tx, new_state = nlr.drop_param_group(tx, state, shrunk, "head")
  assert new_tx.names == ("body", "out")
  assert set(new_state.inner_states) == {"body", "out"}
  nbytes = lambda s: sum(x.nbytes for x in jax.tree.leaves(s))
  assert nbytes(new_state) < nbytes(state)
  for group in ("body", "out"):
    old = _group(state, group)
    new = _group(new_state, group)
    # The same statistics, without the head's placeholders.
    _leaves_equal(jax.tree.leaves(new), jax.tree.leaves(old))
  _train(new_tx, shrunk, new_state, 2)


def test_drop_param_group_freezes_parameters_that_stay():
  tx = _groups(optax.adam, {})
  p, state = _train(tx, _params(), tx.init(_params()), K)
  new_tx, new_state = nlr.drop_param_group(tx, state, p, "out")
  assert new_tx.groups[1] == {"params": "out", "name": "out", "frozen": True}
  assert jax.tree.leaves(new_state.inner_states["out"]) == []
  _leaves_equal(_group(new_state, "body"), _group(state, "body"))
  q, _ = _train(new_tx, p, new_state, 2)
  _leaves_equal(q["out"], p["out"])
  assert not np.allclose(q["body"]["kernel"], p["body"]["kernel"])
  with pytest.raises(ValueError, match="unknown param group 'head'"):
    nlr.drop_param_group(tx, state, p, "head")
  # Unfrozen again, under its name: fresh statistics, its own rate.
  again_tx, again = nlr.add_param_group(new_tx, new_state, q, {"params": "out", "name": "out",
                                                              "lr": 0.2})
  assert again_tx.names == ("body", "out") and "frozen" not in again_tx.groups[1]
  _leaves_equal(_group(again, "out"), _group(again_tx.init(q), "out"))
  _leaves_equal(_group(again, "body"), _group(new_state, "body"))


def test_drop_the_rest_group_freezes_what_it_took():
  tx = nlr.param_groups(optax.adam, [{"params": "body", "name": "body"},
                                     {"params": "head", "name": "head"}],
                        rest="head", learning_rate=1e-2)  # "head" also takes "out"
  params = _with_head(_params())
  p, state = _train(tx, params, tx.init(params), 2)
  shrunk = {k: p[k] for k in ("body", "out")}
  new_tx, new_state = nlr.drop_param_group(tx, state, shrunk, "head")
  # What it took by ``rest`` (``out``) stays in the model: the group stays, frozen.
  assert new_tx.names == ("body", "head") and new_tx.groups[1]["frozen"]
  assert jax.tree.leaves(new_state.inner_states["head"]) == []
  q, _ = _train(new_tx, shrunk, new_state, 2)
  _leaves_equal(q["out"], p["out"])
  assert not np.allclose(q["body"]["kernel"], p["body"]["kernel"])


@pytest.mark.parametrize("name", FACTORIES)
def test_reset_param_group_is_a_fresh_start_with_the_same_hyperparameters(name):
  factory, defaults = FACTORIES[name]
  tx = _groups(factory, defaults)
  params, state = _train(tx, _params(), tx.init(_params()), K)
  state = nlr.set_hyperparams(state, "out", learning_rate=0.005)
  new_state = nlr.reset_param_group(tx, state, params, "out")
  _leaves_equal(_group(new_state, "body"), _group(state, "body"))
  old, new, fresh = _group(state, "out"), _group(new_state, "out"), _group(tx.init(params), "out")
  _leaves_equal(new.inner_state, fresh.inner_state)      # statistics restart
  _leaves_equal(new.hyperparams, old.hyperparams)        # the edited rate stays
  _leaves_equal(new.count, old.count)                    # schedules go on
  # The group then trains like a fresh optimizer with those hyperparameters.
  q, _ = _train(tx, params, new_state, 1)
  solo = nlr.param_groups(factory, [{"params": "out", "lr": 0.005}], **defaults)
  only_out = {"out": params["out"]}
  grads = jax.grad(_loss)(params, _x())
  u, _ = solo.update({"out": grads["out"]}, solo.init(only_out), only_out)
  expected = optax.apply_updates(only_out, u)
  for a, b in zip(jax.tree.leaves(q["out"]), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_reset_a_plain_multi_transform_label():
  """optax issue #1371: reset one partition of any ``optax.multi_transform``,
  also inside a chain, and a nested group by ``"outer/inner"``."""
  labels = nlr.path_labels({"body": "slow", "out": "fast"})
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.multi_transform({"slow": optax.adam(1e-3), "fast": optax.sgd(0.1, 0.9)},
                                         labels))
  params, state = _train(tx, _params(), tx.init(_params()), 3)
  new = nlr.reset_param_group(tx, state, params, "fast")
  fresh = tx.init(params)
  _leaves_equal(new[1].inner_states["fast"], fresh[1].inner_states["fast"])
  _leaves_equal(new[1].inner_states["slow"], state[1].inner_states["slow"])
  with pytest.raises(ValueError, match=r"groups \['fast'\].*\['fast', 'slow'\]|'fast', 'slow'"):
    nlr.reset_param_group(tx, state, params, "fsat")

  inner = lambda learning_rate: nlr.param_groups(
      optax.adam, [{"params": ".*/kernel", "name": "w"}, {"params": ".*/bias", "name": "b"}],
      learning_rate=learning_rate)
  nested = nlr.param_groups(inner, [{"params": "body", "name": "body", "learning_rate": 1e-2},
                                    {"params": "out", "name": "out", "learning_rate": 1e-3}])
  params, state = _train(nested, _params(), nested.init(_params()), 3)
  new = nlr.reset_param_group(nested, state, params, "body/w")
  get = lambda s, outer, inner_name: _group(_group(s, outer).inner_state, inner_name)
  fresh = nested.init(params)
  _leaves_equal(get(new, "body", "w").inner_state, get(fresh, "body", "w").inner_state)
  _leaves_equal(get(new, "body", "b"), get(state, "body", "b"))
  _leaves_equal(_group(new, "out"), _group(state, "out"))


def test_reset_a_resized_head():
  """A parameter whose shape changed: an error that says to reset its group;
  with the reset, the rest is kept."""
  tx = _groups(optax.adam, {})
  params, state = _train(tx, _params(), tx.init(_params()), 2)
  resized = {**params, "out": {"kernel": jnp.ones((6, 5)), "bias": jnp.zeros(5)}}
  with pytest.raises(ValueError, match=r"\['out'\]\['bias'\] has shape \(3,\).*\(5,\).*reset"):
    nlr.rebuild_state(tx, state, resized)
  new = nlr.rebuild_state(tx, state, resized, reset="out")
  _leaves_equal(_group(new, "body"), _group(state, "body"))
  assert _group(new, "out").inner_state[0].mu["out"]["kernel"].shape == (6, 5)


# ---------------------------------------------------------------------------
# rebuild_state on any optax optimizer.


def test_rebuild_state_for_a_grown_multi_transform():
  def make(with_head):
    rules = {"body|out": "main", **({"head": "head"} if with_head else {})}
    transforms = {"main": optax.adamw(1e-3), **({"head": optax.lion(1e-4)} if with_head else {})}
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.multi_transform(transforms, nlr.path_labels(rules)))

  tx = make(False)
  params, state = _train(tx, _params(), tx.init(_params()), 3)
  grown = _with_head(params)
  new_tx = make(True)
  new = nlr.rebuild_state(new_tx, state, grown, strict=True)
  main_old = jax.tree.leaves(state[1].inner_states["main"])
  main_new = jax.tree.leaves(new[1].inner_states["main"])
  _leaves_equal(main_new, main_old)
  _leaves_equal(new[1].inner_states["head"], new_tx.init(grown)[1].inner_states["head"])
  _train(new_tx, grown, new, 2)

  # A plain optimizer (no groups) over a grown tree keeps the old leaves' moments.
  adam = optax.adam(1e-3)
  params, state = _train(adam, _params(), adam.init(_params()), 3)
  new = nlr.rebuild_state(adam, state, grown)
  _leaves_equal(new[0].mu["body"], state[0].mu["body"])
  _leaves_equal(new[0].count, state[0].count)
  _leaves_equal(new[0].mu["head"], jax.tree.map(jnp.zeros_like, grown["head"]))


def test_rebuild_state_releases_what_has_no_place_unless_strict():
  tx = _groups(optax.adam, {})
  params, state = _train(tx, _params(), tx.init(_params()), 2)
  shrunk = {**params}
  del shrunk["out"]
  small = nlr.param_groups(optax.adam, [{"params": "body", "name": "body"}], learning_rate=1e-2)
  new = nlr.rebuild_state(small, state, shrunk)
  _leaves_equal(jax.tree.leaves(_group(new, "body")), jax.tree.leaves(_group(state, "body")))
  with pytest.raises(ValueError, match=r"groups that the new optimizer lacks: \['out'\]"):
    nlr.rebuild_state(small, state, shrunk, strict=True)
  with pytest.raises(ValueError, match="nothing of the old state.*from_state_dict"):
    # A checkpoint restored without a target: a dict, not the optimizer's state.
    nlr.rebuild_state(tx, flax.serialization.to_state_dict(state), params)
  with pytest.raises(TypeError, match="strict"):
    nlr.rebuild_state(small, state, shrunk, strict="yes")
  with pytest.raises(TypeError, match="reset"):
    nlr.rebuild_state(tx, state, params, reset=[1])
  # A group whose transform changed class starts fresh statistics; its
  # injected values are kept where the names agree (the state wins, as in
  # PyTorch's load_state_dict).
  changed = nlr.param_groups(optax.sgd, [{"params": "body", "name": "body"},
                                         {"params": "out", "name": "out"}],
                             learning_rate=0.1, momentum=0.9)
  new = nlr.rebuild_state(changed, state, params)
  fresh = changed.init(params)
  for group in ("body", "out"):
    _leaves_equal(_group(new, group).inner_state, _group(fresh, group).inner_state)
    _leaves_equal(_group(new, group).count, _group(state, group).count)
    _leaves_equal(_group(new, group).hyperparams["learning_rate"],
                  _group(state, group).hyperparams["learning_rate"])
    _leaves_equal(_group(new, group).hyperparams["momentum"],
                  _group(fresh, group).hyperparams["momentum"])


def test_rebuild_state_casts_kept_scalars_to_the_new_dtype():
  with jax.enable_x64(True):
    tx = _groups(optax.adam, {})
    params, state = _train(tx, _params(), tx.init(_params()), 2)
    grown = _with_head(params, jnp.float64)
    new_tx, new = nlr.add_param_group(tx, state, grown, {"params": "head", "lr": 0.1})
    fresh = new_tx.init(grown)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(fresh)):
      assert a.dtype == b.dtype


# ---------------------------------------------------------------------------
# Readers and checkpoints.


def test_learning_rates_and_layout_after_adding_a_group():
  tx = _groups(nlr.grad_history_lr, {"granularity": "neuron"})
  params, state = _train(tx, _params(), tx.init(_params()), 2)
  grown = _with_head(params)
  new_tx, state = nlr.add_param_group(tx, state, grown, {"params": "head", "name": "head",
                                                         "lr": 0.5})
  _, state = _train(new_tx, grown, state, 1)
  rates = nlr.learning_rates(state)
  assert jax.tree.map(jnp.shape, rates) == {
      "body": {"bias": (6,), "kernel": (6,)}, "out": {"bias": (3,), "kernel": (3,)},
      "head": {"bias": (2,), "kernel": (2,)}}
  layout = nlr.optimizer_layout(state, grown)
  rows = {r.path: r for r in layout.rows}
  assert rows["head/kernel"].group == "head"
  assert rows["head/kernel"].base_rate == pytest.approx(0.5)
  assert rows["body/kernel"].group == "body"


def test_checkpoint_before_and_after_the_change(tmp_path):
  """A state saved before the change is restored with the old optimizer and
  then grown; one saved after is restored with the new optimizer; both go on
  bit for bit as the run that never stopped."""
  tx = _groups(nlr.grad_history_lr, {"granularity": "neuron", "max_lr": 0.1})
  params, state = _train(tx, _params(), tx.init(_params()), K)
  grown = _with_head(params)
  group = {"params": "head", "name": "head", "lr": 0.05}
  new_tx, new_state = nlr.add_param_group(tx, state, grown, group)
  straight = _train(new_tx, grown, new_state, 3)

  # Saved before the change (flax.serialization, through msgpack bytes).
  saved = flax.serialization.to_bytes(state)
  restored = flax.serialization.from_bytes(tx.init(params), saved)
  tx2, state2 = nlr.add_param_group(tx, restored, grown, group)
  _leaves_equal(_train(tx2, grown, state2, 3), straight)

  # Saved after the change (orbax), restored into the new optimizer's shape.
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "ckpt", new_state)
  ckpt.wait_until_finished()
  back = ckpt.restore(tmp_path / "ckpt", jax.eval_shape(new_tx.init, grown))
  _leaves_equal(_train(new_tx, grown, back, 3), straight)


# ---------------------------------------------------------------------------
# Flax NNX.


class _Net(nnx.Module):

  def __init__(self, rngs):
    self.body = nnx.Linear(4, 6, rngs=rngs)
    self.out = nnx.Linear(6, 3, rngs=rngs)
    self.head = nnx.data(None)

  def __call__(self, x):
    y = self.out(jnp.tanh(self.body(x)))
    return y if self.head is None else self.head(jnp.tanh(y))


@nnx.jit
def _nnx_step(model, optimizer, x):
  loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - 0.3) ** 2))(model)
  optimizer.update(model, grads)
  return loss


def test_nnx_optimizer_follows_a_model_that_gains_a_head():
  model = _Net(nnx.Rngs(0))
  tx = nlr.param_groups(nlr.grad_history_lr, [{"params": "body", "name": "body"},
                                             {"params": "out", "name": "out"}],
                        learning_rate=1e-2, granularity="neuron", max_lr=0.1)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x = _x()
  for _ in range(K):
    _nnx_step(model, optimizer, x)
  before = nnx.as_pure(optimizer.opt_state)
  model.head = nnx.Linear(3, 2, rngs=nnx.Rngs(1))
  returned = nlr.rebuild_nnx_optimizer(
      optimizer, model, optimizer.tx.with_group({"params": "head", "name": "head", "lr": 0.05}))
  assert returned is optimizer
  after = nnx.as_pure(optimizer.opt_state)
  for group in ("body", "out"):
    _leaves_equal(jax.tree.leaves(after.inner_states[group]),
                  jax.tree.leaves(before.inner_states[group]))
  assert int(optimizer.step[...]) == K
  assert optimizer.tx.names == ("body", "out", "head")

  # The same steps, from the same point, with the optax functions.
  params = nnx.as_pure(nnx.state(model, nnx.Param))
  state = nlr.rebuild_state(optimizer.tx, before, params)
  for _ in range(3):
    _nnx_step(model, optimizer, x)
    grads = jax.grad(lambda p: jnp.mean((nnx.merge(nnx.graphdef(model), p)(x) - 0.3) ** 2))(
        params)
    updates, state = optimizer.tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  for a, b in zip(jax.tree.leaves(nnx.as_pure(nnx.state(model, nnx.Param))),
                  jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert "head" in nlr.learning_rates(optimizer.opt_state)

  # Reset a group in place; then drop the head from the model.
  nlr.rebuild_nnx_optimizer(optimizer, model, reset="head")
  reset = nnx.as_pure(optimizer.opt_state).inner_states["head"].inner_state
  fresh = optimizer.tx.init(nnx.as_pure(nnx.state(model, nnx.Param))).inner_states["head"]
  _leaves_equal(reset.inner_state, fresh.inner_state.inner_state)
  model.head = None
  kept = nnx.as_pure(optimizer.opt_state).inner_states["body"]
  nlr.rebuild_nnx_optimizer(optimizer, model, optimizer.tx.without_group("head"))
  _leaves_equal(jax.tree.leaves(nnx.as_pure(optimizer.opt_state).inner_states["body"]),
                jax.tree.leaves(kept))
  _nnx_step(model, optimizer, x)
  with pytest.raises(TypeError, match="nnx.Optimizer"):
    nlr.rebuild_nnx_optimizer(tx, model)


# ---------------------------------------------------------------------------
# ParamGroups itself.


def test_param_groups_keeps_its_arguments_and_frozen_groups():
  tx = nlr.param_groups(optax.sgd, [{"params": "body", "lr": 0.1},
                                    {"params": "out", "frozen": True, "name": "o"}],
                        momentum=0.9)
  assert tx.names == ("group_0", "o") and tx.defaults == {"momentum": 0.9}
  assert tx.optimizer is optax.sgd and tx.rest == "error"
  params = _params()
  q, state = _train(tx, params, tx.init(params), 2)
  _leaves_equal(q["out"], params["out"])
  assert jax.tree.leaves(state.inner_states["o"]) == []
  with pytest.raises(ValueError, match="frozen and sets"):
    nlr.param_groups(optax.sgd, [{"params": "out", "frozen": True, "lr": 0.1}],
                     learning_rate=0.1)
  with pytest.raises(TypeError, match="frozen"):
    nlr.param_groups(optax.sgd, [{"params": "out", "frozen": "yes"}], learning_rate=0.1)
  with pytest.raises(ValueError, match="unknown param group"):
    tx.without_group("nope")
  assert tx.with_group({"params": "head", "lr": 0.1}).names == ("group_0", "o", "group_2")
