"""The rule API for people who write rules: what the engine checks, and a
rule's own transform with real keyword arguments (``nlr.rule_transform``)."""

import dataclasses
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_neuronlr as nlr
from tests import registry


@dataclasses.dataclass(frozen=True)
class InverseRMS(registry.InverseRMS):
  """The registry's user rule with declared defaults and a static option."""

  centered: bool = False
  hyperparams = {"beta": 0.9, "eps": 1e-8}


HP = {"beta": 0.9, "eps": 1e-8}
PARAMS = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}


def _grads(seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 2)
  return {"w": jax.random.normal(keys[0], (4, 3)), "b": jax.random.normal(keys[1], (3,))}


def _step(tx, params=PARAMS, grads=None):
  state = tx.init(params)
  return tx.update(_grads() if grads is None else grads, state, params)


# ---------------------------------------------------------------------------
# What a rule returns is checked at trace time.


def _variant(**methods):
  """A subclass of InverseRMS whose methods are replaced."""
  return dataclasses.dataclass(frozen=True)(type("Broken", (InverseRMS,), methods))()


def _broken_rate(self, stats, hp, count):  # leaf-shaped, not unit-shaped
  return jnp.ones((4, 3)) * InverseRMS.rate(self, stats, hp, count)


def _bare_observe(self, g, d, elements, hp):
  return g * g


def _misspelt_update(self, stats, observed, hp, prev_hp, count):
  return {"msq": InverseRMS.update(self, stats, observed, hp, prev_hp, count)["ms"]}


def _wide_update(self, stats, observed, hp, prev_hp, count):
  return {"ms": jnp.zeros((2,) + stats["ms"].shape)}


def _complex_update(self, stats, observed, hp, prev_hp, count):
  return {"ms": stats["ms"] + 1j}


def _list_update(self, stats, observed, hp, prev_hp, count):
  return [stats["ms"]]


def _wrong_init(self, zeros, hp):
  return {"ms": jnp.zeros(7)}


def _observe_scalar(self, g, d, elements, hp):
  return (jnp.sum(g * g),)


@pytest.mark.parametrize("methods, error, words", [
    ({"rate": _broken_rate}, ValueError, ["Broken.rate()", "(4, 3)", "leaf 'b'", "(3,)"]),
    ({"observe": _bare_observe}, TypeError, ["Broken.observe()", "tuple", "return (x,)"]),
    ({"observe": _observe_scalar}, ValueError, ["Broken.observe()", "quantity 0", "()"]),
    ({"update": _misspelt_update}, ValueError, ["Broken.update()", "'msq'", "misspelt"]),
    ({"update": _wide_update}, ValueError, ["Broken.update()", "'ms'", "(2, 3)", "(3,)"]),
    ({"update": _complex_update}, TypeError, ["Broken.update()", "complex", "'ms'"]),
    ({"update": _list_update}, TypeError, ["Broken.update()", "dict"]),
    ({"init": _wrong_init}, ValueError, ["Broken.init()", "'ms'", "(7,)"]),
])
def test_what_a_rule_returns_is_checked(methods, error, words):
  """A wrong return is an error naming the rule, the method and the statistic
  (at step 1, never a silently reshaped parameter or a KeyError from inside)."""
  tx = nlr.scale_by_rule(_variant(**methods), 1e-2, HP, granularity="neuron")
  with pytest.raises(error) as e:
    _step(tx)
  for word in words:
    assert word in str(e.value), (word, str(e.value))


def test_rate_checks_under_jit_and_global():
  tx = nlr.scale_by_rule(_variant(rate=_broken_rate), 1e-2, HP, granularity="global")
  state = tx.init(PARAMS)
  with pytest.raises(ValueError, match=r"Broken.rate\(\).*global"):
    jax.jit(tx.update)(_grads(), state)


