r"""Per-unit statistics of the weights, for rules that see the parameters.

A `Rule` that declares ``weights = ("norm", ...)``
gets, in `update` and
`update_leaf`, these statistics of the current
parameters $w$, computed by the engine at the rule's granularity (one value
per unit, shaped like the unit statistics; one for the tree with
``granularity="global"``), under the keys ``"weight_<name>"`` of ``stats``.
With $n$ the number of elements of a unit $U$:

* ``"norm"``: $\|w_U\|_2 = \sqrt{\sum_{i \in U} |w_i|^2}$;
* ``"sum_sq"``: $\sum_{i \in U} |w_i|^2$;
* ``"mean"``: $\frac1n \sum_{i \in U} \mathrm{Re}\, w_i$;
* ``"rms"``: $\sqrt{\frac1n \sum_{i \in U} |w_i|^2}$;
* ``"centered_norm"``: $\|w_U - \bar w_U\|_2$, two passes (the mean first),
  so that no cancellation of $\sum w^2 - n \bar w^2$ loses digits.

Sums accumulate in at least float32 and the results are cast to the dtype of
the leaf's statistics, as the engine does with observations. Complex weights
give real statistics (the modulus; the real part for ``"mean"``; both parts
centered for ``"centered_norm"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

WEIGHT_STATS: tuple[str, ...] = ("norm", "sum_sq", "mean", "rms", "centered_norm")
PREFIX = "weight_"


def key(name: str) -> str:
  """The key of weight statistic ``name`` in a rule's ``stats``."""
  return PREFIX + name


def keys(rule: Any) -> tuple[str, ...]:
  """The keys of every weight statistic ``rule`` declares."""
  return tuple(key(n) for n in rule.weights)


def _parts(w: jax.Array, dtype: Any) -> tuple[jax.Array, ...]:
  if jnp.iscomplexobj(w):
    return (jnp.real(w).astype(dtype), jnp.imag(w).astype(dtype))
  return (w.astype(dtype),)


def _from_sums(names: Sequence[str], total, square, count, centered):
  """The requested statistics from sums over units (``total``, ``square``:
  per-part sums and the sum of squares; ``centered``: a function of the
  per-part means giving the centered sum of squares)."""
  out = {}
  means = tuple(t / count for t in total)
  for name in names:
    if name == "norm":
      out[name] = jnp.sqrt(square)
    elif name == "sum_sq":
      out[name] = square
    elif name == "mean":
      out[name] = means[0]
    elif name == "rms":
      out[name] = jnp.sqrt(square / count)
    elif name == "centered_norm":
      out[name] = jnp.sqrt(centered(means))
  return out


def leaf_stats(names: Sequence[str], layout: Any, w: jax.Array, dtype: Any) -> dict:
  """``{"weight_<name>": per-unit value}`` of leaf ``w`` under ``layout``."""
  if not names:
    return {}
  acc = jnp.promote_types(dtype, jnp.float32)
  parts = _parts(jnp.asarray(w), acc)
  total = tuple(layout.sum(p, acc) for p in parts)
  square = sum(layout.sum(p * p, acc) for p in parts)

  def centered(means):
    return sum(layout.sum(jnp.square(p - layout.expand(m)), acc)
               for p, m in zip(parts, means))

  stats = _from_sums(names, total, square, layout.size, centered)
  return {key(n): v.astype(dtype) for n, v in stats.items()}


def global_stats(names: Sequence[str], layouts: Sequence[Any],
                 ws: Sequence[jax.Array], dtype: Any) -> dict:
  """The statistics of every leaf together (one unit: ``granularity="global"``)."""
  if not names:
    return {}
  acc = jnp.promote_types(dtype, jnp.float32)
  leaves = [_parts(jnp.asarray(w), acc) for w in ws]
  width = max((len(p) for p in leaves), default=1)
  zero = jnp.zeros([], acc)
  total = tuple(sum((jnp.sum(p[k]) for p in leaves if k < len(p)), zero)
                for k in range(width))
  square = sum((jnp.sum(q * q) for p in leaves for q in p), zero)
  count = max(sum(math.prod(layout.shape) for layout in layouts), 1)

  def centered(means):
    return sum((jnp.sum(jnp.square(q - means[k])) for p in leaves
                for k, q in enumerate(p)), zero)

  stats = _from_sums(names, total, square, count, centered)
  return {key(n): v.astype(dtype) for n, v in stats.items()}


def for_update(rule: Any, params: Any, leaves: Sequence[tuple[Any, Any]],
               is_global: bool) -> list[dict]:
  """The weight statistics ``rule`` declares, for one update: a dict per leaf
  (one for the tree with ``granularity="global"``); empty dicts when it
  declares none.

  Args:
    rule: the rule.
    params: the parameters' leaves in order (None when the rule reads none).
    leaves: ``(layout, statistics dtype)`` of each leaf.
    is_global: one unit for the whole tree.
  """
  if not rule.weights:
    return [{}] * max(len(leaves), 1)
  ws = [w if hasattr(w, "dtype") else jnp.asarray(w) for w in params]
  if is_global:
    dtype = jnp.result_type(*[d for _, d in leaves]) if leaves else jnp.float32
    return [global_stats(rule.weights, [layout for layout, _ in leaves], ws, dtype)]
  return [leaf_stats(rule.weights, layout, w, dtype)
          for (layout, dtype), w in zip(leaves, ws)]


def without(new: Any, weights: dict) -> Any:
  """What ``update`` returned, less the weight statistics it was given (a
  rule may return its ``stats`` argument updated)."""
  if not weights or not isinstance(new, Mapping):
    return new
  return {k: v for k, v in new.items() if k not in weights}


def no_params_error(rule: Any) -> ValueError:
  """The error for a rule that reads the weights when ``update`` got none."""
  return ValueError(
      f"{rule.name} reads the weights (weights={tuple(rule.weights)}), but update "
      "got params=None: call tx.update(grads, state, params) with the current "
      "parameters.")
