"""optax 0.2.8's own Muon cases (``optax/contrib/_muon_test.py`` and the Muon row
of ``optax/contrib/_common_test.py``), restated for ``nlr.scale_by_muon``,
``nlr.muon`` and ``nlr.normuon``.

optax's ``MuonDimensionNumbers(reduction_axis, output_axis)`` is
``nlr.MatrixView(reduction_axes, output_axes)`` here (ints read as 1-tuples);
its ``None`` ("not a Muon parameter") is decided by ``hidden=`` / the layout,
and a ``None`` view means "the layout's view". The parameters of the common
cases are bare arrays, lists and tuples, as in optax: 2-D leaves are matrices
(Muon), others AdamW. The layout's guess from shapes is announced by a
warning, which these cases expect and silence.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_neuronlr as nlr
from optax_neuronlr._src import newton_schulz as ns_lib
from optax_neuronlr._src.roles import matrix_views

pytestmark = pytest.mark.filterwarnings("ignore:nlr.*:UserWarning")

View = nlr.MatrixView


def _chained_direction(learning_rate, **kwargs):
  return optax.chain(nlr.scale_by_muon(**kwargs), optax.scale(-learning_rate))


FACTORIES = {
    "scale_by_muon": _chained_direction,
    "muon": nlr.muon,
    "normuon": nlr.normuon,
}
ALIASES = ("muon", "normuon")


def _one_update(factory, params, **kwargs):
  """One update at ``grad = params`` (the loss ``sum(p**2) / 2``)."""
  tx = factory(learning_rate=1e-3, **kwargs)
  return tx.update(params, tx.init(params), params)[0]


# ---------------------------------------------------------------------------
# _muon_test.py


@pytest.mark.parametrize("shape,view,flat_shape", [
    ((2, 3), View(0, 1), (1, 2, 3)),
    ((2, 3, 4), View(0, 2), (3, 2, 4)),
    ((2, 3, 4), View(-3, -1), (3, 2, 4)),
    ((2, 3, 4, 5), View(2, 3), (6, 4, 5)),
    ((2, 3, 4, 5), View(2, (0, 3)), (3, 4, 10)),
])
def test_reshape_inverse(shape, view, flat_shape):
  x = jnp.arange(math.prod(shape), dtype=jnp.float32).reshape(shape)
  stack, back = ns_lib.to_matrices(x, matrix_views.check_view(view, shape, "x"))
  assert stack.shape == flat_shape
  np.testing.assert_array_equal(back(stack), x)


def test_ints_are_one_tuples():
  assert View(0, 1) == View((0,), (1,))
  assert View(2, (0, 3)).output_axes == (0, 3)


@pytest.mark.parametrize("name", FACTORIES)
def test_callable_view_trees(name):
  """A callable giving a view to 2-D leaves and None to the others; a view tree
  with None entries."""
  params = {"w1": jnp.ones((10, 10)), "w2": jnp.ones((2, 10))}

  def views(tree):
    return jax.tree.map(lambda x: View(0, 1) if x.ndim == 2 else None, tree)

  for matrices in (views, lambda tree: {"w1": View(0, 1), "w2": None}):
    updates = _one_update(FACTORIES[name], params, matrices=matrices)
    assert jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("name", FACTORIES)
def test_trivial_view_equals_default(name):
  params = {"w": jax.random.normal(jax.random.key(0), (10, 10))}
  default = _one_update(FACTORIES[name], params)
  given = _one_update(FACTORIES[name], params, matrices={"w": View(0, 1)})
  np.testing.assert_allclose(given["w"], default["w"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", FACTORIES)
def test_reshaped_leaf_with_view_equals_the_matrix(name):
  """A (10, 12) matrix stored as a 4-D leaf, with the view that names its
  axes: the update is the matrix's, reshaped (Newton-Schulz and NorMuon's
  neurons are equivariant under permuting rows or columns)."""
  w = jax.random.normal(jax.random.key(0), (10, 12))
  base = _one_update(FACTORIES[name], {"w": w}, matrices={"w": View(0, 1)})["w"]
  cases = [
      (lambda x: x.reshape(10, 3, 1, 4).transpose(3, 2, 0, 1), View((2,), (0, 3))),
      (lambda x: x.reshape(2, 1, 5, 12).transpose(2, 3, 1, 0), View((0, 3), (1,))),
  ]
  for reshape, view in cases:
    got = _one_update(FACTORIES[name], {"w": reshape(w)}, matrices={"w": view})["w"]
    np.testing.assert_allclose(got, reshape(base), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ALIASES)
def test_none_views_and_prefixes_read_the_layout(name):
  """None entries (optax's "no override"), at leaves or standing for a whole
  subtree: the layout's views; the result equals no matrices= at all."""
  params = {"w1": {"a": jnp.ones((2, 3)), "b": 2.0 * jnp.ones((2, 3))},
            "w2": {"a": jnp.eye(3)[:2], "b": jnp.ones((2, 3))}}
  default = _one_update(FACTORIES[name], params)
  for matrices in ({"w1": None, "w2": {"a": View(0, 1), "b": None}},
                   {"w1": View(0, 1), "w2": None}):
    got = _one_update(FACTORIES[name], params, matrices=matrices)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(default)):
      np.testing.assert_allclose(a, b, rtol=1e-6)


