"""Hyperparameters held in an optimizer state: injecting, finding, reading, setting.

The one job of this module is the ``optax.inject_hyperparams`` state:
`injected` builds it for a group (hyperparameters kept at float32 or
wider, never half precision), `is_inject_state` and the naming below
find every injected state of a state, and `get_hyperparams` /
`set_hyperparams` read and change the values (seed 003's
``param_groups[i]['lr'] *= 0.9``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
import typing
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from optax_neuronlr._src import validation
from optax_neuronlr._src.readers import unwrap_variables


_INJECT_STATES = tuple(
    getattr(optax, name)
    for name in ("InjectHyperparamsState", "InjectStatefulHyperparamsState")
    if hasattr(optax, name)
)


def _widest_float(tree: Any) -> Optional[jnp.dtype]:
  """The promotion of the float dtypes of ``tree``'s leaves (None if none).

  bfloat16 with float16 gives float32, where optax's ``tree.dtype(params,
  "highest")`` raises.
  """
  dtype = None
  for leaf in jax.tree.leaves(tree):
    leaf_dtype = jnp.dtype(getattr(leaf, "dtype", jnp.result_type(leaf)))
    if jnp.issubdtype(leaf_dtype, jnp.floating):
      dtype = leaf_dtype if dtype is None else jnp.promote_types(dtype, leaf_dtype)
  return None if dtype is None else jax.dtypes.canonicalize_dtype(dtype)


def _hyperparam_dtype(tree: Any) -> jnp.dtype:
  """The widest float dtype of ``tree``'s leaves, and at least float32.

  ``optax.inject_hyperparams`` otherwise stores the hyperparameters in the
  params' widest dtype, which rounds ``min_lr = 1e-6`` and Adam's ``b2 =
  0.999`` (to 1.0: a NaN bias correction) in bfloat16, and fails on trees that
  mix bfloat16 and float16 leaves.
  """
  widest = _widest_float(tree)
  dtype = jnp.dtype(jnp.float32) if widest is None else jnp.promote_types(
      jnp.float32, widest)
  return jax.dtypes.canonicalize_dtype(dtype)


def _cast_like(tree: Any, like: Any) -> Any:
  """``tree`` with each float array cast to the dtype of ``like``'s leaf."""

  def cast(new, old):
    old_dtype = getattr(old, "dtype", None)
    if (old_dtype is None or getattr(new, "dtype", old_dtype) == old_dtype
        or not jnp.issubdtype(old_dtype, jnp.inexact)):
      return new
    return new.astype(old_dtype)

  if jax.tree.structure(tree) != jax.tree.structure(like):
    return tree
  return jax.tree.map(cast, tree, like)


def _unwrapped(optimizer: Callable[..., Any]) -> Callable[..., Any]:
  """The function under ``functools.partial`` layers and ``functools.wraps``."""
  seen = 0
  while seen < 100:
    seen += 1
    if isinstance(optimizer, functools.partial):
      optimizer = optimizer.func
    elif getattr(optimizer, "__wrapped__", None) is not None:
      optimizer = optimizer.__wrapped__
    else:
      break
  return optimizer


def _casts_own_scalars(optimizer: Callable[..., Any]) -> bool:
  """This library's factories cast their hyperparameters to their statistics'
  dtype themselves; optax's own keep the dtype they are given. Partials of a
  factory (``functools.partial(nlr.grad_history_lr, beta=0.5)``) count as it."""
  return getattr(_unwrapped(optimizer), "__module__", "").startswith("optax_neuronlr")


def injected(
    optimizer: Callable[..., optax.GradientTransformation],
    static: tuple[str, ...],
    kwargs: Mapping[str, Any],
) -> optax.GradientTransformationExtraArgs:
  """``optax.inject_hyperparams(optimizer)(**kwargs)``, hyperparameters kept in
  `_hyperparam_dtype` of the tree (never half precision).

  This library's factories cast their hyperparameters to their statistics'
  dtype themselves. For other optimizers (optax's own), whose arithmetic takes
  the dtype of the hyperparameter arrays, the updates are cast back to the
  incoming updates' dtypes and the inner state to its previous dtypes: as with
  the plain optimizer, whose Python-float hyperparameters are weakly typed,
  bfloat16 params keep bfloat16 updates and moments, and a jitted step never
  retraces.
  """
  ours = _casts_own_scalars(optimizer)

  def make(tree):
    return optax.inject_hyperparams(
        optimizer, static_args=static, hyperparam_dtype=_hyperparam_dtype(tree),
    )(**kwargs)

  def init_fn(params):
    return make(params).init(params)

  def update_fn(updates, state, params=None, **extra_args):
    new, new_state = make(updates).update(updates, state, params, **extra_args)
    if not ours:
      new = _cast_like(new, updates)
      inner = typing.cast(Any, new_state)  # an InjectHyperparamsState
      new_state = inner._replace(
          inner_state=_cast_like(inner.inner_state, state.inner_state))
    return new, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def is_inject_state(x: Any) -> bool:
  """True for the state of ``optax.inject_hyperparams`` (either class)."""
  return isinstance(x, _INJECT_STATES)


