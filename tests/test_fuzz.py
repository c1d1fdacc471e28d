"""Property-based fuzzing of every per-unit registry entry (hypothesis).

Random nested parameter trees (dicts, lists, tuples, empty containers, ``None``
leaves; 0-d, 1-d, empty and >= 4-d leaves; float32 / bfloat16 / float16 mixed
in one tree) x every per-unit entry of :mod:`tests.registry` x granularity x
``neuron_axes`` (None, one int, a per-leaf pytree of specs, a callable) x
``state_dtype`` x clamps. Valid input must run, keep every update's shape and
dtype, keep every rate within ``[min_lr, max_lr]`` with the documented unit
shape, and give finite updates for finite gradients. Invalid input (an
out-of-range or non-int neuron axis, an unknown granularity, a negative rate,
``min_lr > max_lr``) must raise the documented ``ValueError`` / ``TypeError``
naming the argument.

Profiles, chosen by the environment variable ``HYPOTHESIS_PROFILE``:

* ``ci`` (default): a few derandomised examples per entry, for every run;
* ``soak``: 1000 random examples per entry and test, e.g.
  ``HYPOTHESIS_PROFILE=soak pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import optax

import optax_neuronlr as nlr
from tests.registry import PER_UNIT, Entry

settings.register_profile(
    "ci", max_examples=4, deadline=None, derandomize=True, database=None,
    suppress_health_check=list(HealthCheck), print_blob=True)
settings.register_profile(
    "soak", max_examples=1000, deadline=None, database=None,
    suppress_health_check=list(HealthCheck), print_blob=True)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

FLOAT_DTYPES = ("float32", "bfloat16", "float16")


def over(contract: str, entries=PER_UNIT):
  params = []
  for e in entries:
    reason = e.xfail_reason(contract)
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    params.append(pytest.param(e, id=e.name, marks=marks))
  return pytest.mark.parametrize("entry", params)


# ---------------------------------------------------------------------------
# Random trees.


@dataclasses.dataclass(frozen=True)
class Leaf:
  """A leaf to be: its shape, dtype and the decade of its values."""

  shape: tuple[int, ...]
  dtype: str
  decade: int
  zeros: bool  # a part of the gradient is exactly zero

  @property
  def ndim(self) -> int:
    return len(self.shape)


def _is_leaf(x: Any) -> bool:
  return isinstance(x, Leaf)


small = st.integers(0, 3)
shapes = st.one_of(
    st.just(()),                                            # 0-d
    st.tuples(small),                                       # 1-d (maybe empty)
    st.lists(small, min_size=2, max_size=3).map(tuple),     # 2-d, 3-d
    st.lists(st.integers(0, 2), min_size=4, max_size=5).map(tuple),  # >= 4-d
)
keys = st.sampled_from(["kernel", "bias", "scale", "k0", "k1", "layer_2", "layer_10"])


def trees_of(dtypes: tuple[str, ...] = FLOAT_DTYPES) -> st.SearchStrategy:
  """Nested dicts / lists / tuples of up to 6 :class:`Leaf` or ``None``."""
  leaves = st.builds(Leaf, shapes, st.sampled_from(dtypes), st.integers(-6, 2),
                     st.booleans())
  return st.recursive(
      st.one_of(leaves, leaves, leaves, st.none()),
      lambda children: st.one_of(
          st.dictionaries(keys, children, min_size=0, max_size=3),
          st.lists(children, min_size=0, max_size=3),
          st.lists(children, min_size=1, max_size=3).map(tuple),
      ),
      max_leaves=6,
  )


trees = trees_of()


def entry_trees(entry: Entry) -> st.SearchStrategy:
  """Random trees, steering around the entry's known, reproduced findings."""
  dtypes = FLOAT_DTYPES
  if "float16_adam" in entry.fuzz_avoid:
    dtypes = tuple(d for d in dtypes if d != "float16")
  return trees_of(dtypes)


def materialise(tree: Any, seed: int) -> tuple[Any, Any]:
  """``(params, grads)`` arrays for a tree of :class:`Leaf`."""
  rng = np.random.default_rng(seed)

  def make(leaf: Leaf):
    scale = 10.0 ** leaf.decade
    p = rng.normal(size=leaf.shape) * scale
    g = rng.normal(size=leaf.shape) * scale
    if leaf.zeros and g.size:
      g.reshape(-1)[:: 2] = 0.0
    return jnp.asarray(p, leaf.dtype), jnp.asarray(g, leaf.dtype)

  pairs = jax.tree.map(make, tree, is_leaf=_is_leaf)
  is_pair = lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], jax.Array)
  params = jax.tree.map(lambda pg: pg[0], pairs, is_leaf=is_pair)
  grads = jax.tree.map(lambda pg: pg[1], pairs, is_leaf=is_pair)
  return params, grads


