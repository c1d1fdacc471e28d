"""Units of a parameter tree: which elements share one learning rate.

A *unit* is a set of elements that share one rate. Per leaf, a unit spec says
how the leaf splits into units:

* ``"element"``: every scalar parameter is its own unit (the reference code);
* ``"neuron"`` or `Neurons`: one unit per index of the neuron axes
  (default: the last axis, the output neuron of a Flax ``(in, out)`` kernel;
  ``Neurons(0)`` for PyTorch ``(out, in)`` weights); the other axes, the
  fan-in, are reduced over;
* `Blocks`: an axis split into equal contiguous blocks, one unit per
  block (the heads of a fused ``(d, heads * head_dim)`` attention kernel are
  ``Blocks(1, heads)``);
* ``"tensor"``: one unit per leaf.

``granularity="global"`` makes the whole tree one unit (Baydin et al.'s
hypergradient rule). The per-unit statistics of a leaf keep only the shape of
its units: a Flax ``(in, out)`` kernel gives ``(out,)`` per neuron, a bias
``(out,)``, a 0-d leaf ``()``, ``Blocks(1, h)`` gives ``(h,)``; ``"tensor"``
and ``"global"`` give ``()``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from collections.abc import Callable, Sequence
import typing
from typing import Any, Optional, Union

import jax
from jax import core as jax_core
import jax.numpy as jnp
import numpy as np

from optax_neuronlr._src import paths as paths_lib

GRANULARITIES: tuple[str, ...] = ("element", "neuron", "tensor", "global")
LEAF_UNITS: tuple[str, ...] = ("element", "neuron", "tensor")



def _as_int(value: Any, what: str) -> int:
  """A Python, NumPy or concrete 0-d JAX integer as ``int``; else TypeError."""
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{what} must be an int, got {value!r}.")
  if isinstance(value, numbers.Integral):
    return int(value)
  if isinstance(value, (np.ndarray, jax.Array)) and not isinstance(value, jax_core.Tracer):
    if value.ndim == 0 and jnp.issubdtype(value.dtype, jnp.integer):
      return int(value)
  raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}.")


def _as_axes(axes: Any, what: str) -> tuple[int, ...]:
  if isinstance(axes, (list, tuple)):
    return tuple(_as_int(a, what) for a in axes)
  if isinstance(axes, np.ndarray) and axes.ndim == 1:
    return tuple(_as_int(a, what) for a in axes)
  return (_as_int(axes, what),)


def neuron_axes_of(spec: "Neurons") -> tuple[int, ...]:
  """``spec.axes``, which ``Neurons.__post_init__`` has made a tuple."""
  return typing.cast(tuple[int, ...], spec.axes)


@dataclasses.dataclass(frozen=True)
class Neurons:
  """One unit per index of ``axes``; the other axes (the fan-in) are reduced.

  Attributes:
    axes: an axis or a tuple of axes (negative counts from the end).
  """

  axes: Union[int, tuple[int, ...]] = -1

  def __post_init__(self):
    object.__setattr__(self, "axes", _as_axes(self.axes, "Neurons.axes"))


@dataclasses.dataclass(frozen=True)
class Blocks:
  """``axis`` split into ``num_blocks`` equal contiguous blocks, one unit each.

  Every other axis but ``batch_axes`` is reduced over, so each unit is a slab
  ``x[..., b * size:(b + 1) * size, ...]`` of the leaf (of one layer of a
  stacked leaf: ``Blocks(2, heads, batch_axes=(0,))`` on a scanned
  ``(layers, d, heads*head_dim)`` kernel is one unit per head per layer).

  Attributes:
    axis: the axis to split.
    num_blocks: how many blocks; must divide the axis' length.
    batch_axes: axes kept whole, one set of blocks per index (the layers of
      a scanned stack, experts); default none.
  """

  axis: int
  num_blocks: int
  batch_axes: tuple[int, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "axis", _as_int(self.axis, "Blocks.axis"))
    n = _as_int(self.num_blocks, "Blocks.num_blocks")
    if n < 1:
      raise ValueError(f"Blocks.num_blocks must be >= 1, got {n}.")
    object.__setattr__(self, "num_blocks", n)
    object.__setattr__(self, "batch_axes",
                       _as_axes(self.batch_axes, "Blocks.batch_axes")
                       if self.batch_axes != () else ())


UnitSpec = Union[str, Neurons, Blocks]


def is_unit_spec(x: Any) -> bool:
  return isinstance(x, (str, Neurons, Blocks))


def _is_axes_spec(x: Any) -> bool:
  if x is None or isinstance(x, (int, np.integer)) and not isinstance(x, bool):
    return True
  if isinstance(x, jax.Array) and not isinstance(x, jax_core.Tracer) and x.ndim == 0:
    return True
  return isinstance(x, tuple) and all(
      isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in x
  )


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one leaf splits into units.

  Attributes:
    shape: the leaf's shape.
    view: the shape the leaf is reshaped to before reducing (differs from
      ``shape`` only for `Blocks`).
    reduce_axes: axes of ``view`` reduced over (empty: one unit per element).
    unit_shape: shape of the per-unit statistics.
    size: number of elements in each unit (at least 1).
    keep_axes: the leaf's axes that the per-unit statistics keep, in order.
    blocks: ``(axis, num_blocks)`` for `Blocks`, else None.
  """

  shape: tuple[int, ...]
  view: tuple[int, ...]
  reduce_axes: tuple[int, ...]
  unit_shape: tuple[int, ...]
  size: int
  keep_axes: tuple[int, ...] = ()
  blocks: Optional[tuple[int, int]] = None

  @property
  def is_element(self) -> bool:
    return not self.reduce_axes and self.blocks is None

  def sum(self, x: jax.Array, dtype: Any) -> jax.Array:
    """Sum of ``x`` over each unit, accumulated in ``dtype``."""
    x = x.astype(dtype)
    if self.is_element:
      return x
    if self.blocks is not None:
      x = _split(x, self.blocks[0], self.view)
    return jnp.sum(x, axis=self.reduce_axes).astype(dtype)

  def mean(self, x: jax.Array, dtype: Any) -> jax.Array:
    """Mean of ``x`` over each unit (a sum over the static size: no NaN)."""
    if self.is_element:
      return x.astype(dtype)
    return (self.sum(x, dtype) / self.size).astype(dtype)

  def reduce(self, x: jax.Array, dtype: Any, how: str) -> jax.Array:
    return self.sum(x, dtype) if how == "sum" else self.mean(x, dtype)

  def scale(self, d: jax.Array, unit_values: jax.Array) -> jax.Array:
    """``d`` times each unit's value, broadcast over the unit's elements."""
    if self.is_element:
      return d * unit_values
    r = jnp.expand_dims(unit_values, self.reduce_axes)
    if self.blocks is None:
      return d * r
    axis = self.blocks[0]
    return _merge(_split(d, axis, self.view) * r, axis, self.shape)

  def expand(self, unit_values: jax.Array) -> jax.Array:
    """Per-unit values repeated to the leaf's shape."""
    ones = jnp.ones(self.shape, unit_values.dtype)
    return self.scale(ones, unit_values)


