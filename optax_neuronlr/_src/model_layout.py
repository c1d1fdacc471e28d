r"""What each leaf of a Flax model is: the one transformer-layout reader.

Several optimizers treat the leaves of a network differently: Adam-mini keeps
one second moment per attention head, per output neuron or per token; SCALE
normalises matrices per output neuron and keeps momentum on the output head;
Muon and NorMuon orthogonalise the hidden matrices and train embeddings, the
output head, norm scales and biases with AdamW. They all read the same facts
about a leaf from its path and shape, and this module is where those facts
live: :func:`model_layout` classifies every leaf of a Flax NNX ``nnx.State`` or
a linen params tree (or any tree of arrays named the Flax way) and gives, per
leaf, a :class:`LeafRole`:

* ``kind``: one of :data:`KINDS` (below);
* ``neuron_axes``: the axes that index the leaf's *output neurons*, i.e. all
  its output axes. A ``(d, heads, head_dim)`` query/key/value kernel has
  ``heads * head_dim`` output neurons (axes ``(1, 2)``); every other kernel
  the last axis (Flax kernels are ``(..., in, out)``); a 1-D leaf each element;
  a 0-d leaf itself. ``granularity="neuron"`` of every rule uses these axes
  when ``neuron_axes`` is not given;
* ``heads``: the unit spec with one unit per attention head (query, key,
  value and attention-output kernels; fused 2-D kernels need ``num_heads``);
* ``matrix``: how the leaf is seen as matrices (:class:`MatrixView`: the
  fan-in axes, the output axes and, for fused gates, the blocks), or None;
* ``hidden``: whether it is a *hidden matrix*, Muon's and NorMuon's leaf.

Leaves are read by name: a leaf's *name* is the last key of its path (NNX's
trailing ``.value`` dropped), its *module* the key before, matched whole and
case-insensitively, never as substrings. The first rule that applies wins:

| kind | leaf | shape | neurons | matrix (fan-in; out) | hidden |
| --- | --- | --- | --- | --- | --- |
| ``bias`` | ``bias`` | any | last axis (both axes of a query/key/value ``(heads, head_dim)`` bias) | - | no |
| ``norm_scale`` | ``scale`` | ``(d,)`` | each | - | no |
| ``embedding`` | ``embedding`` | ``(vocab, d)`` | ``d`` | - | no |
| ``head`` | the output head's ``kernel`` [1] | ``(d, out)`` | ``out`` | ``(0; 1)`` | no |
| ``query``, ``key``, ``value`` [2] | ``kernel`` | ``(d, heads, head_dim)`` | ``(1, 2)`` | ``(0; 1, 2)`` | yes |
| ``query``, ``key``, ``value`` [2], fused heads | ``kernel`` | ``(d, heads*head_dim)`` | last | ``(0; 1)`` | yes |
| ``attention_out`` [2] | ``kernel`` | ``(heads, head_dim, d)`` / ``(heads*head_dim, d)`` | last | ``(0, 1; 2)`` / ``(0; 1)`` | yes |
| ``fused_qkv`` [2] | ``kernel`` | ``(d, 3*inner)`` | last | ``(0; 1)``, 3 blocks [3] | yes |
| ``recurrent`` [4] | a cell's hidden-to-hidden ``kernel`` | ``(h, gates*h)`` | last | ``(0; 1)``, one per gate | yes |
| ``input`` [4] | a cell's input ``kernel`` | ``(in, gates*h)`` | last | ``(0; 1)``, one per gate | if ``in`` is not tiny [5] |
| ``conv`` | ``kernel`` | ``(..., in, out)``, 3-D or more, outside attention | last | ``(all but last; last)`` | yes |
| ``mlp`` | any other ``kernel`` | ``(in, out)`` | last | ``(0; 1)`` | if not tiny [5] |
| ``other`` | anything else | any | last axis | - | no |

* [1] The output head: the 2-D kernel of a module named one of
  :data:`HEAD_NAMES` (``lm_head``, ``head``, ``classifier``, ...), or of a
  module named ``out``/``output`` at the top of the tree (a read-out; an
  ``out`` beside ``query``/``key``/``value`` is attention's); failing both, a
  ``(d, vocab)`` kernel whose transpose is an embedding's shape. ``head=`` (a
  path selector, or False for none) overrides the search.
* [2] Modules ``query``, ``q_proj``, ``wq``, ``q`` / ``key``, ``k_proj``,
  ``wk``, ``k`` / ``value``, ``v_proj``, ``wv``, ``v`` / ``out``, ``o_proj``,
  ``wo``, ``out_proj`` (attention output: an ``out`` module beside
  query/key/value modules, or any of the others) / ``qkv``, ``qkv_proj``,
  ``wqkv``, ``c_attn``, ``query_key_value``, ``in_proj`` (fused). Flax's
  ``nnx.MultiHeadAttention`` and linen's ``nn.MultiHeadDotProductAttention``
  name theirs ``query``, ``key``, ``value``, ``out``.
* [3] A fused q/k/v kernel is three matrices (q, k and v, side by side along
  the output axis) when the heads are not grouped (``num_kv_heads`` unset or
  equal to ``num_heads``); under grouped-query attention it is one matrix.
* [4] Recurrent cells: Flax NNX ``GRUCell``, ``OptimizedLSTMCell`` and
  ``SimpleCell`` fuse the gates (modules ``dense_i``, input, and ``dense_h``,
  hidden-to-hidden, side by side); linen's cells and NNX's ``LSTMCell`` keep
  one module per gate (``ir``, ``iz``, ``in`` / ``hr``, ``hz``, ``hn`` for the
  GRU; ``ii``, ``if``, ``ig``, ``io`` / ``hi``, ``hf``, ``hg``, ``ho`` for the
  LSTM). A fused ``(h, gates*h)`` kernel is one matrix per gate.
* [5] A matrix with fewer than :data:`MIN_MATRIX_DIM` rows or columns (per
  block) is not hidden: orthogonalising a ``1 x n`` matrix only rescales it
  (a GRU reading one input feature has a ``(1, 3*h)`` input kernel). Such
  leaves stay with AdamW.

``model_layout(params).table()`` shows every leaf's row; Adam-mini
(:func:`optax_neuronlr.adam_mini_blocks`), SCALE
(:func:`optax_neuronlr.scale_sgd_labels`), Muon and NorMuon read their
partitions from here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Optional, Union

import jax
import numpy as np

from optax_neuronlr._src import paths as paths_lib
from optax_neuronlr._src import validation
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
NORM_SCALE = "norm_scale"
BIAS = "bias"
OTHER = "other"
KINDS: tuple[str, ...] = (EMBEDDING, QUERY, KEY, VALUE, ATTENTION_OUT, FUSED_QKV, MLP,
                          CONV, RECURRENT, INPUT, HEAD, NORM_SCALE, BIAS, OTHER)
ATTENTION_KINDS = frozenset({QUERY, KEY, VALUE, ATTENTION_OUT, FUSED_QKV})

QUERY_NAMES = frozenset({"query", "q_proj", "wq", "q"})
KEY_NAMES = frozenset({"key", "k_proj", "wk", "k"})
VALUE_NAMES = frozenset({"value", "v_proj", "wv", "v"})
OUT_NAMES = frozenset({"out", "o_proj", "wo", "out_proj"})
QKV_NAMES = frozenset({"qkv", "qkv_proj", "wqkv", "c_attn", "query_key_value", "in_proj"})
# ``out`` alone is ambiguous: attention's output beside query/key/value, a read-out
# at the top of the tree.
_AMBIGUOUS_OUT = frozenset({"out"})
HEAD_NAMES = frozenset({"lm_head", "head", "output", "output_layer", "output_head",
                        "out_head", "final_layer", "unembed", "unembedding", "logits",
                        "classifier"})
# Recurrent cells: per-gate modules (linen cells, NNX LSTMCell) and fused ones (NNX).
GATE_HIDDEN_NAMES = frozenset({"hr", "hz", "hn", "hi", "hf", "hg", "ho"})
GATE_INPUT_NAMES = frozenset({"ir", "iz", "in", "ii", "if", "if_", "ig", "io"})
FUSED_HIDDEN_NAME = "dense_h"
FUSED_INPUT_NAME = "dense_i"
MIN_MATRIX_DIM = 2  # fewer rows or columns than this: not a hidden matrix


@dataclasses.dataclass(frozen=True)
class MatrixView:
  """How a leaf is seen as one or more matrices (Muon's view of it).

  Attributes:
    reduction_axes: the fan-in axes (their product is the rows).
    output_axes: the output axes (their product is the columns).
    blocks: ``(axis, n)``: ``axis`` (an output axis) splits into ``n`` equal
      contiguous blocks, one matrix each (the gates of a fused recurrent
      kernel, q/k/v of a fused projection); None: one matrix.

  Axes in neither tuple are batch axes: one matrix per index.
  """

  reduction_axes: tuple[int, ...]
  output_axes: tuple[int, ...]
  blocks: Optional[tuple[int, int]] = None

  def shapes(self, shape: Sequence[int]) -> tuple[int, int, int]:
    """``(matrices, fan_in, fan_out)`` of a leaf of ``shape`` (per block)."""
    fan_in = math.prod(shape[a] for a in self.reduction_axes)
    fan_out = math.prod(shape[a] for a in self.output_axes)
    n = 1
    if self.blocks is not None:
      n = self.blocks[1]
      fan_out //= n
    batch = math.prod(s for a, s in enumerate(shape)
                      if a not in self.reduction_axes and a not in self.output_axes)
    return batch * n, fan_in, fan_out


@dataclasses.dataclass(frozen=True)
class LeafRole:
  """What one leaf is (see the table of :mod:`optax_neuronlr._src.model_layout`).

  Attributes:
    path: the leaf's path, keys joined by ``"/"`` (NNX's ``.value`` dropped).
    shape: the leaf's shape.
    kind: one of :data:`KINDS`.
    neuron_axes: the axes indexing its output neurons (``()`` for a 0-d leaf).
    heads: a unit spec with one unit per attention head, or None.
    matrix: its :class:`MatrixView`, or None.
    hidden: whether Muon/NorMuon train it (a hidden matrix).
    weight_decay: whether decoupled weight decay applies by default (kernels
      and embeddings; not norm scales or biases).
    reason: why the leaf is ``other``, or why a matrix is not hidden.
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

  @property
  def num_neurons(self) -> int:
    return math.prod(self.shape[a] for a in self.neuron_axes)


