"""The state readers as a new user meets them: rate_summary keys that stay put
whatever wraps the rule, learning_rates on param groups of plain optax
optimizers, the plateau's current rate, colliding paths, zero-size leaves,
optimizer_layout's labels, checkpoints restored with and without a target."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_neuronlr as nlr

PARAMS = {"Dense_0": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)},
          "head": {"kernel": jnp.ones((3, 2))}}
STATS = ("min", "median", "max", "mean", "frac_at_min_lr", "frac_at_max_lr")


def _grads(params, scale=0.1):
  return jax.tree.map(lambda x: scale * jnp.arange(1, x.size + 1, dtype=x.dtype).reshape(x.shape),
                      params)


def _stepped(tx, params=PARAMS, steps=2):
  state = tx.init(params)
  for _ in range(steps):
    _, state = tx.update(_grads(params), state, params)
  return state


def _keys(paths):
  return {f"{p}/{s}" for p in paths for s in STATS}


ALL = ("Dense_0/bias", "Dense_0/kernel", "head/kernel")
RULE = lambda **kw: nlr.grad_history_lr(1e-3, granularity="neuron", **kw)

WRAPPED = {
    "alone": lambda: RULE(),
    "chain": lambda: optax.chain(optax.clip_by_global_norm(1.0), RULE()),
    "inject_hyperparams": lambda: optax.inject_hyperparams(nlr.grad_history_lr)(
        learning_rate=1e-3),
    "param_groups": lambda: nlr.param_groups(nlr.grad_history_lr, [
        {"params": "Dense_0", "learning_rate": 1e-3},
        {"params": "head", "learning_rate": 1e-2}]),
    "param_groups_nested": lambda: optax.chain(
        optax.clip_by_global_norm(1.0),
        nlr.param_groups(nlr.grad_history_lr, [
            {"params": "Dense_0/kernel", "learning_rate": 1e-3},
            {"params": "Dense_0/bias"}, {"params": "head"}], learning_rate=1e-2)),
    "multi_transform": lambda: optax.multi_transform(
        {"a": RULE(), "b": nlr.sign_consistency_lr(1e-3)},
        {"Dense_0": {"kernel": "a", "bias": "b"}, "head": {"kernel": "a"}}),
    "apply_if_finite": lambda: optax.apply_if_finite(RULE(), 3),
}


@pytest.mark.parametrize("name", sorted(WRAPPED))
def test_rate_summary_keys_are_parameter_paths_whatever_wraps_the_rule(name):
  summary = nlr.rate_summary(_stepped(WRAPPED[name]()))
  assert set(summary) == _keys(ALL)


@pytest.mark.parametrize("make", [nlr.scale_sgd, nlr.normuon, nlr.adam_mini],
                         ids=lambda f: f.__name__)
def test_rate_summary_keys_under_the_package_partitions(make):
  params = {"embed": {"embedding": jnp.ones((10, 4))}, **PARAMS}
  summary = nlr.rate_summary(_stepped(make(1e-3), params))
  paths = {k.rsplit("/", 1)[0] for k in summary}
  # Each key is a parameter path and a statistic: no state position in it.
  assert paths <= {"embed/embedding", *ALL}, sorted(paths)
  assert all("inner_state" not in k and "group" not in k for k in summary)


def test_adding_a_group_renames_no_series():
  one = nlr.param_groups(nlr.grad_history_lr, [{"params": ".*"}], learning_rate=1e-3)
  two = nlr.param_groups(nlr.grad_history_lr, [
      {"params": "Dense_0", "learning_rate": 1e-3}, {"params": "head"}], learning_rate=1e-2)
  assert set(nlr.rate_summary(_stepped(one))) == set(nlr.rate_summary(_stepped(two)))


def test_a_parameter_governed_twice_gets_numbered_keys_in_state_order():
  tx = optax.chain(nlr.scale_by_grad_history_lr(1e-3), nlr.sign_consistency_lr(1e-2))
  state = _stepped(tx)
  summary = nlr.rate_summary(state)
  assert set(summary) == _keys(ALL) | _keys(p + "#1" for p in ALL)
  by_state = nlr.learning_rates_by_state(state)
  first, second = (by_state[k] for k in sorted(by_state))
  np.testing.assert_allclose(summary["head/kernel/max"], jnp.max(first["head"]["kernel"]))
  np.testing.assert_allclose(summary["head/kernel#1/max"], jnp.max(second["head"]["kernel"]))


def test_rate_summary_runs_under_jit_with_the_same_keys():
  state = _stepped(WRAPPED["param_groups"]())
  assert set(jax.jit(nlr.rate_summary)(state)) == set(nlr.rate_summary(state))


def test_colliding_paths_raise_instead_of_dropping_a_leaf():
  params = {"a/b": jnp.ones(2), "a": {"b": jnp.ones(3)}}
  state = nlr.grad_history_lr(1e-3).init(params)
  for reader in (nlr.rate_summary, lambda s: nlr.optimizer_layout(s, params)):
    with pytest.raises(ValueError, match=r"same '/'-joined path: 'a/b'.*rename"):
      reader(state)
  # learning_rates keeps the tree's own structure: both leaves are there.
  rates = nlr.learning_rates(state)
  assert rates["a/b"].shape == (2,) and rates["a"]["b"].shape == (3,)


@pytest.mark.parametrize("granularity", ["element", "neuron", "tensor"])
def test_zero_size_leaves_give_no_nan(granularity):
  params = {"empty": jnp.ones((0,)), "wide": jnp.ones((3, 0)), "w": jnp.ones((2, 2))}
  tx = nlr.grad_history_lr(1e-3, granularity=granularity)
  state = _stepped(tx, params)
  for summary in (nlr.rate_summary(state), jax.jit(nlr.rate_summary)(state)):
    assert not any(np.isnan(float(v)) for v in summary.values()), summary
    assert _keys(["w"]) <= set(summary)
    for path, rates in (("empty", nlr.learning_rates(state)["empty"]),
                        ("wide", nlr.learning_rates(state)["wide"])):
      if rates.size == 0:  # No units, no statistics.
        assert not any(k.startswith(path + "/") for k in summary)


# --- learning_rates on param groups of plain optax optimizers ---------------


def test_learning_rates_gives_each_leaf_its_groups_injected_rate():
  tx = nlr.param_groups(optax.adam, [
      {"params": "Dense_0", "learning_rate": 1e-3},
      {"params": "head", "learning_rate": 1e-2}])
  state = _stepped(tx)
  rates = nlr.learning_rates(state)
  assert jax.tree.structure(rates) == jax.tree.structure(PARAMS)
  np.testing.assert_allclose(rates["Dense_0"]["kernel"], 1e-3)
  np.testing.assert_allclose(rates["Dense_0"]["bias"], 1e-3)
  np.testing.assert_allclose(rates["head"]["kernel"], 1e-2)
  # PyTorch: param_groups[1]["lr"] *= 0.5.
  state = nlr.set_hyperparams(state, group="group_1", learning_rate=lambda v: v * 0.5)
  np.testing.assert_allclose(nlr.learning_rates(state)["head"]["kernel"], 5e-3)
  np.testing.assert_allclose(jax.jit(nlr.learning_rates)(state)["head"]["kernel"], 5e-3)


def test_learning_rates_follows_an_injected_schedule():
  tx = optax.inject_hyperparams(optax.adam)(learning_rate=optax.linear_schedule(1.0, 0.0, 10))
  state = _stepped(tx, steps=3)
  # The rate of the last update (the third: count 2).
  np.testing.assert_allclose(nlr.learning_rates(state)["head"]["kernel"], 0.8, rtol=1e-6)


def test_learning_rates_merges_rules_and_injected_groups():
  tx = optax.multi_transform(
      {"rule": RULE(), "adam": optax.inject_hyperparams(optax.adam)(learning_rate=3e-4)},
      {"Dense_0": {"kernel": "rule", "bias": "adam"}, "head": {"kernel": "adam"}})
  rates = nlr.learning_rates(_stepped(tx))
  assert rates["Dense_0"]["kernel"].shape == (3,)  # per neuron, from the rule
  np.testing.assert_allclose(rates["Dense_0"]["bias"], 3e-4)
  np.testing.assert_allclose(rates["head"]["kernel"], 3e-4)


def test_learning_rates_without_any_rate_is_an_error():
  with pytest.raises(ValueError, match="no per-unit"):
    nlr.learning_rates(optax.adam(1e-3).init(PARAMS))


def test_plateau_learning_rate_is_pytorchs_get_last_lr():
  tx = optax.chain(optax.scale_by_adam(),
                   nlr.reduce_lr_on_plateau(0.1, factor=0.5, patience=0))
  state = tx.init(PARAMS)
  np.testing.assert_allclose(nlr.plateau_learning_rate(state), 0.1)
  seen = []
  for loss in (1.0, 2.0, 3.0, 4.0):  # never better after the first
    _, state = tx.update(_grads(PARAMS), state, PARAMS, value=loss)
    seen.append(float(nlr.plateau_learning_rate(state)))
  # torch: scheduler.step(2.0) is the first bad value (patience 0) and halves
  # the rate at once; get_last_lr() shows it right after that step.
  np.testing.assert_allclose(seen, [0.1, 0.05, 0.025, 0.0125], rtol=1e-6)
  with pytest.raises(ValueError, match="no reduce_lr_on_plateau"):
    nlr.plateau_learning_rate(optax.adam(1e-3).init(PARAMS))
  two = optax.multi_transform(
      {"a": nlr.reduce_lr_on_plateau(0.1), "b": nlr.reduce_lr_on_plateau(0.2)},
      {"Dense_0": {"kernel": "a", "bias": "a"}, "head": {"kernel": "b"}})
  assert sorted(float(v) for v in nlr.plateau_learning_rate(two.init(PARAMS)).values()) == \
      pytest.approx([0.1, 0.2])


# --- optimizer_layout labels -------------------------------------------------


@pytest.mark.parametrize("make", [nlr.scale_sgd, nlr.muon, nlr.normuon],
                         ids=lambda f: f.__name__)
def test_optimizer_layout_labels_are_function_names(make):
  params = {"embed": {"embedding": jnp.ones((10, 4))}, **PARAMS}
  rows = nlr.optimizer_layout(make(1e-3).init(params), params).rows
  assert {r.path for r in rows} == {"embed/embedding", *ALL}
  for r in rows:
    assert r.strategy != "stateless" and not r.strategy.endswith("State"), r
    assert r.strategy == r.strategy.lower(), r
  by_path = {r.path: r for r in rows}
  # 1-D leaves get AdamW in all three: labelled as Adam, not adam_mini.
  assert by_path["Dense_0/bias"].strategy in ("adam", "scale_by_adam")


# --- conventions --------------------------------------------------------------


# scale_by_rule takes the rule first; scale_by_leaf multipliers; scale_by_muon
# is a direction without a rate, as optax.contrib.scale_by_muon.
@pytest.mark.parametrize("name", sorted(n for n in nlr.__all__ if n.startswith("scale_by_")
                                        and n not in ("scale_by_rule", "scale_by_leaf",
                                                      "scale_by_muon")))
def test_every_scale_by_takes_learning_rate_first_and_required(name):
  parameters = list(inspect.signature(getattr(nlr, name)).parameters.values())
  assert parameters[0].name == "learning_rate", name
  assert parameters[0].default is inspect.Parameter.empty, name


def test_scale_by_adam_mini_and_neuron_norm_still_take_learning_rate_by_keyword():
  params = {"w": jnp.ones((3, 2))}
  for tx in (nlr.scale_by_adam_mini(learning_rate=0.5, blocks="element"),
             nlr.scale_by_neuron_norm(learning_rate=0.5)):
    state = tx.init(params)
    _, state = tx.update(params, state, params)
    assert nlr.learning_rates(state)["w"] is not None


def test_everything_else_group():
  """PyTorch's ``[{"params": head, "lr": 1e-2}, {"params": rest}]``."""
  tx = nlr.param_groups(optax.adam, [
      {"params": "head", "learning_rate": 1e-2},
      {"name": "base"}], rest="base", learning_rate=1e-3)
  rates = nlr.learning_rates(tx.init(PARAMS))
  np.testing.assert_allclose(rates["head"]["kernel"], 1e-2)
  np.testing.assert_allclose(rates["Dense_0"]["kernel"], 1e-3)
  # ".*" claims every leaf by its full path, so a named group before it ends
  # up empty; the error says how to spell "everything else".
  greedy = nlr.param_groups(optax.adam, [
      {"params": "head", "learning_rate": 1e-2}, {"params": ".*"}], learning_rate=1e-3)
  with pytest.raises(ValueError, match="rest="):
    greedy.init(PARAMS)


def test_learning_rates_on_sgd_groups_needs_a_per_leaf_state():
  groups = [{"params": "Dense_0", "learning_rate": 0.1}, {"params": "head", "learning_rate": 0.2}]
  with_momentum = nlr.param_groups(optax.sgd, groups, momentum=0.9)
  rates = nlr.learning_rates(with_momentum.init(PARAMS))
  np.testing.assert_allclose(rates["head"]["kernel"], 0.2)
  # Plain SGD keeps nothing per leaf: no tree to put the group rates on.
  with pytest.raises(ValueError, match="no per-unit"):
    nlr.learning_rates(nlr.param_groups(optax.sgd, groups).init(PARAMS))
  assert nlr.get_hyperparams(nlr.param_groups(optax.sgd, groups).init(PARAMS))