def explicit_spec(x: jax.Array) -> Optional[tuple]:
  """``x``'s partition spec on an explicit-sharding mesh, else None."""
  try:
    sharding = jax.typeof(x).sharding
    mesh = sharding.mesh
    explicit = any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types)
  except (AttributeError, TypeError):
    return None
  if not explicit:
    return None
  spec = tuple(sharding.spec)
  return spec + (None,) * (x.ndim - len(spec))


def _split(x: jax.Array, axis: int, view: tuple[int, ...]) -> jax.Array:
  """Reshape ``x`` to ``view`` (``axis`` split in two); the blocks axis keeps
  ``axis``' sharding on explicit-sharding meshes."""
  spec = explicit_spec(x)
  if spec is None or spec[axis] is None:
    return x.reshape(view)
  names = spec[axis] if isinstance(spec[axis], tuple) else (spec[axis],)
  shards = math.prod(jax.typeof(x).sharding.mesh.shape[n] for n in names)
  # Shards of the axis map onto whole blocks when they divide the block count;
  # otherwise the blocks are gathered (correct, with one collective).
  keep = spec[axis] if view[axis] % shards == 0 else None
  new = spec[:axis] + (keep, None) + spec[axis + 1:]
  return jax.lax.reshape(x, view, out_sharding=on_mesh_of(x, new))


def _merge(x: jax.Array, axis: int, shape: tuple[int, ...]) -> jax.Array:
  """Inverse of `_split`."""
  spec = explicit_spec(x)
  if spec is None or spec[axis] is None:
    return x.reshape(shape)
  new = spec[:axis] + (spec[axis],) + spec[axis + 2:]
  return jax.lax.reshape(x, shape, out_sharding=on_mesh_of(x, new))


def on_mesh_of(x: jax.Array, spec: tuple) -> jax.sharding.NamedSharding:
  """``spec`` on ``x``'s (abstract) mesh: a bare PartitionSpec needs a mesh
  context (``jax.set_mesh``), which a jit with explicit-mesh shardings lacks."""
  return jax.sharding.NamedSharding(jax.typeof(x).sharding.mesh,
                                    jax.sharding.PartitionSpec(*spec))


