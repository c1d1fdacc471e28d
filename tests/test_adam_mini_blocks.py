"""``adam_mini_blocks``: Adam-mini's blocks read from Flax NNX and linen trees.

Every test builds its model from Flax's standard modules and checks each leaf's
unit spec and weight-decay flag by path and shape, as issue 12 asks: per head
for query/key (``(d, heads, head_dim)`` and fused ``(d, heads*head_dim)``), per
output neuron for value, attention output and MLP, per token for embeddings and
the output head, one unit per norm scale, per element for every bias; leaves
that no rule recognises are reported, never silently one block.
"""

from __future__ import annotations

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from optax_neuronlr._src.rules import adam_mini as am
from optax_neuronlr._src.rules.adam_mini import Blocks, Neurons

D, HEADS, HEAD_DIM, VOCAB, MLP = 8, 2, 4, 11, 16


def _flat(tree) -> dict:
  """``{"a/b": leaf}``, NNX's ``.value`` dropped; specs (strings, dataclasses) are leaves."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {"/".join(am._path_keys(p)): v for p, v in flat}


# ---------------------------------------------------------------------------
# Models built from the standard modules.


class NnxBlock(nnx.Module):

  def __init__(self, rngs: nnx.Rngs, num_kv_heads=None):
    self.ln1 = nnx.LayerNorm(D, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(num_heads=HEADS, in_features=D, num_kv_heads=num_kv_heads,
                                       decode=False, rngs=rngs)
    self.ln2 = nnx.RMSNorm(D, rngs=rngs)
    self.fc1 = nnx.Linear(D, MLP, rngs=rngs)
    self.fc2 = nnx.Linear(MLP, D, rngs=rngs)

  def __call__(self, x):
    x = x + self.attn(self.ln1(x))
    return x + self.fc2(jax.nn.gelu(self.fc1(self.ln2(x))))


class NnxTransformer(nnx.Module):

  def __init__(self, rngs: nnx.Rngs, layers: int = 2, num_kv_heads=None):
    self.embed = nnx.Embed(VOCAB, D, rngs=rngs)
    self.blocks = nnx.List([NnxBlock(rngs, num_kv_heads) for _ in range(layers)])
    self.ln_f = nnx.LayerNorm(D, rngs=rngs)
    self.head = nnx.Linear(D, VOCAB, rngs=rngs)

  def __call__(self, tokens):
    x = self.embed(tokens)
    for block in self.blocks:
      x = block(x)
    return self.head(self.ln_f(x))


class LinenBlock(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = x + nn.MultiHeadDotProductAttention(num_heads=HEADS)(nn.LayerNorm()(x))
    y = nn.Dense(MLP)(nn.RMSNorm()(x))
    return x + nn.Dense(D)(nn.gelu(y))


class LinenTransformer(nn.Module):

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(VOCAB, D)(tokens)
    x = LinenBlock()(x)
    x = LinenBlock()(x)
    return nn.Dense(VOCAB, name="lm_head")(nn.LayerNorm()(x))


class FusedHeadsAttention(nnx.Module):
  """Attention from ``nnx.Linear`` layers: ``(d, heads*head_dim)`` kernels."""

  def __init__(self, rngs):
    self.query = nnx.Linear(D, HEADS * HEAD_DIM, rngs=rngs)
    self.key = nnx.Linear(D, HEADS * HEAD_DIM, rngs=rngs)
    self.value = nnx.Linear(D, HEADS * HEAD_DIM, rngs=rngs)
    self.out = nnx.Linear(HEADS * HEAD_DIM, D, rngs=rngs)


class FusedQKVAttention(nnx.Module):
  """GPT-2 style: one ``(d, 3*heads*head_dim)`` projection for q, k and v."""

  def __init__(self, rngs):
    self.qkv = nnx.Linear(D, 3 * HEADS * HEAD_DIM, rngs=rngs)
    self.out_proj = nnx.Linear(HEADS * HEAD_DIM, D, rngs=rngs)


class WithUnrecognised(nnx.Module):

  def __init__(self, rngs):
    self.embed = nnx.Embed(VOCAB, D, rngs=rngs)
    self.pos_embedding = nnx.Param(jnp.zeros((5, D)))
    self.conv = nnx.Conv(D, D, kernel_size=(3,), rngs=rngs)
    self.temperature = nnx.Param(jnp.ones(()))
    self.head = nnx.Linear(D, VOCAB, rngs=rngs)


def _nnx_params(module):
  return nnx.state(module, nnx.Param)


# What each leaf of one transformer block must get: (spec, weight decay).
def _nnx_block_expected(prefix: str) -> dict:
  return {
      f"{prefix}/ln1/scale": ("tensor", False),
      f"{prefix}/ln1/bias": ("element", False),
      f"{prefix}/attn/query/kernel": (Neurons(1), True),
      f"{prefix}/attn/query/bias": ("element", False),
      f"{prefix}/attn/key/kernel": (Neurons(1), True),
      f"{prefix}/attn/key/bias": ("element", False),
      f"{prefix}/attn/value/kernel": (Neurons((1, 2)), True),
      f"{prefix}/attn/value/bias": ("element", False),
      f"{prefix}/attn/out/kernel": ("neuron", True),
      f"{prefix}/attn/out/bias": ("element", False),
      f"{prefix}/ln2/scale": ("tensor", False),
      f"{prefix}/fc1/kernel": ("neuron", True),
      f"{prefix}/fc1/bias": ("element", False),
      f"{prefix}/fc2/kernel": ("neuron", True),
      f"{prefix}/fc2/bias": ("element", False),
  }


def _check(partition: am.AdamMiniPartition, expected: dict) -> None:
  specs, mask = _flat(partition.specs), _flat(partition.weight_decay_mask)
  assert sorted(specs) == sorted(expected)
  for path, (spec, decay) in expected.items():
    assert specs[path] == spec, path
    assert mask[path] is decay, path


# ---------------------------------------------------------------------------
# NNX.


def test_nnx_transformer_by_path_and_shape():
  model = NnxTransformer(nnx.Rngs(0))
  params = _nnx_params(model)
  partition = am.adam_mini_partition(params, on_unrecognised="error")
  expected = {"embed/embedding": (Neurons(0), True), "ln_f/scale": ("tensor", False),
              "ln_f/bias": ("element", False), "head/kernel": ("neuron", True),
              "head/bias": ("element", False)}
  for i in range(2):
    expected.update(_nnx_block_expected(f"blocks/{i}"))
  _check(partition, expected)
  assert partition.unrecognised == ()

  leaves = partition.by_path()
  # Shapes as nnx builds them, and the units each spec makes of them.
  shapes_units = {
      "embed/embedding": ((VOCAB, D), VOCAB),                  # per token row
      "blocks/0/attn/query/kernel": ((D, HEADS, HEAD_DIM), HEADS),  # per head
      "blocks/0/attn/key/kernel": ((D, HEADS, HEAD_DIM), HEADS),
      "blocks/0/attn/value/kernel": ((D, HEADS, HEAD_DIM), HEADS * HEAD_DIM),  # per neuron
      "blocks/0/attn/out/kernel": ((HEADS, HEAD_DIM, D), D),     # per output neuron
      "blocks/0/attn/query/bias": ((HEADS, HEAD_DIM), HEADS * HEAD_DIM),
      "blocks/0/fc1/kernel": ((D, MLP), MLP),
      "blocks/0/ln1/scale": ((D,), 1),
      "blocks/0/ln1/bias": ((D,), D),
      "head/kernel": ((D, VOCAB), VOCAB),                       # per token
  }
  for path, (shape, units) in shapes_units.items():
    assert leaves[path].shape == shape, path
    assert leaves[path].num_units == units, path
  assert leaves["blocks/0/attn/query/kernel"].kind == "query"
  assert leaves["blocks/0/attn/value/kernel"].kind == "value"
  assert leaves["blocks/0/attn/out/kernel"].kind == "attention_out"
  assert leaves["head/kernel"].kind == "head"


def test_nnx_state_of_variables_and_of_arrays_agree():
  model = NnxTransformer(nnx.Rngs(0), layers=1)
  state = _nnx_params(model)
  paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
  assert all(isinstance(p[-1], jax.tree_util.GetAttrKey) and p[-1].name == "value" for p in paths)
  pure = nnx.to_pure_dict(state)
  a, b = _flat(am.adam_mini_blocks(state)), _flat(am.adam_mini_blocks(pure))
  assert a == b
  # The result mirrors the input's structure (an nnx.State of Params here).
  out = am.adam_mini_blocks(state)
  assert jax.tree.structure(out) == jax.tree.structure(state)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), pure)
  assert _flat(am.adam_mini_blocks(abstract)) == b


def test_nnx_grouped_query_attention():
  model = NnxTransformer(nnx.Rngs(0), layers=1, num_kv_heads=1)
  leaves = am.adam_mini_partition(_nnx_params(model), on_unrecognised="error").by_path()
  key = leaves["blocks/0/attn/key/kernel"]
  assert key.shape == (D, 1, HEAD_DIM) and key.spec == Neurons(1) and key.num_units == 1
  assert leaves["blocks/0/attn/query/kernel"].num_units == HEADS


def test_nnx_optimizer_accepts_blocks_callable_shape():
  """``adam_mini_blocks`` is ``params -> pytree``, as a granularity callable."""
  model = NnxTransformer(nnx.Rngs(0), layers=1)
  specs = am.adam_mini_blocks(nnx.state(model, nnx.Param))
  assert len(jax.tree.leaves(specs)) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))


# ---------------------------------------------------------------------------
# linen.


def test_linen_transformer_by_path_and_shape():
  params = LinenTransformer().init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  partition = am.adam_mini_partition(params, on_unrecognised="error")
  expected = {"params/Embed_0/embedding": (Neurons(0), True),
              "params/LayerNorm_0/scale": ("tensor", False),
              "params/LayerNorm_0/bias": ("element", False),
              "params/lm_head/kernel": ("neuron", True),
              "params/lm_head/bias": ("element", False)}
  for i in range(2):
    p = f"params/LinenBlock_{i}"
    attn = f"{p}/MultiHeadDotProductAttention_0"
    expected.update({
        f"{p}/LayerNorm_0/scale": ("tensor", False),
        f"{p}/LayerNorm_0/bias": ("element", False),
        f"{p}/RMSNorm_0/scale": ("tensor", False),
        f"{attn}/query/kernel": (Neurons(1), True),
        f"{attn}/key/kernel": (Neurons(1), True),
        f"{attn}/value/kernel": (Neurons((1, 2)), True),
        f"{attn}/out/kernel": ("neuron", True),
        f"{p}/Dense_0/kernel": ("neuron", True),
        f"{p}/Dense_1/kernel": ("neuron", True),
    })
    for m in ("query", "key", "value", "out"):
      expected[f"{attn}/{m}/bias"] = ("element", False)
    for m in ("Dense_0", "Dense_1"):
      expected[f"{p}/{m}/bias"] = ("element", False)
  _check(partition, expected)
  leaves = partition.by_path()
  attn = "params/LinenBlock_0/MultiHeadDotProductAttention_0"
  assert leaves[f"{attn}/query/kernel"].shape == (D, HEADS, HEAD_DIM)
  assert leaves[f"{attn}/query/kernel"].num_units == HEADS
  assert leaves[f"{attn}/out/kernel"].shape == (HEADS, HEAD_DIM, D)
  assert leaves["params/Embed_0/embedding"].shape == (VOCAB, D)
  assert leaves["params/lm_head/kernel"].shape == (D, VOCAB)
  assert leaves["params/lm_head/kernel"].num_units == VOCAB


# ---------------------------------------------------------------------------
# Fused heads and fused q/k/v.


def test_fused_heads_need_num_heads():
  params = _nnx_params(FusedHeadsAttention(nnx.Rngs(0)))
  with pytest.warns(UserWarning, match="query/kernel.*pass num_heads"):
    partition = am.adam_mini_partition(params)
  assert sorted(l.path for l in partition.unrecognised) == ["key/kernel", "query/kernel"]
  # Unrecognised leaves are full Adam, never one block.
  assert all(l.spec == "element" for l in partition.unrecognised)

  partition = am.adam_mini_partition(params, num_heads=HEADS, on_unrecognised="error")
  _check(partition, {
      "query/kernel": (Blocks(1, HEADS), True), "query/bias": ("element", False),
      "key/kernel": (Blocks(1, HEADS), True), "key/bias": ("element", False),
      "value/kernel": ("neuron", True), "value/bias": ("element", False),
      "out/kernel": ("neuron", True), "out/bias": ("element", False),
  })
  leaves = partition.by_path()
  assert leaves["query/kernel"].shape == (D, HEADS * HEAD_DIM)
  assert leaves["query/kernel"].num_units == HEADS


def test_fused_heads_grouped_query():
  params = {"attn": {"q_proj": {"kernel": np.zeros((D, 4 * HEAD_DIM))},
                     "k_proj": {"kernel": np.zeros((D, 2 * HEAD_DIM))},
                     "v_proj": {"kernel": np.zeros((D, 2 * HEAD_DIM))},
                     "o_proj": {"kernel": np.zeros((4 * HEAD_DIM, D))}}}
  leaves = am.adam_mini_partition(params, num_heads=4, num_kv_heads=2,
                                  on_unrecognised="error").by_path()
  assert leaves["attn/q_proj/kernel"].spec == Blocks(1, 4)
  assert leaves["attn/k_proj/kernel"].spec == Blocks(1, 2)
  assert leaves["attn/v_proj/kernel"].spec == "neuron"
  assert leaves["attn/o_proj/kernel"].spec == "neuron"


def test_fused_qkv():
  params = _nnx_params(FusedQKVAttention(nnx.Rngs(0)))
  with pytest.warns(UserWarning, match="qkv/kernel"):
    assert am.adam_mini_partition(params).by_path()["qkv/kernel"].recognised is False
  partition = am.adam_mini_partition(params, num_heads=HEADS, on_unrecognised="error")
  _check(partition, {
      "qkv/kernel": (Blocks(1, 3 * HEADS), True), "qkv/bias": ("element", False),
      "out_proj/kernel": ("neuron", True), "out_proj/bias": ("element", False),
  })
  assert partition.by_path()["qkv/kernel"].shape == (D, 3 * HEADS * HEAD_DIM)


def test_blocks_that_do_not_divide_are_an_error():
  params = {"query": {"kernel": np.zeros((D, 10))}}
  with pytest.raises(ValueError, match="does not split into 4 equal blocks"):
    am.adam_mini_blocks(params, num_heads=4)


# ---------------------------------------------------------------------------
# Unrecognised leaves and overrides.


def test_unrecognised_leaves_are_reported():
  params = _nnx_params(WithUnrecognised(nnx.Rngs(0)))
  with pytest.warns(UserWarning) as record:
    partition = am.adam_mini_partition(params)
  assert record[0].filename == __file__  # points at the caller
  message = str(record[0].message)
  for path in ("pos_embedding", "conv/kernel", "temperature"):
    assert f"'{path}'" in message
  got = {l.path: (l.shape, l.spec, l.weight_decay) for l in partition.unrecognised}
  assert got == {"pos_embedding": ((5, D), "element", True),
                 "conv/kernel": ((3, D, D), "element", True),
                 "temperature": ((), "element", False)}
  # Recognised neighbours are unaffected; the conv's bias is a bias.
  leaves = partition.by_path()
  assert leaves["conv/bias"].spec == "element" and leaves["conv/bias"].kind == "bias"
  assert leaves["embed/embedding"].spec == Neurons(0)

  with pytest.raises(ValueError, match="pos_embedding"):
    am.adam_mini_blocks(params, on_unrecognised="error")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    am.adam_mini_blocks(params, on_unrecognised="ignore")


def test_overrides():
  params = _nnx_params(WithUnrecognised(nnx.Rngs(0)))
  overrides = {r"pos_embedding": Neurons(0), r"conv/kernel": "neuron",
               r"temperature": "tensor", r".*head/kernel": "tensor"}
  partition = am.adam_mini_partition(params, overrides=overrides, on_unrecognised="error")
  leaves = partition.by_path()
  assert partition.unrecognised == ()
  assert leaves["pos_embedding"].spec == Neurons(0) and leaves["pos_embedding"].overridden
  assert leaves["pos_embedding"].num_units == 5
  assert leaves["conv/kernel"].spec == "neuron" and leaves["conv/kernel"].num_units == D
  # An override of a recognised leaf changes its spec, not its weight decay.
  assert leaves["head/kernel"].spec == "tensor" and leaves["head/kernel"].weight_decay
  assert leaves["head/bias"].spec == "element"
  # Selectors follow the package's path rule: the longest selected prefix wins.
  leaves = am.adam_mini_partition(
      params, overrides={r".*/kernel": "tensor", r"head": "element"},
      on_unrecognised="ignore").by_path()
  assert leaves["head/kernel"].spec == "tensor"   # ".*/kernel" selects 2 keys
  assert leaves["head/bias"].spec == "element"    # "head" selects 1 key
  assert leaves["conv/kernel"].spec == "tensor"
  with pytest.raises(ValueError, match="selected equally"):
    am.adam_mini_blocks(params, overrides={r"head/kernel": "tensor", r"head/.*": "element"})
  with pytest.raises(TypeError, match="mapping"):
    am.adam_mini_blocks(params, overrides=[(r".*", "tensor")])
  with pytest.raises(ValueError, match="out of range"):
    am.adam_mini_blocks(params, overrides={"pos_embedding": Neurons(2)})
  with pytest.raises(ValueError, match="unit spec"):
    am.adam_mini_blocks(params, overrides={"pos_embedding": "rows"})
  with pytest.raises(ValueError, match="valid regular expression"):
    am.adam_mini_blocks(params, overrides={"(": "tensor"})


def test_argument_errors():
  with pytest.raises(ValueError, match="num_heads"):
    am.adam_mini_blocks({}, num_heads=0)
  with pytest.raises(ValueError, match="multiple of num_kv_heads"):
    am.adam_mini_blocks({}, num_heads=4, num_kv_heads=3)
  with pytest.raises(ValueError, match="on_unrecognised"):
    am.adam_mini_blocks({}, on_unrecognised="raise")


# ---------------------------------------------------------------------------
# Weight-decay mask.


def test_weight_decay_mask():
  model = NnxTransformer(nnx.Rngs(0), layers=1)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  mask = _flat(am.adam_mini_weight_decay_mask(params))
  decayed = sorted(p for p, m in mask.items() if m)
  assert decayed == sorted(["embed/embedding", "head/kernel", "blocks/0/fc1/kernel",
                            "blocks/0/fc2/kernel"] +
                           [f"blocks/0/attn/{m}/kernel" for m in ("query", "key", "value", "out")])
  # The mask needs no num_heads (a fused query kernel is decayed either way).
  fused = _nnx_params(FusedHeadsAttention(nnx.Rngs(0)))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    mask = _flat(am.adam_mini_weight_decay_mask(fused))
  assert mask["query/kernel"] and not mask["query/bias"]


def test_table_lists_every_leaf():
  params = LinenTransformer().init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  partition = am.adam_mini_partition(params)
  table = partition.table()
  assert len(table.splitlines()) == 1 + len(jax.tree.leaves(params))
  assert "Neurons(1)" in table and "Neurons((1, 2))" in table
  # Second moments: far fewer than Adam's one per element.
  assert partition.num_units() < sum(x.size for x in jax.tree.leaves(params)) / 4
