"""Units of a parameter tree: which elements share one learning rate.

A *unit* is the set of elements of a leaf that share one rate. Three
granularities are supported:

* ``"element"``: every scalar parameter is its own unit (the reference code).
* ``"neuron"``: one unit per output neuron. The neuron axes of a leaf index the
  units; the remaining axes (the fan-in) are averaged over.
* ``"tensor"``: one unit per leaf.

The per-unit statistics of a leaf of shape ``S`` are stored with the shape of
its neuron axes only (squeezed): a Flax ``(in, out)`` kernel gives ``(out,)``,
a bias ``(out,)`` gives ``(out,)``, a 0-d leaf gives ``()``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal, Optional, Union

import jax
import jax.numpy as jnp

Granularity = Literal["element", "neuron", "tensor"]
GRANULARITIES: tuple[str, ...] = ("element", "neuron", "tensor")

AxesSpec = Union[int, Sequence[int], None]
"""Neuron axes of one leaf: an axis, a tuple of axes, or None (the default)."""

NeuronAxes = Union[AxesSpec, Any, Callable[[Any], Any]]
"""One ``AxesSpec`` for all leaves, a pytree of them, or ``params -> pytree``.

An ``AxesSpec`` is an int, a tuple of ints or None; a list is a container of
per-leaf specs, never one spec. A spec given for a sub-tree's path applies to
all leaves below it (``{"encoder": 0, "decoder": -1}``).
"""


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one leaf splits into units.

  Attributes:
    reduce_axes: sorted, non-negative axes averaged over to get one value per
      unit (empty for element granularity).
    unit_shape: shape of the per-unit statistics of the leaf.
    size: number of elements averaged into each unit (at least 1).
    keep_axes: the leaf's axes that the per-unit statistics keep, in order.
  """

  reduce_axes: tuple[int, ...]
  unit_shape: tuple[int, ...]
  size: int
  keep_axes: tuple[int, ...] = ()

  def sum(self, x: jax.Array, dtype: Any) -> jax.Array:
    """Sum of ``x`` over each unit, accumulated in ``dtype``."""
    x = x.astype(dtype)
    if not self.reduce_axes:
      return x
    return jnp.sum(x, axis=self.reduce_axes).astype(dtype)

  def mean(self, x: jax.Array, dtype: Any) -> jax.Array:
    """Mean of ``x`` over each unit, accumulated in ``dtype``.

    A sum divided by the static unit size, so that empty leaves give zeros
    rather than NaN.
    """
    if not self.reduce_axes:
      return x.astype(dtype)
    return (self.sum(x, dtype) / self.size).astype(dtype)

  def broadcast(self, unit_values: jax.Array) -> jax.Array:
    """Reshapes per-unit values so that they broadcast against the leaf."""
    if not self.reduce_axes:
      return unit_values
    return jnp.expand_dims(unit_values, self.reduce_axes)


def path_str(path: Sequence[Any]) -> str:
  """``'a/b/0'`` for a JAX key path, the form used in labels, errors and logs.

  A trailing ``.value`` attribute (the array inside a Flax NNX variable) is
  dropped, so that a parameter has the same path in an ``nnx.State`` of
  variables (as ``nnx.Optimizer`` passes to ``init``) and in a tree of arrays
  (as it passes to ``update``).
  """
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
    path = path[:-1]
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def _is_spec(x: Any) -> bool:
  if x is None or isinstance(x, int):
    return True
  return isinstance(x, tuple) and all(isinstance(a, int) for a in x)


def check_granularity(granularity: str) -> None:
  if granularity not in GRANULARITIES:
    raise ValueError(
        f"granularity must be one of {GRANULARITIES}, got {granularity!r}."
    )


