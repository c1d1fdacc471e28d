"""Inputs that used to train silently wrong or fail without a hint, third
round: a rule's integer statistics and missing rates, the plateau rate that
PyTorch's ``get_last_lr()`` reports, group edits that move parameters,
warnings once per optimizer, dtype classes and half-precision
hyperparameters under ``optax.inject_hyperparams``."""

from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_neuronlr as nlr

# ---------------------------------------------------------------------------
# A rule's statistics built from integers or bools.


@dataclasses.dataclass(frozen=True)
class _IntInit(nlr.Rule):
  """An EMA of g^2 whose init is an int array of ones (``jnp.full(shape, 1)``)."""

  unit_stats = ("ms",)
  element_stats = ("last",)
  leaf_stats = ("peak",)

  def init(self, zeros, hp):
    return {"ms": jnp.full(zeros.shape, 1)}

  def init_elements(self, zeros, hp):
    return {"last": jnp.zeros(zeros.shape, bool)}

  def observe(self, g, d, elements, hp):
    return (g * g,)

  def update(self, stats, observed, hp, prev_hp, count):
    return {"ms": 0.9 * stats["ms"] + 0.1 * observed[0]}

  def update_leaf(self, stats, observed, hp, count, leaf):
    return {"peak": jnp.maximum(stats["peak"], jnp.max(stats["ms"]))}

  def update_elements(self, elements, g, d, hp, count):
    return {"last": g > 0}

  def rate(self, stats, hp, count):
    return hp["learning_rate"] / jnp.sqrt(stats["ms"])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_integer_and_bool_statistics_keep_the_statistics_dtype(dtype):
  """Kept int32, ``0.9 * 1 + 0.1 * 4`` truncated to 1 and then to 0 (rate
  inf / every update wrong); now float32, the EMA of a NumPy restatement."""
  params = {"w": jnp.ones((2, 3), dtype)}
  tx = nlr.scale_by_rule(_IntInit(), 0.1, granularity="neuron")
  state = tx.init(params)
  assert state.ms["w"].dtype == jnp.float32
  assert state.last["w"].dtype == jnp.float32
  assert state.peak["w"].dtype == jnp.float32
  g = {"w": jnp.full((2, 3), 2.0, dtype)}
  ms = 1.0
  for _ in range(3):
    updates, state = jax.jit(tx.update)(g, state)
    ms = 0.9 * ms + 0.1 * 4.0
  np.testing.assert_allclose(state.ms["w"], np.full(3, ms), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(updates["w"], np.float32),
                             np.full((2, 3), 0.1 / np.sqrt(ms) * 2.0), rtol=1e-2)
  assert float(state.peak["w"]) == pytest.approx(ms, rel=1e-6)
  np.testing.assert_array_equal(state.last["w"], np.ones((2, 3)))


def test_integer_init_of_a_global_rule():
  params = {"a": jnp.ones(2), "b": jnp.ones(3)}

  @dataclasses.dataclass(frozen=True)
  class Global(nlr.Rule):
    unit_stats = ("ms",)

    def init(self, zeros, hp):
      return {"ms": 1}

    def observe(self, g, d, elements, hp):
      return (g * g,)

    def update(self, stats, observed, hp, prev_hp, count):
      return {"ms": 0.5 * stats["ms"] + 0.5 * observed[0]}

    def rate(self, stats, hp, count):
      return hp["learning_rate"] * stats["ms"]

  tx = nlr.scale_by_rule(Global(), 1.0, granularity="global")
  state = tx.init(params)
  _, state = tx.update(jax.tree.map(lambda x: 0.5 * x, params), state)
  np.testing.assert_allclose(state.ms["a"], 0.5 + 0.5 * 0.25, rtol=1e-6)


# ---------------------------------------------------------------------------
# rate() that returns no rate.


def _rule_returning(value):
  @dataclasses.dataclass(frozen=True)
  class BadRate(nlr.Rule):
    unit_stats = ("ms",)

    def rate(self, stats, hp, count):
      return value

  return BadRate()


