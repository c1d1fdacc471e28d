"""The public engine: Rule and scale_by_rule, units, errors, edge cases.

The per-unit arithmetic is checked against plain NumPy loops over units.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_neuronlr as nlr


@dataclasses.dataclass(frozen=True)
class MeanSquare(nlr.Rule):
  """rate = lr / (sqrt(EMA of the unit's reduced g**2) + eps)."""

  unit_stats = ("ms",)
  hyperparams = ("beta",)
  debias: bool = False

  def observe(self, g, d, elements, hp):
    return (g * g,)

  def update(self, stats, observed, hp, prev_hp, count):
    return {"ms": hp["beta"] * stats["ms"] + (1 - hp["beta"]) * observed[0]}

  def rate(self, stats, hp, count):
    ms = stats["ms"] / (1 - hp["beta"] ** count) if self.debias else stats["ms"]
    return hp["learning_rate"] / (jnp.sqrt(ms) + 1e-3)


@dataclasses.dataclass(frozen=True)
class SumSquare(MeanSquare):
  reduce = "sum"


@dataclasses.dataclass(frozen=True)
class Momentum(nlr.Rule):
  """A per-element statistic that sees the direction: u = lr * (EMA of d)."""

  unit_stats = ("scale",)
  element_stats = ("trace",)

  def init(self, zeros, hp):
    return {"scale": zeros + 1.0}

  def update_elements(self, elements, g, d, hp, count):
    return {"trace": 0.5 * elements["trace"] + d}

  def rate(self, stats, hp, count):
    return hp["learning_rate"] * stats["scale"]


def _units_numpy(x, spec):
  """Unit index per element (NumPy), for the reference loops."""
  shape = x.shape
  idx = np.indices(shape)
  if spec == "element":
    return np.arange(x.size).reshape(shape)
  if spec == "tensor":
    return np.zeros(shape, int)
  if isinstance(spec, nlr.Neurons):
    axes = [a % x.ndim for a in spec.axes]
    return np.ravel_multi_index([idx[a] for a in axes], [shape[a] for a in axes])
  if isinstance(spec, nlr.Blocks):
    a = spec.axis % x.ndim
    return idx[a] // (shape[a] // spec.num_blocks)
  raise AssertionError(spec)


def _reference(rule_cls, grads_seq, spec, lr=0.1, beta=0.9, debias=False):
  """NumPy loops over units for MeanSquare / SumSquare on one leaf."""
  ms = None
  outs = []
  for t, g in enumerate(grads_seq, start=1):
    units = _units_numpy(g, spec)
    n = units.max() + 1
    red = np.zeros(n)
    for u in range(n):
      vals = g[units == u] ** 2
      red[u] = vals.sum() if rule_cls is SumSquare else vals.mean()
    ms = (1 - beta) * red if ms is None else beta * ms + (1 - beta) * red
    m = ms / (1 - beta**t) if debias else ms
    rate = lr / (np.sqrt(m) + 1e-3)
    outs.append(rate[units] * g)
  return outs


SPECS = ["element", "tensor", nlr.Neurons(-1), nlr.Neurons(0), nlr.Neurons((0, 2)),
         nlr.Blocks(1, 3), nlr.Blocks(-1, 2)]


@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("rule_cls", [MeanSquare, SumSquare])
def test_units_match_numpy_loops(spec, rule_cls):
  jax.config.update("jax_enable_x64", True)
  try:
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(4, 6, 2)) for _ in range(4)]
    tx = nlr.scale_by_rule(rule_cls(debias=True), 0.1, {"beta": 0.9}, granularity=spec)
    state = tx.init({"w": jnp.zeros((4, 6, 2))})
    step = jax.jit(tx.update)
    want = _reference(rule_cls, grads, spec, debias=True)
    for g, w in zip(grads, want):
      u, state = step({"w": jnp.asarray(g)}, state)
      np.testing.assert_allclose(np.asarray(u["w"]), w, rtol=1e-12)
  finally:
    jax.config.update("jax_enable_x64", False)


