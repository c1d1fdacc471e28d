"""One leaf of an update: `LeafStep` and the helpers around the leaves.

What `scale_by_rule`'s update
builds per leaf before any statistic changes, how ``granularity="global"``
reduces it over the tree, and the checks and lookups done once per leaf.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from optax_neuronlr._src import paths
from optax_neuronlr._src.engine.rule import Rule
from optax_neuronlr._src.engine.rule import Stats


class LeafStep(NamedTuple):
  """One leaf in the middle of an update: what ``observe`` saw and returned.

  Built for every leaf before any statistic is updated (so that
  ``granularity="global"`` can reduce the observations of the whole tree
  first), then read back to update the leaf's statistics and scale its
  direction.

  Attributes:
    path: the leaf's path (keys joined by ``"/"``), for error messages.
    layout: the leaf's units (a `units` layout).
    grad: the incoming gradient, in its own dtype.
    grad_compute: the gradient in the compute dtype (the promotion of its
      dtype and the statistics' dtype), as the rule's methods get it.
    direction: the direction's output for the leaf.
    dtype: the dtype of the leaf's statistics.
    elements: the leaf's element statistics before this step.
    observed: the quantities of ``observe``, reduced over each unit (summed
      over the leaf for ``granularity="global"``).
  """

  path: str
  layout: Any
  grad: jax.Array
  grad_compute: jax.Array
  direction: jax.Array
  dtype: Any
  elements: Stats
  observed: tuple[jax.Array, ...]


def check_shapes(layouts, treedef, state, rule, is_global) -> None:
  """The update's leaves must have the shapes the state was built for."""
  names = rule.element_stats or (() if is_global else rule.unit_stats)
  if not treedef.num_leaves:
    return
  if not names:
    return
  old = treedef.flatten_up_to(getattr(state, names[0]))
  for layout, s, path in zip(layouts, old, paths_of(treedef)):
    want = layout.shape if rule.element_stats else layout.unit_shape
    if tuple(s.shape) != tuple(want):
      raise ValueError(
          f"leaf '{path}' has shape {layout.shape} in update, but the state "
          f"was built for another shape (statistic '{names[0]}' has shape "
          f"{tuple(s.shape)}, expected {tuple(want)}); rebuild the state with "
          "init for the new parameters."
      )


def paths_of(treedef) -> list[str]:
  """The path of every leaf of ``treedef``, in order."""
  dummy = treedef.unflatten([0] * treedef.num_leaves)
  return [paths.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(dummy)[0]]


def has_leaf_step(rule: Rule) -> bool:
  """Whether `Rule.update_leaf` runs: the rule keeps leaf statistics or
  refines its unit statistics there."""
  return bool(rule.leaf_stats) or type(rule).update_leaf is not Rule.update_leaf


def leaf_infos(leaf_info: Any, tree: Any, treedef) -> list[Any]:
  """One ``leaf_info`` value per leaf of ``tree``, in order."""
  if leaf_info is None:
    return [None] * treedef.num_leaves
  if callable(leaf_info):
    leaf_info = leaf_info(tree)
  try:
    return treedef.flatten_up_to(leaf_info)
  except (ValueError, TypeError) as e:
    raise ValueError(
        "leaf_info must have the structure of the params (one value per leaf): "
        f"{e}") from e


def as_array(x: Any) -> Any:
  """Python and NumPy numbers as arrays (optax accepts ``{"w": 1.0}`` leaves)."""
  return x if hasattr(x, "dtype") and hasattr(x, "shape") else jnp.asarray(x)


def global_reduce(
    reduction: str, leaves: list[LeafStep]) -> tuple[jax.Array, ...]:
  """Sums (or means) of each observed quantity over every element of the tree."""
  if not leaves:
    return ()
  totals: Optional[tuple[jax.Array, ...]] = None
  size = 0
  for leaf in leaves:
    size += math.prod(leaf.layout.shape)
    totals = leaf.observed if totals is None else tuple(
        a + b for a, b in zip(totals, leaf.observed)
    )
  assert totals is not None  # leaves is not empty
  if reduction == "mean":
    totals = tuple(t / max(size, 1) for t in totals)
  return totals