@pytest.mark.parametrize("value, message", [
    (None, r"BadRate.rate\(\) returned None for leaf 'layer/w' \(a missing `return`\?\)"),
    ([0.1, 0.2], r"BadRate.rate\(\) returned \[0.1, 0.2\] \(list\) for leaf 'layer/w'"),
    ("0.1", r"BadRate.rate\(\) returned '0.1' \(str\) for leaf 'layer/w'"),
    (True, r"BadRate.rate\(\) returned True \(bool\) for leaf 'layer/w'"),
    (1j, r"BadRate.rate\(\) returned a complex rate for leaf 'layer/w'"),
    (np.ones(2, bool), r"BadRate.rate\(\) returned .*bool.* for leaf 'layer/w'"),
])
def test_rate_that_is_not_a_rate_is_named(value, message):
  params = {"layer": {"w": jnp.ones(2)}}
  tx = nlr.scale_by_rule(_rule_returning(value), 0.1)
  state = tx.init(params)
  with pytest.raises(TypeError, match=message):
    tx.update(params, state)
  with pytest.raises(TypeError, match=message):
    nlr.learning_rates(state)  # before any update: the reader calls rate() too


def test_rate_python_number_still_works():
  params = {"w": jnp.ones(2)}
  tx = nlr.scale_by_rule(_rule_returning(0.5), 0.1)
  updates, state = tx.update(params, tx.init(params))
  np.testing.assert_allclose(updates["w"], [0.5, 0.5])
  np.testing.assert_allclose(nlr.learning_rates(state)["w"], [0.5, 0.5])


# ---------------------------------------------------------------------------
# plateau_learning_rate is PyTorch's get_last_lr().

_LOSSES = [1.0, 0.9, 0.95, 0.96, 0.97, 0.5, 0.6, 0.61, 0.62, 0.63, 0.64, 0.65]


def _torch_last_lrs(losses, kwargs, edit_every=None):
  torch = pytest.importorskip("torch")
  p = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.SGD([p], lr=0.1)
  scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
  out = [scheduler.get_last_lr()[0]]
  for k, v in enumerate(losses):
    if edit_every and k % edit_every == 0:
      for group in opt.param_groups:
        group["lr"] *= 0.9
    opt.step()
    scheduler.step(v)
    out.append(scheduler.get_last_lr()[0])
  return out


@pytest.mark.parametrize("kwargs", [
    dict(patience=1, factor=0.5),
    dict(patience=0, factor=0.5, cooldown=1, min_lr=0.02),
])
def test_plateau_learning_rate_is_get_last_lr(kwargs):
  """Was the rate the last update applied: one step behind get_last_lr()
  after each reduction."""
  want = _torch_last_lrs(_LOSSES, kwargs)
  with jax.enable_x64(True):
    tx = optax.chain(optax.scale_by_adam(), nlr.reduce_lr_on_plateau(0.1, **kwargs))
    state = tx.init({"w": jnp.zeros(1)})
    got = [float(nlr.plateau_learning_rate(state))]
    for v in _LOSSES:
      _, state = tx.update({"w": jnp.ones(1)}, state, value=v)
      got.append(float(nlr.plateau_learning_rate(state)))
  np.testing.assert_allclose(got, want, rtol=1e-12)
  assert len(set(want)) > 2


def test_plateau_learning_rate_with_manual_edits_is_get_last_lr():
  kwargs = dict(patience=1, factor=0.5)
  want = _torch_last_lrs(_LOSSES, kwargs, edit_every=4)
  with jax.enable_x64(True):
    tx = optax.inject_hyperparams(nlr.reduce_lr_on_plateau)(learning_rate=0.1, **kwargs)
    state = tx.init({"w": jnp.zeros(1)})
    got = [float(nlr.plateau_learning_rate(state))]
    for k, v in enumerate(_LOSSES):
      if k % 4 == 0:
        state = nlr.set_hyperparams(state, learning_rate=lambda lr: lr * 0.9)
      _, state = tx.update({"w": jnp.ones(1)}, state, value=v)
      got.append(float(nlr.plateau_learning_rate(state)))
  np.testing.assert_allclose(got, want, rtol=1e-12)


# ---------------------------------------------------------------------------
# add_param_group: parameters that would move, default names.

_GROUP_PARAMS = {"body": {"kernel": jnp.ones((3, 2))}, "head": {"kernel": jnp.ones((2, 2))}}


