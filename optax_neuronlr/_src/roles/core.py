"""A leaf's role on its core axes, and its lift to the whole leaf.

Each reader (`.axis_names`, `.names`, `.shapes`) classifies a
leaf's *core*: its axes less the batch axes (stack and expert axes). The
result, a `Core`, is then lifted to the whole leaf: axes renumbered,
the batch axes added to the neuron axes (units per layer), the matrix view
keeping them as batch axes (one matrix per layer or expert).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Optional, Union

from optax_neuronlr._src.roles import kinds as k
from optax_neuronlr._src.roles.views import MatrixView
from optax_neuronlr._src.units import Blocks
from optax_neuronlr._src.units import Neurons


@dataclasses.dataclass(frozen=True)
class Core:
  """A role on a leaf's core axes (numbered ``0..ndim_core-1``)."""

  kind: str
  neuron_axes: tuple[int, ...]
  heads: Optional[Union[Neurons, Blocks]] = None
  matrix: Optional[MatrixView] = None
  hidden: bool = False
  reason: str = ""
  source: str = k.NAME
  decays: Optional[bool] = None  # None: from the kind


def last_axis(ndim: int) -> tuple[int, ...]:
  return (ndim - 1,) if ndim else ()


def lift(path: str, shape: tuple[int, ...], core: Core, batch_axes: Sequence[int] = (),
         batch_roles: Sequence[str] = (), source: Optional[str] = None,
         note: str = "") -> k.LeafRole:
  """The `LeafRole` of a leaf of ``shape`` whose core (the axes
  not in ``batch_axes``, in order) has the role ``core``."""
  batch = tuple(batch_axes)
  positions = [a for a in range(len(shape)) if a not in batch]
  neuron_axes = tuple(sorted(batch + tuple(positions[a] for a in core.neuron_axes)))
  heads = core.heads
  if isinstance(heads, Neurons):
    head_axes = heads.axes if isinstance(heads.axes, tuple) else (heads.axes,)
    heads = Neurons(tuple(sorted(batch + tuple(positions[a] for a in head_axes))))
  elif isinstance(heads, Blocks):
    heads = Blocks(positions[heads.axis], heads.num_blocks, batch)
  matrix = None if core.matrix is None else core.matrix.shifted(positions)
  hidden, reason = core.hidden, core.reason
  if matrix is not None and hidden:
    _, fan_in, fan_out = matrix.shapes(shape)
    if min(fan_in, fan_out) < k.MIN_MATRIX_DIM:
      hidden = False
      reason = (f"a {fan_in} x {fan_out} matrix (fewer than {k.MIN_MATRIX_DIM} rows or "
                "columns): orthogonalising it only rescales it")
  if note:
    reason = f"{reason}; {note}" if reason else note
  decays = core.decays if core.decays is not None else core.kind in k.DECAYED_KINDS
  return k.LeafRole(path, tuple(shape), core.kind, neuron_axes, heads, matrix, hidden,
                    decays, reason, source or core.source, batch, tuple(batch_roles))