def _normalise_axes(spec: AxesSpec, ndim: int, where: str) -> tuple[int, ...]:
  """Neuron axes of one leaf as sorted, non-negative ints; None = default."""
  if ndim == 0:
    return ()  # A 0-d leaf is always one unit.
  if spec is None:
    return (ndim - 1,)
  axes = (spec,) if isinstance(spec, int) else tuple(spec)
  out = []
  for a in axes:
    if isinstance(a, bool) or not isinstance(a, int):
      raise TypeError(
          f"neuron_axes for leaf '{where}' must be ints, got {spec!r}."
      )
    if not -ndim <= a < ndim:
      raise ValueError(
          f"neuron_axes {a} is out of range for leaf '{where}' with {ndim} "
          f"dimensions: allowed axes are {-ndim}..{ndim - 1}."
      )
    out.append(a % ndim)
  if len(set(out)) != len(out):
    raise ValueError(f"neuron_axes {spec!r} for leaf '{where}' repeats an axis.")
  return tuple(sorted(out))


def _specs_by_path(neuron_axes: NeuronAxes, tree: Any) -> Callable[[str], AxesSpec]:
  """Maps a leaf path to its axes spec.

  A spec is an int, a *tuple* of ints (several neuron axes) or None; lists,
  dicts and other containers hold specs for sub-trees. A spec given for a path
  applies to every leaf below it (the longest matching prefix wins).
  """
  if callable(neuron_axes):
    neuron_axes = neuron_axes(tree)
  if _is_spec(neuron_axes):
    single = neuron_axes
    return lambda path: single
  flat, _ = jax.tree_util.tree_flatten_with_path(neuron_axes, is_leaf=_is_spec)
  table = {path_str(p): s for p, s in flat}

  def lookup(path: str) -> AxesSpec:
    parts = path.split("/")
    for i in range(len(parts), -1, -1):
      prefix = "/".join(parts[:i])
      if prefix in table:
        return table[prefix]
    raise ValueError(
        f"neuron_axes has no entry for leaf '{path}'; a pytree of neuron axes "
        f"must cover the parameters (known paths: {sorted(table)[:8]})."
    )

  return lookup


def leaf_layout(
    shape: Sequence[int], granularity: str, spec: AxesSpec, where: str
) -> Layout:
  """The layout of one leaf of ``shape``."""
  shape = tuple(shape)
  ndim = len(shape)
  if granularity == "element":
    return Layout((), shape, 1, tuple(range(ndim)))
  if granularity == "tensor":
    keep: tuple[int, ...] = ()
  else:
    keep = _normalise_axes(spec, ndim, where)
  reduce_axes = tuple(a for a in range(ndim) if a not in keep)
  size = 1
  for a in reduce_axes:
    size *= shape[a]
  return Layout(reduce_axes, tuple(shape[a] for a in keep), max(size, 1), keep)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class UnitAxes:
  """Which axes of each parameter leaf its per-unit statistics keep.

  A static pytree node (no array leaves): it rides along in a strategy's state
  through ``jit``, donation and checkpoints, and tells tools such as
  :func:`optax_neuronlr.state_shardings` how a per-unit array maps onto its
  parameter (``kept[i] = (path, axes)``, ``()`` for one unit per leaf), and
  with which ``granularity`` the strategy was built.
  """

  kept: tuple[tuple[str, tuple[int, ...]], ...] = ()
  granularity: str = "element"

  def axes_of(self, path: str) -> Optional[tuple[int, ...]]:
    for p, axes in self.kept:
      if p == path:
        return axes
    return None


def unit_axes(tree: Any, layouts: Sequence[Layout], granularity: str) -> UnitAxes:
  """The :class:`UnitAxes` of ``tree`` (the tree ``tree_layouts`` was given)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return UnitAxes(
      tuple((path_str(p), l.keep_axes) for (p, _), l in zip(flat, layouts)),
      granularity,
  )


def tree_layouts(
    tree: Any, granularity: str, neuron_axes: NeuronAxes
) -> tuple[list[Layout], jax.tree_util.PyTreeDef]:
  """Layouts of the array leaves of ``tree`` and its treedef.

  ``None`` leaves and ``optax.MaskedNode`` are structure, not leaves: they get
  no layout and keep their place in every per-unit tree.
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
  if granularity == "neuron":
    spec_of = _specs_by_path(neuron_axes, tree)
  else:
    spec_of = lambda path: None
  layouts = []
  for path, leaf in flat:
    where = path_str(path)
    shape = leaf.shape if hasattr(leaf, "shape") else jnp.shape(leaf)
    layouts.append(leaf_layout(shape, granularity, spec_of(where), where))
  return layouts, treedef