@pytest.mark.parametrize("optimizer", [optax.adam, functools.partial(optax.sgd, momentum=0.9)])
@pytest.mark.parametrize("claims", ["head", ".*"])
def test_add_param_group_claiming_the_rest_groups_leaves(optimizer, claims):
  """Every leaf of the rest= group: was 'param group 1 ('base', params=[])
  claims no parameter ... Pass allow_empty=True' (an argument add_param_group
  does not take)."""
  params = {**_GROUP_PARAMS, "bias": jnp.ones(2)}
  tx = nlr.param_groups(optimizer, [{"params": "body"}, {"name": "base"}], rest="base",
                        learning_rate=0.1)
  state = tx.init(params)
  with pytest.raises(ValueError, match=r"parameters already in a group would move.*'base': "
                                       r"\['bias', 'head/kernel'\]\} \(to \['group_2'\].*"
                                       r"more than one parameter group"):
    nlr.add_param_group(tx, state, params, {"params": "head|bias", "lr": 0.01})
  with pytest.raises(ValueError, match=r"would move.*'head/kernel'.*\(to \['group_2'\]"):
    nlr.add_param_group(tx, state, params, {"params": claims, "lr": 0.01})


def test_add_param_group_emptying_a_stateless_rest_group_says_so():
  """Plain SGD keeps no statistics: nothing is lost by moving, but the rest=
  group left empty is named as such."""
  params = {**_GROUP_PARAMS, "bias": jnp.ones(2)}
  tx = nlr.param_groups(optax.sgd, [{"params": "body"}, {"name": "base"}], rest="base",
                        learning_rate=0.1)
  state = tx.init(params)
  with pytest.raises(ValueError, match=r"'base'.*it is the rest= group: the other groups "
                                       r"claim every leaf"):
    nlr.add_param_group(tx, state, params, {"params": "head|bias", "lr": 0.01})
  new_tx, _ = nlr.add_param_group(tx, state, params, {"params": "head", "lr": 0.01})
  assert new_tx.labels(params) == {"body": {"kernel": "group_0"}, "head": {"kernel": "group_2"},
                                   "bias": "base"}


def test_add_param_group_of_new_or_frozen_leaves_still_works():
  tx = nlr.param_groups(optax.adam, [{"params": "body"}], rest="freeze", learning_rate=0.1)
  state = tx.init(_GROUP_PARAMS)
  new_tx, new_state = nlr.add_param_group(tx, state, _GROUP_PARAMS, {"params": "head"})
  assert new_tx.names == ("group_0", "group_1")
  grown = {**_GROUP_PARAMS, "extra": jnp.ones(3)}
  new_tx, _ = nlr.add_param_group(new_tx, new_state, grown, {"params": "extra"})
  assert new_tx.names == ("group_0", "group_1", "group_2")


def test_add_param_group_picks_a_free_default_name():
  """Was group_1 beside a group already named group_1: 'used twice'."""
  tx = nlr.param_groups(optax.adam, [{"params": "body", "name": "group_1"}], rest="freeze",
                        learning_rate=0.1)
  state = tx.init(_GROUP_PARAMS)
  new_tx, new_state = nlr.add_param_group(tx, state, _GROUP_PARAMS, {"params": "head"})
  assert new_tx.names == ("group_1", "group_2")
  assert set(nlr.get_hyperparams(new_state)) == {"group_1", "group_2"}
  # The same in param_groups itself: an unnamed group beside one named like its default.
  tx = nlr.param_groups(optax.adam, [{"params": "body", "name": "group_1"}, {"params": "head"}],
                        learning_rate=0.1)
  assert tx.names == ("group_1", "group_2")
  tx.init(_GROUP_PARAMS)


def test_drop_param_group_keeps_the_names_of_unnamed_groups():
  """Dropping group_0 renamed the unnamed group_1 to group_0 (its position):
  its statistics were reported lost."""
  params = {**_GROUP_PARAMS, "bias": jnp.ones(2)}
  tx = nlr.param_groups(optax.adam, [{"params": "body"}, {"params": "head"}, {"params": "bias"}],
                        learning_rate=0.1)
  state = tx.init(params)
  _, state = tx.update(params, state, params)
  kept = {k: v for k, v in params.items() if k != "body"}
  new_tx, new_state = nlr.drop_param_group(tx, state, kept, "group_0")
  assert new_tx.names == ("group_1", "group_2")
  old_mu = state.inner_states["group_1"].inner_state.inner_state[0].mu["head"]["kernel"]
  new_mu = new_state.inner_states["group_1"].inner_state.inner_state[0].mu["head"]["kernel"]
  np.testing.assert_array_equal(new_mu, old_mu)


# ---------------------------------------------------------------------------
# A callable granularity's warnings: once per optimizer.

_CONV = {"conv": {"kernel": jnp.ones((3, 3, 2, 4))}, "dense": {"kernel": jnp.ones((4, 4))}}


