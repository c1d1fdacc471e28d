"""A scanned model equals its unscanned twin, layer by layer (Adam-mini, SCALE,
granularity="neuron"), with and without axis names; a tied model has no head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_neuronlr as nlr
from tests import scanned_models as sm


def _grads(params, seed):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return treedef.unflatten([jax.random.normal(k, x.shape, x.dtype)
                            for k, x in zip(keys, leaves)])


def _run(tx, params, grads_list):
  state = tx.init(params)
  update = jax.jit(tx.update)  # one compile, as models train (eager is slower here)
  out = []
  for g in grads_list:
    u, state = update(g, state, params)
    out.append(u)
  return out, state


def _assert_twins(scanned, unscanned, stacked="blocks"):
  for u_s, u_u in zip(scanned, unscanned):
    np.testing.assert_allclose(np.asarray(u_s["embed"]["embedding"]),
                               np.asarray(u_u["embed"]["embedding"]), rtol=1e-5, atol=1e-7)
    for i in range(sm.L):
      layer = jax.tree.map(lambda x, i=i: x[i], u_s[stacked])
      jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                           rtol=1e-5, atol=1e-7),
                   layer, u_u[f"block_{i}"])


OPTIMIZERS = {
    "adam_mini": lambda names: nlr.adam_mini(1e-2, weight_decay=0.1, axis_names=names),
    "scale_sgd": lambda names: nlr.scale_sgd(1e-2, head=False, axis_names=names),
    "neuron": lambda names: nlr.scale_by_neuron_norm(1e-2, granularity="neuron",
                                                     axis_names=names),
}


@pytest.fixture(scope="module")
def linen_twins():
  params, names = sm.linen(scan=True, tied=True)
  twin = sm.unstack(params)
  return params, names, twin, sm.unstack_names(names)


@pytest.mark.filterwarnings("ignore:.*by shape alone")
@pytest.mark.parametrize("with_names", [False, True])
@pytest.mark.parametrize("make", sorted(OPTIMIZERS))
def test_linen_scan_equals_unscanned(linen_twins, make, with_names):
  params, names, twin, twin_names = linen_twins
  grads = [_grads(params, s) for s in range(2)]
  twin_grads = [sm.unstack(g) for g in grads]
  build = OPTIMIZERS[make]
  scanned, _ = _run(build(names if with_names else None), params, grads)
  unscanned, _ = _run(build(twin_names if with_names else None), twin, twin_grads)
  _assert_twins(scanned, unscanned)


@pytest.mark.filterwarnings("ignore:.*by shape alone")
@pytest.mark.parametrize("make", sorted(OPTIMIZERS))
def test_nnx_vmap_equals_unscanned(make):
  params, names = sm.nnx_model()
  twin = sm.unstack(params)
  grads = [_grads(params, s) for s in range(2)]
  twin_grads = [sm.unstack(g) for g in grads]
  build = OPTIMIZERS[make]
  scanned, _ = _run(build(None), params, grads)
  unscanned, _ = _run(build(None), twin, twin_grads)
  _assert_twins(scanned, unscanned)
  named, _ = _run(build(names), params, grads)
  _assert_twins(named, unscanned)


def test_stacked_units_are_per_layer(linen_twins):
  """Adam-mini's blocks and the neuron units of a stacked leaf keep the layer axis."""
  params, names, _, _ = linen_twins
  for axis_names in (None, names):
    part = nlr.adam_mini_partition(params, axis_names=axis_names, on_unrecognised="error")
    by = part.by_path()
    assert by["blocks/query/kernel"].spec == nlr.Neurons((0, 2))
    assert by["blocks/query/kernel"].num_units == sm.L * sm.H
    assert by["blocks/fc/kernel"].num_units == sm.L * sm.F
    assert by["blocks/ln/scale"].num_units == sm.L  # one per layer, not one in all
    assert by["blocks/ln/bias"].spec == "element"


def test_fused_heads_blocks_per_layer():
  """A scanned fused (L, d, heads*head_dim) query: one unit per head per layer."""
  params = {"blocks": {"query": {"kernel": jnp.ones((3, 8, 8))},
                       "ln": {"scale": jnp.ones((3, 8))}}}
  part = nlr.adam_mini_partition(params, num_heads=2, on_unrecognised="error").by_path()
  spec = part["blocks/query/kernel"].spec
  assert spec == nlr.Blocks(2, 2, batch_axes=(0,)) and part["blocks/query/kernel"].num_units == 6
  g = jax.random.normal(jax.random.key(0), (3, 8, 8))
  tx = nlr.adam_mini(1.0, b1=0.0, b2=0.0, eps=0.0, blocks={"blocks": {
      "query": {"kernel": spec}, "ln": {"scale": "element"}}})
  u, _ = tx.update({"blocks": {"query": {"kernel": g}, "ln": {"scale": jnp.ones((3, 8))}}},
                   tx.init(params), params)
  # b1 = b2 = 0: u = -g / rms(g over the block), each block a layer's head.
  want = -np.asarray(g).reshape(3, 8, 2, 4)
  want = want / np.sqrt((want ** 2).mean(axis=(1, 3), keepdims=True))
  np.testing.assert_allclose(np.asarray(u["blocks"]["query"]["kernel"]),
                             want.reshape(3, 8, 8), rtol=1e-5)


