"""Small transformers with logical axis names, scanned and unscanned (test helpers).

Linen: ``nn.with_logical_partitioning`` on every parameter and ``nn.scan(...,
metadata_params={nn.PARTITION_NAME: "layers"})``. NNX: ``nnx.with_partitioning``
and ``nnx.vmap(..., transform_metadata={nnx.PARTITION_NAME: "layers"})``.
``unstack`` turns a scanned tree into its unscanned twin (``blocks`` ->
``block_0``, ``block_1``, ...), so that a test compares layer by layer.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

D, H, HD, F, V, L = 8, 2, 4, 16, 12, 3


def _part(init, names):
  return nn.with_logical_partitioning(init, names)


class LinenBlock(nn.Module):

  @nn.compact
  def __call__(self, x, _=None):
    lecun, zeros, ones = (nn.initializers.lecun_normal(), nn.initializers.zeros,
                          nn.initializers.ones)
    h = nn.LayerNorm(scale_init=_part(ones, ("norm",)), bias_init=_part(zeros, ("norm",)),
                     name="ln")(x)
    qkv = [nn.DenseGeneral((H, HD), kernel_init=_part(lecun, ("embed", "heads", "kv")),
                           bias_init=_part(zeros, ("heads", "kv")), name=n)(h)
           for n in ("query", "key", "value")]
    o = nn.DenseGeneral(D, axis=(-2, -1), kernel_init=_part(lecun, ("heads", "kv", "embed")),
                        use_bias=False, name="out")(sum(qkv))
    m = nn.Dense(F, kernel_init=_part(lecun, ("embed", "mlp")),
                 bias_init=_part(zeros, ("mlp",)), name="fc")(h)
    m = nn.Dense(D, kernel_init=_part(lecun, ("mlp", "embed")), use_bias=False,
                 name="proj")(m)
    return x + o + m, None


class LinenLM(nn.Module):
  scan: bool = True
  tied: bool = True

  @nn.compact
  def __call__(self, tokens):
    embed = nn.Embed(V, D, embedding_init=_part(nn.initializers.normal(1.0),
                                                ("vocab", "embed")), name="embed")
    x = embed(tokens)
    if self.scan:
      stack = nn.scan(LinenBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                      length=L, metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(name="blocks")(x, None)
    else:
      for i in range(L):
        x, _ = LinenBlock(name=f"block_{i}")(x)
    if self.tied:
      return embed.attend(x)
    return nn.Dense(V, kernel_init=_part(nn.initializers.lecun_normal(), ("embed", "vocab")),
                    use_bias=False, name="lm_head")(x)


def _fresh(tree):
  """The same leaves in new containers: a test may edit its dicts."""
  return jax.tree.map(lambda x: x, tree,
                      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def linen(scan: bool = True, tied: bool = True):
  """``(params, axis_names)`` of the linen model (``{"params": ...}`` left out)."""
  return _fresh(_linen(scan, tied))


@functools.lru_cache(maxsize=None)
def _linen(scan: bool, tied: bool):
  # Built once per test process (a few seconds each on 2 cores).
  variables = LinenLM(scan, tied).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  return nn.unbox(variables)["params"], nn.get_partition_spec(variables)["params"]


class NnxBlock(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    w = nnx.initializers.lecun_normal()
    z = nnx.initializers.zeros_init()
    self.ln = nnx.LayerNorm(D, scale_init=nnx.with_partitioning(nnx.initializers.ones_init(),
                                                                ("norm",)),
                            bias_init=nnx.with_partitioning(z, ("norm",)), rngs=rngs)
    for name in ("query", "key", "value"):
      setattr(self, name, nnx.LinearGeneral(
          D, (H, HD), kernel_init=nnx.with_partitioning(w, ("embed", "heads", "kv")),
          bias_init=nnx.with_partitioning(z, ("heads", "kv")), rngs=rngs))
    self.out = nnx.LinearGeneral((H, HD), D, axis=(-2, -1), use_bias=False,
                                 kernel_init=nnx.with_partitioning(w, ("heads", "kv", "embed")),
                                 rngs=rngs)
    self.fc = nnx.Linear(D, F, kernel_init=nnx.with_partitioning(w, ("embed", "mlp")),
                         bias_init=nnx.with_partitioning(z, ("mlp",)), rngs=rngs)
    self.proj = nnx.Linear(F, D, use_bias=False,
                           kernel_init=nnx.with_partitioning(w, ("mlp", "embed")), rngs=rngs)


class NnxLM(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.embed = nnx.Embed(V, D, embedding_init=nnx.with_partitioning(
        nnx.initializers.normal(1.0), ("vocab", "embed")), rngs=rngs)

    @nnx.split_rngs(splits=L)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def blocks(rngs):
      return NnxBlock(rngs)

    self.blocks = blocks(rngs)
    self.lm_head = nnx.Linear(D, V, use_bias=False, kernel_init=nnx.with_partitioning(
        nnx.initializers.lecun_normal(), ("embed", "vocab")), rngs=rngs)


def nnx_model():
  """``(pure-dict params, axis names as nnx returns them)`` of the NNX model."""
  return _fresh(_nnx_model())


@functools.lru_cache(maxsize=None)
def _nnx_model():
  with nnx.use_eager_sharding(False):
    model = NnxLM(nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  return nnx.to_pure_dict(state), nnx.get_partition_spec(state)


def unstack(tree, stacked: str = "blocks", prefix: str = "block_", axis: int = 0):
  """The unscanned twin of a dict tree: ``tree[stacked]`` split along ``axis``."""
  out = {k: v for k, v in tree.items() if k != stacked}
  for i in range(L):
    out[f"{prefix}{i}"] = jax.tree.map(lambda x, i=i: jnp.take(x, i, axis=axis),
                                       tree[stacked])
  return out


def unstack_names(names, stacked: str = "blocks", prefix: str = "block_"):
  """The twin's axis names: the ``layers`` axis dropped."""
  is_leaf = lambda x: isinstance(x, jax.sharding.PartitionSpec)
  drop = lambda p: jax.sharding.PartitionSpec(*[a for a in p if a != "layers"])
  out = {k: v for k, v in names.items() if k != stacked}
  for i in range(L):
    out[f"{prefix}{i}"] = jax.tree.map(drop, names[stacked], is_leaf=is_leaf)
  return out