# Naming the injected states of an optimizer state.
#
# A state's *components* are the multi_transform labels ("label", key) and the
# positions in chains and other tuples ("index", i) on its path from the root,
# through the inner states of enclosing injected states. Its name is its labels
# joined by "/" ("default" without any); where two states would share a name
# (two injected transforms in one chain), each is named by all its components
# instead ("0", "1", "1/head").

Components = tuple[tuple[str, str], ...]


def _components(path: Sequence[Any]) -> Components:
  out = []
  for prev, key in zip((None, *path[:-1]), path):
    if isinstance(key, jax.tree_util.SequenceKey):
      out.append(("index", str(key.idx)))
    elif getattr(prev, "name", None) == "inner_states" and hasattr(key, "key"):
      out.append(("label", str(key.key)))
  return tuple(out)


def _collect(opt_state: Any, above: Components = ()) -> list[tuple[Components, Any]]:
  """Every injected state, outer before inner, with its components."""
  found = []
  flat, _ = jax.tree_util.tree_flatten_with_path(opt_state, is_leaf=is_inject_state)
  for path, node in flat:
    if is_inject_state(node):
      components = above + _components(path)
      found.append((components, node))
      found.extend(_collect(node.inner_state, components))
  return found


def _names(found: Sequence[tuple[Components, Any]]) -> dict[Components, str]:
  """Unique names of the states in ``found`` (see the comment above)."""
  short = {c: "/".join(v for k, v in c if k == "label") or "default" for c, _ in found}
  taken = [n for n in short.values()]
  names = {}
  for c, _ in found:
    if taken.count(short[c]) == 1:
      names[c] = short[c]
    else:
      names[c] = "/".join(v for _, v in c) or "default"
  if len(set(names.values())) < len(names):  # A label that looks like an index.
    names = {c: "/".join(f"{k}:{v}" for k, v in c) or "default" for c, _ in found}
  return names


def _inject_states(opt_state: Any) -> list[tuple[str, Any]]:
  found = _collect(opt_state)
  names = _names(found)
  return [(names[c], s) for c, s in found]


def get_hyperparams(opt_state: Any) -> dict[str, dict[str, jax.Array]]:
  """``{group name: {hyperparameter: value}}`` of every injected group.

  Groups are those of `param_groups` (or any ``optax.multi_transform``
  label whose transform is wrapped in ``optax.inject_hyperparams``), named by
  their label; a bare ``inject_hyperparams`` state is the group ``"default"``.
  Groups nested in a group's optimizer are named ``"<outer>/<inner>"``. Where
  two states would get the same name (e.g. two ``inject_hyperparams``
  transforms in one ``optax.chain``), each is named by its position instead:
  ``"0"``, ``"1"`` (and ``"1/head"`` for the group ``head`` of a
  ``param_groups`` at position 1). Jittable.
  """
  return {
      name: dict(unwrap_variables(state).hyperparams)
      for name, state in _inject_states(opt_state)
  }


def _new_value(key: str, old: Any, value: Any, where: str) -> jax.Array:
  """``value`` (or ``value(old)``) as a scalar of ``old``'s dtype, checked."""
  old = unwrap_variables(old)
  new = value(old) if callable(value) else value
  name = f"{key} of group {where!r}"
  dtype = jnp.asarray(old).dtype
  if jnp.issubdtype(dtype, jnp.integer):
    validation.check_int(name, new, low=-(2**31))
  else:
    validation.concrete_number(name, new, what="a real scalar")
  return jnp.asarray(new, dtype)


