"""The vocabulary of leaf kinds and the records of a model's layout."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Union

import jax

from optax_neuronlr._src.roles.views import MatrixView
from optax_neuronlr._src.units import Blocks
from optax_neuronlr._src.units import Neurons

# Kinds of leaves.
EMBEDDING = "embedding"
QUERY = "query"
KEY = "key"
VALUE = "value"
ATTENTION_OUT = "attention_out"
FUSED_QKV = "fused_qkv"
MLP = "mlp"
CONV = "conv"
RECURRENT = "recurrent"
INPUT = "input"
HEAD = "head"
MATRIX = "matrix"
NORM_SCALE = "norm_scale"
BIAS = "bias"
OTHER = "other"
KINDS: tuple[str, ...] = (EMBEDDING, QUERY, KEY, VALUE, ATTENTION_OUT, FUSED_QKV, MLP,
                          CONV, RECURRENT, INPUT, HEAD, MATRIX, NORM_SCALE, BIAS, OTHER)
ATTENTION_KINDS = frozenset({QUERY, KEY, VALUE, ATTENTION_OUT, FUSED_QKV})
# Kinds decayed by default (decoupled weight decay): kernels and embeddings.
DECAYED_KINDS = frozenset({EMBEDDING, HEAD, QUERY, KEY, VALUE, ATTENTION_OUT, FUSED_QKV,
                           MLP, CONV, RECURRENT, INPUT, MATRIX})

# What decided a leaf's role, strongest first.
GIVEN = "given"            # the user's argument (``head=``)
AXIS_NAMES = "axis_names"  # the model's logical axis names
NAME = "name"              # the leaf's path (Flax's names)
SHAPE = "shape"            # a guess from shapes
SOURCES: tuple[str, ...] = (GIVEN, AXIS_NAMES, NAME, SHAPE)

# Roles of batch axes.
STACK = "stack"
EXPERT = "expert"
MIN_MATRIX_DIM = 2  # fewer rows or columns than this: not a hidden matrix


@dataclasses.dataclass(frozen=True)
class LeafRole:
  """What one leaf is (see the table of `optax_neuronlr._src.model_layout`).

  Attributes:
    path: the leaf's path, keys joined by ``"/"`` (NNX's ``.value`` dropped).
    shape: the leaf's shape.
    kind: one of `KINDS`.
    neuron_axes: the axes indexing its output neurons (``()`` for a 0-d
      leaf); the batch axes are among them, so that a stacked leaf has its
      own units per layer (a ``(L, out)`` bias: ``(0, 1)``).
    heads: a unit spec with one unit per attention head (per layer for a
      stacked leaf), or None.
    matrix: its `MatrixView` (batch axes in neither of its tuples),
      or None.
    hidden: whether Muon/NorMuon train it (a hidden matrix).
    weight_decay: whether decoupled weight decay applies by default (kernels
      and embeddings; not norm scales or biases).
    reason: why the leaf is ``other``, why a matrix is not hidden, or what
      was guessed.
    source: which evidence decided the leaf (one of `SOURCES`):
      ``"given"`` (an argument such as ``head=``), ``"axis_names"`` (the
      model's logical axis names), ``"name"`` (its path) or ``"shape"``
      (a guess from shapes, e.g. a stack axis found by shape or a 2-D leaf
      without a Flax name).
    batch_axes: the axes indexing independent layers (a scanned stack,
      pipeline stages) or experts; empty for ordinary leaves.
    batch_roles: ``"stack"`` or ``"expert"`` per batch axis.
  """

  path: str
  shape: tuple[int, ...]
  kind: str
  neuron_axes: tuple[int, ...]
  heads: Optional[Union[Neurons, Blocks]] = None
  matrix: Optional[MatrixView] = None
  hidden: bool = False
  weight_decay: bool = False
  reason: str = ""
  source: str = NAME
  batch_axes: tuple[int, ...] = ()
  batch_roles: tuple[str, ...] = ()

  @property
  def num_neurons(self) -> int:
    return math.prod(self.shape[a] for a in self.neuron_axes)

  @property
  def guessed(self) -> bool:
    """Whether a shape guess decided the leaf."""
    return self.source == SHAPE


def _batch_str(role: LeafRole) -> str:
  if not role.batch_axes:
    return "-"
  return ", ".join(f"{r} {a}" for a, r in zip(role.batch_axes, role.batch_roles))


@dataclasses.dataclass(frozen=True)
class ModelLayout:
  """The roles of every leaf of a parameter tree.

  Attributes:
    treedef: the tree's structure.
    leaves: one `LeafRole` per array leaf, in tree order.
  """

  treedef: Any
  leaves: tuple[LeafRole, ...]

  def tree(self, attribute: str) -> Any:
    """A tree shaped like the params holding ``attribute`` of each leaf's role
    (``layout.tree("hidden")``, ``layout.tree("kind")``)."""
    return jax.tree_util.tree_unflatten(
        self.treedef, [getattr(l, attribute) for l in self.leaves])

  def by_path(self) -> dict[str, LeafRole]:
    return {l.path: l for l in self.leaves}

  def guessed(self) -> tuple[LeafRole, ...]:
    """The leaves decided by a shape guess (``source == "shape"``)."""
    return tuple(l for l in self.leaves if l.guessed)

  def table(self) -> str:
    """A plain-text table: path, shape, kind, neurons, batch axes, matrices,
    hidden, source and note (why a leaf is ``other``, a matrix is not hidden,
    or what was guessed)."""
    rows = [("path", "shape", "kind", "neurons", "batch", "matrices (n x in x out)",
             "hidden", "source", "note")]
    for l in self.leaves:
      if l.matrix is None:
        matrices = "-"
      else:
        n, fan_in, fan_out = l.matrix.shapes(l.shape)
        matrices = f"{n} x {fan_in} x {fan_out}"
      rows.append((l.path, str(l.shape), l.kind, str(l.num_neurons), _batch_str(l),
                   matrices, "yes" if l.hidden else "no", l.source, l.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

  def __str__(self) -> str:
    return self.table()
