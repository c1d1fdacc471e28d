"""Shardings of an optimizer state, derived from the parameters' shardings.

``jax.jit(tx.init)`` does not shard its output (not even for
``optax.scale_by_adam``: its zeros depend on no input), and the per-unit
statistics of this library are not shaped like the parameters. This module
gives each state leaf the sharding that matches its parameter:

* a leaf shaped like a parameter (Adam's moments, a stored direction) takes
  the parameter's sharding;
* a per-unit leaf of a strategy keeps the partitioning of the axes it keeps
  (its ``units`` record says which): with a Flax ``(in, out)`` kernel sharded
  as ``P("data", "model")``, its per-neuron EMA ``(out,)`` is ``P("model")``;
* everything else (counters, scalar hyperparameters, global rates) is
  replicated.

Sharding the neuron axis then needs no communication at all; sharding the
fan-in axis needs one all-reduce of per-unit size per statistic (the mean over
the fan-in), never one of parameter size.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec

from optax_neuronlr._src import engine
from optax_neuronlr._src import units as units_lib


def _param_table(params: Any, shardings: Any) -> dict[str, tuple[tuple, Any]]:
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  sh = treedef.flatten_up_to(shardings)
  return {units_lib.path_str(p): (tuple(x.shape), s) for (p, x), s in zip(flat, sh)}


def _replicated(sharding: Any) -> Any:
  if isinstance(sharding, NamedSharding):
    return NamedSharding(sharding.mesh, PartitionSpec())
  return sharding


def _kept_spec(sharding: Any, shape: tuple, keep: tuple[int, ...]) -> Any:
  if not isinstance(sharding, NamedSharding):
    raise TypeError(
        "state_shardings derives per-unit shardings from NamedSharding "
        f"parameters, got {type(sharding).__name__}."
    )
  spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
  return NamedSharding(sharding.mesh, PartitionSpec(*(spec[a] for a in keep)))


def _match(path: str, table: dict) -> Any:
  """The parameter whose path is the longest suffix of a state leaf's path."""
  parts = path.split("/")
  for i in range(len(parts)):
    key = "/".join(parts[i:])
    if key in table:
      return key
  return None


def state_shardings(
    tx: Any, params: Any, params_shardings: Any
) -> Any:
  """Shardings for ``tx.init(params)``, for ``jax.jit(..., out_shardings=...)``.

  Args:
    tx: any optax transformation (chains, ``multi_transform``,
      ``inject_hyperparams`` and this library's strategies included).
    params: the parameters, or ``jax.ShapeDtypeStruct`` leaves.
    params_shardings: a tree of shardings mirroring ``params``
      (``jax.sharding.NamedSharding``; other shardings are copied to leaves
      shaped like the parameter and used as they are elsewhere).

  Returns:
    A tree of shardings with the structure of ``tx.init(params)``.

  Example:
    >>> # mesh = jax.make_mesh((8,), ("model",))
    >>> # p_sh = {"w": NamedSharding(mesh, P(None, "model"))}
    >>> # init = jax.jit(tx.init, out_shardings=nlr.state_shardings(tx, params, p_sh))
  """
  abstract = jax.eval_shape(tx.init, params)
  table = _param_table(params, params_shardings)
  default = _replicated(next(iter(table.values()))[1]) if table else None

  def leaf_sharding(path: str, leaf: Any) -> Any:
    key = _match(path, table)
    if key is not None and table[key][0] == tuple(leaf.shape):
      return table[key][1]
    return default

  def visit(node: Any, prefix: str) -> Any:
    fields = engine.unit_fields(node)
    if not fields:
      flat, treedef = jax.tree_util.tree_flatten_with_path(
          node, is_leaf=engine.is_rate_state
      )
      out = []
      for p, leaf in flat:
        path = "/".join(x for x in (prefix, units_lib.path_str(p)) if x)
        out.append(
            visit(leaf, path) if engine.is_rate_state(leaf)
            else leaf_sharding(path, leaf)
        )
      return treedef.unflatten(out)
    replaced = {}
    for name in node._fields:
      value = getattr(node, name)
      if name in fields:
        replaced[name] = _unit_shardings(value, node.units, table, default)
      else:
        replaced[name] = visit(value, f"{prefix}/{name}" if prefix else name)
    return type(node)(**replaced)

  return visit(abstract, "")


def _unit_shardings(tree: Any, units: units_lib.UnitAxes, table, default) -> Any:
  def one(path, leaf):
    key = units_lib.path_str(path)
    keep = units.axes_of(key)
    if key not in table or keep is None or len(leaf.shape) != len(keep):
      return default  # e.g. a global (scalar) rate
    shape, sharding = table[key]
    return _kept_spec(sharding, shape, keep)

  return jax.tree_util.tree_map_with_path(one, tree)