def test_global_unit_sums_over_the_whole_tree():
  rng = np.random.default_rng(1)
  params = {"a": jnp.zeros((3, 2)), "b": jnp.zeros(5)}
  tx = nlr.scale_by_rule(SumSquare(), 0.1, {"beta": 0.0}, granularity="global")
  g = {k: jnp.asarray(rng.normal(size=v.shape), jnp.float32) for k, v in params.items()}
  u, state = tx.update(g, tx.init(params))
  total = sum(float(jnp.sum(x * x)) for x in g.values())
  rate = 0.1 / (np.sqrt(total) + 1e-3)
  for k in g:
    np.testing.assert_allclose(u[k], rate * np.asarray(g[k]), rtol=1e-5)
  # One unit for the tree: every leaf holds a copy of the one statistic.
  assert jax.tree.map(jnp.shape, state.ms) == {"a": (), "b": ()}
  np.testing.assert_allclose(state.ms["a"], state.ms["b"])
  assert type(state).is_global and isinstance(state, SumSquare().state_class())
  rates = nlr.learning_rates(state)
  np.testing.assert_allclose(rates["a"], rate, rtol=1e-5)
  assert [r.granularity for r in nlr.optimizer_layout(state, params).rows] == ["global"] * 2


def test_global_unit_on_an_empty_tree():
  for tx in (nlr.sgd_hd(0.1, 1e-3), nlr.grad_history_lr(0.1, granularity="global")):
    updates, state = tx.update({}, tx.init({}), {})
    assert updates == {}


def test_element_statistics_and_direction():
  params = {"w": jnp.zeros((2, 3))}
  tx = nlr.scale_by_rule(Momentum(), 0.5, direction=optax.scale(2.0))
  state = tx.init(params)
  assert state.trace["w"].shape == (2, 3)
  g = {"w": jnp.ones((2, 3))}
  u, state = tx.update(g, state)
  np.testing.assert_allclose(u["w"], 0.5 * 2.0)  # rate * direction's output
  np.testing.assert_allclose(state.trace["w"], 2.0)  # the rule saw d, not g
  _, state = tx.update(g, state)
  np.testing.assert_allclose(state.trace["w"], 3.0)


def test_static_options_select_code_paths_and_state_classes():
  plain = nlr.scale_by_rule(MeanSquare(), 0.1, {"beta": 0.9}).init({"w": jnp.ones(3)})
  debiased = nlr.scale_by_rule(MeanSquare(debias=True), 0.1, {"beta": 0.9}).init(
      {"w": jnp.ones(3)})
  assert type(plain) is not type(debiased)
  assert isinstance(debiased, type(plain))  # one class per rule class
  assert type(debiased).rule == MeanSquare(debias=True)
  assert type(plain)._fields == ("count", "ms", "applied", "direction_state")


def test_rule_and_hyperparameter_errors():
  with pytest.raises(TypeError, match="nlr.Rule instance"):
    nlr.scale_by_rule(MeanSquare, 0.1, {"beta": 0.9})
  with pytest.raises(ValueError, match=r"missing \['beta'\]"):
    nlr.scale_by_rule(MeanSquare(), 0.1, {})
  with pytest.raises(ValueError, match=r"unknown \['gamma'\]"):
    nlr.scale_by_rule(MeanSquare(), 0.1, {"beta": 0.9, "gamma": 1.0})
  with pytest.raises(ValueError, match="neuron_axes is given but granularity='tensor'"):
    nlr.grad_history_lr(0.1, granularity="tensor", neuron_axes=0)
  with pytest.raises(ValueError, match="neuron_axes is given"):
    nlr.grad_history_lr(0.1, granularity="element", neuron_axes=(0,))
  with pytest.raises(ValueError, match="granularity must be one of"):
    nlr.grad_history_lr(0.1, granularity="layer")
  with pytest.raises(ValueError, match="num_blocks must be >= 1"):
    nlr.Blocks(0, 0)
  tx = nlr.grad_history_lr(0.1, granularity=nlr.Blocks(0, 3))
  with pytest.raises(ValueError, match=r"'w'.*does not split into 3 equal blocks"):
    tx.init({"w": jnp.ones((4, 2))})


@pytest.mark.parametrize("axes", [np.int64(0), (np.int64(0),), jnp.array(0), [0, 1]])
def test_numpy_and_jax_integer_neuron_axes(axes):
  params = {"a": jnp.ones((3, 2)), "b": jnp.ones((4, 5))}
  if isinstance(axes, list):
    axes = dict(zip(params, axes))
  tx = nlr.grad_history_lr(0.1, granularity="neuron", neuron_axes=axes)
  rates = nlr.learning_rates(tx.init(params))
  assert rates["a"].shape[0] == 3