@dataclasses.dataclass(frozen=True)
class ModelLayout:
  """The roles of every leaf of a parameter tree.

  Attributes:
    treedef: the tree's structure.
    leaves: one :class:`LeafRole` per array leaf, in tree order.
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

  def table(self) -> str:
    """A plain-text table: path, shape, kind, neurons, matrices, hidden, note
    (why a leaf is ``other`` or a matrix is not hidden)."""
    rows = [("path", "shape", "kind", "neurons", "matrices (n x in x out)", "hidden", "note")]
    for l in self.leaves:
      if l.matrix is None:
        matrices = "-"
      else:
        n, fan_in, fan_out = l.matrix.shapes(l.shape)
        matrices = f"{n} x {fan_in} x {fan_out}"
      rows.append((l.path, str(l.shape), l.kind, str(l.num_neurons), matrices,
                   "yes" if l.hidden else "no", l.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

  def __str__(self) -> str:
    return self.table()


def _shape(x: Any) -> tuple[int, ...]:
  return tuple(int(s) for s in (x.shape if hasattr(x, "shape") else np.shape(x)))


def _check_heads(value: Optional[int], what: str) -> None:
  if value is None:
    return
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{what} must be an int >= 1 or None, got {value!r}.")


class _Context:
  """What classifying one leaf needs to know about the others."""

  def __init__(self, entries: list[tuple[list[str], tuple[int, ...]]], head: Any):
    self.children: dict[tuple[str, ...], set[str]] = {}
    for keys, _ in entries:
      if len(keys) >= 2:
        self.children.setdefault(tuple(keys[:-2]), set()).add(keys[-2].lower())
    self.fused_gates: dict[tuple[str, ...], int] = {}
    for keys, shape in entries:
      if (len(keys) >= 2 and keys[-1].lower() == "kernel" and len(shape) == 2
          and keys[-2].lower() == FUSED_HIDDEN_NAME and shape[0] > 0
          and shape[1] % shape[0] == 0):
        self.fused_gates[tuple(keys[:-2])] = shape[1] // shape[0]
    self.heads = _find_heads(entries, head, self)

  def siblings(self, keys: Sequence[str]) -> set[str]:
    return self.children.get(tuple(keys[:-2]), set())

  def is_attention(self, keys: Sequence[str]) -> bool:
    return bool(self.siblings(keys) & (QUERY_NAMES | KEY_NAMES | VALUE_NAMES | QKV_NAMES))

  def is_cell(self, keys: Sequence[str]) -> bool:
    siblings = self.siblings(keys)
    return bool(siblings & GATE_HIDDEN_NAMES) or FUSED_HIDDEN_NAME in siblings


def _top_level(keys: Sequence[str]) -> bool:
  """A module at the root of the tree (linen's ``{"params": ...}`` root included)."""
  depth = len(keys) - 2
  return depth == 0 or (depth == 1 and keys[0] == "params")


def _find_heads(entries, head: Any, context: _Context) -> set[str]:
  """Paths of the output head's kernel(s)."""
  if head is False:
    return set()
  paths = {"/".join(k): s for k, s in entries}
  if head is not None:
    selector = paths_lib.Selector(head, "head")
    found = {p for p, s in paths.items() if len(s) >= 2 and selector.selects(p)}
    if not found and paths:
      raise ValueError(
          f"head={head!r} selects no leaf with two or more dimensions (a misspelt "
          f"path?); the leaves are {sorted(paths)}. Pass head=None to find the head "
          "by name, or head=False for none.")
    return found
  by_name = set()
  for keys, shape in entries:
    if len(shape) != 2 or len(keys) < 2 or keys[-1].lower() != "kernel":
      continue
    module = keys[-2].lower()
    if module in HEAD_NAMES:
      by_name.add("/".join(keys))
    elif module in _AMBIGUOUS_OUT and _top_level(keys) and not context.is_attention(keys):
      by_name.add("/".join(keys))
  if by_name:
    return by_name
  # An unnamed head: a (d, vocab) kernel whose shape is an embedding's, transposed.
  embeds = {s for k, s in entries if k and k[-1].lower() == "embedding" and len(s) == 2}
  return {"/".join(k) for k, s in entries if len(s) == 2 and k and k[-1].lower() == "kernel"
          and (s[1], s[0]) in embeds}


def _classify(keys: list[str], shape: tuple[int, ...], context: _Context,
              num_heads: Optional[int], num_kv_heads: Optional[int]) -> LeafRole:
  where = "/".join(keys)
  name = keys[-1].lower() if keys else ""
  module = keys[-2].lower() if len(keys) >= 2 else ""
  ndim = len(shape)
  last: tuple[int, ...] = (ndim - 1,) if ndim else ()

  def role(kind, neuron_axes: tuple[int, ...] = last, heads=None, matrix=None, hidden=False, reason=""):
    decays = kind in (EMBEDDING, HEAD, QUERY, KEY, VALUE, ATTENTION_OUT, FUSED_QKV, MLP,
                      CONV, RECURRENT, INPUT) or (
                          kind == OTHER and ndim >= 2 and name not in ("bias", "scale"))
    if matrix is not None:
      _, fan_in, fan_out = matrix.shapes(shape)
      if hidden and min(fan_in, fan_out) < MIN_MATRIX_DIM:
        hidden = False
        reason = (f"a {fan_in} x {fan_out} matrix (fewer than {MIN_MATRIX_DIM} rows or "
                  "columns): orthogonalising it only rescales it")
    return LeafRole(where, shape, kind, tuple(neuron_axes), heads, matrix, hidden, decays,
                    reason)

  if name == "bias":
    # One value per output neuron: a (heads, head_dim) query/key/value bias has
    # heads*head_dim neurons; any other bias, one per index of its last axis.
    if ndim == 2 and module in QUERY_NAMES | KEY_NAMES | VALUE_NAMES:
      return role(BIAS, neuron_axes=(0, 1))
    return role(BIAS)
  if name == "scale":
    if ndim == 1:
      return role(NORM_SCALE)
    return role(OTHER, reason=f"a 'scale' with {ndim} dimensions (a norm scale is 1-D)")
  if name == "embedding":
    if ndim == 2:
      return role(EMBEDDING, neuron_axes=(1,))
    return role(OTHER, reason=f"an 'embedding' with {ndim} dimensions (Embed's is (vocab, d))")
  if name != "kernel":
    return role(OTHER, reason=f"no rule for a leaf named {keys[-1] if keys else ''!r}")

  if where in context.heads:
    return role(HEAD, matrix=MatrixView((0,), (1,)) if ndim == 2 else None)
  kv_heads = num_kv_heads if num_kv_heads is not None else num_heads
  for kind, names in ((QUERY, QUERY_NAMES), (KEY, KEY_NAMES), (VALUE, VALUE_NAMES)):
    if module not in names:
      continue
    heads_n = num_heads if kind == QUERY else kv_heads
    if ndim == 3:
      return role(kind, neuron_axes=(1, 2), heads=Neurons(1),
                  matrix=MatrixView((0,), (1, 2)), hidden=True)
    if ndim == 2:
      return role(kind, heads=None if heads_n is None else Blocks(1, heads_n),
                  matrix=MatrixView((0,), (1,)), hidden=True)
    return role(OTHER, reason=f"a {kind} kernel with {ndim} dimensions")
  if module in OUT_NAMES and (module not in _AMBIGUOUS_OUT or context.is_attention(keys)
                              or ndim == 3):
    if ndim == 3:
      return role(ATTENTION_OUT, heads=Neurons(0), matrix=MatrixView((0, 1), (2,)),
                  hidden=True)
    if ndim == 2:
      return role(ATTENTION_OUT, heads=None if num_heads is None else Blocks(0, num_heads),
                  matrix=MatrixView((0,), (1,)), hidden=True)
    return role(OTHER, reason=f"an attention-output kernel with {ndim} dimensions")
  if module in QKV_NAMES:
    if ndim != 2:
      return role(OTHER, reason=f"a fused q/k/v kernel with {ndim} dimensions (expected 2)")
    grouped = num_kv_heads is not None and num_heads is not None and num_kv_heads != num_heads
    blocks = None if grouped or shape[1] % 3 else (1, 3)
    heads = None if num_heads is None else Blocks(1, num_heads + 2 * (kv_heads or num_heads))
    return role(FUSED_QKV, heads=heads, matrix=MatrixView((0,), (1,), blocks), hidden=True)
  if ndim == 2 and context.is_cell(keys):
    gates = context.fused_gates.get(tuple(keys[:-2]))
    fused = module in (FUSED_HIDDEN_NAME, FUSED_INPUT_NAME)
    blocks = (1, gates) if fused and gates and gates > 1 and shape[1] % gates == 0 else None
    if module in GATE_HIDDEN_NAMES or module == FUSED_HIDDEN_NAME:
      return role(RECURRENT, matrix=MatrixView((0,), (1,), blocks), hidden=True)
    if module in GATE_INPUT_NAMES or module == FUSED_INPUT_NAME:
      return role(INPUT, matrix=MatrixView((0,), (1,), blocks), hidden=True)
  if ndim == 2:
    return role(MLP, matrix=MatrixView((0,), (1,)), hidden=True)
  if ndim >= 3 and not context.is_attention(keys):
    return role(CONV, matrix=MatrixView(tuple(range(ndim - 1)), (ndim - 1,)), hidden=True)
  return role(OTHER, reason=f"a {ndim}-D kernel")


def model_layout(
    params: Any,
    *,
    num_heads: Optional[int] = None,
    num_kv_heads: Optional[int] = None,
    head: Any = None,
) -> ModelLayout:
  """Classifies every leaf of ``params``: kind, output neurons, matrices, hidden.

  See the table of :mod:`optax_neuronlr._src.model_layout`. Reads dicts of
  arrays, Flax linen params (``{"params": ...}`` included) and Flax NNX
  ``nnx.State`` (of variables, paths ending in ``.value``, or of arrays);
  only paths and shapes are read, so ``jax.ShapeDtypeStruct`` leaves work.

  Args:
    params: the parameter tree.
    num_heads: attention heads, for the per-head units of fused
      ``(d, heads*head_dim)`` kernels (``(d, heads, head_dim)`` kernels show
      their heads).
    num_kv_heads: key/value heads under grouped-query attention (default
      ``num_heads``).
    head: which kernel is the output head: None (by name or shape, see the
      module docstring), a path selector (a regular expression matching a path
      or a ``/``-prefix of it), or False (none).

  Returns:
    A :class:`ModelLayout`; ``print(layout.table())`` shows it.

  Example:
    >>> import jax.numpy as jnp, optax_neuronlr as nlr
    >>> params = {"embed": {"embedding": jnp.zeros((10, 4))},
    ...           "fc": {"kernel": jnp.zeros((4, 8)), "bias": jnp.zeros(8)},
    ...           "head": {"kernel": jnp.zeros((8, 10))}}
    >>> [(l.path, l.kind, l.hidden) for l in nlr.model_layout(params).leaves]
    [('embed/embedding', 'embedding', False), ('fc/bias', 'bias', False), ('fc/kernel', 'mlp', True), ('head/kernel', 'head', False)]
  """
  validation.check_params_tree("model_layout (and the functions of the params built "
                               "on it)", params)
  _check_heads(num_heads, "num_heads")
  _check_heads(num_kv_heads, "num_kv_heads")
  if num_kv_heads is not None and num_heads is not None and num_heads % num_kv_heads:
    raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads "
                     f"({num_kv_heads}).")
  if not (head is None or head is False or isinstance(head, str)
          or hasattr(head, "fullmatch")):
    raise TypeError(f"head must be None, False or a path selector (a regular expression), "
                    f"got {type(head).__name__} {head!r}.")
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  entries = []
  for path, leaf in flat:
    where = paths_lib.path_str(path)
    entries.append((where.split("/") if where else [], _shape(leaf)))
  context = _Context(entries, head)
  leaves = tuple(_classify(keys, shape, context, num_heads, num_kv_heads)
                 for keys, shape in entries)
  return ModelLayout(treedef, leaves)


def hidden_mask(params: Any) -> Any:
  """True for the hidden matrices of ``params`` (Muon's and NorMuon's leaves)."""
  return model_layout(params).tree("hidden")


def weight_decay_mask(params: Any) -> Any:
  """True where decoupled weight decay applies by default: kernels and
  embeddings, not norm scales or biases (the mask of every AdamW part)."""
  return model_layout(params).tree("weight_decay")


def default_neuron_axes(params: Any) -> dict[str, tuple[int, ...]]:
  """Each leaf's output-neuron axes by path (the default of ``granularity="neuron"``)."""
  return {l.path: l.neuron_axes for l in model_layout(params).leaves}
