"""nlr.model_layout: every leaf's kind, output neurons, matrices and hidden flag."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import optax_neuronlr as nlr
from optax_neuronlr._src import model_layout as ml


class Model(nnx.Module):
  """Embeddings, one attention block, an MLP, a GRU, an LSTM, a conv, a head."""

  def __init__(self, rngs: nnx.Rngs):
    self.embed = nnx.Embed(20, 8, rngs=rngs)
    self.ln = nnx.LayerNorm(8, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=8, decode=False, rngs=rngs)
    self.mlp = nnx.Dict(fc=nnx.Linear(8, 32, rngs=rngs), out=nnx.Linear(32, 8, rngs=rngs))
    self.gru = nnx.GRUCell(1, 16, rngs=rngs)
    self.lstm = nnx.LSTMCell(6, 16, rngs=rngs)
    self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
    self.head = nnx.Linear(8, 20, rngs=rngs)


@pytest.fixture(scope="module")
def layout():
  return nlr.model_layout(nnx.state(Model(nnx.Rngs(0)), nnx.Param)).by_path()


def test_kinds(layout):
  kinds = {p: l.kind for p, l in layout.items()}
  assert kinds["embed/embedding"] == "embedding"
  assert kinds["ln/scale"] == "norm_scale" and kinds["ln/bias"] == "bias"
  for m in ("query", "key", "value"):
    assert kinds[f"attn/{m}/kernel"] == m
  assert kinds["attn/out/kernel"] == "attention_out"
  assert kinds["mlp/fc/kernel"] == "mlp"
  assert kinds["mlp/out/kernel"] == "mlp"  # an `out` inside a block is not the head
  assert kinds["gru/dense_h/kernel"] == "recurrent" and kinds["gru/dense_i/kernel"] == "input"
  assert kinds["lstm/hf/kernel"] == "recurrent" and kinds["lstm/ii/kernel"] == "input"
  assert kinds["conv/kernel"] == "conv"
  assert kinds["head/kernel"] == "head"
  assert set(kinds.values()) <= set(ml.KINDS)


def test_hidden_matrices(layout):
  hidden = {p for p, l in layout.items() if l.hidden}
  assert hidden == {
      "attn/query/kernel", "attn/key/kernel", "attn/value/kernel", "attn/out/kernel",
      "mlp/fc/kernel", "mlp/out/kernel", "gru/dense_h/kernel", "lstm/hf/kernel",
      "lstm/hg/kernel", "lstm/hi/kernel", "lstm/ho/kernel", "lstm/ii/kernel",
      "lstm/if_/kernel", "lstm/ig/kernel", "lstm/io/kernel", "conv/kernel"}
  # A GRU reading one feature: its (1, 3h) input kernel is three 1 x h matrices.
  gru_in = layout["gru/dense_i/kernel"]
  assert not gru_in.hidden and "rescales" in gru_in.reason


def test_matrix_views(layout):
  q = layout["attn/query/kernel"]
  assert q.matrix == ml.MatrixView((0,), (1, 2)) and q.matrix.shapes(q.shape) == (1, 8, 8)
  out = layout["attn/out/kernel"]
  assert out.matrix == ml.MatrixView((0, 1), (2,))
  # The fused GRU recurrent kernel (h, 3h): one h x h matrix per gate.
  gru = layout["gru/dense_h/kernel"]
  assert gru.matrix == ml.MatrixView((0,), (1,), (1, 3))
  assert gru.matrix.shapes(gru.shape) == (3, 16, 16)
  conv = layout["conv/kernel"]
  assert conv.matrix.shapes(conv.shape) == (1, 27, 4)
  assert layout["embed/embedding"].matrix is None and layout["ln/bias"].matrix is None


def test_output_neurons(layout):
  """Output neurons of a kernel are all its output axes."""
  q = layout["attn/query/kernel"]
  assert q.neuron_axes == (1, 2) and q.num_neurons == 8
  assert layout["attn/query/bias"].neuron_axes == (0, 1)
  assert layout["attn/out/kernel"].neuron_axes == (2,)
  assert layout["mlp/fc/kernel"].neuron_axes == (1,)
  assert layout["attn/query/kernel"].heads == nlr.Neurons(1)
  assert layout["attn/out/kernel"].heads == nlr.Neurons(0)


def test_linen_attention_and_gru_match_nnx_kinds():
  class Net(nn.Module):

    @nn.compact
    def __call__(self, x):
      x = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8)(x)
      return nn.Dense(3, name="out")(x)

  params = Net().init(jax.random.key(0), jnp.zeros((1, 4, 8)))
  layout = nlr.model_layout(params).by_path()
  q = layout["params/MultiHeadDotProductAttention_0/query/kernel"]
  assert q.kind == "query" and q.neuron_axes == (1, 2) and q.hidden
  assert layout["params/out/kernel"].kind == "head"  # a top-level read-out
  cell = nn.GRUCell(8)
  v = cell.init(jax.random.key(0), cell.initialize_carry(jax.random.key(0), (1, 3)),
                jnp.zeros((1, 3)))
  kinds = {p: l.kind for p, l in nlr.model_layout(v).by_path().items()}
  assert kinds["params/hr/kernel"] == "recurrent" and kinds["params/in/kernel"] == "input"


def test_fused_qkv_blocks_and_grouped_heads():
  params = {"attn": {"qkv": {"kernel": jnp.zeros((8, 24))}, "out": {"kernel": jnp.zeros((8, 8))}}}
  role = nlr.model_layout(params).by_path()["attn/qkv/kernel"]
  assert role.kind == "fused_qkv" and role.matrix.blocks == (1, 3) and role.heads is None
  role = nlr.model_layout(params, num_heads=2).by_path()["attn/qkv/kernel"]
  assert role.heads == nlr.Blocks(1, 6)
  gqa = {"attn": {"qkv": {"kernel": jnp.zeros((8, 16))}}}  # q: 8, k and v: 4 each
  role = nlr.model_layout(gqa, num_heads=4, num_kv_heads=2).by_path()["attn/qkv/kernel"]
  assert role.matrix.blocks is None
  assert nlr.model_layout(params).by_path()["attn/out/kernel"].kind == "attention_out"


def test_head_detection():
  base = {"embed": {"embedding": jnp.zeros((10, 4))}, "proj": {"kernel": jnp.zeros((4, 10))},
          "fc": {"kernel": jnp.zeros((4, 4))}}
  # An unnamed head: a (d, vocab) kernel, an embedding's shape transposed.
  assert nlr.model_layout(base).by_path()["proj/kernel"].kind == "head"
  layout = nlr.model_layout(base, head=r"fc").by_path()
  assert layout["fc/kernel"].kind == "head" and layout["proj/kernel"].kind == "mlp"
  assert all(l.kind != "head" for l in nlr.model_layout(base, head=False).leaves)


def test_abstract_leaves_and_tree_view():
  params = nnx.state(Model(nnx.Rngs(0)), nnx.Param)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  a, b = nlr.model_layout(params), nlr.model_layout(abstract)
  assert a.leaves == b.leaves
  mask = a.tree("hidden")
  assert jax.tree.structure(mask) == jax.tree.structure(params)
  assert ml.hidden_mask(params) == mask


def test_table_lists_every_leaf(layout):
  params = nnx.state(Model(nnx.Rngs(0)), nnx.Param)
  table = nlr.model_layout(params).table()
  lines = table.splitlines()
  assert lines[0].split()[:4] == ["path", "shape", "kind", "neurons"]
  assert len(lines) == 1 + len(layout)
  assert any(l.startswith("gru/dense_h/kernel") and "3 x 16 x 16" in l for l in lines)


def test_bad_arguments():
  with pytest.raises(ValueError, match="num_heads"):
    nlr.model_layout({}, num_heads=0)
  with pytest.raises(ValueError, match="num_kv_heads"):
    nlr.model_layout({}, num_heads=4, num_kv_heads=3)
  with pytest.raises(TypeError, match="head"):
    nlr.model_layout({}, head=3)
  with pytest.raises(ValueError, match="head"):
    nlr.model_layout({"a": {"kernel": jnp.zeros((2, 2))}}, head="(")


def test_default_neuron_units_of_3d_attention_kernels():
  """granularity="neuron" on a (d, heads, head_dim) kernel: heads*head_dim units.

  Each unit's statistic is the mean |g| over the fan-in (axis 0) alone, never
  pooled across heads.
  """
  params = nnx.state(nnx.MultiHeadAttention(num_heads=2, in_features=8, decode=False,
                                            rngs=nnx.Rngs(0)), nnx.Param)
  params = nnx.to_pure_dict(params)
  tx = nlr.grad_history_lr(1e-2, beta=0.5, granularity="neuron")
  state = tx.init(params)
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(p.size), p.shape), params)
  _, state = tx.update(grads, state, params)
  rates = nlr.learning_rates(state)
  g = np.asarray(grads["query"]["kernel"])
  rate = np.asarray(rates["query"]["kernel"])
  assert rate.shape == (2, 4)
  ema = 0.5 * np.abs(g).mean(axis=0)
  np.testing.assert_allclose(rate, np.clip(1e-2 / (ema + 1e-8), 1e-6, 1.0), rtol=1e-5)
  assert np.shape(rates["query"]["bias"]) == (2, 4)
  # An explicit neuron_axes still wins.
  tx = nlr.grad_history_lr(1e-2, granularity="neuron", neuron_axes=-1)
  _, state = tx.update(grads, tx.init(params), params)
  assert np.shape(nlr.learning_rates(state)["query"]["kernel"]) == (4,)


@pytest.mark.parametrize("make", ["muon", "normuon"])
def test_adamw_leaves_decay_embeddings_and_head_only(make):
  """The AdamW part of Muon and NorMuon decays like the layout says: embeddings
  and the head, never norm scales or biases (with a zero gradient and zero
  rates, the update is the decay alone)."""
  params = {"embed": {"embedding": jnp.ones((10, 8))}, "ln": {"scale": jnp.ones(8)},
            "fc": {"kernel": jnp.ones((8, 8)), "bias": jnp.ones(8)},
            "head": {"kernel": jnp.ones((8, 10))}}
  tx = getattr(nlr, make)(0.0, weight_decay=0.5, adam_learning_rate=0.1,
                          adam_weight_decay=0.5)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  assert ml.weight_decay_mask(params) == {
      "embed": {"embedding": True}, "ln": {"scale": False},
      "fc": {"kernel": True, "bias": False}, "head": {"kernel": True}}
  for path, want in (("embed", -0.05), ("head", -0.05)):
    leaf = jax.tree.leaves(updates[path])[0]
    np.testing.assert_allclose(np.asarray(leaf), want, rtol=1e-6)
  for leaf in (updates["ln"]["scale"], updates["fc"]["bias"], updates["fc"]["kernel"]):
    np.testing.assert_array_equal(np.asarray(leaf), 0.0)


def test_sources_of_the_evidence():
  """Which evidence decided each leaf: the caller, the path, or a shape guess."""
  base = {"embed": {"embedding": jnp.zeros((10, 4))}, "proj": {"kernel": jnp.zeros((4, 10))},
          "fc": {"kernel": jnp.zeros((4, 4))}}
  by = nlr.model_layout(base).by_path()
  assert by["fc/kernel"].source == "name" and by["embed/embedding"].source == "name"
  assert by["proj/kernel"].kind == "head" and by["proj/kernel"].source == "shape"
  given = nlr.model_layout(base, head="fc").by_path()
  assert given["fc/kernel"].kind == "head" and given["fc/kernel"].source == "given"
  assert [l.path for l in nlr.model_layout(base).guessed()] == ["proj/kernel"]


def test_matrix_view_reads_ints_as_one_axis():
  """optax's MuonDimensionNumbers(0, 1) form."""
  assert ml.MatrixView(0, 1) == ml.MatrixView((0,), (1,))
  assert ml.MatrixView(1, 2).batch_axes(3) == (0,)
  with pytest.raises(ValueError, match="share an axis"):
    ml.MatrixView((0, 1), (1,))
  with pytest.raises(TypeError, match="reduction_axes"):
    ml.MatrixView("0", (1,))