def test_leaf_shaped_rate_of_element_units_is_fine():
  """On element units a leaf-shaped rate is the unit shape: accepted."""
  def rate(self, stats, hp, count):
    return jnp.broadcast_to(InverseRMS.rate(self, stats, hp, count), stats["ms"].shape)
  u, _ = _step(nlr.scale_by_rule(_variant(rate=rate), 1e-2, HP))
  assert jax.tree.map(jnp.shape, u) == jax.tree.map(jnp.shape, PARAMS)


def test_element_and_leaf_statistics_are_checked():
  @dataclasses.dataclass(frozen=True)
  class WithElements(InverseRMS):
    element_stats = ("prev",)

    def update_elements(self, elements, g, d, hp, count):
      return {"prev": g[..., :1]}

  with pytest.raises(ValueError, match=r"WithElements.update_elements\(\).*'prev'"):
    _step(nlr.scale_by_rule(WithElements(), 1e-2, HP))

  @dataclasses.dataclass(frozen=True)
  class WithLeaf(InverseRMS):
    leaf_stats = ("total",)

    def update_leaf(self, stats, observed, hp, count, leaf):
      return {"total": observed[0]}  # per unit, not one number per leaf

  with pytest.raises(ValueError, match=r"WithLeaf.update_leaf\(\).*'total'"):
    _step(nlr.scale_by_rule(WithLeaf(), 1e-2, HP, granularity="neuron"))


@pytest.mark.parametrize("attrs, words", [
    ({"unit_stats": "ms"}, ["unit_stats", "string", "('ms',)"]),
    ({"element_stats": "e"}, ["element_stats", "string"]),
    ({"hyperparams": ("learning_rate",)}, ["learning_rate", "engine"]),
    ({"hyperparams": ("min_lr",)}, ["min_lr"]),
    ({"hyperparams": ("max_lr",)}, ["max_lr"]),
    ({"hyperparams": ("granularity",)}, ["granularity"]),
    ({"unit_stats": ("ms", "ms")}, ["'ms'", "twice"]),
    ({"unit_stats": ("count",)}, ["'count'"]),
    ({"unit_stats": ("not a name",)}, ["identifiers"]),
])
def test_declarations_are_checked(attrs, words):
  hyper = attrs.get("hyperparams", ())
  rule = dataclasses.dataclass(frozen=True)(type("Decl", (nlr.Rule,), dict(attrs)))()
  with pytest.raises((TypeError, ValueError)) as e:
    nlr.scale_by_rule(rule, 1e-2, {h: 0.5 for h in hyper})
  for word in words:
    assert word in str(e.value), (word, str(e.value))


@pytest.mark.parametrize("value, error, word", [
    ("0.9", TypeError, "string"),
    (True, TypeError, "bool"),
    ([0.9, 0.9], TypeError, "list"),
    ((0.9,), TypeError, "tuple"),
    (np.ones(3) * 0.9, ValueError, r"shape \(3,\)"),
    (float("nan"), ValueError, "NaN"),
    (None, TypeError, "None"),
    (0.9j, TypeError, "complex"),
    (lambda count: 0.9, TypeError, "schedule"),
])
def test_rule_hyperparameters_are_validated(value, error, word):
  with pytest.raises(error, match=word) as e:
    nlr.scale_by_rule(InverseRMS(), 1e-2, {"beta": value, "eps": 1e-8})
  assert "InverseRMS hyperparameter 'beta'" in str(e.value)
  with pytest.raises(error, match=word):
    nlr.rule_transform(InverseRMS)(1e-2, beta=value)


def test_rule_check_hyperparams_hook():
  @dataclasses.dataclass(frozen=True)
  class Ranged(InverseRMS):
    def check_hyperparams(self, values):
      if values["beta"] is not None and not 0 <= values["beta"] < 1:
        raise ValueError(f"beta must lie in [0, 1), got {values['beta']}")

  with pytest.raises(ValueError, match=r"beta must lie in \[0, 1\), got 1.5"):
    nlr.rule_transform(Ranged)(1e-2, beta=1.5)
  nlr.rule_transform(Ranged)(1e-2, beta=np.float32(0.5))  # NumPy scalars are numbers
  # Traced values reach the hook as None (checked only for shape and dtype).
  tx = optax.inject_hyperparams(nlr.rule_transform(Ranged))(1e-2, beta=0.5)
  jax.jit(tx.init)(PARAMS)