def test_neuron_axes_under_inject_hyperparams():
  params = {"w": jnp.ones((3, 2))}
  tx = optax.inject_hyperparams(nlr.grad_history_lr, static_args=("neuron_axes",))(
      0.1, granularity="neuron", neuron_axes=0)
  _, state = jax.jit(tx.update)(params, tx.init(params))
  assert nlr.learning_rates(state)["w"].shape == (3,)
  # Without static_args inject_hyperparams traces the int: a clear error.
  tx = optax.inject_hyperparams(nlr.grad_history_lr)(0.1, granularity="neuron",
                                                      neuron_axes=0)
  with pytest.raises(TypeError, match="static_args=\\('neuron_axes',\\)"):
    jax.jit(tx.update)(params, tx.init(params))


@pytest.mark.parametrize("make", [
    lambda: nlr.grad_history_lr(0.1), lambda: nlr.grad_history_lr(0.1, granularity="neuron"),
    lambda: nlr.sgd_hd(0.1, 0.1, granularity="tensor")])
def test_shape_change_between_init_and_update_names_the_leaf(make):
  # A per-tensor statistic holds no shape: the change shows only where the
  # state keeps per-element or per-neuron arrays of the old shape.
  tx = make()
  state = tx.init({"enc": {"w": jnp.ones((3, 2))}})
  with pytest.raises(ValueError, match=r"leaf 'enc/w' has shape \(3, 4\)"):
    tx.update({"enc": {"w": jnp.ones((3, 4))}}, state)


def test_float16_statistics_of_a_large_unit():
  n = 70_000  # more elements than float16 can count
  params = {"w": jnp.zeros((n, 1), jnp.float16)}
  tx = nlr.grad_history_lr(0.1, beta=0.0, granularity="neuron", state_dtype="float16",
                           max_lr=jnp.inf)
  g = {"w": jnp.full((n, 1), 0.5, jnp.float16)}
  _, state = tx.update(g, tx.init(params))
  np.testing.assert_allclose(np.asarray(state[0].grad_ema["w"], np.float32), 0.5, rtol=1e-3)


def test_multiplicative_hypergradient_survives_huge_gradients():
  params = {"w": jnp.zeros(4)}
  tx = nlr.sgd_hd(0.1, 0.05, multiplicative=True, max_lr=1.0)
  state = tx.init(params)
  for scale in (1.0, 1e20, 1e20, 1.0, 1.0):
    u, state = tx.update({"w": jnp.full(4, scale, jnp.float32)}, state)
  rate = float(nlr.learning_rates(state)["w"])
  assert np.isfinite(rate) and 0.0 < rate <= 1.0
  assert np.all(np.isfinite(np.asarray(u["w"])))


def test_fresh_hypergradient_state_reports_the_clamped_rate():
  params = {"w": jnp.zeros(4)}
  state = nlr.sgd_hd(5.0, 0.1, max_lr=1.0).init(params)
  assert float(nlr.learning_rates(state)["w"]) == 1.0
  u, _ = nlr.sgd_hd(5.0, 0.1, max_lr=1.0).update({"w": jnp.ones(4)}, state)
  np.testing.assert_allclose(u["w"], -1.0)


def test_hypergradient_follows_a_changed_base_rate():
  params = {"w": jnp.zeros(3)}
  tx = optax.inject_hyperparams(nlr.sgd_hd)(learning_rate=0.1, hyper_lr=0.0)
  state = tx.init(params)
  _, state = tx.update({"w": jnp.ones(3)}, state)
  state = nlr.set_hyperparams(state, learning_rate=lambda v: v * 0.9)
  u, state = tx.update({"w": jnp.ones(3)}, state)
  np.testing.assert_allclose(u["w"], -0.09, rtol=1e-6)


def test_hypergradient_schedule():
  params = {"w": jnp.zeros(3)}
  tx = nlr.sgd_hd(optax.linear_schedule(0.1, 0.05, 2), 0.0)
  state = tx.init(params)
  got = []
  for _ in range(4):
    u, state = tx.update({"w": jnp.ones(3)}, state)
    got.append(float(-u["w"][0]))
  np.testing.assert_allclose(got, [0.1, 0.075, 0.05, 0.05], rtol=1e-6)


@pytest.mark.parametrize("dtype", ["int32", "uint8", "bool", "complex64"])
def test_state_dtype_must_be_floating(dtype):
  with pytest.raises((TypeError, ValueError), match="state_dtype"):
    nlr.grad_history_lr(0.1, state_dtype=dtype)


