"""Param groups, path labels, hyperparameter edits and layer-wise multipliers.

PyTorch constructs (param groups with SGD momentum and Adam, ``lr`` edits) are
checked against torch itself, in float64.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from absl.testing import parameterized
from flax import nnx

import optax_neuronlr as nlr

STEPS = 20


def _torch_model(seed: int = 0) -> torch.nn.Sequential:
  torch.manual_seed(seed)
  return torch.nn.Sequential(
      torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3)).double()


def _to_flax(model: torch.nn.Sequential) -> dict:
  """PyTorch (out, in) weights -> Flax (in, out) kernels, keyed by layer index."""
  return {
      str(i): {"kernel": jnp.asarray(layer.weight.detach().numpy().T),
               "bias": jnp.asarray(layer.bias.detach().numpy())}
      for i, layer in enumerate(model) if isinstance(layer, torch.nn.Linear)
  }


def _data(seed: int = 1):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(16, 5)), rng.normal(size=(16, 3))


def _jax_loss(params, x, y):
  h = jax.nn.relu(x @ params["0"]["kernel"] + params["0"]["bias"])
  return jnp.mean((h @ params["2"]["kernel"] + params["2"]["bias"] - y) ** 2)


def _train_both(torch_opt_fn, tx, edit=None, steps=STEPS):
  """Trains the torch model and its JAX copy; ``edit(k, torch_opt, state)``
  may change rates between steps and returns the new JAX state."""
  model = _torch_model()
  params = _to_flax(model)
  x, y = _data()
  tx_state = tx.init(params)
  opt = torch_opt_fn(model)
  xt, yt = torch.tensor(x), torch.tensor(y)
  step = jax.jit(lambda p, s: _step(tx, p, s, x, y))
  for k in range(steps):
    if edit is not None:
      tx_state = edit(k, opt, tx_state)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(xt), yt).backward()
    opt.step()
    params, tx_state = step(params, tx_state)
  return _to_flax(model), params, tx_state


def _step(tx, params, state, x, y):
  grads = jax.grad(_jax_loss)(params, x, y)
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state


class ParamGroupsVsTorchTest(parameterized.TestCase):

  def test_sgd_momentum_groups(self):
    with jax.enable_x64(True):
      want, got, _ = _train_both(
          lambda m: torch.optim.SGD(
              [{"params": m[0].parameters(), "lr": 0.01},
               {"params": m[2].parameters(), "lr": 0.1}], momentum=0.9),
          nlr.param_groups(optax.sgd, [
              {"params": r"0/.*", "lr": 0.01},
              {"params": r"2/.*", "learning_rate": 0.1}], momentum=0.9))
      chex.assert_trees_all_close(got, want, rtol=1e-10)

  def test_adam_groups(self):
    with jax.enable_x64(True):
      want, got, _ = _train_both(
          lambda m: torch.optim.Adam(
              [{"params": m[0].parameters(), "lr": 1e-3},
               {"params": m[2].parameters(), "lr": 1e-2}]),
          nlr.param_groups(optax.adam, [
              {"params": [r"0/kernel", r"0/bias"], "name": "base", "learning_rate": 1e-3},
              {"params": lambda path, leaf: path.startswith("2/"), "name": "head",
               "learning_rate": 1e-2}]))
      chex.assert_trees_all_close(got, want, rtol=1e-9)

  def test_manual_lr_edits(self):
    """Seed 003: every 5 epochs, ``param_groups[i]['lr'] *= 0.9``."""
    def edit(k, opt, state):
      if k % 5 == 0:
        for group in opt.param_groups:
          group["lr"] *= 0.9
        state = jax.jit(lambda s: nlr.set_hyperparams(s, learning_rate=lambda v: v * 0.9))(state)
      return state

    with jax.enable_x64(True):
      want, got, state = _train_both(
          lambda m: torch.optim.Adam(
              [{"params": m[0].parameters(), "lr": 1e-2},
               {"params": m[2].parameters(), "lr": 1e-3}]),
          nlr.param_groups(optax.adam, [
              {"params": r"0/.*", "name": "a", "learning_rate": 1e-2},
              {"params": r"2/.*", "name": "b", "learning_rate": 1e-3}]),
          edit=edit)
      chex.assert_trees_all_close(got, want, rtol=1e-9)
      rates = nlr.get_hyperparams(state)
      np.testing.assert_allclose(rates["a"]["learning_rate"], 1e-2 * 0.9**4, rtol=1e-12)
      np.testing.assert_allclose(rates["b"]["learning_rate"], 1e-3 * 0.9**4, rtol=1e-12)

  def test_freeze_rest_trains_only_part(self):
    """Seed 003: ``torch.optim.Adam(model.layer.parameters())``."""
    with jax.enable_x64(True):
      model = _torch_model()
      before = _to_flax(model)
      want, got, _ = _train_both(
          lambda m: torch.optim.Adam(m[2].parameters(), lr=1e-2),
          nlr.param_groups(optax.adam, [{"params": r"2/.*"}], rest="freeze",
                           learning_rate=1e-2))
      chex.assert_trees_all_close(got, want, rtol=1e-9)
      chex.assert_trees_all_equal(got["0"], before["0"])


class GroupsTest(parameterized.TestCase):

  PARAMS = {"backbone": {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}},
            "head": {"kernel": jnp.ones((2, 1)), "bias": jnp.ones(1)}}

  def test_path_labels_first_match_and_default(self):
    # The longest selected prefix wins (issue 23: a tie is no longer the first
    # rule's, see test_path_labels_tie_is_an_error).
    labels = nlr.path_labels({r"backbone/.*/kernel": "a", r"backbone": "b"},
                             default="c")(self.PARAMS)
    self.assertEqual(labels, {"backbone": {"Dense_0": {"kernel": "a", "bias": "b"}},
                              "head": {"kernel": "c", "bias": "c"}})

  def test_path_labels_tie_is_an_error(self):
    # Two rules selecting the same longest prefix: the package's one tie rule.
    rule = nlr.path_labels({r"backbone/.*/kernel": "a", r"backbone/.*": "b"}, default="c")
    with self.assertRaisesRegex(
        ValueError, r"path_labels: leaf 'backbone/Dense_0/kernel' is selected equally "
        r"by 'backbone/\.\*/kernel' and 'backbone/\.\*'"):
      rule(self.PARAMS)
    with self.assertRaisesRegex(ValueError, r"selected equally by 'head' and 'head'"):
      nlr.path_labels([("head", "a"), ("head", "b")], default="c")(self.PARAMS)
    labels = nlr.path_labels({r"backbone": "b", r"backbone/.*/kernel": "a"},
                             default="c")(self.PARAMS)  # Order does not matter.
    self.assertEqual(labels["backbone"]["Dense_0"], {"kernel": "a", "bias": "b"})

  def test_path_labels_full_match_and_errors(self):
    with self.assertRaisesRegex(ValueError, r"no rule matches .*'head/bias', 'head/kernel'"):
      nlr.path_labels([(r"backbone/.*", "a"), (r"head/k", "b")])(self.PARAMS)
    with self.assertRaisesRegex(ValueError, r"invalid regular expression '\(unclosed'"):
      nlr.path_labels({"(unclosed": "a"})

  def test_path_labels_nnx_init_and_update_agree(self):
    class Net(nnx.Module):
      def __init__(self, rngs):
        self.body = nnx.Linear(3, 4, rngs=rngs)
        self.head = nnx.Linear(4, 2, rngs=rngs)

      def __call__(self, x):
        return self.head(jax.nn.relu(self.body(x)))

    model = Net(nnx.Rngs(0))
    seen = []
    rule = nlr.path_labels({r"body/.*": "slow", r"head/.*": "fast"})

    def recording(tree):
      seen.append(jax.tree.leaves(rule(tree)))
      return rule(tree)

    tx = optax.multi_transform({"slow": optax.sgd(0.0), "fast": optax.sgd(0.1)}, recording)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    body_before = jnp.array(model.body.kernel[...])
    grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((2, 3))) ** 2))(model)
    optimizer.update(model, grads)
    self.assertEqual(seen[0], seen[-1])
    self.assertEqual(sorted(set(seen[0])), ["fast", "slow"])
    np.testing.assert_array_equal(model.body.kernel[...], body_before)

  def test_param_groups_errors(self):
    with self.assertRaisesRegex(ValueError, r"group 'g'.*unknown hyperparameters \['momentun'\]"):
      nlr.param_groups(optax.sgd, [{"params": ".*", "name": "g", "momentun": 0.9}],
                       learning_rate=0.1)
    with self.assertRaisesRegex(ValueError, r"invalid regular expression"):
      nlr.param_groups(optax.sgd, [{"params": "[", "learning_rate": 0.1}])
    with self.assertRaisesRegex(ValueError, r"does not set \['learning_rate'\]"):
      nlr.param_groups(optax.sgd, [{"params": ".*"}])
    with self.assertRaisesRegex(ValueError, r"rest must be"):
      nlr.param_groups(optax.sgd, [{"params": ".*", "learning_rate": 0.1}], rest="nope")
    tx = nlr.param_groups(optax.sgd, [{"params": r"backbone/.*", "learning_rate": 0.1}])
    with self.assertRaisesRegex(ValueError, r"no param group claims \['head/bias', 'head/kernel'\]"):
      tx.init(self.PARAMS)
    tx = nlr.param_groups(optax.sgd, [{"params": r".*", "learning_rate": 0.1},
                                      {"params": r"head/.*", "learning_rate": 0.2}])
    with self.assertRaisesRegex(ValueError, r"more than one group.*head/bias \(group_0, group_1\)"):
      tx.init(self.PARAMS)

  def test_rest_joins_named_group_and_our_strategies(self):
    tx = nlr.param_groups(
        nlr.grad_history_lr,
        [{"params": r"backbone/.*", "name": "slow", "learning_rate": 1e-4},
         {"params": r"head/kernel", "name": "fast", "learning_rate": 1e-2}],
        rest="fast", granularity="neuron", bias_correction=True)
    state = tx.init(self.PARAMS)
    grads = jax.tree.map(jnp.ones_like, self.PARAMS)
    _, state = jax.jit(tx.update)(grads, state, self.PARAMS)
    rates = nlr.learning_rates(state)
    np.testing.assert_allclose(rates["backbone"]["Dense_0"]["kernel"], [1e-4, 1e-4], rtol=1e-5)
    np.testing.assert_allclose(rates["head"]["bias"], [1e-2], rtol=1e-5)
    hps = nlr.get_hyperparams(state)
    self.assertEqual(sorted(hps), ["fast", "slow"])
    state = nlr.set_hyperparams(state, group="slow", learning_rate=2e-4)
    _, state = jax.jit(tx.update)(grads, state, self.PARAMS)
    np.testing.assert_allclose(
        nlr.learning_rates(state)["backbone"]["Dense_0"]["kernel"], [2e-4, 2e-4], rtol=1e-5)
    with self.assertRaisesRegex(ValueError, r"unknown group 'nope'"):
      nlr.set_hyperparams(state, group="nope", learning_rate=1.0)
    with self.assertRaisesRegex(ValueError, r"unknown hyperparameters \['lr'\]"):
      nlr.set_hyperparams(state, lr=1.0)

  def test_set_hyperparams_keeps_dtype_no_retrace(self):
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    state = tx.init(self.PARAMS)
    traces = []

    @jax.jit
    def step(state):
      traces.append(1)
      return tx.update(jax.tree.map(jnp.ones_like, self.PARAMS), state)[1]

    state = step(state)
    state = nlr.set_hyperparams(state, learning_rate=1)  # a Python int
    state = step(state)
    self.assertLen(traces, 1)
    self.assertEqual(nlr.get_hyperparams(state)["default"]["learning_rate"].dtype, jnp.float32)


class GroupChecksTest(parameterized.TestCase):
  """Groups that claim nothing, pattern kinds, checked edits, nested and
  chained injected states, partials and mixed half-precision trees."""

  PARAMS = GroupsTest.PARAMS

  def test_group_claiming_nothing_is_an_error(self):
    # A typo: with rest="freeze" this froze the whole model silently.
    tx = nlr.param_groups(optax.sgd, [{"params": r"backbone/.*", "learning_rate": 0.1},
                                      {"params": r"haed/.*", "learning_rate": 0.2}],
                          rest="freeze")
    with self.assertRaisesRegex(
        ValueError, r"param group 1 \('group_1', params='haed/\.\*'\) claims no "
        r"parameter.*'backbone/Dense_0/bias'.*allow_empty=True"):
      tx.init(self.PARAMS)
    # A group whose every leaf goes to a more specific group.
    tx = nlr.param_groups(optax.sgd, [{"params": "head", "name": "h", "learning_rate": 0.1},
                                      {"params": "head/.*", "name": "k", "learning_rate": 0.2}],
                          rest="freeze")
    with self.assertRaisesRegex(ValueError, r"param group 0 \('h', params='head'\) \(a more "
                                r"specific group takes every leaf it selects\)"):
      tx.init(self.PARAMS)

  def test_groups_select_sub_trees_by_the_path_rule(self):
    """``"head"`` (a PyTorch-style sub-module) selects every leaf below it; the
    longest matching prefix wins; equal prefixes are an error."""
    tx = nlr.param_groups(optax.sgd, [
        {"params": "backbone", "learning_rate": 0.1},
        {"params": "backbone/Dense_0/bias", "learning_rate": 0.3},
        {"params": "head", "learning_rate": 0.2}])
    updates, _ = tx.update(self.PARAMS, tx.init(self.PARAMS))
    np.testing.assert_allclose(updates["backbone"]["Dense_0"]["kernel"], -0.1)
    np.testing.assert_allclose(updates["backbone"]["Dense_0"]["bias"], -0.3)
    np.testing.assert_allclose(updates["head"]["kernel"], -0.2)
    tx = nlr.param_groups(optax.sgd, [{"params": "head", "learning_rate": 0.1},
                                      {"params": "he.d", "learning_rate": 0.2}], rest="freeze")
    with self.assertRaisesRegex(ValueError, r"more than one group.*head/bias \(group_0, group_1\)"):
      tx.init(self.PARAMS)
    labels = nlr.path_labels({"backbone": "slow", "backbone/Dense_0/bias": "fast"},
                             default="rest")(self.PARAMS)
    self.assertEqual(labels["backbone"]["Dense_0"], {"kernel": "slow", "bias": "fast"})
    self.assertEqual(labels["head"]["kernel"], "rest")

  def test_allow_empty(self):
    tx = nlr.param_groups(optax.sgd, [{"params": r".*", "learning_rate": 0.1},
                                      {"params": r"haed/.*", "learning_rate": 0.2}],
                          allow_empty=True)
    updates, _ = tx.update(self.PARAMS, tx.init(self.PARAMS))
    np.testing.assert_allclose(updates["head"]["kernel"], -0.1)
    with self.assertRaisesRegex(TypeError, "allow_empty must be True or False"):
      nlr.param_groups(optax.sgd, [{"params": r".*", "learning_rate": 0.1}],
                       allow_empty="yes")

  def test_group_filled_by_rest_is_not_empty(self):
    tx = nlr.param_groups(optax.sgd, [{"params": r"head/.*", "learning_rate": 0.1},
                                      {"params": [], "name": "others", "learning_rate": 0.0}],
                          rest="others")
    updates, _ = tx.update(self.PARAMS, tx.init(self.PARAMS))
    np.testing.assert_allclose(updates["backbone"]["Dense_0"]["kernel"], 0.0)

  def test_compiled_patterns(self):
    import re  # pylint: disable=g-import-not-at-top
    tx = nlr.param_groups(optax.sgd, [
        {"params": re.compile(r"backbone/.*"), "learning_rate": 0.1},
        {"params": [re.compile(r"head/kernel"), r"head/bias"], "learning_rate": 0.2}])
    updates, _ = tx.update(self.PARAMS, tx.init(self.PARAMS))
    np.testing.assert_allclose(updates["head"]["bias"], -0.2)
    labels = nlr.path_labels({re.compile(r"head/.*"): "a"}, default="b")(self.PARAMS)
    self.assertEqual(labels["head"]["kernel"], "a")

  @parameterized.parameters((3,), (None,), (2.5,), ({"a": 1},))
  def test_params_of_the_wrong_kind(self, spec):
    with self.assertRaisesRegex(
        TypeError, r"param group 0 \('group_0'\): 'params' must be a regular expression"):
      nlr.param_groups(optax.sgd, [{"params": spec, "learning_rate": 0.1}])

  def test_groups_of_the_wrong_kind(self):
    with self.assertRaisesRegex(TypeError, "groups must be a list of dicts"):
      nlr.param_groups(optax.sgd, {"params": ".*", "learning_rate": 0.1})
    with self.assertRaisesRegex(TypeError, "param group 1 must be a dict"):
      nlr.param_groups(optax.sgd, [{"params": ".*", "learning_rate": 0.1}, ".*"])
    with self.assertRaisesRegex(TypeError, "a path pattern must be a regular expression"):
      nlr.path_labels({3: "a"})

  def _history_groups(self):
    tx = nlr.param_groups(nlr.grad_history_lr, [
        {"params": r"backbone/.*", "name": "slow", "learning_rate": 1e-3},
        {"params": r"head/.*", "name": "fast", "learning_rate": 1e-2}])
    return tx, tx.init(self.PARAMS)

  def test_set_hyperparams_checks_values(self):
    _, state = self._history_groups()
    with self.assertRaisesRegex(ValueError, r"learning_rate of group 'slow'.*shape \(3,\)"):
      nlr.set_hyperparams(state, group="slow", learning_rate=jnp.ones(3))
    with self.assertRaisesRegex(ValueError, r"shape \(2,\)"):
      nlr.set_hyperparams(state, learning_rate=lambda v: v * jnp.ones(2))
    with self.assertRaisesRegex(ValueError, r"shape \(3,\)"):  # Shapes are static.
      jax.jit(lambda s, v: nlr.set_hyperparams(s, learning_rate=v))(state, jnp.ones(3))
    with self.assertRaisesRegex(ValueError, "group 'fast': min_lr must not exceed max_lr"):
      nlr.set_hyperparams(state, group="fast", min_lr=2.0)
    with self.assertRaisesRegex(ValueError, "min_lr must not exceed max_lr"):
      nlr.set_hyperparams(state, min_lr=0.5, max_lr=0.1)
    with self.assertRaisesRegex(TypeError, "learning_rate of group 'slow'"):
      nlr.set_hyperparams(state, group="slow", learning_rate="1e-3")
    with self.assertRaisesRegex(TypeError, "learning_rate"):
      nlr.set_hyperparams(state, learning_rate=None)
    state = nlr.set_hyperparams(state, min_lr=0.5, max_lr=2.0)  # Ordered: fine.
    self.assertEqual(float(nlr.get_hyperparams(state)["slow"]["max_lr"]), 2.0)
    jax.jit(lambda s: nlr.set_hyperparams(s, min_lr=0.1))(state)  # Traced: not compared.

  def test_set_hyperparams_integer_values(self):
    tx = optax.inject_hyperparams(nlr.reduce_lr_on_plateau)(learning_rate=0.1, patience=3)
    state = tx.init(self.PARAMS)
    with self.assertRaisesRegex(ValueError, "patience of group 'default' must be an int"):
      nlr.set_hyperparams(state, patience=2.5)
    state = nlr.set_hyperparams(state, patience=np.int64(5))
    self.assertEqual(int(nlr.get_hyperparams(state)["default"]["patience"]), 5)

  def test_nested_param_groups_are_visible(self):
    def inner(learning_rate):
      return nlr.param_groups(optax.sgd, [
          {"params": r"backbone/.*", "name": "body"},
          {"params": r"head/.*", "name": "top", "learning_rate": 0.2}],
          learning_rate=learning_rate)

    tx = nlr.param_groups(inner, [{"params": r".*", "name": "outer", "learning_rate": 0.1}])
    state = tx.init(self.PARAMS)
    hps = nlr.get_hyperparams(state)
    self.assertEqual(sorted(hps), ["outer", "outer/body", "outer/top"])
    self.assertAlmostEqual(float(hps["outer/top"]["learning_rate"]), 0.2)
    # The outer value would not reach the nested groups: an error, not a no-op.
    with self.assertRaisesRegex(ValueError, r"group 'outer' holds nested groups "
                                r"\['outer/body', 'outer/top'\]"):
      nlr.set_hyperparams(state, group="outer", learning_rate=1.0)
    state = nlr.set_hyperparams(state, group="outer/body", learning_rate=0.5)
    updates, state = jax.jit(tx.update)(self.PARAMS, state, self.PARAMS)
    np.testing.assert_allclose(updates["backbone"]["Dense_0"]["bias"], -0.5)
    np.testing.assert_allclose(updates["head"]["bias"], -0.2)
    state = nlr.set_hyperparams(state, learning_rate=lambda v: v * 0.5)  # Every group.
    updates, _ = jax.jit(tx.update)(self.PARAMS, state, self.PARAMS)
    np.testing.assert_allclose(updates["backbone"]["Dense_0"]["bias"], -0.25)
    np.testing.assert_allclose(updates["head"]["bias"], -0.1)

  def test_two_injected_states_in_a_chain(self):
    tx = optax.chain(optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
                     optax.inject_hyperparams(optax.scale)(step_size=2.0),
                     optax.inject_hyperparams(optax.sgd)(learning_rate=1.0))
    state = tx.init(self.PARAMS)
    hps = nlr.get_hyperparams(state)
    self.assertEqual(sorted(hps), ["0", "1", "2"])
    self.assertAlmostEqual(float(hps["2"]["learning_rate"]), 1.0)
    state = nlr.set_hyperparams(state, group="0", learning_rate=0.3)
    state = nlr.set_hyperparams(state, group="1", step_size=0.5)
    updates, _ = tx.update(self.PARAMS, state)
    np.testing.assert_allclose(updates["head"]["bias"], 0.3 * 0.5 * 1.0, rtol=1e-6)
    with self.assertRaisesRegex(ValueError, r"unknown group 'default'"):
      nlr.set_hyperparams(state, group="default", learning_rate=0.1)
    # Groups of two param_groups in one chain: named by position too.
    tx = optax.chain(
        nlr.param_groups(optax.sgd, [{"params": ".*", "name": "g", "learning_rate": 0.1}]),
        nlr.param_groups(optax.sgd, [{"params": ".*", "name": "g", "learning_rate": -1.0}]))
    hps = nlr.get_hyperparams(tx.init(self.PARAMS))
    self.assertEqual(sorted(hps), ["0/g", "1/g"])

  def test_partial_keeps_float32_hyperparameters(self):
    import functools  # pylint: disable=g-import-not-at-top
    params = {"w": jnp.ones((2, 3), jnp.bfloat16)}
    for factory in (nlr.grad_history_lr, functools.partial(nlr.grad_history_lr, beta=0.5),
                    functools.partial(functools.partial(nlr.grad_history_lr), eps=1e-8)):
      tx = nlr.param_groups(factory, [{"params": ".*", "learning_rate": 1e-3,
                                       "min_lr": 1e-6}])
      hps = nlr.get_hyperparams(tx.init(params))["group_0"]
      self.assertEqual(hps["min_lr"].dtype, jnp.float32, factory)
      self.assertEqual(float(hps["min_lr"]), np.float32(1e-6))  # Not rounded to bf16.

  @parameterized.parameters("sgd", "adam", "history")
  def test_mixed_bf16_and_f16_tree(self, name):
    params = {"a": jnp.ones((2, 3), jnp.bfloat16), "b": jnp.ones(3, jnp.float16)}
    factory = {"sgd": optax.sgd, "adam": optax.adam, "history": nlr.grad_history_lr}[name]
    tx = nlr.param_groups(factory, [{"params": ".*", "learning_rate": 1e-3}])
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(params, state, params)
    self.assertEqual(updates["a"].dtype, jnp.bfloat16)
    self.assertEqual(updates["b"].dtype, jnp.float16)
    self.assertEqual(nlr.get_hyperparams(state)["group_0"]["learning_rate"].dtype,
                     jnp.float32)


class HalfPrecisionGroupsTest(parameterized.TestCase):

  def test_optax_adam_groups_in_bfloat16_match_plain_adam(self):
    """float32 hyperparameters (bf16 rounds b2=0.999 to 1: NaN), bf16 updates
    and moments as with the plain optimizer, and no retrace."""
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), GroupsTest.PARAMS)
    grads = jax.tree.map(lambda p: p - 1.5, params)
    tx = nlr.param_groups(optax.adam, [{"params": ".*", "learning_rate": 0.2}])
    plain = optax.adam(0.2)
    traces = []

    @jax.jit
    def step(state):
      traces.append(1)
      return tx.update(grads, state, params)

    state, plain_state = tx.init(params), plain.init(params)
    for _ in range(3):
      updates, state = step(state)
      want, plain_state = plain.update(grads, plain_state, params)
      for u, w in zip(jax.tree.leaves(updates), jax.tree.leaves(want)):
        self.assertEqual(u.dtype, jnp.bfloat16)
        np.testing.assert_allclose(np.asarray(u, np.float32), np.asarray(w, np.float32),
                                   rtol=2e-2)
    self.assertLen(traces, 1)
    self.assertEqual(nlr.get_hyperparams(state)["group_0"]["b2"].dtype, jnp.float32)


class LayerwiseTest(parameterized.TestCase):

  PARAMS = {f"layers_{i}": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
            for i in (0, 1, 2, 10)}

  def test_natural_order_and_reverse(self):
    m = nlr.layerwise_multipliers(self.PARAMS, 0.5)
    self.assertEqual({k: v["kernel"] for k, v in m.items()},
                     {"layers_0": 1.0, "layers_1": 0.5, "layers_2": 0.25, "layers_10": 0.125})
    self.assertEqual(m["layers_2"]["bias"], m["layers_2"]["kernel"])
    r = nlr.layerwise_multipliers(self.PARAMS, 0.5, reverse=True)
    self.assertEqual({k: v["bias"] for k, v in r.items()},
                     {"layers_0": 0.125, "layers_1": 0.25, "layers_2": 0.5, "layers_10": 1.0})

  def test_seed_001_example2_counts_tensors(self):
    """Reference 001 Example 2: lr * factor**index over model.parameters()."""
    order = {"0/kernel": 0, "0/bias": 1, "2/kernel": 2, "2/bias": 3}
    params = _to_flax(_torch_model())
    m = nlr.layerwise_multipliers(params, 0.9, layer_of=order.__getitem__)
    self.assertEqual(m["2"]["bias"], 0.9**3)
    with jax.enable_x64(True):
      model = _torch_model()
      params = _to_flax(model)
      x, y = _data()
      tx = optax.chain(optax.sgd(0.1), nlr.scale_by_leaf(m))
      state = tx.init(params)
      for _ in range(3):
        params, state = _step(tx, params, state, x, y)
        model.zero_grad()
        torch.nn.functional.mse_loss(model(torch.tensor(x)), torch.tensor(y)).backward()
        with torch.no_grad():
          for i, p in enumerate(model.parameters()):
            p.add_(-0.1 * 0.9**i * p.grad)
      chex.assert_trees_all_close(params, _to_flax(model), rtol=1e-10)

  def test_scale_by_leaf(self):
    params = {"a": jnp.ones(2), "b": {"c": jnp.ones((2, 2))}, "n": None}
    tx = nlr.scale_by_leaf(lambda p: {"a": 2.0, "b": {"c": 0.5}, "n": None})
    updates, state = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params))
    np.testing.assert_array_equal(updates["a"], [2.0, 2.0])
    np.testing.assert_array_equal(updates["b"]["c"], jnp.full((2, 2), 0.5))
    self.assertIsInstance(state, nlr.ScaleByLeafState)
    with self.assertRaisesRegex(ValueError, "no multiplier for leaf 'b/c'"):
      nlr.scale_by_leaf({"a": 1.0}).init(params)
    with self.assertRaisesRegex(ValueError, r"factor must lie in \(0, inf\]"):
      nlr.layerwise_multipliers(params, 0.0)


  @parameterized.parameters(
      (-1.0, ValueError, r"multiplier of leaf 'b/c' must lie in \[0, inf\]"),
      (float("nan"), ValueError, r"multiplier of leaf 'b/c' must be a finite"),
      (float("inf"), ValueError, r"multiplier of leaf 'b/c' must be a finite"),
      (np.ones(2), ValueError, r"multiplier of leaf 'b/c' must be a scalar.*\(2,\)"),
      ("0.5", TypeError, r"multiplier of leaf 'b/c'"),
      (True, TypeError, r"multiplier of leaf 'b/c'"),
  )
  def test_scale_by_leaf_rejects_bad_multipliers(self, bad, exc, message):
    params = {"a": jnp.ones(2), "b": {"c": jnp.ones((2, 2))}}
    tree = {"a": 1.0, "b": {"c": bad}}
    with self.assertRaisesRegex(exc, message):
      nlr.scale_by_leaf(tree)  # At construction.
    with self.assertRaisesRegex(exc, message):
      nlr.scale_by_leaf(lambda p: tree).init(params)  # A callable's, at init.

  def test_scale_by_leaf_sub_tree_multipliers(self):
    params = {"backbone": {"a": jnp.ones(2), "b": jnp.ones(2)}, "head": {"k": jnp.ones(2)}}
    tx = nlr.scale_by_leaf({"backbone": 0.1, "backbone/b": 0.5, "he.*": 2.0})
    updates, _ = tx.update(params, tx.init(params))
    np.testing.assert_allclose(updates["backbone"]["a"], 0.1)
    np.testing.assert_allclose(updates["backbone"]["b"], 0.5)
    np.testing.assert_allclose(updates["head"]["k"], 2.0)
    with self.assertRaisesRegex(ValueError, "no multiplier for leaf 'head/k'"):
      nlr.scale_by_leaf({"backbone": 0.1}).init(params)

  def test_scale_by_leaf_accepts_numpy_and_zero(self):
    params = {"a": jnp.ones(2), "b": jnp.ones(2)}
    tx = nlr.scale_by_leaf({"a": np.float32(0.0), "b": jnp.array(2)})
    updates, _ = tx.update(params, tx.init(params))
    np.testing.assert_array_equal(updates["a"], [0.0, 0.0])
    np.testing.assert_array_equal(updates["b"], [2.0, 2.0])

  def test_layer_of_must_return_ints(self):
    params = {"0": {"kernel": jnp.ones(2)}, "1": {"kernel": jnp.ones(2)}}
    with self.assertRaisesRegex(ValueError, r"integer indices >= 0, got 0\.5 for '0/kernel'"):
      nlr.layerwise_multipliers(params, 0.5, layer_of=lambda p: 0.5 if p == "0/kernel" else 1)
    with self.assertRaisesRegex(ValueError, r"integer indices >= 0, got -1"):
      nlr.layerwise_multipliers(params, 0.5, layer_of=lambda p: -1)
    with self.assertRaisesRegex(TypeError, r"layer_of\('0/kernel'\) must be an int"):
      nlr.layerwise_multipliers(params, 0.5, layer_of=lambda p: "1")
    with self.assertRaisesRegex(TypeError, "layer_of must be a function"):
      nlr.layerwise_multipliers(params, 0.5, layer_of={"0/kernel": 0})
    with self.assertRaisesRegex(TypeError, "reverse must be True or False"):
      nlr.layerwise_multipliers(params, 0.5, reverse="yes")
    with self.assertRaisesRegex(TypeError, "factor must be a number"):
      nlr.layerwise_multipliers(params, "0.5")
    m = nlr.layerwise_multipliers(params, 0.5, layer_of=lambda p: np.int64(int(p[0])) * 1.0)
    self.assertEqual(m["1"]["kernel"], 0.5)  # Integral floats and NumPy ints count.

if __name__ == "__main__":
  pytest.main([__file__])