def test_hyperparams_must_be_a_dict():
  with pytest.raises(TypeError, match="hyperparams must be a dict"):
    nlr.scale_by_rule(InverseRMS(), 1e-2, [("beta", 0.9), ("eps", 1e-8)])


# ---------------------------------------------------------------------------
# rule_transform: a rule's own transform.


def test_rule_transform_signature():
  f = nlr.rule_transform(InverseRMS)
  assert f.__name__ == "scale_by_inverse_rms"
  params = inspect.signature(f).parameters
  assert list(params)[:5] == ["learning_rate", "beta", "eps", "min_lr", "max_lr"]
  assert params["beta"].default == 0.9 and params["eps"].default == 1e-8
  assert params["learning_rate"].default is inspect.Parameter.empty
  assert params["centered"].kind is inspect.Parameter.KEYWORD_ONLY
  assert params["reduce"].default == "mean"
  for name in ("granularity", "neuron_axes", "state_dtype", "direction", "leaf_info"):
    assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
  alias = nlr.rule_transform(InverseRMS, alias=True)
  assert alias.__name__ == "inverse_rms"
  assert inspect.signature(alias) == inspect.signature(f)


def test_rule_transform_equals_scale_by_rule():
  g = _grads()
  u1, s1 = _step(nlr.rule_transform(InverseRMS)(1e-2, beta=0.5, granularity="neuron"),
                 grads=g)
  u2, s2 = _step(nlr.scale_by_rule(InverseRMS(), 1e-2, {"beta": 0.5, "eps": 1e-8},
                                   granularity="neuron"), grads=g)
  jax.tree.map(np.testing.assert_array_equal, (u1, s1.ms), (u2, s2.ms))
  u3, _ = _step(nlr.rule_transform(InverseRMS, alias=True)(1e-2, beta=0.5,
                                                           granularity="neuron"), grads=g)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, -b), u3, u1)


def test_required_hyperparameters_come_first():
  @dataclasses.dataclass(frozen=True)
  class Required(InverseRMS):
    hyperparams = ("beta", "eps")

  f = nlr.rule_transform(Required)
  assert list(inspect.signature(f).parameters)[:3] == ["learning_rate", "beta", "eps"]
  with pytest.raises(TypeError, match="beta"):
    f(1e-2)
  f(1e-2, 0.9, 1e-8)


def test_hyperparameter_changed_mid_run_through_inject_hyperparams():
  """beta is state: tree_set changes it between steps, and the next step uses it."""
  f = nlr.rule_transform(InverseRMS)
  tx = optax.inject_hyperparams(f)(1e-2, beta=0.5, granularity="neuron")
  update = jax.jit(tx.update)
  state = tx.init(PARAMS)
  g1, g2 = _grads(1), _grads(2)
  _, state = update(g1, state)
  state = optax.tree_utils.tree_set(state, beta=0.99)
  u, state = update(g2, state)
  assert float(optax.tree_utils.tree_get(state, "beta")) == pytest.approx(0.99)
  # The same two steps by hand (per-neuron mean of g^2 over the fan-in).
  mean_sq = lambda g: np.mean(np.asarray(g).reshape(-1, 3) ** 2, axis=0)
  for name in ("w", "b"):
    ms = 0.5 * mean_sq(g1[name])
    ms = 0.99 * ms + 0.01 * mean_sq(g2[name])
    rate = 1e-2 / (np.sqrt(ms) + 1e-8)
    np.testing.assert_allclose(u[name], rate * np.asarray(g2[name]), rtol=1e-5)
    np.testing.assert_allclose(nlr.learning_rates(state)[name], rate, rtol=1e-5)


