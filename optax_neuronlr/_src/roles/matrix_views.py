"""Matrix views given by the user (``matrices=``), checked against the leaves.

Muon and NorMuon see each leaf as one or more matrices through a
`MatrixView`. The views come from the layout
(`model_layout`) or from the optimizers' ``matrices=``
argument: one view for every leaf, a pytree of views shaped like the params
(matched by path; ``None`` means "the layout's view", as optax's ``None`` means
"no override"), or a callable ``params -> such a pytree``. optax's
``MuonDimensionNumbers(reduction_axis, output_axis)`` is read as the same view.
This module checks a view against its leaf (axes in range, distinct,
non-empty, blocks dividing their axis), with errors that name the field and
the leaf.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Optional

import jax
import optax

from optax_neuronlr._src import paths as paths_lib
from optax_neuronlr._src.roles.views import MatrixView

_DIMENSION_NUMBERS = getattr(optax.contrib, "MuonDimensionNumbers", ())


def is_view(x: Any) -> bool:
  """A view entry of ``matrices=``: a MatrixView, optax's dimension numbers, or None."""
  return x is None or isinstance(x, MatrixView) or (
      bool(_DIMENSION_NUMBERS) and isinstance(x, _DIMENSION_NUMBERS))


def as_view(x: Any, where: str = "") -> Optional[MatrixView]:
  """``x`` (a view entry) as a `MatrixView` (None stays None)."""
  if x is None or isinstance(x, MatrixView):
    return x
  try:
    return MatrixView(x.reduction_axis, x.output_axis)
  except (TypeError, ValueError) as e:
    raise type(e)(f"matrices: the dimension numbers of leaf '{where}': {e}") from e


def check_view(view: MatrixView, shape: Sequence[int], where: str) -> MatrixView:
  """``view`` with non-negative axes, checked against a leaf of ``shape``.

  Raises:
    ValueError: naming the field (``reduction_axes``, ``output_axes``,
      ``blocks``) and the leaf, for an axis out of range, an empty or shared
      axis, or blocks that do not split their axis evenly.
  """
  shape = tuple(shape)
  ndim = len(shape)

  def norm(axes, field):
    out = []
    for a in axes:
      if not -ndim <= a < ndim:
        raise ValueError(
            f"matrices: {field} {tuple(axes)} of leaf '{where}' names axis {a}, out of "
            f"range for its shape {shape} ({ndim} dimensions).")
      out.append(a % ndim)
    if not out:
      raise ValueError(f"matrices: {field} of leaf '{where}' (shape {shape}) is empty; a "
                       "matrix needs at least one fan-in and one output axis.")
    if len(set(out)) != len(out):
      raise ValueError(f"matrices: {field} {tuple(axes)} of leaf '{where}' (shape {shape}) "
                       "names an axis twice.")
    return tuple(out)

  red = norm(view.reduction_axes, "reduction_axes")
  out = norm(view.output_axes, "output_axes")
  if set(red) & set(out):
    raise ValueError(
        f"matrices: reduction_axes {view.reduction_axes} and output_axes "
        f"{view.output_axes} of leaf '{where}' (shape {shape}) share an axis.")
  blocks = view.blocks
  if blocks is not None:
    axis = blocks[0] % ndim if -ndim <= blocks[0] < ndim else None
    if axis is None or axis not in out or blocks[1] < 1 or shape[axis] % blocks[1]:
      raise ValueError(
          f"matrices: blocks={blocks} of leaf '{where}' (shape {shape}) must split an "
          "output axis into equal blocks (axis, count).")
    blocks = (axis, int(blocks[1]))
  return MatrixView(red, out, blocks)


def fallback_view(shape: Sequence[int]) -> MatrixView:
  """The view of a hidden leaf that nothing else describes: every axis but the
  last is the fan-in, the last the output (a Flax kernel's ``(..., in, out)``)."""
  return MatrixView(tuple(range(len(shape) - 1)), (len(shape) - 1,))


def view_lookup(matrices: Any, tree: Any) -> Callable[[str], Optional[MatrixView]]:
  """``path -> MatrixView or None`` from ``matrices`` (a view, a pytree of views
  or None, or a callable ``tree -> pytree``); None: the layout's view."""
  if callable(matrices) and not is_view(matrices):
    matrices = matrices(tree)
  if is_view(matrices):
    view = as_view(matrices)

    def single(path):
      del path
      return view

    single.single = True  # one view for every leaf
    return single
  flat = jax.tree_util.tree_flatten_with_path(matrices, is_leaf=is_view)[0]
  table = {}
  for path, value in flat:
    where = paths_lib.path_str(path)
    if not is_view(value):
      raise TypeError(
          f"matrices: expected a MatrixView or None at '{where}', "
          f"got {type(value).__name__} {value!r}.")
    table[where] = as_view(value, where)

  def lookup(path):
    if path in table:
      return table[path]
    # A None (or a view) standing for a whole subtree, as optax's prefix masks.
    for key, value in table.items():
      if key == "" or path.startswith(key + "/"):
        return value
    raise ValueError(f"matrices has no entry for leaf '{path}' (give a pytree shaped "
                     "like the params, None where the layout's view applies, or a "
                     "callable params -> pytree).")

  return lookup


def shape_scale(view: MatrixView, shape: Sequence[int],
                consistent_rms: Optional[float] = None) -> float:
  r"""Muon's factor $\sqrt{\max(1, n_{out} / n_{in})}$ of one matrix of the view;
  with ``consistent_rms`` $= c$, Moonlight's $c \sqrt{\max(n_{in}, n_{out})}$
  (1 for a zero-size matrix, whose update is empty)."""
  _, fan_in, fan_out = view.shapes(tuple(shape))
  if fan_in == 0:
    return 1.0
  if consistent_rms is not None:
    return consistent_rms * math.sqrt(max(fan_in, fan_out))
  return math.sqrt(max(1.0, fan_out / fan_in))
