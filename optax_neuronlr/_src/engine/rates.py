"""Reading back the rates a rule's state applied (`rates_of`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from optax_neuronlr._src import paths
from optax_neuronlr._src import rule_checks
from optax_neuronlr._src import rule_state
from optax_neuronlr._src.engine.rule import clamp


def rates_of(state: Any) -> Any:
  """Per-unit rates the last update of a rule ``state`` applied.

  A tree shaped like the parameters' units. Before the first update every unit
  shows ``clip(learning_rate, min_lr, max_lr)``.
  """
  rule = rule_state.rule_of(state)
  hp = rule_state.applied_scalars(state)
  count = state.count
  names = rule.unit_stats or rule.element_stats
  if not names:
    raise ValueError(f"{rule.name} keeps no statistics to read rates from.")

  def leaf_rate(path, *stats):
    dtype = stats[0].dtype
    r = rule_checks.check_rate(
        rule, rule.rate(dict(zip(rule.unit_stats + rule.leaf_stats, stats)), hp, count),
        stats[0].shape, paths.path_str(path))
    rate = clamp(jnp.broadcast_to(r, stats[0].shape), hp).astype(dtype)
    start = clamp(hp["learning_rate"], hp).astype(dtype)
    return jnp.where(count == 0, start, rate)

  if not rule.unit_stats:
    r = rule_checks.check_rate(rule, rule.rate({}, hp, count), None, "(every leaf)")
    return jax.tree_util.tree_map_with_path(
        lambda path, e: leaf_rate(path, jnp.zeros(jnp.shape(r), e.dtype)),
        getattr(state, names[0]))
  return jax.tree_util.tree_map_with_path(
      leaf_rate, *(getattr(state, n) for n in rule.unit_stats + rule.leaf_stats))