def test_static_options_under_inject_hyperparams():
  @dataclasses.dataclass(frozen=True)
  class Scaled(InverseRMS):
    factor: float = 1.0

    def rate(self, stats, hp, count):
      return self.factor * InverseRMS.rate(self, stats, hp, count)

  f = nlr.rule_transform(Scaled)
  with pytest.raises(TypeError, match=r"option 'factor' is static.*static_args"):
    optax.inject_hyperparams(f)(1e-2, factor=2.0).init(PARAMS)
  tx = optax.inject_hyperparams(f, static_args=("factor",))(1e-2, factor=2.0)
  u, _ = tx.update(_grads(), tx.init(PARAMS))
  ref, _ = _step(nlr.scale_by_rule(InverseRMS(), 2e-2, HP))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u, ref)


def test_rule_transform_rejects_non_rules():
  with pytest.raises(TypeError, match="Rule subclass"):
    nlr.rule_transform(dict)


# ---------------------------------------------------------------------------
# reduce as an option; the clamp, public.


def test_reduce_is_an_option():
  @dataclasses.dataclass(frozen=True)
  class Summed(InverseRMS):
    reduce = "sum"

  g = _grads()
  u_option, _ = _step(nlr.scale_by_rule(InverseRMS(), 1e-2, HP, granularity="neuron",
                                        reduce="sum"), grads=g)
  u_class, _ = _step(nlr.scale_by_rule(Summed(), 1e-2, HP, granularity="neuron"), grads=g)
  u_mean, _ = _step(nlr.scale_by_rule(InverseRMS(), 1e-2, HP, granularity="neuron"), grads=g)
  jax.tree.map(np.testing.assert_array_equal, u_option, u_class)
  # A sum over the 4 fan-in elements is 4x the mean: the rate is half.
  np.testing.assert_allclose(u_option["w"], u_mean["w"] / 2, rtol=1e-5)
  u_global, _ = _step(nlr.rule_transform(InverseRMS)(1e-2, reduce="sum",
                                                     granularity="global"), grads=g)
  total = sum(float(jnp.sum(x * x)) for x in jax.tree.leaves(g))
  np.testing.assert_allclose(u_global["b"], 1e-2 / math.sqrt(0.1 * total) * g["b"],
                             rtol=1e-5)
  with pytest.raises(ValueError, match="reduce must be 'mean' or 'sum'"):
    nlr.scale_by_rule(InverseRMS(), 1e-2, HP, reduce="max")


def test_clamp_is_public():
  hp = {"min_lr": jnp.asarray(0.1), "max_lr": jnp.asarray(1.0)}
  x = jnp.asarray([0.0, 0.5, 2.0, jnp.nan])
  np.testing.assert_array_equal(nlr.clamp(x, hp), jnp.asarray([0.1, 0.5, 1.0, jnp.nan]))
  np.testing.assert_array_equal(nlr.Rule.clamp(x, hp), nlr.clamp(x, hp))


def test_python_float_leaves():
  """optax accepts Python numbers as leaves; so does every optimizer here."""
  params = {"w": 1.0, "v": jnp.ones((3, 2))}
  grads = {"w": 0.5, "v": jnp.full((3, 2), 0.5)}
  for tx in (nlr.grad_history_lr(1e-2, granularity="neuron"),
             nlr.sign_consistency_lr(1e-2, direction=optax.scale_by_adam()),
             nlr.adam_mini(1e-3, weight_decay=0.1, on_unrecognised="ignore"),
             nlr.scale_sgd(1e-3, head=False),
             nlr.sgd_hd(0.1, 0.01), nlr.muon(1e-3), nlr.normuon(1e-3),
             nlr.rule_transform(InverseRMS)(1e-2),
             nlr.param_groups(optax.adam, [{"params": "w", "lr": 1e-2},
                                           {"params": "v", "lr": 1e-3}])):
    u, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, u)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(new))


# ---------------------------------------------------------------------------
# The README's and the docs page's rule examples.

import pathlib
import re

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _first_python_block(text: str, after: str) -> str:
  return re.findall(r"```python\n(.*?)```", text[text.index(after):], re.S)[0]