def _array_leaves(tree) -> list[Leaf]:
  return [x for x in jax.tree.leaves(tree, is_leaf=_is_leaf) if _is_leaf(x)]


def _axis_spec(draw, leaf: Leaf):
  """A valid spec for one leaf: None, an int or a tuple of distinct axes."""
  if leaf.ndim == 0:
    return draw(st.sampled_from([None, 0]))  # a 0-d leaf is one unit whatever the spec
  axis = st.integers(-leaf.ndim, leaf.ndim - 1)
  kind = draw(st.sampled_from(["none", "int", "tuple"]))
  if kind == "none":
    return None
  if kind == "int":
    return draw(axis)
  picked = draw(st.lists(st.integers(0, leaf.ndim - 1), min_size=1, max_size=leaf.ndim,
                         unique=True))
  return tuple(a - leaf.ndim if draw(st.booleans()) else a for a in picked)


def _mirror(draw, node):
  """A per-leaf pytree of valid specs shaped like the tree ``node``.

  A list or tuple whose children are all ints reads as ONE multi-axis spec
  (see ``test_per_leaf_int_specs_in_a_sequence``, a reported finding), so
  such children are written as the equivalent 1-tuples here.
  """
  if node is None:
    return None
  if _is_leaf(node):
    return _axis_spec(draw, node)
  if isinstance(node, dict):
    return {k: _mirror(draw, v) for k, v in node.items()}
  children = [_mirror(draw, c) for c in node]
  if children and all(isinstance(c, int) for c in children):
    children = [(c,) for c in children]
  return type(node)(children)


def _expected_unit_shape(leaf: Leaf, granularity: str, spec) -> tuple[int, ...]:
  """The documented shape of a leaf's per-unit rates, derived independently."""
  if granularity == "element":
    return leaf.shape
  if granularity in ("tensor", "global") or leaf.ndim == 0:
    return ()
  if spec is None:
    axes = [leaf.ndim - 1]
  else:
    axes = [spec] if isinstance(spec, int) else list(spec)
  return tuple(leaf.shape[a] for a in sorted({a % leaf.ndim for a in axes}))


@st.composite
def valid_cases(draw, entry: Entry):
  tree = draw(entry_trees(entry))
  granularity = draw(st.sampled_from(entry.granularities))
  # neuron_axes only goes with granularity="neuron" (an error otherwise).
  kinds = ["none", "int", "per_leaf", "callable"] if granularity == "neuron" else ["none"]
  kind = draw(st.sampled_from(kinds))
  ndims = [l.ndim for l in _array_leaves(tree) if l.ndim]
  spec_tree = None
  if kind == "int":
    m = min(ndims, default=1)
    spec_tree = draw(st.integers(-m, m - 1))
    neuron_axes = spec_tree
  elif kind in ("per_leaf", "callable"):
    spec_tree = _mirror(draw, tree)
    neuron_axes = spec_tree if kind == "per_leaf" else (lambda params, s=spec_tree: s)
  else:
    neuron_axes = None
  overrides = dict(
      granularity=granularity,
      neuron_axes=neuron_axes,
      min_lr=draw(st.sampled_from([0.0, 1e-6, 1e-3])),
      max_lr=draw(st.sampled_from([1e-2, 0.5, 1.0])),
      state_dtype=draw(st.sampled_from([None, "float32", "bfloat16"])),
  )
  steps = draw(st.integers(1, 3))
  seed = draw(st.integers(0, 2**16))
  note(f"tree={tree!r}\nspec kind={kind} spec={spec_tree!r}\noverrides={overrides}")
  return tree, kind, spec_tree, overrides, steps, seed


def _spec_of_each_leaf(tree, kind, spec_tree) -> list:
  """Each array leaf's own spec, in flattening order."""
  n = len(_array_leaves(tree))
  if kind == "none":
    return [None] * n
  if kind == "int":
    return [spec_tree] * n
  # The mirrored spec tree: one spec per array leaf, None where params are None.
  flat_specs = []

  def walk(node, spec):
    if node is None:
      return
    if _is_leaf(node):
      flat_specs.append(spec)
      return
    if isinstance(node, dict):
      for k in sorted(node):  # jax flattens dicts in sorted key order
        walk(node[k], spec[k])
      return
    for c, s in zip(node, spec):
      walk(c, s)

  walk(tree, spec_tree)
  return flat_specs


