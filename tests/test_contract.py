"""The contract every public optimizer and transform keeps (after optax's
``alias_test.py``, ``contrib/_common_test.py`` and ``sharding_test.py``).

Parametrised over :data:`tests.registry.ENTRIES`: an entry added there joins
every contract below. Each contract is one test function; a known library bug
is listed in the entry's ``xfail`` flag and runs here as
``xfail(strict=True)``; a case whose assumption does not hold for a
documented reason is skipped with that reason.

The generic tests of optax (0.2.8) and where they live here:

=======================================================  ==========================================
optax test                                               contract here
=======================================================  ==========================================
alias ``test_optimization`` (parabola), contrib          ``test_converges_quadratic_and_compiles_once``
``test_optimizers`` (parabola, matrix parabola, mixed
1-D/2-D target), "doesn't recompile on 2nd call"
alias ``test_optimization`` (Rosenbrock), contrib        ``test_converges_rosenbrock_and_compiles_once``
``test_optimizers`` (Rosenbrock)
subtest "tree_map_params works" (``optax.tree.map_params``)  ``test_tree_map_params_maps_the_param_shaped_trees``
alias/contrib ``test_optimizers_accept_extra_args``      ``test_ignores_unknown_extra_args``
alias/contrib                                            ``test_inject_hyperparams_same_updates_and_inner_state``
``test_optimizers_can_be_wrapped_in_inject_hyperparams``
alias ``test_explicit_dtype``                            ``test_statistics_and_rates_in_state_dtype``
alias/contrib ``test_preserve_dtype``,                   ``test_dtypes_kept_and_state_types_stable``
``test_state_shape_dtype_shard_stability`` (dtypes,
``lax.cond`` stability)
sharding ``test_init_with_abstract_input``               ``test_init_from_shape_dtype_structs``
sharding ``test_state_sharding_type_init_match_update``,  ``test_state_types_stable_on_a_mesh``
``..._preserved_with_jit`` (1-device mesh, auto and
explicit axes; no recompilation; ``fori_loop``)
alias/contrib ``test_gradient_accumulation``             ``test_multi_steps_equals_the_large_batch_step``
contrib ``test_optimizers_accept_learning_rate_          ``test_constant_schedule_equals_the_number``
schedule_if_type_annotated_as_such``
=======================================================  ==========================================

Not ported: complex parameters (the rules' statistics are real: ``|g|``,
``sign(g)``), optimizer-specific tests (LBFGS, ...). Beyond optax: rates read
back shaped like the params, ``optax.apply_if_finite``, ``optax.masked``,
``optax.partition``, donation and step counters at int32's limit.

Cost: compilation dominates on CPU, so every contract compiles at most one
function per entry (the convergence runs are a single ``fori_loop``; dtype
checks only trace, with ``jax.eval_shape``; the donation and step-counter
contracts share one compiled step).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
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


def _marks(entry: Entry, contract: str, case: str = "") -> list:
  """``skip`` (a documented reason) or ``xfail(strict=True)`` (a known bug)."""
  skip = entry.skip_reason(contract, case)
  if skip:
    return [pytest.mark.skip(reason=skip)]
  reason = entry.xfail_reason(contract, case)
  return [pytest.mark.xfail(strict=True, reason=reason)] if reason else []


def over(contract: str, entries=ENTRIES, cases=None):
  """Parametrises a test over ``entries`` (and ``cases``, as ``case``);
  ``entry.skip`` / ``entry.xfail`` mark the documented exceptions and the
  known failures."""
  params = []
  for e in entries:
    for case in cases if cases else (None,):
      marks = _marks(e, contract, case or "")
      if case is None:
        params.append(pytest.param(e, id=e.name, marks=marks))
      else:
        params.append(pytest.param(e, case, id=f"{e.name}-{case}", marks=marks))
  return pytest.mark.parametrize("entry,case" if cases else "entry", params)


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


def _takes_schedule(entry: Entry) -> bool:
  """As optax's contrib test: the rate argument is annotated as taking a schedule."""
  annotation = inspect.signature(entry.factory).parameters[entry.rate_arg].annotation
  if isinstance(annotation, str):  # from __future__ import annotations
    return annotation.split(".")[-1] in ("ScalarOrSchedule", "Schedule")
  return annotation in (optax.ScalarOrSchedule, optax.Schedule)