def element_layout(shape: Sequence[int]) -> Layout:
  shape = tuple(shape)
  return Layout(shape, shape, (), shape, 1, tuple(range(len(shape))))


def _normalise_axes(axes: Sequence[int], ndim: int, where: str) -> tuple[int, ...]:
  out = []
  for a in axes:
    if not -ndim <= a < ndim:
      raise ValueError(
          f"neuron_axes {a} is out of range for leaf '{where}' with {ndim} "
          f"dimensions: allowed axes are {-ndim}..{ndim - 1}."
      )
    out.append(a % ndim)
  if len(set(out)) != len(out):
    raise ValueError(f"neuron axes {tuple(axes)} for leaf '{where}' repeat an axis.")
  return tuple(sorted(out))


def _kept(shape: tuple[int, ...], keep: tuple[int, ...]) -> Layout:
  reduce_axes = tuple(a for a in range(len(shape)) if a not in keep)
  size = math.prod(shape[a] for a in reduce_axes)
  return Layout(shape, shape, reduce_axes, tuple(shape[a] for a in keep),
                max(size, 1), keep)


def leaf_layout(shape: Sequence[int], spec: UnitSpec, where: str) -> Layout:
  """The layout of a leaf of ``shape`` under the unit ``spec``."""
  shape = tuple(int(s) for s in shape)
  ndim = len(shape)
  if isinstance(spec, str):
    if spec == "element":
      return element_layout(shape)
    if spec == "tensor":
      return _kept(shape, ())
    if spec == "neuron":
      spec = Neurons(-1)
    else:
      raise ValueError(
          f"unit spec for leaf '{where}' must be one of {LEAF_UNITS}, a "
          f"Neurons or a Blocks, got {spec!r}."
      )
  if isinstance(spec, Neurons):
    if ndim == 0:
      return _kept(shape, ())  # A 0-d leaf is one unit.
    if ndim == 1 and spec.axes == (-1,):
      return element_layout(shape)
    return _kept(shape, _normalise_axes(neuron_axes_of(spec), ndim, where))
  if isinstance(spec, Blocks):
    if ndim == 0:
      raise ValueError(f"Blocks cannot split the 0-d leaf '{where}'.")
    (axis,) = _normalise_axes((spec.axis,), ndim, where)
    n = spec.num_blocks
    if shape[axis] % n:
      raise ValueError(
          f"Blocks({spec.axis}, {n}) for leaf '{where}' of shape {shape}: "
          f"axis {axis} of length {shape[axis]} does not split into {n} equal blocks."
      )
    batch = _normalise_axes(spec.batch_axes, ndim, where) if spec.batch_axes else ()
    if axis in batch:
      raise ValueError(f"Blocks({spec.axis}, {n}) for leaf '{where}': the split axis is "
                       f"also a batch axis {spec.batch_axes}.")
    view = shape[:axis] + (n, shape[axis] // n) + shape[axis + 1:]
    kept_view = sorted([axis] + [b if b < axis else b + 1 for b in batch])
    reduce_axes = tuple(a for a in range(len(view)) if a not in kept_view)
    size = math.prod(view[a] for a in reduce_axes)
    return Layout(shape, view, reduce_axes, tuple(view[a] for a in kept_view),
                  max(size, 1), tuple(sorted((axis,) + batch)), (axis, n))
  raise TypeError(
      f"unit spec for leaf '{where}' must be a string, Neurons or Blocks, got "
      f"{type(spec).__name__} {spec!r}."
  )


def _axes_to_spec(axes: Any, where: str, default: Any = None) -> UnitSpec:
  """A ``neuron_axes`` entry (None, int, tuple of ints) as a spec; None is
  ``default`` (the leaf's output axes from the model layout), else the last axis."""
  if axes is None:
    return Neurons(-1) if default is None else Neurons(default)
  return Neurons(_as_axes(axes, f"neuron_axes for leaf '{where}'"))


def _spec_lookup(
    specs: Any, tree: Any, is_value: Callable[[Any], bool], what: str
) -> Callable[[str], Any]:
  if callable(specs) and not is_value(specs):
    specs = specs(tree)
  if is_value(specs):
    return lambda path, s=specs: s
  selection = paths_lib.from_pytree(specs, is_value, what)
  return selection.lookup


def check_granularity(granularity: Any, neuron_axes: Any) -> None:
  """Construction-time checks of ``granularity`` and ``neuron_axes``."""
  if isinstance(granularity, str):
    if granularity not in GRANULARITIES:
      raise ValueError(
          f"granularity must be one of {GRANULARITIES}, a unit spec "
          f"(Neurons, Blocks), a pytree of them or a callable, got {granularity!r}."
      )
    if neuron_axes is not None and granularity != "neuron":
      raise ValueError(
          f"neuron_axes is given but granularity={granularity!r} ignores it; "
          "use granularity='neuron' (or give per-leaf unit specs as granularity)."
      )
  elif neuron_axes is not None:
    raise ValueError(
        "neuron_axes is given with per-leaf unit specs as granularity; say the "
        "neuron axes in the specs (nlr.Neurons(axes)) instead."
    )
  elif isinstance(granularity, (Neurons, Blocks)) or callable(granularity):
    return
  elif granularity is None or isinstance(granularity, (int, float)):
    raise TypeError(
        f"granularity must be one of {GRANULARITIES}, a unit spec, a pytree of "
        f"them or a callable, got {granularity!r}."
    )
  if not callable(neuron_axes) and neuron_axes is not None:
    flat = jax.tree.leaves(neuron_axes, is_leaf=_is_axes_spec)
    if any(isinstance(a, jax_core.Tracer) for a in flat):
      raise TypeError(
          "neuron_axes arrived as a traced array: optax.inject_hyperparams makes "
          "int arguments hyperparameters. Keep it static: "
          "optax.inject_hyperparams(factory, static_args=('neuron_axes',))."
      )
    for a in flat:
      if not _is_axes_spec(a):
        raise TypeError(
            f"neuron_axes entries must be ints or tuples of ints, got {a!r}."
        )


def _mirrored(specs: Any, treedef: Any) -> Optional[list]:
  """The specs, one per leaf in order, of a spec tree shaped exactly like the
  params (e.g. what ``adam_mini_blocks`` returns): each leaf takes its own
  spec without matching every path against every selector (quadratic in the
  number of leaves, re-run on every trace); None for any other spec tree."""
  if is_unit_spec(specs):
    return None
  leaves, spec_treedef = jax.tree_util.tree_flatten(specs, is_leaf=is_unit_spec)
  if spec_treedef != treedef or not all(is_unit_spec(s) for s in leaves):
    return None
  return leaves


class WarnOnce:
  """A callable granularity (``tree -> specs``) whose warnings show once.

  The engine calls a callable granularity at ``init`` and again on every trace
  of ``update`` (and on every step without ``jit``); a warning that it gives,
  such as `adam_mini_blocks` listing the leaves it does
  not recognise, is shown the first time and not again for this transform.
  The warning filters apply as usual (``"error"`` still raises).
  """

  def __init__(self, fn: Callable[[Any], Any]):
    self.fn = fn
    self._seen: set[tuple[type, str]] = set()

  def __call__(self, tree: Any) -> Any:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      out = self.fn(tree)
    for w in caught:
      key = (w.category, str(w.message))
      if key not in self._seen:
        self._seen.add(key)
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno,
                               source=w.source)
    return out


