"""State migration: an optimizer's state rebuilt for a new transformation or new params.

The one job of this module is `rebuild_state` (and `rebuild`, which
the group edits of `group_edits` and the NNX glue of
`nnx_glue` call): the fresh state of the new
transformation, every statistic of the old one that has a place in it kept.

Reference 003 lists ``optimizer.add_param_group(...)`` ("useful for
fine-tuning") among the optimizer's core methods. In optax, a model that grows
a head, or a part that is unfrozen with its own rate, needs a new
transformation; this module builds that transformation's state from the old
one, keeping every statistic of the parameters that stay (per-unit rates, EMAs,
Adam's moments, counts, injected hyperparameters) bit for bit.

How statistics are matched
--------------------------
`rebuild_state` initialises the new transformation on the new parameters
and walks the fresh state and the old one side by side: a node of the fresh
state takes the old node found at the same place (the same field of the same
state class, the same ``optax.multi_transform`` label, the same parameter path)
when both are of the same type, and a leaf takes the old leaf there. A
parameter is identified by its path: ``optax.masked`` and
``optax.multi_transform`` keep every parameter's path in each group's state
(with ``optax.MaskedNode`` where a leaf belongs to another group), so a group's
statistics are found again after other parameters joined or left the model.
What has no old counterpart starts fresh (a new group, a new parameter, a
transform whose state class changed); old statistics with no place in the new
state are released.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_neuronlr._src import hyperparams as hyperparams_lib
from optax_neuronlr._src import paths as paths_lib
from optax_neuronlr._src import rule_state
from optax_neuronlr._src import validation


_PARTITION_STATE = optax.transforms.PartitionState
_INNER_STATES = jax.tree_util.GetAttrKey("inner_states")
# The fields of an injected state that a reset keeps: the group's
# hyperparameters and the step count that drives their schedules.
_INJECTED_FIELDS = ("count", "hyperparams", "hyperparams_states")


def _is_leaf(x: Any) -> bool:
  leaves = jax.tree.leaves(x)
  return len(leaves) == 1 and leaves[0] is x


def _children(node: Any) -> tuple[list[tuple[Any, Any]], Any]:
  """``[(key, child)]`` one level down, and the node's treedef."""
  is_child = lambda x: x is not node
  flat, treedef = jax.tree_util.tree_flatten_with_path(node, is_leaf=is_child)
  return [(path[0], child) for path, child in flat], treedef


def _key(key: Any) -> tuple[str, Any]:
  """A comparable form of a key-path entry."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return type(key).__name__, getattr(key, attr)
  return type(key).__name__, str(key)


def _shape(x: Any) -> tuple[int, ...]:
  return tuple(getattr(x, "shape", np.shape(x)))


@dataclasses.dataclass
class _Walk:
  """One merge of a fresh state with an old one (see the module docstring)."""

  reset: frozenset[tuple[str, ...]]
  released: frozenset[tuple[str, ...]]
  labels_seen: set[tuple[str, ...]] = dataclasses.field(default_factory=set)
  lost: list[tuple[tuple[str, ...], tuple]] = dataclasses.field(default_factory=list)
  kept: int = 0

  def drop(self, old: Any, where: tuple, labels: tuple[str, ...], resetting: bool) -> None:
    """Records the leaves of ``old`` that find no place (unless intended)."""
    if resetting or any(labels[:len(r)] == r for r in self.released):
      return
    for path, _ in jax.tree_util.tree_flatten_with_path(old)[0]:
      self.lost.append((labels, (*where, *path)))

  def leaf(self, fresh: Any, old: Any, where: tuple) -> Any:
    if _shape(fresh) != _shape(old):
      raise ValueError(
          f"rebuild_state: state{jax.tree_util.keystr(where)} has shape "
          f"{_shape(old)} in the old state and {_shape(fresh)} for the new "
          "parameters (a parameter whose shape "
          "changed, or another transform at the same place): reset the group "
          "that holds it (reset=[...]) to start it afresh.")
    self.kept += 1
    dtype = getattr(fresh, "dtype", None)
    if dtype is not None and (getattr(old, "dtype", None) != dtype
                              or not isinstance(old, jax.Array)):
      old = jnp.asarray(old, dtype)
    return old

  def merge(self, fresh: Any, old: Any, where: tuple, labels: tuple[str, ...],
            resetting: bool) -> Any:
    if _is_leaf(fresh) and _is_leaf(old):  # Arrays of any kind (restored: NumPy).
      return fresh if resetting else self.leaf(fresh, old, where)
    if type(fresh) is not type(old):
      self.drop(old, where, labels, resetting)
      return fresh
    if isinstance(fresh, _PARTITION_STATE):
      return self.partition(fresh, old, where, labels, resetting)
    kept = resetting and hyperparams_lib.is_inject_state(fresh)
    children, treedef = _children(fresh)
    old_children = {_key(k): (k, c) for k, c in _children(old)[0]}
    out = []
    for key, child in children:
      match = old_children.pop(_key(key), None)
      here = (*where, key)
      if match is None:
        out.append(child)
        continue
      keep = kept and getattr(key, "name", None) in _INJECTED_FIELDS
      out.append(self.merge(child, match[1], here, labels, resetting and not keep))
    for key, child in old_children.values():
      self.drop(child, (*where, key), labels, resetting)
    merged = treedef.unflatten(out)
    if not resetting and rule_state.is_rule_state(merged) and type(merged).is_global:
      merged = _keep_global(merged, old)
    return merged

  def partition(self, fresh: Any, old: Any, where: tuple, labels: tuple[str, ...],
                resetting: bool) -> Any:
    """An ``optax.multi_transform`` state: its labels name the groups."""
    inner, old_inner = dict(fresh.inner_states), dict(old.inner_states)
    for label in list(inner):
      path = (*labels, str(label))
      self.labels_seen.add(path)
      here = (*where, _INNER_STATES, jax.tree_util.DictKey(label))
      if label in old_inner:
        inner[label] = self.merge(inner[label], old_inner.pop(label), here, path,
                                  resetting or path in self.reset)
    for label, child in old_inner.items():
      self.drop(child, (*where, _INNER_STATES, jax.tree_util.DictKey(label)),
                (*labels, str(label)), resetting)
    return fresh._replace(inner_states=type(fresh.inner_states)(inner))


def _keep_global(merged: Any, old: Any) -> Any:
  """A ``granularity="global"`` rule state holds one statistic for the whole
  tree, copied into every leaf; the engine reads the first leaf's copy. A new
  leaf starts from the rule's ``init``, so without this its fresh copy would
  replace the learned value whenever its path sorts first. Every leaf takes
  the old state's value instead."""
  rule = rule_state.rule_of(merged)
  fields = {}
  for name in rule.unit_stats:
    old_leaves = jax.tree.leaves(getattr(old, name))
    if old_leaves:
      value = old_leaves[0]
      fields[name] = jax.tree.map(
          lambda leaf, v=value: jnp.asarray(v, leaf.dtype), getattr(merged, name))
  return merged._replace(**fields)