@over("schedule")
def test_constant_schedule_equals_the_number(entry):
  if not _takes_schedule(entry):
    pytest.skip(f"{entry.factory.__name__}'s {entry.rate_arg} is not annotated "
                "optax.ScalarOrSchedule: it takes no schedule")
  rate = entry.kwargs.get(
      entry.rate_arg, inspect.signature(entry.factory).parameters[entry.rate_arg].default)
  rate = 0.5 if callable(rate) else rate
  with_schedule = _first_steps(
      entry, entry.make(**{entry.rate_arg: optax.constant_schedule(rate)}), 3)
  with_number = _first_steps(entry, entry.make(**{entry.rate_arg: rate}), 3)
  for (u_s, s_s), (u_n, s_n) in zip(with_schedule, with_number):
    chex.assert_trees_all_close(u_s, u_n, rtol=1e-6, atol=0)
    if entry.per_unit:  # the states may differ in structure (optax.scale_by_schedule)
      chex.assert_trees_all_close(nlr.learning_rates(s_s), nlr.learning_rates(s_n),
                                  rtol=1e-6, atol=0)


def _param_copy_finder(params):
  """``is_leaf`` that stops at sub-trees structured like ``params`` (masked
  leaves allowed; per-unit statistics included): the trees
  ``optax.tree.map_params`` must map."""
  is_masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
  treedef = jax.tree.structure(params)
  shapes = [p.shape for p in jax.tree.leaves(params)]

  def is_copy(x):
    if isinstance(x, (jax.Array, np.ndarray)) or x is None:
      return False
    try:
      if jax.tree.structure(x, is_leaf=is_masked) != treedef:
        return False
    except Exception:  # pylint: disable=broad-except
      return False
    leaves = jax.tree.leaves(x, is_leaf=is_masked)
    # Per-unit statistics have no more dimensions than their parameter.
    return all(is_masked(l) or (hasattr(l, "shape") and len(l.shape) <= len(s))
               for l, s in zip(leaves, shapes))

  return is_copy


@over("map_params")
def test_tree_map_params_maps_the_param_shaped_trees(entry):
  """``optax.tree.map_params(tx, f, state, params)`` (the subtest of optax's
  ``test_optimization``) runs, calls ``f`` on the trees in the state that are
  structured like the params, each leaf with its parameter, and leaves every
  other leaf alone. As for ``optax.adafactor``'s factored moments, per-unit
  statistics (one value per neuron, block or tensor) are params-structured
  trees, so ``f`` sees them too, with fewer dimensions than their parameter;
  ``nlr.state_shardings`` gives them the right shardings."""
  map_params = getattr(getattr(optax, "tree", None), "map_params", None) or (
      optax.tree_utils.tree_map_params)
  tx = entry.make()
  params = QUADRATIC.init()
  state = _first_steps(entry, tx, 1, params)[0][1]
  chex.assert_trees_all_equal(map_params(tx, lambda v: v, state), state)  # optax's no-op
  wrong = []
  is_masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731

  def f(leaf, param):
    if is_masked(leaf):  # optax.masked's copies (param groups)
      return leaf
    if jnp.ndim(leaf) > jnp.ndim(param):
      wrong.append(f"{jnp.shape(leaf)} for a {jnp.shape(param)} parameter")
    return jnp.full_like(leaf, 7)

  # is_leaf: optax's documented way through optax.masked's sub-trees.
  mapped = map_params(tx, f, state, params, is_leaf=is_masked)
  assert not wrong, f"f got leaves that are not params-structured statistics: {wrong}"
  is_copy = _param_copy_finder(params)
  old = jax.tree_util.tree_flatten_with_path(state, is_leaf=is_copy)[0]
  new = jax.tree_util.tree_flatten_with_path(mapped, is_leaf=is_copy)[0]
  assert [p for p, _ in old] == [p for p, _ in new]
  for (path, a), (_, b) in zip(old, new):
    if is_copy(a):
      for x in jax.tree.leaves(b):
        assert np.all(np.asarray(x) == 7), f"{jax.tree_util.keystr(path)} not mapped"
    else:
      chex.assert_trees_all_equal(a, b, custom_message=jax.tree_util.keystr(path))


def _mesh(axis_type: str):
  """A 1-device mesh with ``axis_type`` axes and the function that makes it the
  current mesh in a ``with`` block (skips where jax has no sharding in types)."""
  axis_types = getattr(jax.sharding, "AxisType", None)
  set_mesh = getattr(jax, "set_mesh", None) or getattr(jax.sharding, "use_mesh", None)
  if axis_types is None or set_mesh is None:
    pytest.skip(f"jax {jax.__version__} has no jax.sharding.AxisType / set_mesh")
  mesh = jax.make_mesh((1,), ("x",), axis_types=(getattr(axis_types, axis_type.capitalize()),),
                       devices=jax.devices()[:1])
  return mesh, set_mesh


