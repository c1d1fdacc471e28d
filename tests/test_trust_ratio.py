"""LARS and LAMB with one trust ratio per unit (``nlr.lars``, ``nlr.lamb``,
``nlr.scale_by_trust_ratio``): per-neuron ratios against a NumPy
restatement, ``"tensor"`` against optax, the rates read back, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_neuronlr as nlr


def _params(rng):
  return {"k": rng.normal(size=(5, 3)), "b": np.zeros(3), "q": rng.normal(size=(2, 3, 4))}


def _neuron_ratio(w, d, tc=1.0, eps=0.0):
  """Per output neuron (last axis) ``tc * ||w_n|| / (||d_n|| + eps)``, 1 where a
  norm is 0; vectors: one per leaf."""
  axes = tuple(range(w.ndim - 1)) if w.ndim > 1 else None
  wn = np.sqrt((w * w).sum(axis=axes))
  dn = np.sqrt((d * d).sum(axis=axes))
  with np.errstate(divide="ignore", invalid="ignore"):
    r = tc * wn / (dn + eps)
  return np.where((wn == 0) | (dn == 0), 1.0, r)


def _run(tx, params, grads):
  with jax.enable_x64(True):
    p = jax.tree.map(jnp.asarray, params)
    state = tx.init(p)
    for g in grads:
      u, state = tx.update(jax.tree.map(jnp.asarray, g), state, p)
      p = optax.apply_updates(p, u)
    return jax.tree.map(np.asarray, p), state


def test_lars_per_neuron_matches_numpy():
  rng = np.random.default_rng(0)
  params = _params(rng)
  grads = [jax.tree.map(lambda x: rng.normal(size=x.shape), params) for _ in range(4)]
  lr, wd, tc, mu = 0.1, 1e-2, 0.02, 0.9
  got, state = _run(nlr.lars(lr, weight_decay=wd, trust_coefficient=tc, momentum=mu),
                    params, grads)
  p = {k: v.copy() for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  for g in grads:
    for k in p:
      d = g[k] + wd * p[k]
      ratio = _neuron_ratio(p[k], d, tc)
      m[k] = mu * m[k] + lr * ratio * d
      p[k] = p[k] - m[k]
  for k in p:
    np.testing.assert_allclose(got[k], p[k], rtol=1e-12, atol=1e-14, err_msg=k)
  with jax.enable_x64(True):
    rates = nlr.learning_rates(state)
  assert rates["k"].shape == (3,) and rates["q"].shape == (4,)
  assert rates["b"].shape == ()  # vectors: one ratio per leaf
  assert len(np.unique(np.asarray(rates["k"]))) == 3  # one ratio per neuron


def test_lamb_per_neuron_matches_numpy():
  rng = np.random.default_rng(1)
  params = _params(rng)
  grads = [jax.tree.map(lambda x: rng.normal(size=x.shape), params) for _ in range(4)]
  lr, b1, b2, eps, wd = 1e-2, 0.9, 0.99, 1e-6, 0.1
  got, state = _run(nlr.lamb(lr, b1, b2, eps, weight_decay=wd), params, grads)
  p = {k: v.copy() for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(x) for k, x in params.items()}
  last = {}
  for t, g in enumerate(grads, 1):
    for k in p:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      a = (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
      d = a + wd * p[k]
      last[k] = _neuron_ratio(p[k], d)
      p[k] = p[k] - lr * last[k] * d
  for k in p:
    np.testing.assert_allclose(got[k], p[k], rtol=1e-12, atol=1e-14, err_msg=k)
  with jax.enable_x64(True):
    rates = nlr.learning_rates(state)
  for k in p:
    np.testing.assert_allclose(rates[k], lr * last[k], rtol=1e-12, err_msg=k)


@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_tensor_granularity_equals_optax(name):
  rng = np.random.default_rng(2)
  params = _params(rng)
  grads = [jax.tree.map(lambda x: rng.normal(size=x.shape), params) for _ in range(5)]
  mask = {"k": True, "b": False, "q": True}
  if name == "lars":
    kw = dict(weight_decay=1e-2, weight_decay_mask=mask, trust_ratio_mask=mask,
              trust_coefficient=0.01, nesterov=True)
    ours, theirs = nlr.lars(0.1, **kw, granularity="tensor"), optax.lars(0.1, **kw)
  else:
    kw = dict(weight_decay=1e-2, mask=mask)
    ours, theirs = nlr.lamb(1e-2, **kw, granularity="tensor"), optax.lamb(1e-2, **kw)
  got, state = _run(ours, params, grads)
  want, _ = _run(theirs, params, grads)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-13, atol=1e-15, err_msg=k)
  with jax.enable_x64(True):
    rates = nlr.learning_rates(state)
  assert all(np.ndim(r) == 0 for r in jax.tree.leaves(rates))


def test_trust_ratio_mask_leaves_get_the_plain_rate():
  rng = np.random.default_rng(3)
  params = _params(rng)
  g = jax.tree.map(lambda x: rng.normal(size=x.shape), params)
  mask = {"k": False, "b": True, "q": True}
  got, _ = _run(nlr.lars(0.1, trust_ratio_mask=mask, momentum=0.0), params, [g])
  np.testing.assert_allclose(got["k"], params["k"] - 0.1 * g["k"], rtol=1e-12)
  ratio = _neuron_ratio(params["q"], g["q"], 0.001)
  np.testing.assert_allclose(got["q"], params["q"] - 0.1 * ratio * g["q"], rtol=1e-12)


def test_global_granularity_has_one_ratio_for_the_tree():
  rng = np.random.default_rng(4)
  params = _params(rng)
  g = jax.tree.map(lambda x: rng.normal(size=x.shape), params)
  tx = nlr.scale_by_trust_ratio(1.0, granularity="global")
  with jax.enable_x64(True):
    p = jax.tree.map(jnp.asarray, params)
    u, _ = tx.update(jax.tree.map(jnp.asarray, g), tx.init(p), p)
  wn = np.sqrt(sum((x ** 2).sum() for x in params.values()))
  gn = np.sqrt(sum((x ** 2).sum() for x in g.values()))
  for k in params:
    np.testing.assert_allclose(u[k], wn / gn * g[k], rtol=1e-12)


@pytest.mark.parametrize("factory,kwargs,match", [
    (nlr.lars, dict(learning_rate=-1.0), "learning_rate"),
    (nlr.lars, dict(learning_rate=0.1, trust_coefficient=0.0), r"trust_coefficient must lie in \(0"),
    (nlr.lars, dict(learning_rate=0.1, momentum=1.0), r"momentum must lie in \[0, 1\)"),
    (nlr.lars, dict(learning_rate=0.1, eps=-1.0), "eps"),
    (nlr.lars, dict(learning_rate=0.1, weight_decay=-1.0), "weight_decay"),
    (nlr.lamb, dict(learning_rate=0.1, b1=1.0), "b1"),
    (nlr.lamb, dict(learning_rate=0.1, b2=-0.5), "b2"),
    (nlr.lamb, dict(learning_rate=0.1, eps=-1e-6), "eps"),
    (nlr.lamb, dict(learning_rate=0.1, eps_root=-1.0), "eps_root"),
    (nlr.scale_by_trust_ratio, dict(learning_rate=1.0, min_norm=-1.0), "min_norm"),
])
def test_bad_hyperparameters_are_rejected_at_construction(factory, kwargs, match):
  with pytest.raises(ValueError, match=match):
    factory(**kwargs)


def test_update_without_params_names_the_rule():
  p = {"w": jnp.ones((2, 3))}
  tx = nlr.scale_by_trust_ratio(1.0)
  with pytest.raises(ValueError, match=r"trust_ratio reads the weights"):
    tx.update(p, tx.init(p))


def test_rates_before_the_first_update_are_the_base_rate():
  p = {"w": jnp.ones((2, 3))}
  state = nlr.lamb(0.01).init(p)
  np.testing.assert_allclose(nlr.learning_rates(state)["w"], [0.01] * 3)


@pytest.mark.parametrize("factory", [nlr.lars, nlr.lamb, nlr.nero])
def test_optimizer_layout_shows_the_rule(factory):
  p = {"dense": {"kernel": jnp.ones((4, 3)) * jnp.arange(1.0, 4.0), "bias": jnp.zeros(3)}}
  tx = factory(0.01)
  state = tx.init(p)
  _, state = tx.update(jax.tree.map(jnp.ones_like, p), state, p)
  rows = {r.path: r for r in nlr.optimizer_layout(state, p).rows}
  assert rows["dense/kernel"].strategy in ("trust_ratio", "nero")
  assert rows["dense/kernel"].granularity == "neuron"
  assert nlr.learning_rates(state)["dense"]["kernel"].shape == (3,)