def test_newton_schulz_orthogonal_and_unitary():
  coeffs = (2.0, -1.5, 0.5)
  real = jax.random.normal(jax.random.key(0), (4, 3), jnp.float32)
  out = ns_lib.newton_schulz(real[None], 20, coeffs, eps=1e-12)[0]
  np.testing.assert_allclose(out.T @ out, np.eye(3), atol=1e-5, rtol=1e-5)
  cplx = jax.random.normal(jax.random.key(0), (4, 3), jnp.complex64)
  out = ns_lib.newton_schulz(cplx[None], 10, coeffs, eps=1e-8)[0]
  assert out.shape == cplx.shape
  np.testing.assert_allclose(out.conj().T @ out, np.eye(3), atol=1e-5, rtol=1e-5)


def _run(tx, params, loss, steps, conj=False):
  @jax.jit
  def run(params):
    def step(carry, _):
      params, state = carry
      grads = jax.grad(loss)(params)
      if conj:
        grads = jax.tree.map(jnp.conj, grads)
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), length=steps)
    return params

  return run(params)


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("name", FACTORIES)
def test_complex_matrix_target(name, nesterov):
  target = jnp.array([[1.0 + 2.0j, 0.0], [-1.0 + 1.0j, 1.0 - 3.0j]], jnp.complex64)
  loss = lambda p: jnp.sum(jnp.real(jnp.conj(p - target) * (p - target)))
  tx = FACTORIES[name](learning_rate=1e-2, nesterov=nesterov)
  params = _run(tx, jnp.zeros((2, 2), jnp.complex64), loss, 1000, conj=True)
  np.testing.assert_allclose(params, target, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("shape", [(100, 100), (100, 50), (50, 100)])
@pytest.mark.parametrize("name", FACTORIES)
def test_near_orthogonal_updates(name, shape):
  params = {"w": jax.random.normal(jax.random.key(42), shape)}
  tx = FACTORIES[name](learning_rate=1.0)
  update = tx.update(params, tx.init(params), params)[0]["w"]
  assert update.shape == shape
  if shape[0] == shape[1]:
    s = jnp.linalg.svd(update, compute_uv=False)
    assert float(s.max()) < 2.0 and float(s.min()) > 0.1, s


@pytest.mark.parametrize("name", FACTORIES)
def test_orthogonality(name):
  params = {"w": 2.0 * jnp.eye(8)}
  tx = FACTORIES[name](learning_rate=0.1)
  update = tx.update(params, tx.init(params), params)[0]["w"]
  assert bool(jnp.all(jnp.isfinite(update)))
  gram = update.T @ update
  gram = gram / jnp.max(gram)
  assert float(jnp.linalg.norm(gram - jnp.eye(8))) < 1e-3


# ---------------------------------------------------------------------------
# The Muon row of _common_test.py: bare arrays, lists, tuples.


def _parabola(dtype):
  target = jnp.array([1.0, -1.0, 1.0], dtype)
  return jnp.array([-1.0, 10.0, 1.0], dtype), target, lambda p: jnp.sum((p - target) ** 2)


def _rosenbrock(dtype):
  target = jnp.array([1.0, 1.0], dtype)
  loss = lambda p: (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2
  return jnp.zeros(2, dtype), target, loss


def _matrix_parabola(dtype):
  target = jnp.array([[3.0, -2.0], [1.0, 4.0]], dtype)
  return jnp.zeros((2, 2), dtype), target, lambda p: jnp.sum((p - target) ** 2)


def _mixed(dtype):
  t1, t2 = jnp.array([1.0, -1.0, 2.0], dtype), jnp.array([[1.0, 0.0], [-1.0, 1.0]], dtype)
  loss = lambda p: jnp.sum((p[0] - t1) ** 2) + jnp.sum((p[1] - t2) ** 2)
  return (jnp.zeros(3, dtype), jnp.zeros((2, 2), dtype)), (t1, t2), loss


TARGETS = {"parabola": _parabola, "rosenbrock": _rosenbrock,
           "matrix_parabola": _matrix_parabola, "mixed": _mixed}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ALIASES)
def test_converges_on_bare_array_targets(name, target):
  params, final, loss = TARGETS[target](jnp.float32)
  tx = FACTORIES[name](learning_rate=1e-2)
  params = _run(tx, params, loss, 10_000)
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(final)):
    np.testing.assert_allclose(got, want, rtol=3e-2, atol=3e-2)


