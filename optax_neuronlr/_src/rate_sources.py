"""Where the rates in an optimizer state come from: one list that every reader reads.

A *rate source* is a node of an optax state from which the rate the last
update applied can be read, shaped like the parameters (``None`` on the
leaves it does not govern):

* a rule state (`scale_by_rule`: every per-unit strategy
  of the package, NorMuon, Adam-mini, SCALE, hypergradient descent): its
  per-unit rates, recomputed from its statistics, with its clamps
  ``(min_lr, max_lr)``;
* a `RecordLearningRateState` (Muon's
  rate and AdamW's in `muon` / ``normuon``): the recorded
  rate on every leaf that the transforms beside it keep statistics for;
* an ``optax.inject_hyperparams`` state with a ``learning_rate`` and no source
  inside (each group of ``param_groups(optax.adam, ...)``): the injected rate
  on every leaf its inner state keeps statistics for.

A `ScaleByLeafState` (``scale_by_leaf``, layer-wise
multipliers) multiplies the rates of every source in the same chain (and of a
source that holds the chain), as it multiplies their updates.

The sources are found wherever they sit: chains, ``optax.partition`` /
``multi_transform``, ``optax.masked``, ``inject_hyperparams``,
``MultiSteps``, ``apply_if_finite``, NamedTuples, tuples, lists, dicts and the
``opt_state`` of an ``nnx.Optimizer``.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import optax

from optax_neuronlr._src import engine
from optax_neuronlr._src import layerwise
from optax_neuronlr._src import paths as paths_lib
from optax_neuronlr._src import rate_record
from optax_neuronlr._src import rule_state

# The states of optax.inject_hyperparams.
INJECT_STATES = tuple(
    getattr(optax, name)
    for name in ("InjectHyperparamsState", "InjectStatefulHyperparamsState")
    if hasattr(optax, name)
)
# Fields of optax states that hold scalars or hyperparameters, never
# parameter-shaped statistics (a rule's ``applied`` is a tuple of scalars).
_NOT_PARAMS = ("applied", "hyperparams", "hyperparams_states", "count",
               "mini_step", "gradient_step")
# Past these a tree covers other leaves than the nodes inside them see.
_BOUNDARIES = (optax.MaskedState, optax.transforms.PartitionState)
_INF = float("inf")


@dataclasses.dataclass(frozen=True)
class Source:
  """One rate source: its path in the state (keys), its rates and clamps."""

  keys: tuple[Any, ...]
  kind: str  # "rule", "recorded" or "injected"
  rates: Any  # shaped like the parameters, None where not governed
  min_lr: Any  # a scalar, or a tree like ``rates`` (scaled by multipliers)
  max_lr: Any

  @property
  def path(self) -> str:
    """Where the source sits in the state, ``"/"``-joined."""
    return path_of(self.keys)

  def per_leaf(self) -> list[tuple[Any, Any, Any, Any]]:
    """``(parameter keys, rates, min_lr, max_lr)`` of every governed leaf."""
    is_none = lambda x: x is None
    flat = jax.tree_util.tree_flatten_with_path(self.rates, is_leaf=is_none)[0]
    def bounds(b):
      if jax.tree_util.treedef_is_leaf(jax.tree.structure(b)):
        return [b] * len(flat)
      return jax.tree.leaves(b, is_leaf=is_none)
    return [(p, r, lo, hi) for (p, r), lo, hi in
            zip(flat, bounds(self.min_lr), bounds(self.max_lr)) if r is not None]


def _is_nnx_variable(x: Any) -> bool:
  nnx = sys.modules.get("flax.nnx")  # Only when the user already uses NNX.
  return nnx is not None and isinstance(x, nnx.Variable)


def unwrap_variables(state: Any) -> Any:
  """Replaces Flax NNX variables (``nnx.Optimizer.opt_state``) by their arrays."""
  return jax.tree.map(
      lambda x: x.get_value() if _is_nnx_variable(x) else x,
      state,
      is_leaf=_is_nnx_variable,
  )


def _is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def _is_named(x: Any) -> bool:
  return isinstance(x, tuple) and hasattr(x, "_fields")


def _is_state_like(x: Any) -> bool:
  """An optax state, or a chain of them (a tuple or list of states)."""
  if _is_named(x):
    return True
  if isinstance(x, (tuple, list)):
    return bool(x) and all(_is_state_like(v) for v in x)
  return False


def _is_params_like(x: Any) -> bool:
  """A tree of per-leaf statistics (Adam's ``mu``, Muon's momentum): a
  container of arrays (``MaskedNode`` where a partition masks a leaf), or a
  float array of one or more dimensions when the parameters are one bare
  array (a 0-d float is a state's scalar, such as a plateau's scale)."""
  if x is None or _is_masked(x) or _is_state_like(x):
    return False
  if jax.tree_util.treedef_is_leaf(jax.tree.structure(x)):
    return (hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)
            and jnp.ndim(x) >= 1)
  return bool(jax.tree.leaves(x, is_leaf=_is_masked))


def params_like(tree: Any) -> Any:
  """The first per-leaf statistic of ``tree`` (a state or a chain of them),
  searched in order; None when it keeps none."""
  if isinstance(tree, rate_record.RecordLearningRateState):
    return None
  if isinstance(tree, INJECT_STATES):
    return params_like(tree.inner_state)
  if _is_named(tree):
    for name, value in zip(tree._fields, tree):
      if name not in _NOT_PARAMS and _is_params_like(value):
        return value
    return params_like(tuple(v for n, v in zip(tree._fields, tree)
                             if n not in _NOT_PARAMS and _is_state_like(v)))
  if isinstance(tree, (tuple, list)) and _is_state_like(tree):
    for value in tree:
      found = params_like(value)
      if found is not None:
        return found
  return None


def _children(node: Any) -> list[tuple[Any, Any]]:
  """``(key, child)`` of each direct child of a pytree node."""
  flat = jax.tree_util.tree_flatten_with_path(
      node, is_leaf=lambda x: x is not node)[0]
  return [(p[0], c) for p, c in flat if len(p) == 1]


def _walk(node: Any, keys: tuple, ancestors: tuple) -> Iterator[tuple[str, tuple, Any, tuple]]:
  """``(kind, keys, node, ancestors)`` of every node the readers use."""
  if rule_state.is_rule_state(node):
    yield "rule", keys, node, ancestors
    return
  if isinstance(node, rate_record.RecordLearningRateState):
    yield "recorded", keys, node, ancestors
    return
  if isinstance(node, layerwise.ScaleByLeafState):
    yield "multiplier", keys, node, ancestors
    return
  if isinstance(node, INJECT_STATES):
    yield "injected", keys, node, ancestors
  if node is None or _is_masked(node) or jax.tree_util.treedef_is_leaf(
      jax.tree.structure(node)):
    return
  for key, child in _children(node):
    yield from _walk(child, keys + (key,), ancestors + (node,))


def _masked_to_none(tree: Any) -> Any:
  return jax.tree.map(lambda x: None if _is_masked(x) else x, tree, is_leaf=_is_masked)


def _broadcast(template: Any, value: jax.Array) -> Any:
  """``value`` on every leaf of ``template``, ``None`` where it is masked."""
  return jax.tree.map(lambda x: None if _is_masked(x) else value, template,
                      is_leaf=_is_masked)


def _covered(ancestors: tuple) -> Any:
  """What the nearest enclosing chain keeps per leaf (searched outwards, not
  past a mask or a partition, whose outer trees cover other leaves)."""
  for parent in reversed(ancestors):
    found = params_like(parent)
    if found is not None:
      return found
    if isinstance(parent, _BOUNDARIES):
      return None
  return None


def _starts_with(keys: tuple, prefix: tuple) -> bool:
  return keys[:len(prefix)] == prefix


def _scaled(source: Source, multipliers: Any, where: str) -> Source:
  """``source`` with each leaf's rates (and clamps) times its multiplier."""
  is_none = lambda x: x is None
  rates, treedef = jax.tree.flatten(source.rates, is_leaf=is_none)
  mults = jax.tree.leaves(_masked_to_none(multipliers), is_leaf=is_none)
  if len(rates) != len(mults):
    raise ValueError(
        f"the scale_by_leaf multipliers at {where!r} cover {len(mults)} leaves, "
        f"the rates beside them {len(rates)}; the readers cannot tell which "
        "multiplier scales which rate.")
  def per_leaf(bound):
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(bound)):
      return [bound] * len(rates)
    return jax.tree.leaves(bound, is_leaf=is_none)

  out = [None if r is None or c is None else r * jnp.asarray(c, r.dtype)
         for r, c in zip(rates, mults)]
  lo = [None if b is None or c is None else b * c
        for b, c in zip(per_leaf(source.min_lr), mults)]
  hi = [None if b is None or c is None else jnp.where(jnp.isinf(b), b, b * c)
        for b, c in zip(per_leaf(source.max_lr), mults)]
  return dataclasses.replace(
      source, rates=treedef.unflatten(out), min_lr=treedef.unflatten(lo),
      max_lr=treedef.unflatten(hi))


