"""Nero (``nlr.nero``, ``nlr.scale_by_nero``, ``nlr.project_neurons``):
against a NumPy restatement of the paper's update, the constraint after every
step, the per-neuron rates read back, layouts and validation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_neuronlr as nlr


def _tree(rng):
  return {"dense": {"kernel": rng.normal(size=(5, 4)), "bias": np.zeros(4)},
          "conv": {"kernel": rng.normal(size=(3, 2, 3))},
          "scale": np.ones(3) * 0.5}


class NumpyNero:
  """Nero in NumPy, Flax layout: a neuron is an index of the last axis; a
  leaf of more than one dimension is constrained; vectors get one rate per
  element and no constraint."""

  def __init__(self, params, lr=0.01, beta=0.999, eps=1e-8, constraints=True):
    self.lr, self.beta, self.eps, self.constraints = lr, beta, eps, constraints
    self.params = {k: self._project(v) if self._constrained(v) else v.copy()
                   for k, v in params.items()}
    self.v = {k: np.zeros(self._norms(v).shape) for k, v in params.items()}
    self.scale = {}
    for k, p in self.params.items():
      s = self._norms(p).mean()
      self.scale[k] = 0.01 if s == 0 else s
    self.t = 0

  def _constrained(self, x):
    return self.constraints and x.ndim > 1

  @staticmethod
  def _norms(x):
    if x.ndim <= 1:
      return np.abs(x)
    return np.sqrt((x.reshape(-1, x.shape[-1]) ** 2).sum(0))

  def _project(self, x):
    flat = x.reshape(-1, x.shape[-1])
    centred = flat - flat.mean(0)
    return (centred / (np.sqrt((centred ** 2).sum(0)) + self.eps)).reshape(x.shape)

  def step(self, grads):
    self.t += 1
    for k, g in grads.items():
      n = self._norms(g)
      self.v[k] = self.beta * self.v[k] + (1 - self.beta) * n ** 2
      den = np.sqrt(self.v[k] / (1 - self.beta ** self.t)) + self.eps
      p = self.params[k] - self.lr * self.scale[k] * g / den
      self.params[k] = self._project(p) if self._constrained(p) else p
    return self.params


def _flat(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in path): v
          for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("constraints", [True, False])
def test_matches_numpy_restatement_in_float64(constraints):
  rng = np.random.default_rng(0)
  params = _tree(rng)
  grads = [jax.tree.map(lambda x: rng.normal(size=x.shape), params) for _ in range(6)]
  ref = NumpyNero(_flat(params), lr=0.05, beta=0.9, constraints=constraints)
  with jax.enable_x64(True):
    p = jax.tree.map(jnp.asarray, params)
    tx = nlr.nero(0.05, beta=0.9, constraints=constraints)
    state = tx.init(p)
    for g in grads:
      u, state = tx.update(jax.tree.map(jnp.asarray, g), state, p)
      p = optax.apply_updates(p, u)
      want = ref.step(_flat(g))
      for k, v in _flat(p).items():
        np.testing.assert_allclose(v, want[k], rtol=1e-12, atol=1e-13, err_msg=k)
    # The rates read back are the applied ones, one per neuron (per element of vectors).
    rates = _flat(nlr.learning_rates(state))
    for k, r in rates.items():
      den = np.sqrt(ref.v[k] / (1 - 0.9 ** 6)) + 1e-8
      np.testing.assert_allclose(r, 0.05 * ref.scale[k] / den, rtol=1e-12, err_msg=k)
  assert rates["dense/kernel"].shape == (4,) and rates["conv/kernel"].shape == (3,)
  assert rates["dense/bias"].shape == (4,)


def test_zero_initialised_bias_takes_the_reference_scale():
  p = {"w": jnp.ones((2, 2)) * jnp.asarray([[1.0, 2.0], [3.0, 5.0]]), "b": jnp.zeros(2)}
  tx = nlr.scale_by_nero(0.1)
  _, state = tx.update(jax.tree.map(jnp.ones_like, p), tx.init(p), p)
  np.testing.assert_allclose(state.scale["b"], 0.01)
  np.testing.assert_allclose(state.scale["w"], 1.0, rtol=1e-6)  # projected neurons


def test_updates_give_zero_mean_unit_norm_neurons():
  rng = np.random.default_rng(1)
  p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _tree(rng))
  tx = nlr.nero(0.01)
  state = tx.init(p)
  for _ in range(3):
    g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), p)
    u, state = jax.jit(tx.update)(g, state, p)
    p = optax.apply_updates(p, u)
    for w in (p["dense"]["kernel"], p["conv"]["kernel"]):
      flat = w.reshape(-1, w.shape[-1])
      np.testing.assert_allclose(flat.mean(0), 0.0, atol=1e-6)
      np.testing.assert_allclose(jnp.linalg.norm(flat, axis=0), 1.0, rtol=1e-5)
  assert not np.allclose(jnp.linalg.norm(p["scale"]), 1.0)  # vectors are free


def test_torch_layout_with_neuron_axes_zero_equals_flax_layout():
  rng = np.random.default_rng(2)
  w = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  gs = [jnp.asarray(rng.normal(size=(6, 4)), jnp.float32) for _ in range(3)]
  flax_tx, torch_tx = nlr.nero(0.02), nlr.nero(0.02, neuron_axes=0)
  a, b = w, w.T
  sa, sb = flax_tx.init(a), torch_tx.init(b)
  for g in gs:
    ua, sa = flax_tx.update(g, sa, a)
    ub, sb = torch_tx.update(g.T, sb, b)
    a, b = optax.apply_updates(a, ua), optax.apply_updates(b, ub)
  np.testing.assert_allclose(a, b.T, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(nlr.learning_rates(sa), nlr.learning_rates(sb), rtol=1e-6)


def test_project_neurons_alone():
  w = jnp.asarray([[1.0, 2.0], [3.0, 6.0], [5.0, 1.0]])
  tx = nlr.project_neurons()
  u, state = tx.update(jnp.zeros_like(w), tx.init(w), w)
  new = w + u
  np.testing.assert_allclose(new.mean(0), 0.0, atol=1e-6)
  np.testing.assert_allclose(jnp.linalg.norm(new, axis=0), 1.0, rtol=1e-6)
  assert int(state.count) == 1
  with pytest.raises(ValueError, match="project_neurons reads the weights"):
    tx.update(w, state)


@pytest.mark.parametrize("kwargs,match", [
    (dict(learning_rate=-0.1), "learning_rate"),
    (dict(beta=1.0), r"beta must lie in \[0, 1\)"),
    (dict(beta=-0.1), "beta"),
    (dict(eps=0.0), r"eps must lie in \(0, inf\]"),
    (dict(eps=float("nan")), "eps"),
])
def test_bad_hyperparameters_are_rejected_at_construction(kwargs, match):
  with pytest.raises(ValueError, match=match):
    nlr.nero(**kwargs)
  with pytest.raises(ValueError, match=match):
    nlr.scale_by_nero(**{"learning_rate": 0.01, **kwargs})


def test_constraints_must_be_a_bool():
  with pytest.raises(TypeError, match="constraints must be True or False"):
    nlr.nero(constraints="yes")


def test_update_without_params_names_the_rule():
  p = {"w": jnp.ones((2, 3))}
  tx = nlr.nero()
  with pytest.raises(ValueError, match=r"nero reads the weights.*params=None"):
    tx.update(p, tx.init(p))


def test_inject_hyperparams_changes_the_rate():
  p = {"w": jnp.asarray(np.random.default_rng(3).normal(size=(4, 3)), jnp.float32)}
  tx = optax.inject_hyperparams(nlr.nero)(learning_rate=0.01)
  state = tx.init(p)
  state = optax.tree_utils.tree_set(state, learning_rate=jnp.asarray(0.02))
  _, state = tx.update(jax.tree.map(jnp.ones_like, p), state, p)
  rates = nlr.learning_rates(state)["w"]
  # First step: sqrt(v / (1 - beta)) is the neuron's gradient norm, 2.
  scale = state.inner_state[0].scale["w"]
  np.testing.assert_allclose(rates, 0.02 * scale / (2 + 1e-8), rtol=1e-5)


def test_jit_with_donated_state_reuses_every_buffer():
  import warnings  # pylint: disable=g-import-not-at-top
  p = {"w": jnp.asarray(np.random.default_rng(5).normal(size=(4, 3)), jnp.float32),
       "b": jnp.zeros(3)}
  tx = nlr.nero()

  @jax.jit
  def step(params, state):
    u, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    return optax.apply_updates(params, u), state

  step = jax.jit(step, donate_argnums=(1,))
  state = tx.init(p)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    for _ in range(3):
      old = state
      p, state = step(p, state)
      kept = [jax.tree_util.keystr(k) for k, x in jax.tree_util.tree_flatten_with_path(old)[0]
              if x.ndim and not x.is_deleted()]
      assert not kept


def test_scale_is_set_on_a_leafs_first_update_even_mid_run():
  """A leaf whose statistics start mid-run (a group added or reset, a rebuilt
  state) takes its weight scale on its own first update, not never."""
  p = {"w": jnp.asarray(np.random.default_rng(6).normal(size=(4, 3)), jnp.float32)}
  tx = nlr.scale_by_nero(0.01, constraints=False)
  state = tx.init(p)._replace(count=jnp.asarray(7, jnp.int32))
  _, state = tx.update(jax.tree.map(jnp.ones_like, p), state, p)
  want = np.linalg.norm(np.asarray(p["w"]), axis=0).mean()
  np.testing.assert_allclose(state.scale["w"], want, rtol=1e-6)
  _, later = tx.update(jax.tree.map(jnp.ones_like, p), state, {"w": 2 * p["w"]})
  np.testing.assert_allclose(later.scale["w"], want, rtol=1e-6)  # kept afterwards
