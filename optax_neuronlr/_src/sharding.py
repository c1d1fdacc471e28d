"""Shardings of an optimizer state, derived from the parameters' shardings.

``jax.jit(tx.init)`` does not shard its output under automatic sharding (not
even for ``optax.scale_by_adam``: its zeros depend on no input), and the
per-unit statistics of this library are not shaped like the parameters. This
module gives each state leaf the sharding that matches its parameter:

* a leaf shaped like a parameter (Adam's moments, a stored direction, an
  element statistic) takes the parameter's sharding (found with
  ``optax.tree_utils.tree_map_params``);
* a per-unit leaf of a rule keeps the partitioning of the axes it keeps: with
  a Flax ``(in, out)`` kernel sharded as ``P("data", "model")``, its
  per-neuron EMA ``(out,)`` is ``P("model")``; per-head blocks of an axis keep
  that axis' partitioning;
* everything else (counters, scalars, a rule's per-leaf statistics, global
  or per-tensor rates) is replicated.

Sharding the neuron axis then needs no communication at all; sharding the
fan-in axis needs one all-reduce of per-unit size per statistic, never one of
parameter size. On an explicit-sharding mesh ``init`` already builds every
statistic with these shardings (it reduces zeros shaped like each parameter,
as ``update`` reduces the gradient), so ``init`` and ``update`` agree.
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec

from optax_neuronlr._src import layout_channel
from optax_neuronlr._src import paths
from optax_neuronlr._src import rule_state


def _replicated(sharding: Any) -> Any:
  if isinstance(sharding, NamedSharding):
    return NamedSharding(sharding.mesh, PartitionSpec())
  return sharding


def _kept(sharding: Any, shape: tuple, unit_shape: tuple, keep: tuple[int, ...]) -> Any:
  """The sharding of a per-unit array that keeps ``keep`` axes of its leaf."""
  if not isinstance(sharding, NamedSharding):
    if isinstance(sharding, jax.sharding.SingleDeviceSharding):
      return sharding
    raise TypeError(
        "state_shardings derives per-unit shardings from NamedSharding or "
        f"SingleDeviceSharding parameters, got {type(sharding).__name__}."
    )
  spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
  if len(keep) != len(unit_shape):
    return NamedSharding(sharding.mesh, PartitionSpec())
  return NamedSharding(sharding.mesh, PartitionSpec(*(spec[a] for a in keep)))


def _is_rule_state(x: Any) -> bool:
  return rule_state.is_rule_state(x)


def state_shardings(tx: Any, params: Any, params_shardings: Any) -> Any:
  """Shardings for ``tx.init(params)``, for ``jax.jit(..., out_shardings=...)``.

  Args:
    tx: any optax transformation (chains, ``multi_transform``,
      ``inject_hyperparams`` and this library's rules included).
    params: the parameters, or ``jax.ShapeDtypeStruct`` leaves.
    params_shardings: a tree of shardings mirroring ``params``
      (``jax.sharding.NamedSharding``, or ``SingleDeviceSharding``, which is
      copied to every state leaf of its parameter).

  Returns:
    A tree of shardings with the structure of ``tx.init(params)``.

  Example:
    >>> # mesh = jax.make_mesh((8,), ("model",))
    >>> # p_sh = {"w": NamedSharding(mesh, P(None, "model"))}
    >>> # init = jax.jit(tx.init, out_shardings=nlr.state_shardings(tx, params, p_sh))
  """
  with layout_channel.recording() as records:
    # A new function object each call: jax.eval_shape caches traces by
    # function, and a cached trace would not run init (nor record its layouts),
    # so a second call for the same tx would replicate every unit statistic.
    abstract = jax.eval_shape(lambda p: tx.init(p), params)  # pylint: disable=unnecessary-lambda
  flat_sh = jax.tree.leaves(params_shardings)
  default = _replicated(flat_sh[0]) if flat_sh else None
  by_path = {}
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  for (p, _), s in zip(flat, treedef.flatten_up_to(params_shardings)):
    by_path[paths.path_str(p)] = s

  def param_like(state_leaf, sharding):
    # optax.masked / optax.partition keep a MaskedNode for the leaves a group
    # does not hold: it stays one.
    return state_leaf if isinstance(state_leaf, optax.MaskedNode) else sharding

  mapped = optax.tree_utils.tree_map_params(
      tx, param_like, abstract, params_shardings,
      transform_non_params=lambda _: default,
      is_leaf=lambda x: isinstance(x, optax.MaskedNode),
  )
  used = set()

  def fix(abstract_node, sharding_node):
    if _is_rule_state(abstract_node):
      return _rule_shardings(abstract_node, sharding_node, records, used, by_path, default)
    return sharding_node

  return jax.tree.map(fix, abstract, mapped, is_leaf=_is_rule_state)


def _rule_shardings(
    state: Any, shardings: Any, records: list[layout_channel.LayoutRecord],
    used: set[int], by_path: dict[str, Any], default: Any) -> Any:
  """Per-unit statistics of one rule state, sharded along the axes they keep."""
  rule = rule_state.rule_of(state)
  # Per-leaf scalars (a rule's leaf statistics) are replicated.
  shardings = shardings._replace(**{
      name: jax.tree.map(lambda _: default, getattr(state, name))
      for name in getattr(rule, "leaf_stats", ())})
  if not rule.unit_stats:
    return shardings
  first = getattr(state, rule.unit_stats[0])
  leaves = jax.tree_util.tree_flatten_with_path(first)[0]
  signature = tuple((paths.path_str(p), tuple(x.shape)) for p, x in leaves)
  record = None
  for i, candidate in enumerate(records):
    if i in used or candidate.state_class is not type(state):
      continue
    if candidate.is_global or tuple(
        (row.path, row.unit_shape) for row in candidate.leaves) == signature:
      record = candidate
      used.add(i)
      break
  replaced = {}
  for name in rule.unit_stats:
    tree = getattr(state, name)
    if record is None or record.is_global:
      replaced[name] = jax.tree.map(lambda _: default, tree)
      continue
    table = {row.path: row for row in record.leaves}

    def one(path, leaf):
      row = table[paths.path_str(path)]
      return _kept(by_path.get(row.path, default), row.shape, row.unit_shape,
                   row.keep_axes)

    replaced[name] = jax.tree_util.tree_map_with_path(one, tree)
  return shardings._replace(**replaced)
