"""Per-leaf and layer-wise rate multipliers (reference 001, Example 2; 002)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from optax_neuronlr._src import paths as paths_lib
from optax_neuronlr._src import validation


class ScaleByLeafState(NamedTuple):
  """State of `scale_by_leaf`: one scalar multiplier per leaf."""

  multipliers: Any


def _check_multipliers(multipliers: Any) -> dict[str, Any]:
  """``{path: multiplier}``, each a finite scalar ``>= 0`` (named by its leaf)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(multipliers)
  table = {}
  for path, m in flat:
    key = paths_lib.path_str(path)
    validation.check_range(f"scale_by_leaf: the multiplier of leaf '{key}'", m, low=0.0)
    table[key] = m
  return table


def _resolve(multipliers: Any, params: Any) -> list:
  """One multiplier per array leaf of ``params``, looked up by path."""
  if callable(multipliers):
    multipliers = multipliers(params)
  table = _check_multipliers(multipliers)
  lookup = paths_lib.PathTable(table, "scale_by_leaf").lookup
  out = []
  for key in paths_lib.leaf_paths(params):
    value = lookup(key, default=None)
    if value is None:
      raise ValueError(
          f"scale_by_leaf: no multiplier for leaf '{key}' (multipliers has "
          f"{sorted(table)[:8]})."
      )
    out.append(value)
  return out


def scale_by_leaf(
    multipliers: Union[Any, Callable[[Any], Any]],
) -> optax.GradientTransformationExtraArgs:
  """Multiplies each leaf's update by a scalar: ``u_l <- c_l * u_l``.

  The multipliers are resolved once, at ``init``, and kept in the state
  (``ScaleByLeafState.multipliers``, shaped like the params), where they can be
  read, logged or changed. Combine with any optimizer:

    optax.chain(optax.adam(1e-3),
                nlr.scale_by_leaf(nlr.layerwise_multipliers(params, 0.9)))

  Args:
    multipliers: a pytree of scalars mirroring the params (matched by path), or
      a callable ``params -> pytree``. Each multiplier is a finite number
      ``>= 0`` (0 freezes its leaf). Paths follow the package's one path rule
      (`optax_neuronlr._src.paths`): a multiplier given for a sub-tree
      (``{"backbone": 0.1, "head": 1.0}``) or keyed by a regular expression
      (``{"layers_.*": 0.5}``) covers every leaf below it, the longest matching
      prefix winning.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Raises:
    TypeError: for a multiplier that is not a number (at construction, or at
      ``init`` for a callable's result).
    ValueError: naming the leaf, for a negative, NaN or infinite multiplier or
      a non-scalar array; at ``init``, for a leaf without a multiplier.
  """
  if not callable(multipliers):
    _check_multipliers(multipliers)

  def init_fn(params):
    flat_params, treedef = jax.tree.flatten(params)
    values = _resolve(multipliers, params)
    dtype = jnp.result_type(float)
    return ScaleByLeafState(
        treedef.unflatten([jnp.asarray(v, dtype) for v in values])
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    scaled = jax.tree.map(
        lambda u, c: (u * c).astype(u.dtype), updates, state.multipliers
    )
    return scaled, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _natural_key(text: str) -> tuple:
  """Sort key reading digit runs as numbers: ``layers_2`` < ``layers_10``."""
  return tuple(
      (0, int(part)) if part.isdigit() else (1, part)
      for part in re.split(r"(\d+)", text)
      if part
  )


def _module_of(path: str) -> str:
  """A leaf's module: its path without the last key (kernel and bias share it)."""
  return path.rsplit("/", 1)[0] if "/" in path else path


def layerwise_multipliers(
    params: Any,
    factor: float,
    *,
    layer_of: Optional[Callable[[str], int]] = None,
    reverse: bool = False,
) -> Any:
  """``factor ** k`` for layer ``k``, a pytree for `scale_by_leaf`.

  By default a leaf's layer is its module (its path without the last key, so
  a kernel and its bias share one), and modules are numbered 0, 1, ... in the
  natural order of their paths (digits compared as numbers: ``layers_2``
  before ``layers_10``). Paths sort alphabetically otherwise
  (``decoder`` before ``encoder``): pass ``layer_of`` where that is not the
  network's order.

  With ``reverse=True`` layer ``k`` of ``L`` gets ``factor ** (L - 1 - k)``: the
  top layer keeps the base rate and each layer below it is ``factor`` slower
  (layer-wise rate decay for fine-tuning).

  Reference 001 Example 2 counts every tensor separately (a layer's weight is
  index ``2j``, its bias ``2j + 1``); ``layer_of`` reproduces it, e.g.
  ``{"0/kernel": 0, "0/bias": 1, "2/kernel": 2, "2/bias": 3}.__getitem__``.

  Args:
    params: the parameter tree (dict, linen params or ``nnx.State``).
    factor: the per-layer factor, ``> 0``.
    layer_of: optional ``path -> layer index`` (``"/"``-joined paths).
    reverse: count layers from the top.

  Returns:
    A pytree shaped like ``params`` of Python floats.

  Raises:
    TypeError: for a ``factor`` that is not a number, a ``layer_of`` that is not
      callable or returns something other than an int, or a non-bool
      ``reverse``.
    ValueError: for ``factor <= 0`` or a ``layer_of`` index that is negative or
      fractional (never truncated).
  """
  validation.check_range("factor", factor, low=0.0, low_open=True)
  reverse = validation.check_flag("reverse", reverse)
  if layer_of is not None and not callable(layer_of):
    raise TypeError(f"layer_of must be a function path -> int, got {layer_of!r}.")
  paths = paths_lib.leaf_paths(params)
  if layer_of is None:
    modules = sorted({_module_of(p) for p in paths}, key=_natural_key)
    index = {m: k for k, m in enumerate(modules)}
    layer_of = lambda path: index[_module_of(path)]
  layers = {}
  for p in paths:
    layer = layer_of(p)
    try:
      layers[p] = validation.check_int(f"layer_of('{p}')", layer)
    except ValueError as e:
      raise ValueError(
          f"layer_of must return integer indices >= 0, got {layer!r} for '{p}'."
      ) from e
  top = max(layers.values(), default=0)
  exponent = (lambda k: top - k) if reverse else (lambda k: k)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: float(factor) ** exponent(layers[paths_lib.path_str(path)]),
      params,
  )
