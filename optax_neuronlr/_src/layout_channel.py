"""A side channel from a rule's ``init`` to `state_shardings`.

Why it exists: to shard a per-unit statistic along the axes of its parameter
that it keeps, `state_shardings` must know, for every
leaf, which axes of the parameter its units keep. That is static metadata of
the *transform*, and an optax state may hold none (it must stay a tree of
arrays for ``jit``, donation and checkpoints); nor can it be read from the
transform, which is a pair of opaque functions, possibly nested in chains,
``multi_transform`` or ``inject_hyperparams``. So ``state_shardings`` runs
``tx.init`` abstractly inside `recording`, and every
`scale_by_rule` ``init`` that runs inside the block
adds one `LayoutRecord` (`record`). Outside the block, recording is a
no-op. A `contextvars` variable keeps concurrent threads (and nested
blocks) apart.

Nothing else uses it: the update never reads it, so a transform behaves the
same with and without it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, Optional


class LeafLayout(NamedTuple):
  """How the units of one parameter leaf sit in it.

  Attributes:
    path: the leaf's path (keys joined by ``"/"``).
    shape: the leaf's shape.
    unit_shape: the shape of its per-unit statistics.
    keep_axes: the axes of the leaf that the units keep, in order (the
      per-unit array's axes are these axes of the leaf, or blocks of them).
  """

  path: str
  shape: tuple[int, ...]
  unit_shape: tuple[int, ...]
  keep_axes: tuple[int, ...]


class LayoutRecord(NamedTuple):
  """What one rule ``init`` recorded.

  Attributes:
    state_class: the class of the state it built.
    leaves: one `LeafLayout` per parameter leaf, in tree order.
    is_global: True for ``granularity="global"`` (one unit for the tree).
  """

  state_class: type
  leaves: tuple[LeafLayout, ...]
  is_global: bool


_RECORDS: contextvars.ContextVar[Optional[list[LayoutRecord]]] = (
    contextvars.ContextVar("optax_neuronlr_layouts", default=None))


@contextlib.contextmanager
def recording() -> Iterator[list[LayoutRecord]]:
  """Collects a `LayoutRecord` for every rule state that ``init``
  builds inside the block, in order."""
  records: list[LayoutRecord] = []
  token = _RECORDS.set(records)
  try:
    yield records
  finally:
    _RECORDS.reset(token)


def is_recording() -> bool:
  """Whether an ``init`` runs inside `recording`."""
  return _RECORDS.get() is not None


def record(state_class: type, leaves: Sequence[LeafLayout], is_global: bool) -> None:
  """Adds a record to the innermost `recording` block (none: a no-op)."""
  records = _RECORDS.get()
  if records is not None:
    records.append(LayoutRecord(state_class, tuple(leaves), bool(is_global)))


def leaf_layouts(paths: Sequence[str], layouts: Sequence[Any]) -> list[LeafLayout]:
  """`LeafLayout` rows from leaf paths and ``units`` layouts (objects
  with ``shape``, ``unit_shape`` and ``keep_axes``)."""
  return [LeafLayout(p, l.shape, l.unit_shape, l.keep_axes)
          for p, l in zip(paths, layouts)]