def _check_clamps(hyperparams: Mapping[str, Any], where: str) -> None:
  """``min_lr <= max_lr`` where both are concrete (not traced)."""
  if "min_lr" not in hyperparams or "max_lr" not in hyperparams:
    return
  try:
    validation.check_clamps(hyperparams["min_lr"], hyperparams["max_lr"])
  except ValueError as e:
    raise ValueError(f"group {where!r}: {e}") from None


def set_hyperparams(opt_state: Any, group: Optional[str] = None, **values: Any) -> Any:
  """A new state with hyperparameters of one group (or all) replaced.

  Each value is a scalar (a number or a 0-d array) or a callable ``old ->
  new``: seed 003's ``for g in optimizer.param_groups: g['lr'] *= 0.9`` is
  ``set_hyperparams(state, learning_rate=lambda v: v * 0.9)``. The new value
  keeps the old one's dtype, so a jitted step does not retrace. Jittable.
  A hyperparameter given as a schedule is re-evaluated by the next update,
  which overrides what is set here. Group names are those of
  `get_hyperparams`.

  Args:
    opt_state: a state of `param_groups` or of any optax state holding
      ``optax.inject_hyperparams`` states.
    group: the group to change; None changes every group that has the given
      hyperparameters.
    **values: hyperparameter name -> new value or ``old -> new``.

  Returns:
    The new state (the input is not modified).

  Raises:
    ValueError: for an unknown group or hyperparameter name, a value that is
      not a scalar, a fractional value of an integer hyperparameter,
      ``min_lr > max_lr`` (where both are concrete), or a value set on a group
      whose nested groups hold the same hyperparameter (the outer value would
      not reach them: set ``"<outer>/<inner>"``, or use ``group=None``).
    TypeError: for a value that is not a number (a string, None, a bool).
  """
  found = _collect(opt_state)
  if not found:
    raise ValueError(
        "opt_state holds no optax.inject_hyperparams state: build the optimizer "
        "with nlr.param_groups or optax.inject_hyperparams."
    )
  names = _names(found)
  known = sorted(names.values())
  if group is not None:
    if group not in known:
      raise ValueError(f"unknown group {group!r}; the state has groups {known}.")
    _check_not_shadowed(found, names, group, values)
  elif not any(set(values) <= set(s.hyperparams) for _, s in found):
    raise ValueError(
        f"unknown hyperparameters {sorted(values)}; the groups have "
        f"{ {names[c]: sorted(s.hyperparams) for c, s in found} }."
    )

  def replace(node: Any, name: str) -> Any:
    if group is None and not set(values) <= set(node.hyperparams):
      return node  # Another kind of group (e.g. a nested one without them).
    unknown = sorted(set(values) - set(node.hyperparams))
    if unknown:
      raise ValueError(
          f"unknown hyperparameters {unknown}; group {name!r} has "
          f"{sorted(node.hyperparams)}."
      )
    hyperparams = dict(node.hyperparams)
    for key, value in values.items():
      hyperparams[key] = _new_value(key, hyperparams[key], value, name)
    if {"min_lr", "max_lr"} & set(values):
      _check_clamps(unwrap_variables(hyperparams), name)
    return node._replace(hyperparams=hyperparams)

  def walk(tree: Any, above: Components) -> Any:
    def visit(path, node):
      if not is_inject_state(node):
        return node
      components = above + _components(path)
      node = node._replace(inner_state=walk(node.inner_state, components))
      name = names[components]
      return replace(node, name) if group in (None, name) else node

    return jax.tree_util.tree_map_with_path(visit, tree, is_leaf=is_inject_state)

  return walk(opt_state, ())


def _check_not_shadowed(
    found: Sequence[tuple[Components, Any]],
    names: Mapping[Components, str],
    group: str,
    values: Mapping[str, Any],
) -> None:
  """Setting an outer group's value that its nested groups hold is an error:
  each nested injected state keeps its own copy, so the new value would be
  reported by `get_hyperparams` and change nothing."""
  outer = next(c for c, _ in found if names[c] == group)
  shadowed = sorted(
      names[c] for c, s in found
      if len(c) > len(outer) and c[:len(outer)] == outer
      and set(values) & set(s.hyperparams)
  )
  if shadowed:
    raise ValueError(
        f"group {group!r} holds nested groups {shadowed} with their own "
        f"{sorted(set(values))}: the value set on {group!r} would not reach "
        f"them. Set the nested groups (group={shadowed[0]!r}, ...) or pass "
        "group=None to set every group."
    )