def _label_paths(names: Union[None, str, Iterable[str]], what: str) -> frozenset:
  if names is None:
    return frozenset()
  if isinstance(names, str):
    names = [names]
  out = []
  for name in names:
    if not isinstance(name, str) or not name:
      raise TypeError(f"{what} must be group names (non-empty str), got {name!r}.")
    out.append(tuple(name.split("/")))
  return frozenset(out)


def rebuild(tx: optax.GradientTransformation, state: Any, params: Any, *,
             reset: Any = None, strict: bool = False, released: Any = None,
             what: str = "rebuild_state", fresh: Any = None) -> Any:
  """`rebuild_state` with the options the group edits need.

  Args:
    tx, state, params, reset, strict: as in `rebuild_state`.
    released: group labels whose statistics may be dropped even with
      ``strict`` (the group a ``drop_param_group`` removes).
    what: the caller's name, for messages.
    fresh: ``tx.init(params)`` if already made (the NNX glue's).
  """
  walk = _Walk(_label_paths(reset, "reset"), _label_paths(released, "released"))
  fresh = tx.init(params) if fresh is None else fresh
  new = walk.merge(fresh, state, (), (), False)
  unknown = sorted("/".join(r) for r in walk.reset - walk.labels_seen)
  if unknown:
    known = sorted("/".join(p) for p in walk.labels_seen)
    raise ValueError(
        f"{what}: reset names groups {unknown} that the optimizer does not have; "
        f"its groups (optax.multi_transform labels, nested ones joined by '/') "
        f"are {known}.")
  if walk.lost and not walk.kept:
    raise ValueError(
        f"{what}: nothing of the old state has a place in the new one "
        f"({len(walk.lost)} entries, e.g. state{jax.tree_util.keystr(walk.lost[0][1])}"
        f"; the new state's root is {type(new).__name__}, the old one's "
        f"{type(state).__name__}). Pass the state of the optimizer before the "
        "change; a checkpoint restored without a target (a dict) must first be "
        "restored into that state's structure (flax.serialization.from_state_dict"
        "(old_tx.init(old_params), ...), or orbax with it as the target).")
  if strict and walk.lost:
    raise ValueError(f"{what}: {_describe_lost(walk, params)}")
  return new