def _inverse_rms_rate(betas, g2s, lr=1e-3, eps=1e-8):
  """NumPy: the EMA of the unit's mean g**2 under the beta used each step,
  bias-corrected with the current beta, as the example's rule says."""
  ms = 0.0
  for b, g2 in zip(betas, g2s):
    ms = b * ms + (1 - b) * g2
  return lr / (np.sqrt(ms / (1 - betas[-1] ** len(betas))) + eps)


def test_readme_rule_example_changes_beta_mid_run():
  """README: inject_hyperparams + tree_set on a user's rule reach the rule."""
  ns = {}
  exec(_first_python_block((_ROOT / "README.md").read_text(), "## Write your own rule"), ns)
  state = ns["state"]
  assert float(state.hyperparams["beta"]) == pytest.approx(0.9)
  inner = state.inner_state
  applied = dict(zip(ns["InverseRMS"]().scalar_names(), inner.applied))
  assert float(applied["beta"]) == pytest.approx(0.9)
  assert int(inner.count) == 200


def test_rule_hyperparameter_changed_mid_run_follows_the_math():
  ns = {}
  exec(_first_python_block((_ROOT / "docs" / "rules.md").read_text(), "# Writing a rule"), ns)
  tx = optax.inject_hyperparams(ns["scale_by_inverse_rms"])(1e-3, beta=0.99)
  params = {"w": jnp.ones((2, 3))}
  state = tx.init(params)
  g2s, betas = [], []
  for step in range(20):
    if step == 10:
      state = optax.tree_utils.tree_set(state, beta=0.5)
    g = 0.1 * (1 + step % 3)
    g2s.append(g * g)
    betas.append(0.99 if step < 10 else 0.5)
    _, state = tx.update({"w": jnp.full((2, 3), g)}, state, params)
  want = _inverse_rms_rate(betas, g2s)
  np.testing.assert_allclose(nlr.learning_rates(state)["w"], np.full((2, 3), want),
                             rtol=1e-4)
  kept = _inverse_rms_rate([0.99] * 20, g2s)
  assert abs(want - kept) > 1e-2 * want  # a lost change would show


def test_docs_rule_page_example_runs():
  ns = {}
  exec(_first_python_block((_ROOT / "docs" / "rules.md").read_text(), "# Writing a rule"), ns)
  tx, params = ns["tx"], {"w": jnp.ones((4, 3))}
  state = tx.init(params)
  state = optax.tree_utils.tree_set(state, beta=0.9)
  _, state = tx.update({"w": jnp.full((4, 3), 0.1)}, state, params)
  np.testing.assert_allclose(nlr.learning_rates(state)["w"],
                             np.full(3, _inverse_rms_rate([0.9], [0.01])), rtol=1e-4)


def test_scale_by_rule_fills_declared_defaults():
  ns = {}
  exec(_first_python_block((_ROOT / "docs" / "rules.md").read_text(), "# Writing a rule"), ns)
  rule = ns["InverseRMS"]()
  a = _step(nlr.scale_by_rule(rule, 1e-3))
  b = _step(nlr.scale_by_rule(rule, 1e-3, {"beta": 0.99, "eps": 1e-8}))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  with pytest.raises(ValueError, match="unknown"):
    nlr.scale_by_rule(rule, 1e-3, {"betta": 0.9})


def test_range_check_with_validation_helpers_runs_under_inject_and_jit():
  """CONTRIBUTING's recipe: check_hyperparams with validation helpers and
  allow_none (a traced value arrives as None)."""
  from optax_neuronlr._src import validation

  @dataclasses.dataclass(frozen=True)
  class Checked(InverseRMS):
    def check_hyperparams(self, values):
      validation.check_beta("beta", values["beta"], allow_none=True)

  with pytest.raises(ValueError, match="beta"):
    nlr.rule_transform(Checked)(1e-3, beta=1.5)
  tx = optax.inject_hyperparams(nlr.rule_transform(Checked))(1e-3, beta=0.9)
  params = {"w": jnp.ones((4, 3))}
  update = jax.jit(tx.update)
  u, _ = update({"w": jnp.full((4, 3), 0.1)}, tx.init(params), params)
  assert np.all(np.isfinite(u["w"]))
