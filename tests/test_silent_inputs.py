"""Inputs that used to train silently wrong: each now gives the asked-for
result or an error naming the argument."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_neuronlr as nlr
from optax_neuronlr._src.rules import muon as muon_lib

PARAMS = {
    "embed": {"embedding": jnp.ones((10, 4))},
    "attn": {"query": {"kernel": jnp.ones((4, 2, 2))}, "key": {"kernel": jnp.ones((4, 4))},
             "value": {"kernel": jnp.ones((4, 4))}, "out": {"kernel": jnp.ones((4, 4))}},
    "mlp": {"kernel": jnp.full((4, 8), 0.5), "bias": jnp.ones(8)},
    "ln": {"scale": jnp.ones(4)},
    "lm_head": {"kernel": jnp.ones((4, 10))},
}


def _grads(params, seed=0):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return treedef.unflatten([jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def _run(tx, params=PARAMS, steps=2):
  state = tx.init(params)
  update = jax.jit(tx.update)
  for i in range(steps):
    u, state = update(_grads(params, i), state, params)
  return u, state


def _shapes(tree):
  return jax.tree.map(jnp.shape, tree)


# ---------------------------------------------------------------------------
# Callables under optax.inject_hyperparams (taken for schedules).

_BLOCKS = functools.partial(nlr.adam_mini_blocks, num_heads=2)
_MATRICES = lambda p: jax.tree.map(lambda x: x.ndim == 2, p)


@pytest.mark.parametrize("factory, kwargs, argument", [
    (nlr.adam_mini, {"blocks": _BLOCKS}, "blocks"),
    (nlr.adam_mini, {"mask": nlr.adam_mini_weight_decay_mask}, "mask"),
    (nlr.adam_mini, {"mask": _MATRICES}, "mask"),
    (nlr.adam_mini, {"num_heads": 2}, "num_heads"),
    (nlr.scale_by_adam_mini, {"blocks": _BLOCKS}, "blocks"),
    (nlr.grad_history_lr, {"granularity": _BLOCKS}, "granularity"),
    (nlr.normuon, {"hidden": _MATRICES}, "hidden"),
    (nlr.muon, {"hidden": lambda p: nlr.normuon_labels(p) and _MATRICES(p)}, "hidden"),
])
def test_callables_under_inject_need_static_args(factory, kwargs, argument):
  """Without static_args: an error that names static_args (never plain Adam or
  no weight decay); with them: exactly the result without inject_hyperparams."""
  lr = (1e-3,)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    with pytest.raises((TypeError, ValueError), match="static_args"):
      _run(optax.inject_hyperparams(factory)(*lr, **kwargs))
    static = tuple(k for k in kwargs if callable(kwargs[k]) or k == "num_heads")
    injected = optax.inject_hyperparams(factory, static_args=static)(*lr, **kwargs)
    u_inj, s_inj = _run(injected)
    u_ref, s_ref = _run(factory(*lr, **kwargs))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7),
               u_inj, u_ref)
  assert _shapes(s_inj.inner_state) == _shapes(s_ref)


def test_adam_mini_blocks_and_decay_are_the_same_under_inject():
  """The README's override form keeps Adam-mini's blocks (half the state) and decay."""
  kwargs = dict(weight_decay=0.1, blocks=_BLOCKS, mask=nlr.adam_mini_weight_decay_mask)
  tx = optax.inject_hyperparams(nlr.adam_mini, static_args=("blocks", "mask"))(1e-3, **kwargs)
  _, state = _run(tx, steps=1)
  v = state.inner_state[0].v
  assert v["attn"]["query"]["kernel"].shape == (2,)  # one per head
  assert v["mlp"]["kernel"].shape == (8,)  # one per output neuron
  # Decay reaches the kernels: with a zero gradient only the decay moves them.
  zero = jax.tree.map(jnp.zeros_like, PARAMS)
  u, _ = tx.update(zero, tx.init(PARAMS), PARAMS)
  np.testing.assert_allclose(u["mlp"]["kernel"], -1e-3 * 0.1 * 0.5)
  np.testing.assert_array_equal(u["mlp"]["bias"], 0.0)


@pytest.mark.parametrize("mask, word", [
    ("no", "'no' (str)"), (False, "bare bool"), (True, "bare bool"),
    ({"mlp": 1}, "1 (int)"), (jnp.asarray(True), "static_args"),
])
def test_bad_masks_are_errors(mask, word):
  with pytest.raises(TypeError, match="mask") as e:
    nlr.adam_mini(1e-3, weight_decay=0.1, mask=mask)
  assert word in str(e.value)


def test_head_typo_is_an_error():
  with pytest.raises(ValueError, match=r"head='lm_haed' selects no leaf.*lm_head/kernel"):
    nlr.scale_sgd(1e-3, head="lm_haed").init(PARAMS)
  with pytest.raises(ValueError, match="head='nope'"):
    nlr.model_layout(PARAMS, head="nope")
  # A head that exists still works, and so does head=False.
  labels = nlr.scale_sgd_labels(PARAMS, head="lm_head")
  assert labels["lm_head"]["kernel"] == "head"
  assert "head" not in jax.tree.leaves(nlr.scale_sgd_labels(PARAMS, head=False))


def test_step_count_given_to_a_function_of_the_params():
  for fn in (nlr.adam_mini_blocks, nlr.adam_mini_weight_decay_mask, nlr.normuon_labels,
             nlr.scale_sgd_labels, nlr.model_layout):
    with pytest.raises(TypeError, match="step count"):
      fn(jnp.zeros([], jnp.int32))
  nlr.model_layout(jnp.zeros([], jnp.float32))  # a scalar parameter is fine


# ---------------------------------------------------------------------------
# Complex parameters.


def _complex(shape, seed, imag_scale=3.0):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return (jax.random.normal(k1, shape) + 1j * imag_scale * jax.random.normal(k2, shape)
          ).astype(jnp.complex64)


def test_adam_mini_complex_bias_equals_optax_adam():
  """Element units are Adam: the same as optax.adam on complex leaves, where the
  imaginary part of the gradient outweighs the real part (no NaN)."""
  params = {"mlp": {"bias": _complex((6,), 0)}}
  a, b = nlr.adam_mini(1e-2), optax.adam(1e-2)
  sa, sb = a.init(params), b.init(params)
  for t in range(4):
    g = {"mlp": {"bias": _complex((6,), t + 1)}}
    ua, sa = a.update(g, sa, params)
    ub, sb = b.update(g, sb, params)
    assert np.all(np.isfinite(ua["mlp"]["bias"]))
    np.testing.assert_allclose(ua["mlp"]["bias"], ub["mlp"]["bias"], rtol=2e-5, atol=1e-8)
  assert np.abs(np.imag(ua["mlp"]["bias"])).max() > 0


def test_adam_mini_complex_kernel_keeps_its_imaginary_part():
  """Per-neuron blocks on a complex kernel: v is the mean of |g|^2, the first
  moment complex (a NumPy restatement of the documented formula)."""
  b1, b2, eps, lr = 0.9, 0.999, 1e-8, 1e-2
  params = {"mlp": {"kernel": _complex((4, 3), 0)}}
  tx = nlr.adam_mini(lr, b1=b1, b2=b2, eps=eps)
  state = tx.init(params)
  m, v = np.zeros((4, 3), np.complex128), np.zeros(3)
  for t in range(1, 4):
    g = _complex((4, 3), t)
    u, state = tx.update({"mlp": {"kernel": g}}, state, params)
    g = np.asarray(g, np.complex128)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * np.mean(np.abs(g) ** 2, axis=0)
    rate = lr / (np.sqrt(v / (1 - b2**t)) + eps)
    np.testing.assert_allclose(u["mlp"]["kernel"], -rate * m / (1 - b1**t), rtol=2e-5)
  assert state[0].direction_state.ema["mlp"]["kernel"].dtype == jnp.complex64


def test_newton_schulz_on_complex_matrices():
  """Each singular value follows the scalar quintic map; singular vectors stay:
  NS(X) = U p(S / |X|_F) V^H (complex X, either orientation)."""
  a, b, c = muon_lib.NS_COEFFS
  for shape in ((3, 5), (5, 3)):
    x = np.asarray(_complex(shape, 7), np.complex64)
    out = np.asarray(muon_lib.newton_schulz(jnp.asarray(x)[None], 5, eps=0.0))[0]
    u, s, vh = np.linalg.svd(x.astype(np.complex128), full_matrices=False)
    s = s / np.linalg.norm(x.astype(np.complex128))
    for _ in range(5):
      s = a * s + b * s**3 + c * s**5
    np.testing.assert_allclose(out, (u * s) @ vh, atol=2e-5)


def test_per_neuron_rules_on_complex_directions():
  """SCALE's RMS and NorMuon's second moment are of |d|^2 (never negative, no NaN)."""
  params = {"mlp": {"kernel": _complex((4, 3), 0)}}
  g = {"mlp": {"kernel": _complex((4, 3), 1, imag_scale=5.0)}}
  tx = nlr.scale_by_neuron_norm(learning_rate=1.0, granularity="neuron")
  u, state = tx.update(g, tx.init(params), params)
  rms = np.sqrt(np.mean(np.abs(np.asarray(g["mlp"]["kernel"])) ** 2, axis=0))
  np.testing.assert_allclose(state.rms["mlp"]["kernel"], rms, rtol=1e-5)
  np.testing.assert_allclose(u["mlp"]["kernel"], g["mlp"]["kernel"] / rms, rtol=1e-5)
  u, state = _run(nlr.normuon(1e-2), params, steps=2)
  assert np.all(np.isfinite(u["mlp"]["kernel"]))
  assert np.abs(np.imag(u["mlp"]["kernel"])).max() > 0
  rates = nlr.learning_rates(state)
  assert all(np.all(np.isfinite(r)) and np.all(np.asarray(r) > 0)
             for r in jax.tree.leaves(rates))


# ---------------------------------------------------------------------------
# rebuild_state with one global rate.


@pytest.mark.parametrize("factory, sums", [
    (lambda: nlr.sgd_hd(0.1, 0.01), True), (lambda: nlr.adam_hd(1e-3, 1e-5), True),
    (lambda: nlr.grad_history_lr(1e-2, granularity="global"), False),
])
@pytest.mark.parametrize("new_name", ["a_first", "z_last"])
def test_rebuild_keeps_the_global_rate_whatever_the_new_leaf_is_named(
    factory, sums, new_name):
  tx = factory()
  params = {"m": jnp.ones(3)}
  state = tx.init(params)
  for i in range(3):
    _, state = tx.update({"m": jnp.full(3, 0.5 + i)}, state, params)
  before = float(jax.tree.leaves(nlr.learning_rates(state))[0])
  grown = {"m": jnp.ones(3), new_name: jnp.ones(2)}
  rebuilt = nlr.rebuild_state(tx, state, grown)
  after = nlr.learning_rates(rebuilt)
  assert {k: float(v) for k, v in after.items()} == {"m": before, new_name: before}
  if not sums:  # grad_history's global statistic is a mean over every element
    return
  # The next update starts from the learned rate: the same as without the new leaf
  # when the new leaf's gradient is zero (the hypergradient sums over leaves).
  g = {"m": jnp.full(3, 0.7), new_name: jnp.zeros(2)}
  u_grown, _ = tx.update(g, rebuilt, grown)
  u_old, _ = tx.update({"m": g["m"]}, state, params)
  np.testing.assert_allclose(u_grown["m"], u_old["m"], rtol=1e-6)


# ---------------------------------------------------------------------------
# Param group names.


@pytest.mark.parametrize("name, error", [("enc/slow", ValueError), ("", TypeError),
                                         (3, TypeError), (None, TypeError)])
def test_group_names(name, error):
  groups = [{"params": "mlp", "lr": 1e-2, "name": name}, {"params": ".*", "lr": 1e-3}]
  with pytest.raises(error, match="name"):
    nlr.param_groups(optax.adam, groups)
  tx = nlr.param_groups(optax.adam, [{"params": ".*", "lr": 1e-3, "name": "all"}])
  with pytest.raises(error, match="name"):
    tx.with_group({"params": "mlp", "lr": 1e-2, "name": name})