def tree_layouts(
    tree: Any, granularity: Any, neuron_axes: Any = None,
    default_axes: Optional[Callable[[Any], dict[str, tuple[int, ...]]]] = None,
) -> tuple[list[Layout], Any]:  # (layouts, jax.tree_util.PyTreeDef)
  """Layouts of the array leaves of ``tree`` and its treedef.

  ``granularity`` is a string of `GRANULARITIES` for every leaf, a
  unit spec, a pytree of specs (selected by path, see
  `optax_neuronlr._src.paths`) or a callable ``tree -> pytree``.
  ``"global"`` gives every leaf a tensor layout (the engine sums across
  leaves). ``None`` leaves and ``optax.MaskedNode`` are structure, not leaves.
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
  if granularity == "neuron" and isinstance(granularity, str):
    axes_of = _spec_lookup(neuron_axes, tree, _is_axes_spec, "neuron_axes")
    defaults = {} if default_axes is None else default_axes(tree)
    spec_of = lambda where: _axes_to_spec(axes_of(where), where, defaults.get(where) or None)
  elif isinstance(granularity, str):
    leaf_spec = "tensor" if granularity == "global" else granularity
    spec_of = lambda where: leaf_spec
  else:
    specs = granularity
    if callable(specs) and not is_unit_spec(specs):
      specs = specs(tree)
    mirrored = _mirrored(specs, treedef)
    if mirrored is not None:
      in_order = iter(mirrored)
      spec_of = lambda where: next(in_order)
    else:
      spec_of = _spec_lookup(specs, tree, is_unit_spec, "granularity")
  layouts = []
  for path, leaf in flat:
    where = paths_lib.path_str(path)
    shape = leaf.shape if hasattr(leaf, "shape") else jnp.shape(leaf)
    layouts.append(leaf_layout(shape, spec_of(where), where))
  return layouts, treedef