def _typeofs(tree):
  return [(jax.tree_util.keystr(p), jax.typeof(x))
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


@over("sharding", cases=("auto", "explicit"))
def test_state_types_stable_on_a_mesh(entry, case):
  """optax's sharding tests on a 1-device mesh (``auto`` and ``explicit``
  axes), params sharded along ``x``: ``init``, ``jit(init)`` and the states
  that a jitted ``fori_loop`` over ``update`` returns have one type (shape,
  dtype, weak type and, with explicit axes, sharding); the second call to the
  jitted step neither retraces nor recompiles."""
  mesh, set_mesh = _mesh(case)
  sharding = jax.sharding.NamedSharding
  spec = jax.sharding.PartitionSpec
  tx = entry.make()
  traces = []

  def body(k, carry):
    params, state = carry
    loss, g = registry.noisy_grad(params, k)
    updates, state = tx.update(g, state, params, **entry.extra(loss))
    return optax.apply_updates(params, updates), state

  @jax.jit
  def mesh_run(params, state, n):
    traces.append(None)
    return jax.lax.fori_loop(0, n, body, (params, state))

  with set_mesh(mesh):
    p = QUADRATIC.init()
    params = {"w": jax.device_put(p["w"], sharding(mesh, spec(None, "x"))),
              "b": jax.device_put(p["b"], sharding(mesh, spec("x")))}
    state0 = tx.init(params)
    assert _typeofs(jax.jit(tx.init)(params)) == _typeofs(state0), "jit(init) vs init"
    params1, state1 = mesh_run(params, state0, 1)
    with _compilations() as compiled:
      params2, state2 = mesh_run(params1, state1, 2)
  assert _typeofs(state1) == _typeofs(state0), "the state's types changed in update"
  assert _typeofs(state2) == _typeofs(state0)
  assert _typeofs(params2) == _typeofs(params), "the params' types changed"
  assert len(traces) == 1, "the second call retraced"
  assert not [m for m in compiled if "mesh_run" in m], f"the second call recompiled: {compiled}"
  chex.assert_tree_all_finite(params2)


# ---------------------------------------------------------------------------
# dtypes: updates keep the incoming dtype; the state's types are stable.

PARAM_DTYPES = ("bfloat16", "float16", "float32", "float64")
STATE_DTYPES = (None, "float32", "bfloat16")


def _dtype_cases():
  cases = []
  for e in ENTRIES:
    for dtype in PARAM_DTYPES:
      for sd in STATE_DTYPES if e.state_dtype else (None,):
        marks = _marks(e, "dtypes", f"{dtype}-state_{sd}")
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


def _state_dtype_cases():
  cases = []
  for e in ENTRIES:
    if not e.state_dtype:
      continue
    for dtype in ("bfloat16", "float32", "float64"):
      for sd in STATE_DTYPES:
        marks = _marks(e, "state_dtype", f"{dtype}-state_{sd}")
        cases.append(pytest.param(e, dtype, sd, id=f"{e.name}-{dtype}-state_{sd}", marks=marks))
  return cases


def _is_rule_state(x) -> bool:
  return isinstance(getattr(type(x), "rule", None), nlr.Rule) and hasattr(x, "_fields")


def _statistics(state):
  """``[(path, statistic leaf)]`` of every rule state in ``state``."""
  out = []
  for path, rs in jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_rule_state)[0]:
    if not _is_rule_state(rs):
      continue
    rule = type(rs).rule
    for name in rule.unit_stats + rule.element_stats:
      for p, x in jax.tree_util.tree_flatten_with_path(getattr(rs, name))[0]:
        out.append((jax.tree_util.keystr(path) + f".{name}" + jax.tree_util.keystr(p), x))
  return out


@pytest.mark.parametrize("entry,dtype,state_dtype", _state_dtype_cases())
def test_statistics_and_rates_in_state_dtype(entry, dtype, state_dtype):
  """optax's ``test_explicit_dtype``: the statistics (every rule's unit and
  element statistics) and the rates are in ``state_dtype``; None gives the
  params' dtype, except float32 for half-precision params (DESIGN §2, as
  documented by every ``state_dtype`` argument; optax would keep bfloat16).
  States of optax directions keep optax's own dtypes and are not checked."""
  with jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext():
    steps = _two_abstract_steps(entry, dtype, state_dtype)
    if state_dtype is not None:
      want = jnp.dtype(state_dtype)
    else:
      want = jnp.dtype("float32") if dtype == "bfloat16" else jnp.dtype(dtype)
    for k, _, _, state in steps:
      stats = _statistics(state)
      assert stats, "no rule statistics found in the state"
      bad = [f"{p}: {x.dtype}" for p, x in stats if jnp.dtype(x.dtype) != want]
      assert not bad, f"step {k}: statistics not in {want}: {bad}"
      if entry.per_unit:
        rates = jax.eval_shape(nlr.learning_rates, state)
        got = {str(r.dtype) for r in jax.tree.leaves(rates)}
        assert got == {str(want)}, f"step {k}: rates in {got}, want {want}"


