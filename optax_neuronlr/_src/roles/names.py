"""Roles from paths: the Flax names of a leaf and of its module.

A leaf's *name* is the last key of its path (NNX's trailing ``.value``
dropped), its *module* the key before, matched whole and case-insensitively,
never as substrings. `classify` reads a leaf's core (its axes less the
stack and expert axes) by these names; where only the shape speaks (a 3-D
kernel that is no attention's and no named convolution's, a leaf without a
Flax name) it says so with ``source="shape"``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Optional

from optax_neuronlr._src.roles import kinds as k
from optax_neuronlr._src.roles.core import Core
from optax_neuronlr._src.roles.core import last_axis
from optax_neuronlr._src.roles.views import MatrixView
from optax_neuronlr._src.units import Blocks
from optax_neuronlr._src.units import Neurons

QUERY_NAMES = frozenset({"query", "q_proj", "wq", "q"})
KEY_NAMES = frozenset({"key", "k_proj", "wk", "k"})
VALUE_NAMES = frozenset({"value", "v_proj", "wv", "v"})
OUT_NAMES = frozenset({"out", "o_proj", "wo", "out_proj"})
QKV_NAMES = frozenset({"qkv", "qkv_proj", "wqkv", "c_attn", "query_key_value", "in_proj"})
# ``out`` alone is ambiguous: attention's output beside query/key/value, a read-out
# at the top of the tree.
AMBIGUOUS_OUT = frozenset({"out"})
HEAD_NAMES = frozenset({"lm_head", "head", "output", "output_layer", "output_head",
                        "out_head", "final_layer", "unembed", "unembedding", "logits",
                        "classifier"})
# Recurrent cells: per-gate modules (linen cells, NNX LSTMCell) and fused ones (NNX).
GATE_HIDDEN_NAMES = frozenset({"hr", "hz", "hn", "hi", "hf", "hg", "ho"})
GATE_INPUT_NAMES = frozenset({"ir", "iz", "in", "ii", "if", "if_", "ig", "io"})
FUSED_HIDDEN_NAME = "dense_h"
FUSED_INPUT_NAME = "dense_i"
# Flax's leaf names; a leaf named otherwise is read by its shape.
FLAX_LEAF_NAMES = frozenset({"kernel", "bias", "scale", "embedding"})
# A module whose name has one of these words is a convolution (``Conv_0``, ``conv1``).
CONV_WORDS = frozenset({"conv", "convolution", "conv1d", "conv2d", "conv3d", "convtranspose"})
QKV_MODULES = QUERY_NAMES | KEY_NAMES | VALUE_NAMES


def words(key: str) -> set[str]:
  """The lower-case words of a key: ``MoeBlock_0`` -> {moe, block, 0}."""
  spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key)
  return {w.lower() for w in re.split(r"[^A-Za-z0-9]+|(?<=[A-Za-z])(?=[0-9])", spaced) if w}


class Context:
  """What classifying one leaf needs to know about the others."""

  def __init__(self, entries: Sequence[tuple[list[str], tuple[int, ...]]]):
    self.children: dict[tuple[str, ...], set[str]] = {}
    for keys, _ in entries:
      if len(keys) >= 2:
        self.children.setdefault(tuple(keys[:-2]), set()).add(keys[-2].lower())
    self.fused_gates: dict[tuple[str, ...], int] = {}
    for keys, shape in entries:
      if (len(keys) >= 2 and keys[-1].lower() == "kernel" and len(shape) >= 2
          and keys[-2].lower() == FUSED_HIDDEN_NAME and shape[-2] > 0
          and shape[-1] % shape[-2] == 0):
        self.fused_gates[tuple(keys[:-2])] = shape[-1] // shape[-2]

  def siblings(self, keys: Sequence[str]) -> set[str]:
    return self.children.get(tuple(keys[:-2]), set())

  def is_attention(self, keys: Sequence[str]) -> bool:
    return bool(self.siblings(keys) & (QKV_MODULES | QKV_NAMES))

  def is_cell(self, keys: Sequence[str]) -> bool:
    siblings = self.siblings(keys)
    return bool(siblings & GATE_HIDDEN_NAMES) or FUSED_HIDDEN_NAME in siblings


def natural_ndim(keys: Sequence[str]) -> Optional[int]:
  """The most dimensions a leaf of this name has in an unstacked Flax model
  (None: any); more is evidence of a stack axis."""
  name = keys[-1].lower() if keys else ""
  module = keys[-2].lower() if len(keys) >= 2 else ""
  if name == "scale":
    return 1
  if name == "bias":
    return 2 if module in QKV_MODULES else 1
  if name == "embedding":
    return 2
  if name == "kernel" and module in QKV_MODULES | OUT_NAMES:
    return 3
  if name == "kernel" and module in (GATE_HIDDEN_NAMES | GATE_INPUT_NAMES
                                     | {FUSED_HIDDEN_NAME, FUSED_INPUT_NAME}):
    return 2
  return None


def _shape_only(keys: Sequence[str], ndim: int) -> Core:
  """A leaf without a Flax name: a 2-D leaf is a matrix (optax's default view),
  others AdamW's."""
  name = keys[-1] if keys else ""
  what = f"a leaf named {name!r}" if keys else "a bare array"
  if ndim == 2:
    return Core(k.MATRIX, (1,), matrix=MatrixView((0,), (1,)), hidden=True, source=k.SHAPE,
                reason=f"{what} read as one (rows=in, cols=out) matrix by its shape")
  decays = ndim >= 2 and name.lower() not in ("bias", "scale")
  return Core(k.OTHER, last_axis(ndim), source=k.SHAPE, decays=decays,
              reason=f"{what} with {ndim} dimensions: no rule reads it")


def classify(keys: list[str], shape: tuple[int, ...], context: Context, is_head: bool,
             num_heads: Optional[int], num_kv_heads: Optional[int],
             expert: bool = False) -> Core:
  """The role of a leaf's core (``shape``: its axes less stack and expert axes);
  ``expert``: one expert's slice of a mixture of experts (an MLP, whatever its
  module's name: ``wo`` there is no attention output)."""
  name = keys[-1].lower() if keys else ""
  module = keys[-2].lower() if len(keys) >= 2 else ""
  ndim = len(shape)
  last = last_axis(ndim)

  if name not in FLAX_LEAF_NAMES:
    return _shape_only(keys, ndim)
  if name == "bias":
    # One value per output neuron: a (heads, head_dim) query/key/value bias has
    # heads*head_dim neurons; any other bias, one per index of its last axis.
    if ndim == 2 and module in QKV_MODULES:
      return Core(k.BIAS, (0, 1))
    return Core(k.BIAS, last)
  if name == "scale":
    if ndim == 1:
      return Core(k.NORM_SCALE, last)
    return Core(k.OTHER, last, decays=False,
                reason=f"a 'scale' with {ndim} dimensions (a norm scale is 1-D)")
  if name == "embedding":
    if ndim == 2:
      return Core(k.EMBEDDING, (1,))
    return Core(k.OTHER, last, decays=ndim >= 2,
                reason=f"an 'embedding' with {ndim} dimensions (Embed's is (vocab, d))")
  if expert and name == "kernel" and ndim == 2:
    return Core(k.MLP, last, matrix=MatrixView((0,), (1,)), hidden=True)
  return _kernel(keys, module, shape, context, is_head, num_heads, num_kv_heads)


def _kernel(keys, module, shape, context, is_head, num_heads, num_kv_heads) -> Core:
  ndim = len(shape)
  last = last_axis(ndim)
  if is_head:
    if ndim == 2:
      return Core(k.HEAD, last, matrix=MatrixView((0,), (1,)))
    return Core(k.HEAD, last, reason=f"a head kernel with {ndim} dimensions")
  kv_heads = num_kv_heads if num_kv_heads is not None else num_heads
  for kind, names in ((k.QUERY, QUERY_NAMES), (k.KEY, KEY_NAMES), (k.VALUE, VALUE_NAMES)):
    if module not in names:
      continue
    heads_n = num_heads if kind == k.QUERY else kv_heads
    if ndim == 3:
      return Core(kind, (1, 2), Neurons(1), MatrixView((0,), (1, 2)), hidden=True)
    if ndim == 2:
      return Core(kind, last, None if heads_n is None else Blocks(1, heads_n),
                  MatrixView((0,), (1,)), hidden=True)
    return Core(k.OTHER, last, decays=True, reason=f"a {kind} kernel with {ndim} dimensions")
  if module in OUT_NAMES and (module not in AMBIGUOUS_OUT or context.is_attention(keys)
                              or ndim == 3):
    if ndim == 3:
      return Core(k.ATTENTION_OUT, last, Neurons(0), MatrixView((0, 1), (2,)), hidden=True)
    if ndim == 2:
      return Core(k.ATTENTION_OUT, last, None if num_heads is None else Blocks(0, num_heads),
                  MatrixView((0,), (1,)), hidden=True)
    return Core(k.OTHER, last, decays=True,
                reason=f"an attention-output kernel with {ndim} dimensions")
  if module in QKV_NAMES:
    if ndim != 2:
      return Core(k.OTHER, last, decays=True,
                  reason=f"a fused q/k/v kernel with {ndim} dimensions (expected 2)")
    grouped = num_kv_heads is not None and num_heads is not None and num_kv_heads != num_heads
    blocks = None if grouped or shape[1] % 3 else (1, 3)
    heads = None if num_heads is None else Blocks(1, num_heads + 2 * kv_heads)
    return Core(k.FUSED_QKV, last, heads, MatrixView((0,), (1,), blocks), hidden=True)
  if ndim == 2 and context.is_cell(keys):
    gates = context.fused_gates.get(tuple(keys[:-2]))
    fused = module in (FUSED_HIDDEN_NAME, FUSED_INPUT_NAME)
    blocks = (1, gates) if fused and gates and gates > 1 and shape[1] % gates == 0 else None
    if module in GATE_HIDDEN_NAMES or module == FUSED_HIDDEN_NAME:
      return Core(k.RECURRENT, last, matrix=MatrixView((0,), (1,), blocks), hidden=True)
    if module in GATE_INPUT_NAMES or module == FUSED_INPUT_NAME:
      return Core(k.INPUT, last, matrix=MatrixView((0,), (1,), blocks), hidden=True)
  if ndim == 2:
    return Core(k.MLP, last, matrix=MatrixView((0,), (1,)), hidden=True)
  conv_view = MatrixView(tuple(range(ndim - 1)), (ndim - 1,)) if ndim >= 2 else None
  if ndim >= 3 and words(keys[-2] if len(keys) >= 2 else "") & CONV_WORDS:
    return Core(k.CONV, last, matrix=conv_view, hidden=True)
  if ndim >= 4 and not context.is_attention(keys):
    return Core(k.CONV, last, matrix=conv_view, hidden=True, source=k.SHAPE,
                reason=f"a {ndim}-D kernel read as a convolution (window..., in; out) by "
                       "its shape")
  return Core(k.OTHER, last, decays=ndim >= 2, source=k.SHAPE if ndim == 3 else k.NAME,
              reason=(f"a {ndim}-D kernel: a convolution (k, in, out), a DenseGeneral "
                      "(in, a, b) or a stack (layers, in, out)? pass axis_names= (or "
                      "matrices=) to say which" if ndim == 3 else f"a {ndim}-D kernel"))