def test_tied_embedding_has_no_head():
  """No head kernel when the embedding is tied, even where a hidden kernel has the
  embedding's shape transposed (q_proj with vocab == d, a byte-level MLP)."""
  d = 8
  tied = {"embed": {"embedding": jnp.zeros((d, d))},
          "blocks": {"0": {"attn": {"q_proj": {"kernel": jnp.zeros((d, d))},
                                    "k_proj": {"kernel": jnp.zeros((d, d))}}}}}
  assert all(l.kind != "head" for l in nlr.model_layout(tied).leaves)
  byte = {"embed": {"embedding": jnp.zeros((32, 8))},
          "blocks": {"0": {"mlp": {"up": {"kernel": jnp.zeros((8, 32))},
                                   "down": {"kernel": jnp.zeros((32, 8))}}},
                     "1": {"mlp": {"up": {"kernel": jnp.zeros((8, 32))},
                                   "down": {"kernel": jnp.zeros((32, 8))}}}}}
  layout = nlr.model_layout(byte)
  assert all(l.kind != "head" for l in layout.leaves)
  assert layout.by_path()["blocks/0/mlp/up/kernel"].hidden
  params, names = sm.linen(scan=True, tied=True)
  for axis_names in (None, names):
    assert all(l.kind != "head" for l in nlr.model_layout(params, axis_names=axis_names).leaves)
  # An untied top-level read-out of the transposed shape is still found, once.
  untied = {**byte, "proj": {"kernel": jnp.zeros((8, 32))}}
  heads = [l.path for l in nlr.model_layout(untied).leaves if l.kind == "head"]
  assert heads == ["proj/kernel"]


def test_torch_style_tree_is_read_by_shape():
  params = {"layer1": {"weight": jnp.zeros((8, 4)), "bias": jnp.zeros(8)},
            "w": jnp.zeros((4, 4)), "v": jnp.zeros(4)}
  by = nlr.model_layout(params).by_path()
  assert by["layer1/weight"].kind == "matrix" and by["layer1/weight"].hidden
  assert by["layer1/weight"].source == "shape" and by["w"].source == "shape"
  assert by["layer1/bias"].kind == "bias" and by["v"].kind == "other" and not by["v"].hidden
  bare = nlr.model_layout(jnp.zeros((4, 6))).leaves[0]
  assert bare.kind == "matrix" and bare.matrix.shapes((4, 6)) == (1, 4, 6)


def test_ambiguous_3d_kernel_is_not_folded():
  """A (in, a, b) DenseGeneral kernel or a lone (k, in, out) kernel: not a conv fold
  without a name; a module named like a convolution is one."""
  by = nlr.model_layout({"proj": {"kernel": jnp.zeros((8, 2, 4))},
                         "Conv_0": {"kernel": jnp.zeros((3, 4, 8)),
                                    "bias": jnp.zeros(8)}}).by_path()
  assert by["proj/kernel"].kind == "other" and not by["proj/kernel"].hidden
  assert by["proj/kernel"].source == "shape" and "axis_names" in by["proj/kernel"].reason
  assert by["Conv_0/kernel"].kind == "conv" and by["Conv_0/kernel"].matrix.shapes(
      (3, 4, 8)) == (1, 12, 8)


def test_experts_by_module_name():
  params = {"moe": {"gate": {"kernel": jnp.zeros((8, 4))},
                    "wi": {"kernel": jnp.zeros((4, 8, 16))},
                    "wo": {"kernel": jnp.zeros((4, 16, 8))}}}
  by = nlr.model_layout(params).by_path()
  wi = by["moe/wi/kernel"]
  assert wi.batch_axes == (0,) and wi.batch_roles == ("expert",)
  assert wi.kind == "mlp" and wi.matrix.shapes(wi.shape) == (4, 8, 16) and wi.hidden
  assert by["moe/gate/kernel"].batch_axes == () and by["moe/gate/kernel"].kind == "mlp"


@pytest.mark.parametrize("make", sorted(OPTIMIZERS))
def test_a_stack_found_by_shape_warns_once(linen_twins, make):
  """Without axis names the stack axis is a guess: one warning per optimizer naming
  the leaves and the fix; with names, none."""
  import warnings  # pylint: disable=g-import-not-at-top
  params, names, _, _ = linen_twins
  tx = OPTIMIZERS[make](None)
  with pytest.warns(UserWarning, match=r"(?s)by shape alone.*blocks/fc/kernel.*axis_names="):
    state = tx.init(params)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    tx.update(params, state, params)
    tx.init(params)
    OPTIMIZERS[make](names).init(params)


@pytest.mark.filterwarnings("ignore:.*by shape alone")
def test_adam_mini_in_multi_transform_with_the_full_trees_blocks(linen_twins):
  """Under optax.partition the group sees a masked tree; blocks computed from the
  full tree (read by path) keep the per-layer blocks."""
  import optax  # pylint: disable=g-import-not-at-top
  params, _, _, _ = linen_twins
  labels = jax.tree_util.tree_map_with_path(
      lambda p, _: "adam" if "bias" in jax.tree_util.keystr(p) else "mini", params)
  blocks = nlr.adam_mini_blocks(params)
  tx = optax.partition({"mini": nlr.adam_mini(1e-2, blocks=blocks),
                        "adam": optax.adam(1e-2)}, labels)
  whole = nlr.adam_mini(1e-2, blocks=blocks)
  g = _grads(params, 0)
  u, _ = tx.update(g, tx.init(params), params)
  w, _ = whole.update(g, whole.init(params), params)
  np.testing.assert_allclose(np.asarray(u["blocks"]["fc"]["kernel"]),
                             np.asarray(w["blocks"]["fc"]["kernel"]), rtol=1e-6)
