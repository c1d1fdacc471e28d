"""Finding per-unit learning rates inside any nested optax state.

Rule states are recognised by type (the state class of a :class:`Rule`), not
through a registry.

Strategy states are found wherever they sit: in ``optax.chain`` tuples,
``optax.multi_transform`` / ``optax.partition`` states, ``optax.masked``,
``optax.inject_hyperparams``, ``optax.apply_if_finite``, ``optax.MultiSteps``
or any other NamedTuple, tuple, list or dict. The rates are recomputed from
each state's statistics and the scalars of its last step; nothing per-element
is stored for this.
"""

from __future__ import annotations

from typing import Any

import sys

import jax
import jax.numpy as jnp
import optax

from optax_neuronlr._src import engine
from optax_neuronlr._src import paths as paths_lib


def _is_strategy_state(x: Any) -> bool:
  return engine.is_rule_state(x)


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


def _strategy_states(opt_state: Any) -> list[tuple[str, Any]]:
  flat, _ = jax.tree_util.tree_flatten_with_path(
      opt_state, is_leaf=_is_strategy_state
  )
  return [
      (paths_lib.path_str(p), unwrap_variables(s))
      for p, s in flat
      if _is_strategy_state(s)
  ]


def _masked_to_none(tree: Any) -> Any:
  is_masked = lambda x: isinstance(x, optax.MaskedNode)
  return jax.tree.map(lambda x: None if is_masked(x) else x, tree, is_leaf=is_masked)


def learning_rates_by_state(opt_state: Any) -> dict[str, Any]:
  """Per-unit rates of every strategy state in ``opt_state``.

  Args:
    opt_state: any optax state (possibly nested).

  Returns:
    ``{path of the strategy state inside opt_state: rates}``, where ``rates`` is
    shaped like the parameters with one per-unit array per leaf (``None`` for
    leaves the strategy does not govern, e.g. masked ones).
  """
  return {
      path: _masked_to_none(engine.rates_of(state))
      for path, state in _strategy_states(opt_state)
  }


def learning_rates(opt_state: Any) -> Any:
  """The per-unit rates that the last update applied, shaped like the params.

  Works on any nested optax state (chain, multi_transform, masked,
  inject_hyperparams, ...), on the ``opt_state`` of a Flax
  ``nnx.Optimizer`` as it is, and under ``jax.jit``. Where several strategies
  govern disjoint parts of the parameters (e.g. two labels of
  ``optax.multi_transform``), their rates are merged into one tree.

  Each leaf holds one value per unit: the leaf's shape at element
  granularity, the shape of its neuron axes at neuron granularity (``(out,)``
  for a Flax ``(in, out)`` kernel), ``(num_blocks,)`` for ``Blocks``, ``()`` at
  tensor granularity; at ``granularity="global"`` every leaf shows the one
  rate. Leaves that no strategy
  governs are ``None``. Before the first update, every unit shows
  ``clip(learning_rate, min_lr, max_lr)``.

  Args:
    opt_state: any optax state.

  Returns:
    A pytree of per-unit rates.

  Raises:
    ValueError: if ``opt_state`` holds no per-unit strategy, or two strategies
      govern the same leaf (use :func:`learning_rates_by_state` then).

  Example:
    >>> import jax.numpy as jnp, optax_neuronlr as nlr
    >>> params = {"w": jnp.ones((3, 2))}
    >>> tx = nlr.grad_history_lr(1e-3, granularity="neuron")
    >>> nlr.learning_rates(tx.init(params))["w"].shape
    (2,)
  """
  found = learning_rates_by_state(opt_state)
  if not found:
    raise ValueError(
        "opt_state holds no per-unit learning-rate state of optax_neuronlr."
    )
  trees = list(found.values())
  if len(trees) == 1:
    return trees[0]
  is_none = lambda x: x is None
  flats = [jax.tree.flatten(t, is_leaf=is_none) for t in trees]
  treedef = flats[0][1]
  if any(td != treedef for _, td in flats):
    raise ValueError(
        "strategies in opt_state govern differently structured trees "
        f"({sorted(found)}); use learning_rates_by_state."
    )
  merged = []
  for leaves in zip(*(f[0] for f in flats)):
    present = [x for x in leaves if x is not None]
    if len(present) > 1:
      raise ValueError(
          "several strategies govern the same leaf "
          f"({sorted(found)}); use learning_rates_by_state."
      )
    merged.append(present[0] if present else None)
  return treedef.unflatten(merged)


def leaf_rates(opt_state: Any) -> dict[str, tuple[jax.Array, jax.Array, jax.Array]]:
  """``{leaf key: (per-unit rates, min_lr, max_lr)}`` of every governed leaf.

  The key is the leaf's ``"/"``-joined path, prefixed with the strategy
  state's path inside ``opt_state`` when there are several strategy states.

  Args:
    opt_state: any optax state (possibly nested, or an ``nnx.Optimizer``'s).

  Returns:
    One ``(rates, min_lr, max_lr)`` per leaf that a strategy governs.
  """
  out = {}
  states = _strategy_states(opt_state)
  for state_path, state in states:
    rates = engine.rates_of(state)
    hp = engine.applied_scalars(state)
    lo, hi = hp["min_lr"], hp["max_lr"]
    prefix = f"{state_path}/" if len(states) > 1 else ""
    for path, r in jax.tree_util.tree_flatten_with_path(_masked_to_none(rates))[0]:
      out[prefix + paths_lib.path_str(path)] = (r, lo, hi)
  return out


def rate_summary(opt_state: Any) -> dict[str, jax.Array]:
  """Per-leaf statistics of the per-unit rates, flat, ready for any logger.

  For every leaf governed by a strategy, the keys ``"<leaf path>/<stat>"``
  with ``stat`` one of ``min``, ``median``, ``max``, ``mean``,
  ``frac_at_min_lr`` and ``frac_at_max_lr`` (the fractions of units pinned at
  each clamp). When several strategy states are present, each key is prefixed
  with the state's path inside ``opt_state``. Computed with ``jnp`` only, so it
  runs inside ``jax.jit`` and returns scalar arrays.

  Args:
    opt_state: any optax state.

  Returns:
    ``{"path/stat": scalar}``, every value a strongly typed scalar of the
    default float dtype. A zero-size leaf gives NaN statistics and zero clamp
    fractions; an empty tree gives ``{}``.
  """
  out: dict[str, jax.Array] = {}
  dtype = jnp.result_type(float)
  for key, (r, lo, hi) in leaf_rates(opt_state).items():
    if not r.size:  # a zero-size leaf has no units: NaN statistics, no clamps
      nan = jnp.full((), jnp.nan, dtype)
      for stat in ("min", "median", "max", "mean"):
        out[f"{key}/{stat}"] = nan
      out[f"{key}/frac_at_min_lr"] = jnp.zeros((), dtype)
      out[f"{key}/frac_at_max_lr"] = jnp.zeros((), dtype)
      continue
    at_lo, at_hi = r <= lo.astype(r.dtype), r >= hi.astype(r.dtype)
    r = r.astype(dtype)
    out[f"{key}/min"] = jnp.min(r)
    out[f"{key}/median"] = jnp.median(r)
    out[f"{key}/max"] = jnp.max(r)
    out[f"{key}/mean"] = jnp.mean(r)
    out[f"{key}/frac_at_min_lr"] = jnp.mean(at_lo.astype(dtype))
    out[f"{key}/frac_at_max_lr"] = jnp.mean(at_hi.astype(dtype))
  return out