@pytest.mark.parametrize("make", [
    lambda: nlr.adam_mini(1e-3, blocks=functools.partial(nlr.adam_mini_blocks, num_heads=2)),
    lambda: nlr.grad_history_lr(1e-3, granularity=nlr.adam_mini_blocks),
], ids=["adam_mini", "grad_history_lr"])
def test_blocks_callable_warns_once_per_optimizer(make):
  """Warned at init and again at every update (each trace, each step without jit)."""
  tx = make()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    state = tx.init(_CONV)
    for _ in range(2):
      _, state = tx.update(_CONV, state, _CONV)
    jax.jit(tx.update)(_CONV, state, _CONV)
  messages = [str(w.message) for w in caught if "recognised no Adam-mini block" in str(w.message)]
  assert len(messages) == 1, messages
  assert "'conv/kernel'" in messages[0]
  # Another optimizer warns again; the "error" filter still raises.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    with pytest.raises(UserWarning, match="recognised no Adam-mini block"):
      make().init(_CONV)


# ---------------------------------------------------------------------------
# dtype classes under optax.inject_hyperparams.

_REQUIRED = {"hyper_lr": 1e-3}


def _dtype_arguments():
  """(factory name, argument) for every public factory with a ``*_dtype`` argument."""
  import inspect  # pylint: disable=g-import-not-at-top
  out = []
  for name in sorted(nlr.__all__):
    f = getattr(nlr, name)
    if not inspect.isfunction(f):
      continue
    params = inspect.signature(f).parameters
    if "learning_rate" not in params or name == "scale_by_rule":
      continue
    out += [(name, a) for a in params if a.endswith("_dtype")]
  return out


_DTYPE_ARGUMENTS = _dtype_arguments()


def test_the_dtype_arguments_are_found():
  found = set(_DTYPE_ARGUMENTS)
  for expected in [("muon", "mu_dtype"), ("muon", "ns_dtype"), ("normuon", "state_dtype"),
                   ("adam_mini", "mu_dtype"), ("scale_sgd", "state_dtype"),
                   ("adam_hd", "mu_dtype"), ("grad_history_lr", "state_dtype")]:
    assert expected in found


@pytest.mark.parametrize("factory, argument", _DTYPE_ARGUMENTS)
def test_dtype_class_under_inject_hyperparams_says_what_to_do(factory, argument):
  """``mu_dtype=jnp.bfloat16`` (the class): a schedule to optax, called with the
  count; the error had no hint."""
  f = getattr(nlr, factory)
  import inspect  # pylint: disable=g-import-not-at-top
  kwargs = {k: v for k, v in _REQUIRED.items() if k in inspect.signature(f).parameters}
  params = {"dense": {"kernel": jnp.ones((4, 4))}, "head": {"kernel": jnp.ones((4, 3))}}
  tx = optax.inject_hyperparams(f)(learning_rate=0.02, **kwargs, **{argument: jnp.bfloat16})
  with pytest.raises(TypeError, match=rf"{argument} must be a dtype.*inject_hyperparams.*"
                                      rf"{argument}='bfloat16'.*static_args=\('{argument}',\)"):
    tx.init(params)
  # Both fixes work.
  optax.inject_hyperparams(f)(learning_rate=0.02, **kwargs, **{argument: "bfloat16"}).init(params)
  optax.inject_hyperparams(f, static_args=(argument,))(
      learning_rate=0.02, **kwargs, **{argument: jnp.bfloat16}).init(params)


# ---------------------------------------------------------------------------
# Half-precision params under optax.inject_hyperparams.

_HALF_FACTORIES = {
    "normuon": (nlr.normuon, {}),
    "muon": (nlr.muon, {}),
    "adam_mini": (nlr.adam_mini, {}),
    "scale_sgd": (nlr.scale_sgd, {}),
    "neuron_norm_sgd": (nlr.neuron_norm_sgd, {}),
    "grad_magnitude_lr": (nlr.grad_magnitude_lr, {}),
    "grad_history_lr": (nlr.grad_history_lr, {}),
    "sign_consistency_lr": (nlr.sign_consistency_lr, {}),
    "hypergradient_lr": (nlr.hypergradient_lr, {"hyper_lr": 1e-4}),
    "sgd_hd": (nlr.sgd_hd, {"hyper_lr": 1e-4}),
    "adam_hd": (nlr.adam_hd, {"hyper_lr": 1e-6}),
    "reduce_lr_on_plateau": (nlr.reduce_lr_on_plateau, {}),
}
_HALF_PARAMS = {"embed": {"embedding": jnp.full((6, 4), 0.5)},
                "dense": {"kernel": jnp.full((4, 4), 0.25), "bias": jnp.zeros(4)},
                "head": {"kernel": jnp.full((4, 6), 0.5)}}