def test_blocks_with_batch_axes_keep_one_set_per_layer():
  from optax_neuronlr._src import units  # pylint: disable=g-import-not-at-top
  layout = units.leaf_layout((3, 8, 6), nlr.Blocks(2, 2, batch_axes=(0,)), "q")
  assert layout.unit_shape == (3, 2) and layout.keep_axes == (0, 2) and layout.size == 24
  x = jnp.arange(3 * 8 * 6, dtype=jnp.float32).reshape(3, 8, 6)
  want = np.asarray(x).reshape(3, 8, 2, 3).sum(axis=(1, 3))
  np.testing.assert_allclose(np.asarray(layout.sum(x, jnp.float32)), want)
  assert layout.expand(jnp.ones((3, 2))).shape == (3, 8, 6)
  with pytest.raises(ValueError, match="batch axis"):
    units.leaf_layout((3, 8, 6), nlr.Blocks(0, 3, batch_axes=(0,)), "q")


def test_at_most_one_head_by_name():
  """Several kernels named like a head, none at the top: no head, and a note."""
  params = {"a": {"head": {"kernel": jnp.zeros((4, 4))}},
            "b": {"head": {"kernel": jnp.zeros((4, 4))}}}
  by = nlr.model_layout(params).by_path()
  assert all(l.kind == "mlp" for l in by.values())
  assert "head=" in by["a/head/kernel"].reason


def test_nested_stacks_without_names():
  """A scan inside a scan: two leading stack axes, units per (outer, inner) layer."""
  params = {"outer": {"inner": {"fc": {"kernel": jnp.zeros((2, 3, 4, 8)),
                                       "bias": jnp.zeros((2, 3, 8))}},
                      "ln": {"scale": jnp.zeros((2, 4))}}}
  by = nlr.model_layout(params).by_path()
  fc = by["outer/inner/fc/kernel"]
  assert fc.batch_axes == (0, 1) and fc.matrix == ml.MatrixView((2,), (3,))
  assert fc.neuron_axes == (0, 1, 3) and fc.source == "shape"
  assert by["outer/ln/scale"].batch_axes == (0,) and by["outer/ln/scale"].kind == "norm_scale"
  # A plain model: no leading axis is taken for a stack.
  plain = {"fc": {"kernel": jnp.zeros((4, 4)), "bias": jnp.zeros(4)},
           "ln": {"scale": jnp.zeros(4), "bias": jnp.zeros(4)}}
  assert all(not l.batch_axes for l in nlr.model_layout(plain).leaves)
