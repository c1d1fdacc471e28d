"""How a leaf is seen as one or more matrices (Muon's view of it)."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any, Optional


def _axes(value: Any, field: str) -> tuple[int, ...]:
  """An int or a sequence of ints as a tuple (optax's ``MuonDimensionNumbers(0, 1)``)."""
  if isinstance(value, numbers.Integral) and not isinstance(value, bool):
    return (int(value),)
  if isinstance(value, (tuple, list)) and all(
      isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in value):
    return tuple(int(a) for a in value)
  raise TypeError(f"MatrixView.{field} must be an int or a tuple of ints, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class MatrixView:
  """How a leaf is seen as one or more matrices (Muon's view of it).

  Attributes:
    reduction_axes: the fan-in axes (their product is the rows); an int is
      read as a 1-tuple.
    output_axes: the output axes (their product is the columns).
    blocks: ``(axis, n)``: ``axis`` (an output axis) splits into ``n`` equal
      contiguous blocks, one matrix each (the gates of a fused recurrent
      kernel, q/k/v of a fused projection); None: one matrix.

  Axes in neither tuple are batch axes: one matrix per index (the layers of
  a scanned stack, the experts of a mixture of experts).
  """

  reduction_axes: tuple[int, ...]
  output_axes: tuple[int, ...]
  blocks: Optional[tuple[int, int]] = None

  def __post_init__(self):
    object.__setattr__(self, "reduction_axes", _axes(self.reduction_axes, "reduction_axes"))
    object.__setattr__(self, "output_axes", _axes(self.output_axes, "output_axes"))
    if set(self.reduction_axes) & set(self.output_axes):
      raise ValueError(
          f"MatrixView: reduction_axes {self.reduction_axes} and output_axes "
          f"{self.output_axes} share an axis.")
    if self.blocks is not None:
      blocks = tuple(self.blocks)
      if len(blocks) != 2 or blocks[0] not in self.output_axes or blocks[1] < 1:
        raise ValueError(
            f"MatrixView.blocks must be (an output axis, a count >= 1), got {self.blocks!r}.")
      object.__setattr__(self, "blocks", (int(blocks[0]), int(blocks[1])))

  def batch_axes(self, ndim: int) -> tuple[int, ...]:
    """The axes of an ``ndim``-D leaf in neither tuple: one matrix per index."""
    return tuple(a for a in range(ndim)
                 if a not in self.reduction_axes and a not in self.output_axes)

  def shifted(self, positions: Sequence[int]) -> "MatrixView":
    """This view with axis ``i`` renamed ``positions[i]`` (a view of a leaf's
    core axes lifted to the whole leaf, batch axes in between)."""
    blocks = None if self.blocks is None else (positions[self.blocks[0]], self.blocks[1])
    return MatrixView(tuple(positions[a] for a in self.reduction_axes),
                      tuple(positions[a] for a in self.output_axes), blocks)

  def shapes(self, shape: Sequence[int]) -> tuple[int, int, int]:
    """``(matrices, fan_in, fan_out)`` of a leaf of ``shape`` (per block)."""
    fan_in = math.prod(shape[a] for a in self.reduction_axes)
    fan_out = math.prod(shape[a] for a in self.output_axes)
    n = 1
    if self.blocks is not None:
      n = self.blocks[1]
      fan_out //= n
    batch = math.prod(shape[a] for a in self.batch_axes(len(shape)))
    return batch * n, fan_in, fan_out
