r"""What each leaf of a Flax model is: the one transformer-layout reader.

Several optimizers treat the leaves of a network differently: Adam-mini keeps
one second moment per attention head, per output neuron or per token; SCALE
normalises matrices per output neuron and keeps momentum on the output head;
Muon and NorMuon orthogonalise the hidden matrices and train embeddings, the
output head, norm scales and biases with AdamW. They all read the same facts
about a leaf, and this module is where those facts live: `model_layout`
classifies every leaf of a Flax NNX ``nnx.State`` or a linen params tree (or
any tree of arrays) and gives, per leaf, a `LeafRole`. The evidence,
strongest first (``LeafRole.source``): what the caller gives (``head=``,
``"given"``); the model's logical axis names (``axis_names=``, the tree
``nn.get_partition_spec`` / ``nnx.get_partition_spec`` return, mapped to roles
by `AXIS_ROLES`: ``"axis_names"``, see
`optax_neuronlr._src.roles.axis_names`); the leaf's path
(``"name"``); its shape (``"shape"``, a guess the optimizers warn about once
when it changes their update).

* ``batch_axes``: the *stack* axes (scanned layers, pipeline stages) and
  *expert* axes of the leaf, batch axes for every optimizer: one matrix, one
  set of Adam-mini blocks and one set of neuron units per layer (expert), so
  that a scanned model trains as its unscanned twin. Without names, a stack
  axis is a leading axis of one length shared by every leaf of a module with
  some leaf having more dimensions than its name allows (a ``(L, d)`` norm
  scale, a ``(L, out)`` bias; ``source="shape"``), and an expert axis the
  leading axis of an ``(E, in, out)`` kernel under a module named like
  ``moe``/``experts``. The rows below describe a leaf's *core*, its axes
  less the batch axes; the batch axes are then added to its neurons and left
  out of its matrix view;

* ``kind``: one of `KINDS` (below);
* ``neuron_axes``: the axes that index the leaf's *output neurons*, i.e. all
  its output axes. A ``(d, heads, head_dim)`` query/key/value kernel has
  ``heads * head_dim`` output neurons (axes ``(1, 2)``); every other kernel
  the last axis (Flax kernels are ``(..., in, out)``); a 1-D leaf each element;
  a 0-d leaf itself; plus the batch axes. ``granularity="neuron"`` of every
  rule uses these axes when ``neuron_axes`` is not given;
* ``heads``: the unit spec with one unit per attention head (query, key,
  value and attention-output kernels; fused 2-D kernels need ``num_heads``);
* ``matrix``: how the leaf is seen as matrices (`MatrixView`: the
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
| ``conv`` | ``kernel`` of a module named like a convolution (``Conv_0``, ``conv1``), or 4-D or more outside attention [6] | ``(..., in, out)`` | last | ``(all but last; last)`` | yes |
| ``mlp`` | any other ``kernel`` (an expert's included) | ``(in, out)`` | last | ``(0; 1)`` | if not tiny [5] |
| ``matrix`` [6] | a 2-D leaf without a Flax name (``weight``, ``w``, a bare array) | ``(rows, cols)`` | last | ``(0; 1)`` | if not tiny [5] |
| ``other`` | anything else (a 3-D kernel outside attention and convolutions [6]) | any | last axis | - | no |

* [1] The output head: the 2-D kernel of a module named one of
  `HEAD_NAMES` (``lm_head``, ``head``, ``classifier``, ...), or of a
  module named ``out``/``output`` at the top of the tree (a read-out; an
  ``out`` beside ``query``/``key``/``value`` is attention's), the top-level
  one where several match; failing both, the one top-level ``(d, vocab)``
  kernel whose transpose is an embedding's shape (``source="shape"``). At
  most one head is found, none in a tied model: a nested kernel of that shape
  (a ``q_proj`` when vocab equals d, a byte-level model's MLP up-projection)
  is never taken. ``head=`` (a path selector, or False for none) overrides
  the search.
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
* [5] A matrix with fewer than `MIN_MATRIX_DIM` rows or columns (per
  block) is not hidden: orthogonalising a ``1 x n`` matrix only rescales it
  (a GRU reading one input feature has a ``(1, 3*h)`` input kernel). Such
  leaves stay with AdamW.
* [6] Read by shape (``source="shape"``): a ``matrix`` is optax's default
  view of a 2-D leaf; an unnamed 4-D kernel a convolution. A 3-D kernel that
  no name explains (a ``DenseGeneral`` ``(in, a, b)``, a Conv1D ``(k, in,
  out)``, a stack ``(L, in, out)`` without a norm or bias beside it) is not
  folded into one matrix: pass ``axis_names=`` (or ``matrices=``).

``model_layout(params).table()`` shows every leaf's row; Adam-mini
(`adam_mini_blocks`), SCALE
(`scale_sgd_labels`), Muon and NorMuon read their
partitions from here.
"""

from __future__ import annotations

# The code lives in the package ``optax_neuronlr._src.roles``; this module keeps
# the names importable from here.
from optax_neuronlr._src.roles.axis_names import AXIS_ROLES
from optax_neuronlr._src.roles.axis_names import ROLES
from optax_neuronlr._src.roles.kinds import *  # noqa: F401,F403  pylint: disable=wildcard-import
from optax_neuronlr._src.roles.kinds import LeafRole
from optax_neuronlr._src.roles.kinds import ModelLayout
from optax_neuronlr._src.roles.layout import default_neuron_axes
from optax_neuronlr._src.roles.layout import hidden_mask
from optax_neuronlr._src.roles.layout import model_layout
from optax_neuronlr._src.roles.layout import weight_decay_mask
from optax_neuronlr._src.roles.names import AMBIGUOUS_OUT as _AMBIGUOUS_OUT  # noqa: F401
from optax_neuronlr._src.roles.names import FUSED_HIDDEN_NAME
from optax_neuronlr._src.roles.names import FUSED_INPUT_NAME
from optax_neuronlr._src.roles.names import GATE_HIDDEN_NAMES
from optax_neuronlr._src.roles.names import GATE_INPUT_NAMES
from optax_neuronlr._src.roles.names import HEAD_NAMES
from optax_neuronlr._src.roles.names import KEY_NAMES
from optax_neuronlr._src.roles.names import OUT_NAMES
from optax_neuronlr._src.roles.names import QKV_NAMES
from optax_neuronlr._src.roles.names import QUERY_NAMES
from optax_neuronlr._src.roles.names import VALUE_NAMES
from optax_neuronlr._src.roles.views import MatrixView

__all__ = ["AXIS_ROLES", "ROLES", "LeafRole", "ModelLayout", "MatrixView", "model_layout",
           "hidden_mask", "weight_decay_mask", "default_neuron_axes",
           "FUSED_HIDDEN_NAME", "FUSED_INPUT_NAME", "GATE_HIDDEN_NAMES", "GATE_INPUT_NAMES",
           "HEAD_NAMES", "KEY_NAMES", "OUT_NAMES", "QKV_NAMES", "QUERY_NAMES", "VALUE_NAMES"]
