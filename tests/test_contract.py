"""The contract every public optimizer and transform keeps (after optax's
``alias_test.py`` and ``contrib/_common_test.py``).

Parametrised over :data:`tests.registry.ENTRIES`: an entry added there joins
every contract below. Each contract is one test function; a known library bug
is listed in the entry's ``xfail`` flag and runs here as
``xfail(strict=True)``.

Cost: compilation dominates on CPU, so every contract compiles at most one
function per entry (the convergence runs are a single ``fori_loop``; dtype
checks only trace, with ``jax.eval_shape``; the donation and step-counter
contracts share one compiled step).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_neuronlr as nlr
from tests import registry
from tests.registry import ENTRIES, PER_UNIT, QUADRATIC, Entry

INT32_MAX = int(np.iinfo(np.int32).max)


def over(contract: str, entries=ENTRIES):
  """Parametrises a test over ``entries``; ``entry.xfail[contract]`` marks it."""
  params = []
  for e in entries:
    reason = e.xfail_reason(contract)
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    params.append(pytest.param(e, id=e.name, marks=marks))
  return pytest.mark.parametrize("entry", params)


def _types(tree):
  """``[(path, (shape, dtype, weak_type))]`` of the array leaves of ``tree``."""
  return [
      (jax.tree_util.keystr(p),
       (tuple(x.shape), jnp.dtype(x.dtype), bool(getattr(x, "weak_type", False))))
      for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
  ]


def _assert_same_types(a, b, what: str):
  assert jax.tree.structure(a) == jax.tree.structure(b), (
      f"{what}: structures differ\n{jax.tree.structure(a)}\n{jax.tree.structure(b)}")
  bad = [f"{p}: {x} -> {y}" for (p, x), (_, y) in zip(_types(a), _types(b)) if x != y]
  assert not bad, f"{what}: (shape, dtype, weak_type) changed: {bad}"


@contextlib.contextmanager
def _compilations():
  """The messages of the XLA compilations in the block (as optax's
  ``test_utils.log_compilations``)."""
  found: list[str] = []

  class Handler(logging.Handler):

    def emit(self, record):
      message = record.getMessage()
      if re.search(r"Finished .* compilation", message):
        found.append(message)

  handler = Handler()
  logger = logging.getLogger("jax")
  logger.addHandler(handler)
  try:
    with jax.log_compiles(True):
      yield found
  finally:
    logger.removeHandler(handler)


def _is_count(path) -> bool:
  return bool(path) and jax.tree_util.keystr(path[-1:]).strip(".[]'\"").endswith("count")


def _first_steps(entry: Entry, tx, steps: int, params=None):
  """Eager reference run: updates and states of ``steps`` steps."""
  params = QUADRATIC.init() if params is None else params
  state = tx.init(params)
  out = []
  for k in range(steps):
    loss, g = registry.noisy_grad(params, k)
    updates, state = tx.update(g, state, params, **entry.extra(loss))
    params = optax.apply_updates(params, updates)
    out.append((updates, state))
  return out


# ---------------------------------------------------------------------------
# Convergence, and no recompilation on the second update.


def _converge(entry: Entry, target_name: str):
  steps, overrides = getattr(entry, target_name)
  target = registry.TARGETS[target_name]
  tx = entry.make(**overrides)
  traces = []

  def body(_, carry):
    params, state = carry
    loss, grads = jax.value_and_grad(target.loss)(params)
    updates, state = tx.update(grads, state, params, **entry.extra(loss))
    return optax.apply_updates(params, updates), state

  @jax.jit
  def contract_run(params, state, n):
    traces.append(None)  # a Python side effect: runs once per trace
    return jax.lax.fori_loop(0, n, body, (params, state))

  params = target.init()
  params, state = contract_run(params, tx.init(params), 1)  # the first update
  with _compilations() as compiled:
    params, state = contract_run(params, state, steps - 1)  # the state it returned
  assert len(traces) == 1, (
      "the state returned by update differs in type from init's (dtype or weak "
      "type): the second call retraced")
  assert not [m for m in compiled if "contract_run" in m], (
      f"the second call recompiled: {compiled}")
  chex.assert_tree_all_finite(params)
  chex.assert_trees_all_close(params, target.optimum(), rtol=3e-2, atol=3e-2)


@over("converges_quadratic")
def test_converges_quadratic_and_compiles_once(entry):
  _converge(entry, "quadratic")


@over("converges_rosenbrock")
def test_converges_rosenbrock_and_compiles_once(entry):
  _converge(entry, "rosenbrock")


# ---------------------------------------------------------------------------
# Extra args, inject_hyperparams.


@over("extra_args")
def test_ignores_unknown_extra_args(entry):
  tx = entry.make()
  params = QUADRATIC.init()
  state = tx.init(params)
  for k in range(2):
    loss, g = registry.noisy_grad(params, k)
    want, want_state = tx.update(g, state, params, **entry.extra(loss))
    got, state = tx.update(g, state, params, unexpected_extra_arg=1,
                           another_one=jnp.ones(3), **entry.extra(loss))
    chex.assert_trees_all_equal(got, want)
    chex.assert_trees_all_equal(state, want_state)
    params = optax.apply_updates(params, got)


@over("inject_hyperparams")
def test_inject_hyperparams_same_updates_and_inner_state(entry):
  tx = entry.make()
  injected = optax.inject_hyperparams(entry.factory, static_args=entry.static_args)(
      **entry.kwargs)
  params = QUADRATIC.init()
  state, inj_state = tx.init(params), injected.init(params)
  chex.assert_trees_all_close(inj_state.inner_state, state)
  for k in range(3):
    loss, g = registry.noisy_grad(params, k)
    updates, state = tx.update(g, state, params, **entry.extra(loss))
    inj_updates, inj_state = injected.update(g, inj_state, params, **entry.extra(loss))
    # Injected values are float32 arrays, e.g. adam_hd's b1 = 0.9 rounded to
    # float32 where the plain transform keeps the Python float (optax's own
    # suite allows rtol=1e-3 on updates and 1e-4 on states).
    chex.assert_trees_all_close(inj_updates, updates, rtol=1e-4, atol=1e-7)
    chex.assert_trees_all_close(inj_state.inner_state, state, rtol=1e-4, atol=1e-7)
    params = optax.apply_updates(params, updates)


# ---------------------------------------------------------------------------
# dtypes: updates keep the incoming dtype; the state's types are stable.

PARAM_DTYPES = ("bfloat16", "float16", "float32", "float64")
STATE_DTYPES = (None, "float32", "bfloat16")


def _dtype_cases():
  cases = []
  for e in ENTRIES:
    for dtype in PARAM_DTYPES:
      for sd in STATE_DTYPES if e.state_dtype else (None,):
        reason = e.xfail_reason("dtypes", f"{dtype}-state_{sd}")
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        cases.append(pytest.param(e, dtype, sd, id=f"{e.name}-{dtype}-state_{sd}", marks=marks))
  return cases


def _two_abstract_steps(entry: Entry, dtype: str, state_dtype):
  """A concrete ``init``, then two updates traced (not compiled) with optax's
  ``lax.cond`` check; ``[("init" or k, grads, updates, state)]``."""
  overrides = {"state_dtype": jnp.dtype(state_dtype)} if state_dtype else {}
  tx = entry.make(**overrides)
  params = jax.tree.map(lambda p: p.astype(dtype), QUADRATIC.init())
  init_state = tx.init(params)
  steps = [("init", None, None, init_state)]

  def run(params, state):
    for k in range(2):
      loss, g = registry.noisy_grad(params, k)
      updates, new_state = tx.update(g, state, params, **entry.extra(loss))
      steps.append((k, g, updates, new_state))
      # optax's stability check: both branches of a cond must have one type.
      pred = jnp.sum(jax.tree.leaves(params)[0].astype(jnp.float32)) > 0
      state = jax.lax.cond(pred, lambda: state, lambda: new_state)  # noqa: B023
      params = optax.apply_updates(params, updates)
    return params, state

  jax.eval_shape(run, params, init_state)
  return steps


@pytest.mark.parametrize("entry,dtype,state_dtype", _dtype_cases())
def test_dtypes_kept_and_state_types_stable(entry, dtype, state_dtype):
  with jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext():
    steps = _two_abstract_steps(entry, dtype, state_dtype)
    init_state = steps[0][3]
    for k, g, updates, state in steps[1:]:
      assert jax.tree.structure(updates) == jax.tree.structure(g)
      for u, gl in zip(jax.tree.leaves(updates), jax.tree.leaves(g)):
        assert gl.dtype == jnp.dtype(dtype)
        assert u.dtype == gl.dtype, f"step {k}: update {u.dtype} for a {gl.dtype} gradient"
        assert u.shape == gl.shape
      _assert_same_types(init_state, state, f"state after update {k}")


def _rates_cases():
  cases = []
  for e in PER_UNIT:
    for dtype in ("bfloat16", "float32", "float64"):
      for sd in STATE_DTYPES:
        reason = e.xfail_reason("rates_dtype", f"{dtype}-state_{sd}")
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        cases.append(pytest.param(e, dtype, sd, id=f"{e.name}-{dtype}-state_{sd}", marks=marks))
  return cases


@pytest.mark.parametrize("entry,dtype,state_dtype", _rates_cases())
def test_rates_are_kept_in_state_dtype(entry, dtype, state_dtype):
  """DESIGN §2: ``state_dtype`` is the dtype of the statistics and rates;
  default float32 for half-precision params, the params' own dtype otherwise."""
  with jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext():
    steps = _two_abstract_steps(entry, dtype, state_dtype)
    if state_dtype is not None:
      want = jnp.dtype(state_dtype)
    else:
      want = jnp.dtype("float32") if dtype == "bfloat16" else jnp.dtype(dtype)
    for k, _, _, state in steps:
      rates = jax.eval_shape(nlr.learning_rates, state)
      got = {str(r.dtype) for r in jax.tree.leaves(rates)}
      assert got == {str(want)}, f"step {k}: rates in {got}, want {want}"