def test_update_with_a_foreign_state_is_a_clear_error():
  a = nlr.scale_by_grad_history_lr(0.1)
  b = nlr.scale_by_sign_consistency_lr(0.1)
  params = {"w": jnp.ones(2)}
  with pytest.raises(TypeError, match="not the state"):
    a.update(params, b.init(params))


def test_adam_hd_binds_adam_arguments_under_inject():
  params = {"w": jnp.zeros(3)}
  tx = optax.inject_hyperparams(nlr.adam_hd)(1e-2, 0.0, b1=0.5)
  state = tx.init(params)
  assert float(state.hyperparams["b1"]) == 0.5
  state = nlr.set_hyperparams(state, b1=0.0)
  _, state = tx.update({"w": jnp.ones(3)}, state)
  np.testing.assert_allclose(state.inner_state[0].direction_state.mu["w"], 1.0)
  with pytest.raises(ValueError, match="b2"):
    nlr.adam_hd(1e-3, 1e-7, b2=1.0)


def test_aliases_have_the_transforms_signatures():
  import inspect
  assert inspect.signature(nlr.grad_history_lr) == inspect.signature(
      nlr.scale_by_grad_history_lr)
  assert list(inspect.signature(nlr.adam_hd).parameters)[:5] == [
      "learning_rate", "hyper_lr", "b1", "b2", "eps"]
  assert "direction" not in inspect.signature(nlr.adam_hd).parameters


def test_no_warnings_from_a_plain_step():
  params = {"w": jnp.ones((3, 2))}
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    tx = nlr.sign_consistency_lr(0.1, granularity="neuron")
    jax.jit(tx.update)(params, tx.init(params))


def test_rate_summary_on_degenerate_trees():
  state = nlr.grad_history_lr(1e-2, max_lr=jnp.inf).init(
      {"w": jnp.ones((0, 3)), "v": jnp.ones(2)})
  summary = nlr.rate_summary(state)
  # A leaf with no units has no statistics: no keys, never a NaN to log.
  assert not any(k.startswith("w/") for k in summary), sorted(summary)
  assert float(summary["v/frac_at_max_lr"]) == 0.0  # max_lr = inf is never reached
  dtypes = {(v.dtype, getattr(jax.typeof(v), "weak_type", False)) for v in summary.values()}
  assert len(dtypes) == 1, dtypes
  assert nlr.rate_summary(nlr.grad_history_lr(1e-2).init({})) == {}
  pinned = nlr.grad_history_lr(1e-2, min_lr=0.0, max_lr=0.0).init({"w": jnp.ones(3)})
  assert float(nlr.rate_summary(pinned)["w/frac_at_max_lr"]) == 1.0


@pytest.mark.parametrize("multiplicative", [False, True])
def test_complex_hypergradient_equals_the_real_pair(multiplicative):
  rng = np.random.default_rng(3)
  gs = [rng.normal(size=(2, 3)) + 1j * rng.normal(size=(2, 3)) for _ in range(4)]
  tx = nlr.sgd_hd(0.1, 0.05, multiplicative=multiplicative)
  cs = tx.init({"w": jnp.zeros((2, 3), jnp.complex64)})
  rs = tx.init({"re": jnp.zeros((2, 3)), "im": jnp.zeros((2, 3))})
  for g in gs:
    uc, cs = tx.update({"w": jnp.asarray(g, jnp.complex64)}, cs)
    ur, rs = tx.update({"re": jnp.asarray(g.real, jnp.float32),
                        "im": jnp.asarray(g.imag, jnp.float32)}, rs)
    np.testing.assert_allclose(np.real(uc["w"]), ur["re"], rtol=1e-5)
    np.testing.assert_allclose(np.imag(uc["w"]), ur["im"], rtol=1e-5)
  assert cs[0].prev_direction["w"].dtype == jnp.complex64


def test_complex_magnitude_is_the_modulus():
  g = jnp.array([3 + 4j, -1j], jnp.complex64)
  tx = nlr.scale_by_grad_history_lr(1.0, beta=0.0, max_lr=jnp.inf)
  _, state = tx.update({"w": g}, tx.init({"w": jnp.zeros(2, jnp.complex64)}))
  np.testing.assert_allclose(state.grad_ema["w"], [5.0, 1.0], rtol=1e-6)
  assert state.grad_ema["w"].dtype == jnp.float32