def _run_valid(entry: Entry, case) -> None:
  tree, kind, spec_tree, overrides, steps, seed = case
  tx = entry.make(**overrides)
  params, grads = materialise(tree, seed)
  state = tx.init(params)
  for k in range(steps):
    g = jax.tree.map(lambda x: x * (-1) ** k, grads)  # sign flips every step
    updates, state = tx.update(g, state, params, **entry.extra(jnp.asarray(1.0)))
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
    assert u.shape == p.shape and u.dtype == p.dtype, (u.shape, u.dtype, p.shape, p.dtype)
    assert bool(jnp.all(jnp.isfinite(u))), "non-finite update for a finite gradient"

  rates = nlr.learning_rates(state)
  leaves = _array_leaves(tree)
  flat_rates = jax.tree.leaves(rates)
  assert len(flat_rates) == len(leaves)
  lo, hi = overrides["min_lr"], overrides["max_lr"]
  for leaf, spec, r in zip(leaves, _spec_of_each_leaf(tree, kind, spec_tree), flat_rates):
    want = _expected_unit_shape(leaf, overrides["granularity"], spec)
    assert r.shape == want, f"rates of a {leaf.shape} leaf (spec {spec!r}): {r.shape}, want {want}"
    # The clamp happens before rounding to the state dtype; rounding is monotone.
    r_lo, r_hi = jnp.asarray(lo, r.dtype), jnp.asarray(hi, r.dtype)
    assert bool(jnp.all((r >= r_lo) & (r <= r_hi))), f"rates {r} outside [{lo}, {hi}]"


@over("fuzz_valid")
@settings(PROFILE)
@given(data=st.data())
def test_valid_input_runs_and_keeps_the_contract(entry, data):
  _run_valid(entry, data.draw(valid_cases(entry)))


# ---------------------------------------------------------------------------
# Invalid input.


def _raises(entry: Entry, overrides: dict, params: Any, exc, match: str) -> None:
  """``exc`` naming the argument, when the transform is built or initialised."""
  with pytest.raises(exc, match=match):
    entry.make(**overrides).init(params)


@over("rejects_out_of_range_axis")
@settings(PROFILE)
@given(data=st.data())
def test_out_of_range_neuron_axis(entry, data):
  tree = data.draw(entry_trees(entry).filter(lambda t: any(l.ndim for l in _array_leaves(t))))
  params, _ = materialise(tree, 0)
  leaves = _array_leaves(tree)
  bad_leaf = data.draw(st.sampled_from([l for l in leaves if l.ndim]))
  bad = data.draw(st.one_of(st.integers(bad_leaf.ndim, bad_leaf.ndim + 3),
                            st.integers(-bad_leaf.ndim - 3, -bad_leaf.ndim - 1)))
  if data.draw(st.booleans()):
    neuron_axes = bad  # one spec for all leaves
  else:  # a per-leaf tree, valid except at one leaf
    spec_tree = _mirror(data.draw, tree)
    index = next(i for i, l in enumerate(leaves) if l is bad_leaf)
    neuron_axes = _replace_nth(tree, spec_tree, index, (bad,))
  note(f"neuron_axes={neuron_axes!r}")
  _raises(entry, dict(granularity="neuron", neuron_axes=neuron_axes), params,
          ValueError, "neuron_axes")


def _replace_nth(tree, spec_tree, n: int, new):
  """``spec_tree`` with the spec of the ``n``-th array leaf of ``tree`` replaced."""
  count = [0]

  def walk(node, spec):
    if node is None:
      return spec
    if _is_leaf(node):
      i = count[0]
      count[0] += 1
      return new if i == n else spec
    if isinstance(node, dict):
      return {k: walk(node[k], spec[k]) for k in sorted(node)}
    return type(node)(walk(c, s) for c, s in zip(node, spec))

  return walk(tree, spec_tree)


@over("rejects_non_int_axis")
@settings(PROFILE)
@given(bad=st.one_of(st.floats(allow_nan=False), st.text(max_size=3), st.just(True)))
def test_non_int_neuron_axis(entry, bad):
  params = {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}
  _raises(entry, dict(granularity="neuron", neuron_axes=(0, bad)), params,
          (TypeError, ValueError), "neuron_axes")


@over("rejects_unknown_granularity")
@settings(PROFILE)
@given(granularity=st.text(max_size=12))
def test_unknown_granularity(entry, granularity):
  if granularity in entry.granularities:
    granularity += "_"
  _raises(entry, dict(granularity=granularity), {"w": jnp.ones((2, 3))},
          ValueError, "granularity must be one of")