def test_direction_converges_on_the_matrix_target():
  params, final, loss = _matrix_parabola(jnp.float32)
  params = _run(_chained_direction(1e-2), params, loss, 10_000)
  np.testing.assert_allclose(params, final, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("name", ALIASES)
def test_bare_matrix_is_trained_by_muon(name):
  """A bare 2-D array is a matrix (optax's default), with or without hidden=True."""
  x = jax.random.normal(jax.random.key(1), (4, 6))
  direction = _one_update(_chained_direction, x)
  for kwargs in ({}, {"hidden": True}):
    tx = FACTORIES[name](learning_rate=1e-3, **kwargs)
    state = tx.init(x)
    assert jax.tree.leaves(state.inner_states["hidden"])[0].shape in ((), (6,), (4, 6))
    update = tx.update(x, state, x)[0]
    if name == "muon":
      np.testing.assert_allclose(update, direction, rtol=1e-6, atol=1e-8)
  tx = FACTORIES[name](learning_rate=1e-3, hidden=False)
  update = tx.update(x, tx.init(x), x)[0]
  adamw = optax.adamw(1e-3, weight_decay=0.0)
  np.testing.assert_allclose(update, adamw.update(x, adamw.init(x), x)[0], rtol=1e-6)


@pytest.mark.parametrize("name", FACTORIES)
def test_extra_args_and_no_recompile(name):
  tx = FACTORIES[name](learning_rate=1e-2)
  params, _, loss = _matrix_parabola(jnp.float32)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params, unexpected_arg=1)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  params, state = step(params, state)
  before = step._cache_size()  # pylint: disable=protected-access
  params, state = step(params, state)
  assert step._cache_size() == before  # pylint: disable=protected-access


@pytest.mark.parametrize("name", ALIASES)
def test_inject_hyperparams_equality(name):
  params = [-jnp.ones((2, 3)), jnp.ones((2, 5, 2))]
  grads = [jnp.ones((2, 3)), -jnp.ones((2, 5, 2))]
  factory = FACTORIES[name]
  tx = factory(learning_rate=1e-2)
  injected = optax.inject_hyperparams(factory, static_args=("ns_steps",))(learning_rate=1e-2)
  updates, state = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
  updates_i, state_i = jax.jit(injected.update)(grads, jax.jit(injected.init)(params), params)
  for a, b in zip(jax.tree.leaves(updates_i), jax.tree.leaves(updates)):
    np.testing.assert_allclose(a, b, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state_i.inner_state), jax.tree.leaves(state)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("name", ALIASES)