def _half(tree, dtype):
  return jax.tree.map(lambda x: x.astype(dtype), tree)


def _half_grads(dtype):
  leaves, treedef = jax.tree.flatten(_HALF_PARAMS)
  keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
  grads = [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
  grads[1] = grads[1].at[0].set(0.0)  # an exact zero: eps=1e-8 -> 0 in float16 would be 0/0
  return treedef.unflatten([g.astype(dtype) for g in grads])


def _step(tx, params, grads, extra, steps=2):
  state = tx.init(params)
  update = jax.jit(functools.partial(tx.update, **extra))
  for _ in range(steps):
    updates, state = update(grads, state, params)
  return updates


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", sorted(_HALF_FACTORIES))
def test_half_precision_params_under_inject_hyperparams(name, dtype):
  """Was "b2 must lie in [0, 1), got 1." (0.999 stored in bfloat16), "eps must
  lie in (0, inf], got 0." (1e-8 in float16), or ran with beta=0.898 instead
  of 0.9. Now: an error naming hyperparam_dtype=jnp.float32, and with it the
  updates of the factory called without inject_hyperparams."""
  f, kwargs = _HALF_FACTORIES[name]
  params, grads = _half(_HALF_PARAMS, dtype), _half_grads(dtype)
  extra = {"value": 1.0} if name == "reduce_lr_on_plateau" else {}
  with pytest.raises(TypeError, match=rf"arrived as a {dtype} array.*"
                                      r"hyperparam_dtype=jnp.float32"):
    optax.inject_hyperparams(f)(learning_rate=0.02, **kwargs).init(params)
  injected = optax.inject_hyperparams(f, hyperparam_dtype=jnp.float32)(
      learning_rate=0.02, **kwargs)
  plain = f(learning_rate=0.02, **kwargs)
  got, want = _step(injected, params, grads, extra), _step(plain, params, grads, extra)
  rtol = 3e-2 if dtype == "bfloat16" else 1e-2  # a couple of roundings to 8 bits
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.dtype == w.dtype
    g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
    assert np.all(np.isfinite(g))
    # adam_hd's Adam in float16 without inject: eps=1e-8 is 0 there, 0/0 for a
    # zero gradient (README, Known limitations); float32 hyperparameters avoid it.
    finite = np.isfinite(w)
    np.testing.assert_allclose(g[finite], w[finite], rtol=rtol, atol=1e-6)


def test_half_precision_hyperparameter_of_a_user_rule():
  @dataclasses.dataclass(frozen=True)
  class Ema(nlr.Rule):
    unit_stats = ("ms",)
    hyperparams = {"beta": 0.999}

    def observe(self, g, d, elements, hp):
      return (g * g,)

    def update(self, stats, observed, hp, prev_hp, count):
      return {"ms": hp["beta"] * stats["ms"] + (1 - hp["beta"]) * observed[0]}

    def rate(self, stats, hp, count):
      return hp["learning_rate"] / (jnp.sqrt(stats["ms"]) + 1e-3)

  params = {"w": jnp.ones(3, jnp.bfloat16)}
  tx = optax.inject_hyperparams(nlr.rule_transform(Ema))(learning_rate=0.1)
  with pytest.raises(TypeError, match=r"arrived as a bfloat16 array.*hyperparam_dtype"):
    tx.init(params)
  tx = optax.inject_hyperparams(nlr.rule_transform(Ema), hyperparam_dtype=jnp.float32)(
      learning_rate=0.1)
  _, state = tx.update(params, tx.init(params), params)
  assert float(state.hyperparams["beta"]) == pytest.approx(0.999, rel=1e-7)


def test_rebuild_nnx_optimizer_strict_names_parameters_that_would_move():
  nnx = pytest.importorskip("flax.nnx")
  model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.Linear(4, 2, rngs=nnx.Rngs(1)))
  tx = nlr.param_groups(optax.adam, [{"params": "layers/0"}, {"name": "base"}], rest="base",
                        learning_rate=0.1)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  with pytest.raises(ValueError, match=r"rebuild_nnx_optimizer: parameters already in a group "
                                       r"would move.*'base': \['layers/1/bias'"):
    nlr.rebuild_nnx_optimizer(optimizer, model, tx.with_group({"params": "layers/1"}),
                              strict=True)