def _param_path(where: tuple) -> str:
  """The parameter path at the end of a state's key path: the dict keys and
  list indices after the last attribute (``.mu['body']['kernel']`` ->
  ``body/kernel``); "" for a scalar of the state (a count, an injected
  hyperparameter)."""
  tail = []
  for key in reversed(where):
    if not isinstance(key, (jax.tree_util.DictKey, jax.tree_util.SequenceKey)):
      if getattr(key, "name", None) in _INJECTED_FIELDS:
        return ""
      break
    tail.append(key)
  return paths_lib.path_str(tuple(reversed(tail)))


def state_param_paths(state: Any) -> set[str]:
  """The parameter paths that ``state`` holds statistics for (its
  params-shaped entries: moments, per-unit statistics, ...)."""
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  return {p for p in (_param_path(tuple(where)) for where, _ in flat) if p}


def _describe_lost(walk: _Walk, params: Any) -> str:
  """Which statistics would be lost: whole groups, or parameters by group."""
  present = {paths_lib.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
  groups, moved, gone, other = set(), {}, {}, []
  for labels, where in walk.lost:
    if labels and labels not in walk.labels_seen:
      groups.add("/".join(labels))
      continue
    path = _param_path(where)
    group = "/".join(labels) or "-"
    if not path:
      other.append("state" + jax.tree_util.keystr(where))
    else:
      (moved if path in present else gone).setdefault(group, set()).add(path)
  parts = []
  if groups:
    parts.append(f"groups that the new optimizer lacks: {sorted(groups)} (drop a "
                 "group with nlr.drop_param_group)")
  if moved:
    parts.append(
        "parameters already in a group would move to another one: "
        f"{ {g: sorted(p) for g, p in moved.items()} } (a parameter belongs to "
        "one group; PyTorch's add_param_group raises the same): narrow the new "
        "group's 'params'")
  if gone:
    parts.append(
        "parameters that left the model: "
        f"{ {g: sorted(p) for g, p in gone.items()} } (drop their group first "
        "with nlr.drop_param_group)")
  if other and not parts:
    parts.append(f"state entries with no place in the new state: {other[:8]}")
  return ("statistics of the old state would be lost: " + "; ".join(parts)
          + ". nlr.rebuild_state without strict=True releases them.")


def rebuild_state(
    tx: optax.GradientTransformation,
    state: Any,
    params: Any,
    *,
    reset: Union[None, str, Iterable[str]] = None,
    strict: bool = False,
) -> Any:
  """The state of ``tx`` for ``params``, keeping the statistics ``state`` holds.

  ``tx.init(params)``, in which every statistic that ``state`` (the state of
  an earlier optimizer, e.g. before a parameter group was added) holds for
  the same parameter at the same place is kept bit for bit: the same state
  class, the same ``optax.multi_transform`` label, the same parameter path
  (see the module docstring). New groups and new parameters start fresh;
  statistics of parameters that left the model, or of groups that ``tx`` no
  longer has, are released.

  This is how any optax optimizer built with ``optax.multi_transform`` grows
  or shrinks: build the new transformation (a label for the new parameters),
  then ``state = nlr.rebuild_state(new_tx, state, new_params)``.

  Injected hyperparameters (``optax.inject_hyperparams``, every
  `param_groups` group) are state too: where ``tx`` was built with other
  values for a group that ``state`` holds, the old state's values win, as
  PyTorch's ``load_state_dict`` restores each group's ``lr``; change them with
  `set_hyperparams`.

  Example:
    >>> import jax.numpy as jnp, optax, optax_neuronlr as nlr
    >>> params = {"body": jnp.ones(3)}
    >>> tx = optax.multi_transform({"b": optax.adam(1e-3)},
    ...                            nlr.path_labels({"body": "b"}))
    >>> state = tx.init(params)
    >>> grown = {"body": jnp.ones(3), "head": jnp.ones(2)}
    >>> new_tx = optax.multi_transform(
    ...     {"b": optax.adam(1e-3), "h": optax.sgd(1e-2, momentum=0.9)},
    ...     nlr.path_labels({"body": "b", "head": "h"}))
    >>> state = nlr.rebuild_state(new_tx, state, grown, strict=True)

  Args:
    tx: the new transformation.
    state: the old state (outside ``jit``; a restored checkpoint works).
    params: the new parameters (arrays or ``jax.ShapeDtypeStruct``).
    reset: names of ``optax.multi_transform`` labels (groups of
      `param_groups`; nested labels joined by ``"/"``) whose statistics
      start fresh; their injected hyperparameters and the count that drives
      their schedules are kept.
    strict: raise, listing them, if any statistic of ``state`` outside the
      reset groups finds no place in the new state (nothing is released).

  Returns:
    A state of ``tx`` for ``params``.

  Raises:
    ValueError: for a statistic whose shape differs between the old state and
      the new parameters (reset its group), an unknown name in ``reset``, and
      with ``strict``, for statistics that would be released.
  """
  strict = validation.check_flag("strict", strict)
  return rebuild(tx, state, params, reset=reset, strict=strict)