def test_preserve_dtype_and_multisteps(name, dtype):
  params = jnp.array([1.0, 2.0], dtype)
  grads = jax.grad(lambda x: jnp.sum(x**2))(params)
  tx = FACTORIES[name](learning_rate=1e-2)
  updates, _ = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
  assert updates.dtype == params.dtype
  acc = optax.MultiSteps(FACTORIES[name](learning_rate=1e-2), every_k_schedule=4)
  updates, _ = jax.jit(acc.update)(grads, jax.jit(acc.init)(params), params)
  np.testing.assert_array_equal(updates, jnp.zeros_like(grads))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("name", ALIASES)
def test_state_dtype_stable_under_cond(name, dtype):
  with jax.enable_x64(dtype == "float64"):
    tx = FACTORIES[name](learning_rate=1e-2)
    params, _, loss = _parabola(jnp.dtype(dtype))

    @jax.jit
    def step(params, state):
      grads = jax.grad(loss)(params)
      cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
      updates, state = jax.lax.cond(cond, lambda: tx.update(grads, state, params),
                                    lambda: (params, state))
      return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(2):
      params, new_state = step(params, state)
      assert params.dtype == jnp.dtype(dtype)
      state = new_state


@pytest.mark.parametrize("name", ALIASES)
def test_schedule_equals_constant(name):
  params, _, loss = _matrix_parabola(jnp.float32)
  runs = [_run(FACTORIES[name](learning_rate=lr), params, loss, 20)
          for lr in (1e-3, optax.constant_schedule(1e-3))]
  np.testing.assert_allclose(runs[0], runs[1], rtol=1e-6)


@pytest.mark.parametrize("name", FACTORIES)
def test_zero_size_matrix_gets_an_empty_update(name):
  """As optax: a zero-size matrix's update is empty (nothing to orthogonalise)."""
  params = {"w": jnp.zeros((0, 4)), "v": jnp.ones((3, 4))}
  matrices = {"w": View(0, 1), "v": View(0, 1)}
  hidden = {} if name == "scale_by_muon" else {"hidden": {"w": True, "v": True}}
  tx = FACTORIES[name](learning_rate=1e-2, matrices=matrices, **hidden)
  updates, _ = tx.update(params, tx.init(params), params)
  assert updates["w"].shape == (0, 4)
  assert bool(jnp.all(jnp.isfinite(updates["v"])))
  ref = FACTORIES[name](learning_rate=1e-2, matrices=View(0, 1),
                        **({} if name == "scale_by_muon" else {"hidden": True}))
  np.testing.assert_allclose(updates["v"], ref.update(params["v"], ref.init(params["v"]),
                                                      params["v"])[0], rtol=1e-6)


@pytest.mark.parametrize("view,field", [
    (View(0, 2), "output_axes"),
    (View(3, 1), "reduction_axes"),
    (View(0, 1, blocks=(1, 3)), "blocks"),
])
@pytest.mark.parametrize("name", FACTORIES)
def test_malformed_views_name_the_field_and_leaf(name, view, field):
  params = {"layer": {"w": jnp.ones((3, 4))}}
  hidden = {} if name == "scale_by_muon" else {"hidden": {"layer": {"w": True}}}
  tx = FACTORIES[name](learning_rate=1e-2, matrices={"layer": {"w": view}}, **hidden)
  with pytest.raises(ValueError, match=rf"{field}.*'layer/w'"):
    tx.init(params)


def test_view_construction_errors():
  with pytest.raises(TypeError, match="reduction_axes"):
    View("0", 1)
  with pytest.raises(ValueError, match="share"):
    View(0, 0)


def test_optax_dimension_numbers_are_views():
  params = {"w": jax.random.normal(jax.random.key(3), (6, 4))}
  dims = optax.contrib.MuonDimensionNumbers(0, 1)
  want = _one_update(nlr.muon, params, matrices={"w": View(0, 1)})
  for matrices in ({"w": dims}, dims):
    got = _one_update(nlr.muon, params, matrices=matrices)
    np.testing.assert_allclose(got["w"], want["w"], rtol=1e-6)