def rate_sources(opt_state: Any) -> list[Source]:
  """Every rate source of ``opt_state``, in the state's order."""
  found = list(_walk(unwrap_variables(opt_state), (), ()))
  dtype = jnp.result_type(float)
  zero, inf = jnp.zeros([], dtype), jnp.asarray(_INF, dtype)
  sources, multipliers, injected = {}, [], []
  for order, (kind, keys, node, ancestors) in enumerate(found):
    if kind == "rule":
      hp = rule_state.applied_scalars(node)
      sources[order] = Source(keys, kind, _masked_to_none(engine.rates_of(node)),
                              hp["min_lr"], hp["max_lr"])
    elif kind == "recorded":
      template = _covered(ancestors)
      if template is not None:
        sources[order] = Source(keys, kind, _broadcast(template, node.applied_lr),
                                zero, inf)
    elif kind == "injected":
      injected.append((order, keys, node))
    else:
      multipliers.append((keys, node.multipliers))
  # The innermost injected rate is the applied one (an outer injected rate is
  # only a default passed in): the deepest first, each kept when nothing read
  # so far lies inside it.
  for order, keys, node in sorted(injected, key=lambda x: -len(x[1])):
    if any(_starts_with(s.keys, keys) for s in sources.values()):
      continue
    template = params_like(node.inner_state)
    if template is not None and "learning_rate" in node.hyperparams:
      rate = jnp.asarray(node.hyperparams["learning_rate"])
      sources[order] = Source(keys, "injected", _broadcast(template, rate),
                              zero.astype(rate.dtype), inf.astype(rate.dtype))
  sources = [sources[k] for k in sorted(sources)]
  for keys, mults in multipliers:
    scope = keys[:-1]
    for i, s in enumerate(sources):
      if _starts_with(s.keys, scope) or _starts_with(keys, s.keys):
        sources[i] = _scaled(s, mults, path_of(keys))
  return sources


def path_of(keys: tuple) -> str:
  """The ``"/"``-joined form of a state path."""
  return paths_lib.path_str(keys)