@over("rates_shape", PER_UNIT)
def test_rates_shaped_like_params(entry):
  """:func:`optax_neuronlr.learning_rates` is "shaped like the params": one
  per-unit array per leaf, whatever the granularity."""
  tx = entry.make()
  params = QUADRATIC.init()
  for k, (_, state) in enumerate([(None, tx.init(params))] + _first_steps(entry, tx, 1, params)):
    rates = nlr.learning_rates(state)
    assert jax.tree.structure(rates) == jax.tree.structure(params), (
        f"step {k}: learning_rates gave {jax.tree.structure(rates)}, not the "
        f"params' structure {jax.tree.structure(params)}")
    for (path, r), p in zip(jax.tree_util.tree_flatten_with_path(rates)[0],
                            jax.tree.leaves(params)):
      assert r.ndim <= p.ndim, f"{jax.tree_util.keystr(path)}: rates {r.shape} for a {p.shape} leaf"


# ---------------------------------------------------------------------------
# Abstract init.


@over("eval_shape_init")
def test_init_from_shape_dtype_structs(entry):
  """``jax.eval_shape(init)`` and, as optax's sharding test, ``init`` called
  on ``ShapeDtypeStruct`` leaves directly."""
  tx = entry.make()
  params = QUADRATIC.init()
  shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  concrete = tx.init(params)
  _assert_same_types(jax.eval_shape(tx.init, shapes), concrete, "eval_shape(init) vs init")
  _assert_same_types(tx.init(shapes), concrete, "init(ShapeDtypeStruct) vs init")


@over("empty_params")
def test_params_without_arrays(entry):
  """A tree with no array leaf (as every optax transform takes it): ``init``
  and ``update`` run and return that empty tree."""
  params = {"frozen": None, "empty": {}}
  tx = entry.make()
  state = tx.init(params)
  updates, state = tx.update(params, state, params, **entry.extra(jnp.asarray(1.0)))
  assert jax.tree.structure(updates) == jax.tree.structure(params)


# ---------------------------------------------------------------------------
# optax wrappers.


@over("multi_steps", cases=("float32", "bfloat16"))
def test_multi_steps_equals_the_large_batch_step(entry, case):
  """optax's ``test_gradient_accumulation``: ``MultiSteps(k=2)`` gives zero
  updates (in the params' dtype) on odd mini-steps and, every second step, the
  entry's update for the mean of the two gradients (the large-batch step).

  In bfloat16 MultiSteps' running mean rounds differently from the mean taken
  once; only an entry whose update is linear in the gradient (``linear``)
  must then still give the large-batch step (to bfloat16 rounding); the
  others just run (zeros, dtype, finite)."""
  tx = entry.make()
  ms = optax.MultiSteps(tx, every_k_schedule=2)
  params = jax.tree.map(lambda p: p.astype(case), QUADRATIC.init())
  steps = 4 if case == "float32" else 2
  stack = lambda trees: jax.tree.map(lambda *x: jnp.stack(x), *trees)  # noqa: E731

  @jax.jit
  def both(params):
    # Each update is traced once, in a scan (compilation dominates).
    losses, grads = stack([registry.noisy_grad(params, k) for k in range(steps)])

    def run(tx, state, xs):
      def step(state, x):
        loss, g = x
        u, state = tx.update(g, state, params, **entry.extra(loss))
        return state, u
      return jax.lax.scan(step, state, xs)

    ms_state, ms_out = run(ms, ms.init(params), (losses, grads))
    if case != "float32" and not entry.linear:
      return ms_out, None, None, None
    means = jax.tree.map(lambda g: (g[0::2] + g[1::2]) / 2, grads)
    state, out = run(tx, tx.init(params), (losses[1::2], means))
    return ms_out, ms_state.inner_opt_state, out, state

  ms_out, ms_inner, out, state = both(params)
  at = lambda tree, k: jax.tree.map(lambda x: x[k], tree)  # noqa: E731
  assert {x.dtype for x in jax.tree.leaves(ms_out)} == {jnp.dtype(case)}
  for k in range(0, steps, 2):
    chex.assert_trees_all_equal(at(ms_out, k), jax.tree.map(jnp.zeros_like, at(ms_out, k)))
  chex.assert_tree_all_finite(ms_out)
  if case == "float32":
    chex.assert_trees_all_close(at(ms_out, 1), at(out, 0), rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(at(ms_out, 3), at(out, 1), rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(ms_inner, state, rtol=1e-5, atol=1e-7)
  elif entry.linear:
    close = lambda a, b: np.testing.assert_allclose(  # noqa: E731
        np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=2**-6, atol=1e-3)
    jax.tree.map(close, at(ms_out, 1), at(out, 0))


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
