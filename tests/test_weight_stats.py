"""Rules that see the weights (``Rule.weights``): the per-unit statistics the
engine computes from the parameters, checked against NumPy at every
granularity, and the errors of a rule that declares them wrongly or gets no
parameters."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_neuronlr as nlr

NAMES = ("norm", "sum_sq", "mean", "rms", "centered_norm")


@dataclasses.dataclass(frozen=True)
class Recorder(nlr.Rule):
  """Keeps every weight statistic of the last update as a unit statistic."""

  unit_stats = tuple(f"seen_{n}" for n in NAMES)
  weights = NAMES

  def update(self, stats, observed, hp, prev_hp, count):
    return {f"seen_{n}": stats[f"weight_{n}"] for n in NAMES}

  def rate(self, stats, hp, count):
    return hp["learning_rate"] + 0 * stats["seen_norm"]


def _params():
  rng = np.random.default_rng(0)
  return {"k": jnp.asarray(rng.normal(size=(3, 4)) + 0.5),
          "q": jnp.asarray(rng.normal(size=(2, 3, 2))),
          "b": jnp.asarray(rng.normal(size=(4,)))}


def _expected(x, reduce_axes):
  x = np.asarray(x, np.float64)
  n = max(int(np.prod([x.shape[a] for a in reduce_axes])), 1) if reduce_axes else 1
  mean = x.mean(axis=reduce_axes) if reduce_axes else x
  centred = x - (np.expand_dims(mean, reduce_axes) if reduce_axes else mean)
  sq = (x * x).sum(axis=reduce_axes) if reduce_axes else x * x
  cs = (centred ** 2).sum(axis=reduce_axes) if reduce_axes else centred ** 2
  return {"norm": np.sqrt(sq), "sum_sq": sq, "mean": mean, "rms": np.sqrt(sq / n),
          "centered_norm": np.sqrt(cs)}


@pytest.mark.parametrize("granularity", ["element", "neuron", "tensor"])
def test_per_unit_weight_statistics_match_numpy(granularity):
  params = _params()
  tx = nlr.scale_by_rule(Recorder(), 0.1, granularity=granularity)
  _, state = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  for key, x in params.items():
    axes = {"element": (), "tensor": tuple(range(x.ndim)),
            "neuron": tuple(range(x.ndim - 1))}[granularity]
    want = _expected(x, axes)
    for name in NAMES:
      got = getattr(state, f"seen_{name}")[key]
      np.testing.assert_allclose(got, want[name], rtol=2e-6, atol=1e-6,
                                 err_msg=f"{key} {name}")


def test_global_weight_statistics_match_numpy():
  params = _params()
  tx = nlr.scale_by_rule(Recorder(), 0.1, granularity="global")
  _, state = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)])
  want = _expected(flat, (0,))
  for name in NAMES:
    for got in jax.tree.leaves(getattr(state, f"seen_{name}")):
      np.testing.assert_allclose(got, want[name], rtol=2e-6, err_msg=name)


def test_centered_norm_keeps_its_digits_far_from_zero():
  """Two passes: a neuron at 1e4 with a spread of 1e-2 (a one-pass
  sqrt(sum w^2 - n mean^2) in float32 returns noise or 0)."""
  x = 1e4 + jnp.asarray([[-1e-2], [1e-2]], jnp.float32) * jnp.ones((2, 3))
  tx = nlr.scale_by_rule(Recorder(), 0.1, granularity="neuron")
  _, state = tx.update(jnp.ones_like(x), tx.init(x), x)
  a = np.asarray(x, np.float64)
  want = np.sqrt(((a - a.mean(0)) ** 2).sum(0))  # of the float32 values
  assert want[0] > 1e-2
  np.testing.assert_allclose(state.seen_centered_norm, want, rtol=1e-3)


def test_complex_weights_give_real_statistics():
  x = jnp.asarray([[1 + 2j, 3 - 1j], [0 + 1j, 1 + 0j]], jnp.complex64)
  tx = nlr.scale_by_rule(Recorder(), 0.1, granularity="neuron")
  _, state = tx.update(jnp.ones_like(x), tx.init(x), x)
  a = np.asarray(x)
  np.testing.assert_allclose(state.seen_norm, np.sqrt((np.abs(a) ** 2).sum(0)), rtol=1e-6)
  np.testing.assert_allclose(state.seen_mean, a.real.mean(0), rtol=1e-6)
  np.testing.assert_allclose(
      state.seen_centered_norm, np.sqrt((np.abs(a - a.mean(0)) ** 2).sum(0)), rtol=1e-6)
  assert not jnp.iscomplexobj(state.seen_norm)


def test_bf16_weights_give_float32_statistics():
  x = jnp.full((4, 2), 3.0, jnp.bfloat16)
  tx = nlr.scale_by_rule(Recorder(), 0.1, granularity="neuron")
  _, state = tx.update(jnp.ones_like(x), tx.init(x), x)
  assert state.seen_norm.dtype == jnp.float32
  np.testing.assert_allclose(state.seen_norm, [6.0, 6.0])


def test_update_without_params_is_an_error_naming_the_rule():
  params = _params()
  tx = nlr.scale_by_rule(Recorder(), 0.1)
  with pytest.raises(ValueError, match=r"Recorder reads the weights.*params=None"):
    tx.update(params, tx.init(params))


def test_unknown_weight_statistic_is_an_error_at_construction():
  @dataclasses.dataclass(frozen=True)
  class Bad(Recorder):
    weights = ("norm", "variance")

  with pytest.raises(ValueError, match=r"Bad\.weights names 'variance'.*centered_norm"):
    nlr.scale_by_rule(Bad(), 0.1)


def test_a_statistic_may_not_take_the_weight_prefix():
  @dataclasses.dataclass(frozen=True)
  class Clash(nlr.Rule):
    unit_stats = ("weight_norm",)

    def rate(self, stats, hp, count):
      return hp["learning_rate"]

  with pytest.raises(TypeError, match=r"Clash.*'weight_norm'.*prefix 'weight_'"):
    nlr.scale_by_rule(Clash(), 0.1)


def test_weights_must_be_a_tuple_of_names():
  @dataclasses.dataclass(frozen=True)
  class Str(Recorder):
    weights = "norm"

  with pytest.raises(TypeError, match=r"Str\.weights must be a tuple"):
    nlr.scale_by_rule(Str(), 0.1)


def test_a_rule_may_return_its_stats_argument():
  """``update`` returning ``stats`` as given (weights included) is accepted:
  the engine drops the weight statistics it passed in."""

  @dataclasses.dataclass(frozen=True)
  class Keep(nlr.Rule):
    unit_stats = ("s",)
    weights = ("norm",)

    def update(self, stats, observed, hp, prev_hp, count):
      return {**stats, "s": stats["weight_norm"]}

    def rate(self, stats, hp, count):
      return hp["learning_rate"] * stats["s"]

  x = jnp.asarray([[3.0, 0.0], [4.0, 1.0]])
  tx = nlr.scale_by_rule(Keep(), 1.0, granularity="neuron")
  u, state = tx.update(jnp.ones_like(x), tx.init(x), x)
  np.testing.assert_allclose(state.s, [5.0, 1.0])
  np.testing.assert_allclose(u, [[5.0, 1.0], [5.0, 1.0]])
  np.testing.assert_allclose(nlr.learning_rates(state), [5.0, 1.0])


def test_rules_without_weights_keep_their_state():
  fields = nlr.grad_history_lr(0.1).init({"w": jnp.ones(3)})[0]._fields
  assert set(fields) == {"count", "applied", "direction_state", "grad_ema"}
  assert nlr.Rule.weights == ()


def test_weights_under_jit_masked_and_inject():
  params = _params()
  inner = nlr.scale_by_rule(Recorder(), 0.1, granularity="tensor")
  mask = {"k": True, "q": False, "b": True}
  tx = optax.masked(inner, mask)
  state = tx.init(params)
  _, state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), state, params)
  np.testing.assert_allclose(state.inner_state.seen_norm["k"],
                             np.linalg.norm(np.asarray(params["k"])), rtol=1e-6)
  injected = optax.inject_hyperparams(nlr.nero)(learning_rate=0.01)
  s = injected.init(params)
  _, s = jax.jit(injected.update)(jax.tree.map(jnp.ones_like, params), s, params)
  assert int(s.inner_state[0].count) == 1