@over("rejects_negative_rate")
@settings(PROFILE)
@given(rate=st.floats(max_value=-1e-30, allow_infinity=False, allow_nan=False))
def test_negative_rate(entry, rate):
  with pytest.raises(ValueError, match="learning_rate"):
    entry.make(**{entry.rate_arg: rate})  # at construction: a Python number


@over("rejects_min_above_max")
@settings(PROFILE)
@given(lo_hi=st.tuples(st.floats(0, 10), st.floats(0, 10)).filter(lambda t: t[0] < t[1]))
def test_min_lr_above_max_lr(entry, lo_hi):
  lo, hi = lo_hi
  with pytest.raises(ValueError, match=r"min_lr.*max_lr"):
    entry.make(min_lr=hi, max_lr=lo)


# ---------------------------------------------------------------------------
# Findings of the fuzzer, kept as minimal reproductions (xfail, strict: a fix
# turns them into XPASS failures; then drop the xfail and the entry's
# ``fuzz_avoid`` / ``xfail`` flags in registry.py).


def test_neuron_axes_lists_hold_per_leaf_specs_tuples_are_one_spec():
  """Found by the fuzzer (a list of ints was read as one multi-axis spec); the
  rule now: a list is a container of per-leaf specs, a tuple of ints is one
  spec, and a spec given for a sub-tree covers all its leaves."""
  def units(params, spec):
    tx = nlr.scale_by_grad_history_lr(0.1, granularity="neuron", neuron_axes=spec)
    return jax.tree.map(lambda x: x.shape, tx.init(params).grad_ema)

  assert units([jnp.ones((2, 3)), jnp.ones((3, 2))], [0, 1]) == [(2,), (2,)]
  assert units({"a": (jnp.ones((2, 3, 4)), jnp.ones((3, 5, 2)))}, {"a": (0, 2)}) == {
      "a": ((2, 4), (3, 2))}
  with pytest.raises(ValueError, match="neuron_axes 2 is out of range for leaf '1'"):
    units((jnp.ones((2, 3, 4)), jnp.ones((3, 2))), (2, 0))


@pytest.mark.xfail(strict=True, reason=(
    "Adam directions in float16 (adam_hd, direction=optax.scale_by_adam()): "
    "optax keeps Adam's moments in the params' dtype, and eps=1e-8 is 0 in "
    "float16, so a zero or small (|g| < ~3e-3) gradient gives a NaN/inf "
    "update; optax.adam itself does the same"))
@pytest.mark.parametrize("make", [
    lambda: nlr.adam_hd(0.05, hyper_lr=1e-4),
    lambda: nlr.sign_consistency_lr(0.05, direction=optax.scale_by_adam()),
], ids=["adam_hd", "sign_consistency_lr_adam_direction"])
@pytest.mark.parametrize("g", [0.0, 1e-3])
def test_adam_direction_float16_small_gradient(make, g):
  tx = make()
  params = jnp.asarray(0.5, jnp.float16)
  updates, _ = tx.update(jnp.asarray(g, jnp.float16), tx.init(params), params)
  assert bool(jnp.isfinite(updates))


# Found by the fuzzer, fixed in a2b9cdc; kept as regression tests.


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_param_groups_hyperparameters_of_half_params(dtype):
  """Were stored in the params' dtype: eps=1e-8 -> 0 in float16, max_lr=0.01 ->
  0.010002 (rates above max_lr), beta=0.9 -> 0.8984 in bfloat16."""
  params = {"w": jnp.full((3,), 0.5, dtype)}
  grads = {"w": jnp.asarray([0.0, 1e-3, 2.0], dtype)}
  tx = nlr.param_groups(nlr.grad_history_lr, [{"params": ".*"}],
                        learning_rate=0.05, max_lr=0.01, eps=1e-8, beta=0.9)
  _, state = tx.update(grads, tx.init(params), params)
  hp = nlr.get_hyperparams(state)["group_0"]
  assert float(hp["eps"]) == pytest.approx(1e-8, rel=1e-6)
  assert float(hp["beta"]) == pytest.approx(0.9, rel=1e-6)
  assert bool(jnp.all(nlr.learning_rates(state)["w"] <= jnp.float32(0.01)))


def test_param_groups_mixed_bfloat16_float16_params():
  """Init raised: optax.inject_hyperparams' default hyperparam_dtype is the
  params' 'highest' dtype, which bfloat16 + float16 do not have."""
  params = {"a": jnp.ones(2, jnp.bfloat16), "b": jnp.ones(2, jnp.float16)}
  tx = nlr.param_groups(nlr.grad_history_lr, [{"params": ".*"}], learning_rate=0.05)
  tx.update(params, tx.init(params), params)