# ---------------------------------------------------------------------------
# Abstract init.


@over("eval_shape_init")
def test_init_from_shape_dtype_structs(entry):
  tx = entry.make()
  params = QUADRATIC.init()
  shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  abstract = jax.eval_shape(tx.init, shapes)
  _assert_same_types(abstract, tx.init(params), "eval_shape(init) vs init")


# ---------------------------------------------------------------------------
# optax wrappers.


@over("multi_steps")
def test_multi_steps_equals_averaged_gradients(entry):
  """``MultiSteps(k=2)``: zero updates on odd mini-steps; every second step
  the entry's update for the mean of the two gradients."""
  tx = entry.make()
  ms = optax.MultiSteps(tx, every_k_schedule=2)
  params = QUADRATIC.init()

  @jax.jit
  def both(params):
    grads = [registry.noisy_grad(params, k) for k in range(4)]
    ms_state, ms_out = ms.init(params), []
    for loss, g in grads:
      u, ms_state = ms.update(g, ms_state, params, **entry.extra(loss))
      ms_out.append(u)
    state, out = tx.init(params), []
    for (_, g1), (loss, g2) in (grads[0:2], grads[2:4]):
      mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
      u, state = tx.update(mean, state, params, **entry.extra(loss))
      out.append(u)
    return ms_out, ms_state.inner_opt_state, out, state

  ms_out, ms_inner, out, state = both(params)
  for k in (0, 2):
    chex.assert_trees_all_equal(ms_out[k], jax.tree.map(jnp.zeros_like, ms_out[k]))
  chex.assert_trees_all_close(ms_out[1], out[0], rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(ms_out[3], out[1], rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(ms_inner, state, rtol=1e-5, atol=1e-7)


@over("apply_if_finite")
def test_apply_if_finite_skips_a_nan_step(entry):
  tx = optax.apply_if_finite(entry.make(), max_consecutive_errors=3)
  params = QUADRATIC.init()

  @jax.jit
  def run(params):
    state, out = tx.init(params), []
    for k in range(3):
      loss, g = registry.noisy_grad(params, k)
      if k == 1:
        g = {**g, "w": g["w"].at[0, 1].set(jnp.nan)}
      u, state = tx.update(g, state, params, **entry.extra(loss))
      out.append((u, state))
    return out

  (u0, s0), (u1, s1), (u2, s2) = run(params)
  chex.assert_trees_all_equal(s1.inner_state, s0.inner_state)
  chex.assert_trees_all_equal(u1, jax.tree.map(jnp.zeros_like, u1))
  assert int(s1.notfinite_count) == 1 and int(s2.total_notfinite) == 1
  chex.assert_tree_all_finite((u0, u2))
  # The skipped step left no trace: steps 0 and 2 equal a run without step 1.
  plain = entry.make()
  state = plain.init(params)
  for k in (0, 2):
    loss, g = registry.noisy_grad(params, k)
    want, state = plain.update(g, state, params, **entry.extra(loss))
  chex.assert_trees_all_close(u2, want, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(s2.inner_state, state, rtol=1e-5, atol=1e-7)


def _grads_seq(steps: int = 2):
  params = QUADRATIC.init()
  return params, [registry.noisy_grad(params, k) for k in range(steps)]


def _subtree_run(entry: Entry, params, grads):
  """The entry alone on the ``w`` leaf: what it must do under a mask."""
  tx = entry.make()
  sub = {"w": params["w"]}
  state, out = tx.init(sub), []
  for loss, g in grads:
    u, state = tx.update({"w": g["w"]}, state, sub, **entry.extra(loss))
    out.append(u)
  return out, state


@over("masked")
def test_masked_leaves_pass_through(entry):
  params, grads = _grads_seq()
  tx = optax.masked(entry.make(), {"w": True, "b": False})
  state = tx.init(params)
  want, want_state = _subtree_run(entry, params, grads)
  for (loss, g), w in zip(grads, want):
    u, state = tx.update(g, state, params, **entry.extra(loss))
    chex.assert_trees_all_equal(u["b"], g["b"])
    chex.assert_trees_all_close(u["w"], w["w"], rtol=1e-6)
  if entry.per_unit:
    rates = nlr.learning_rates(state)
    assert rates["b"] is None
    chex.assert_trees_all_close(rates["w"], nlr.learning_rates(want_state)["w"], rtol=1e-6)


@over("partition")
def test_partition_with_masked_nodes(entry):
  params, grads = _grads_seq()
  tx = optax.partition({"entry": entry.make(), "sgd": optax.sgd(0.1)},
                       {"w": "entry", "b": "sgd"})
  state = tx.init(params)
  want, _ = _subtree_run(entry, params, grads)
  for (loss, g), w in zip(grads, want):
    u, state = tx.update(g, state, params, **entry.extra(loss))
    chex.assert_trees_all_close(u["b"], -0.1 * g["b"], rtol=1e-6)
    chex.assert_trees_all_close(u["w"], w["w"], rtol=1e-6)


# ---------------------------------------------------------------------------
# jit with a donated state; step counters at int32's limit.


@functools.cache
def _donated_step(name: str):
  entry = registry.BY_NAME[name]
  tx = entry.make()
  return tx, jax.jit(registry.train_step(entry, tx), donate_argnums=(1,))


@over("donation")
def test_jit_with_donated_state_over_several_steps(entry):
  tx, step = _donated_step(entry.name)
  params = QUADRATIC.init()
  want = _first_steps(entry, entry.make(), 4, params)
  state = tx.init(params)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # "Some donated buffers were not usable"
    for k in range(4):
      old = state
      params, state, updates = step(params, state, k)
      # Donated buffers are reused. Scalars the step never reads (the
      # hyperparameters it rebuilds from Python numbers) are pruned by jit and
      # so kept; every array leaf of the state must be consumed.
      kept = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_flatten_with_path(old)[0]
              if x.ndim and not x.is_deleted()]
      assert not kept, f"donated state buffers not reused: {kept}"
      chex.assert_trees_all_close(updates, want[k][0], rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(state, want[-1][1], rtol=1e-5, atol=1e-7)


@over("count_overflow")
def test_step_counters_saturate_at_int32_max(entry):
  tx, step = _donated_step(entry.name)
  params = QUADRATIC.init()
  init = tx.init(params)
  finite_at_init = [np.isfinite(x) for x in jax.tree.leaves(init)]
  state = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.full_like(x, INT32_MAX - 1) if _is_count(p) else x, init)
  counts = [p for p, _ in jax.tree_util.tree_flatten_with_path(state)[0] if _is_count(p)]
  assert counts, "the state has no step counter"
  for k in range(3):
    params, state, updates = step(params, state, k)
    chex.assert_tree_all_finite((params, updates))
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  for p, x in flat:
    if _is_count(p):
      assert int(x) == INT32_MAX, f"{jax.tree_util.keystr(p)} = {int(x)}: wrapped around"
  # No state leaf turned non-finite (max_lr=inf or plateau's best=inf at init
  # may be infinite).
  for (p, x), was in zip(flat, finite_at_init):
    assert np.all(np.isfinite(x) | ~was), jax.tree_util.keystr(p)
