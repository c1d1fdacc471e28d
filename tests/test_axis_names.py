"""model_layout(axis_names=...): roles from the logical axis names Flax returns."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

import optax_neuronlr as nlr
from tests import scanned_models as sm


@pytest.fixture(scope="module")
def linen():
  return sm.linen(scan=True, tied=False)


@pytest.fixture(scope="module")
def nnx_tree():
  return sm.nnx_model()


def _check_scanned(layout):
  by = layout.by_path()
  q = by["blocks/query/kernel"]
  assert q.source == "axis_names" and q.kind == "query"
  assert q.batch_axes == (0,) and q.batch_roles == ("stack",)
  assert q.matrix == nlr.MatrixView((1,), (2, 3)) and q.matrix.shapes(q.shape) == (sm.L, sm.D,
                                                                                    sm.H * sm.HD)
  assert q.neuron_axes == (0, 2, 3) and q.heads == nlr.Neurons((0, 2))
  assert by["blocks/value/kernel"].kind == "value" and by["blocks/key/kernel"].kind == "key"
  fc = by["blocks/fc/kernel"]
  assert fc.kind == "mlp" and fc.matrix == nlr.MatrixView((1,), (2,)) and fc.neuron_axes == (0, 2)
  assert by["blocks/fc/bias"].neuron_axes == (0, 1) and by["blocks/fc/bias"].kind == "bias"
  out = by["blocks/out/kernel"]
  assert out.kind == "attention_out" and out.matrix == nlr.MatrixView((1, 2), (3,))
  assert by["blocks/ln/scale"].kind == "norm_scale" and by["blocks/ln/bias"].kind == "bias"
  assert by["embed/embedding"].kind == "embedding"
  assert by["lm_head/kernel"].kind == "head" and not by["lm_head/kernel"].hidden
  assert all(l.source == "axis_names" for l in layout.leaves)


def test_linen_scan_names_round_trip(linen):
  params, names = linen
  assert names["blocks"]["query"]["kernel"] == P("layers", "embed", "heads", "kv")
  _check_scanned(nlr.model_layout(params, axis_names=names))
  # The whole variables tree and its names ({"params": ...}) read the same.
  layout = nlr.model_layout({"params": params}, axis_names={"params": names})
  assert layout.by_path()["params/blocks/query/kernel"].batch_axes == (0,)
  # Names for the ``params`` collection alone, beside a {"params": ...} tree.
  layout = nlr.model_layout({"params": params}, axis_names=names)
  assert layout.by_path()["params/blocks/fc/kernel"].source == "axis_names"


def test_nnx_vmap_names_round_trip(nnx_tree):
  params, names = nnx_tree
  _check_scanned(nlr.model_layout(params, axis_names=names))


def test_names_decide_over_paths_and_shapes():
  """A (d, d) kernel named (embed, vocab) is the head; one named (embed, mlp) under a
  module called ``head`` is a hidden matrix: names, not paths, decide."""
  params = {"head": {"kernel": jnp.zeros((4, 4))}, "proj": {"kernel": jnp.zeros((4, 4))}}
  names = {"head": {"kernel": P("embed", "mlp")}, "proj": {"kernel": ("embed", "vocab")}}
  by = nlr.model_layout(params, axis_names=names).by_path()
  assert by["head/kernel"].kind == "mlp" and by["head/kernel"].hidden
  assert by["proj/kernel"].kind == "head" and not by["proj/kernel"].hidden


def test_stack_axis_anywhere_and_experts():
  """MaxText scans with the layer axis second; experts are batch axes too."""
  params = {"q": {"kernel": jnp.zeros((8, 3, 2, 4))},
            "moe": {"wi": jnp.zeros((5, 3, 8, 16)), "wo": jnp.zeros((5, 3, 16, 8))}}
  names = {"q": {"kernel": ("embed", "layers", "q_heads", "kv")},
           "moe": {"wi": ("exp", "layers", "embed_no_exp", "mlp"),
                   "wo": ("exp", "layers", "mlp", "embed_no_exp")}}
  by = nlr.model_layout(params, axis_names=names).by_path()
  q = by["q/kernel"]
  assert q.kind == "query" and q.batch_axes == (1,)
  assert q.matrix == nlr.MatrixView((0,), (2, 3)) and q.matrix.shapes(q.shape) == (3, 8, 8)
  wi = by["moe/wi"]
  assert wi.kind == "mlp" and wi.batch_axes == (0, 1) and wi.batch_roles == ("expert", "stack")
  assert wi.matrix.shapes(wi.shape) == (15, 8, 16) and wi.neuron_axes == (0, 1, 3)


def test_unknown_name_is_an_error_naming_axis_and_leaf():
  params = {"fc": {"kernel": jnp.zeros((4, 8))}}
  with pytest.raises(ValueError, match=r"'my_layers'.*axis 0 of leaf 'fc/kernel'"):
    nlr.model_layout({"fc": {"kernel": jnp.zeros((3, 4, 8))}},
                     axis_names={"fc": {"kernel": P("my_layers", "embed", "mlp")}})
  with pytest.raises(ValueError, match="'data'"):
    nlr.model_layout(params, axis_names={"fc": {"kernel": P("data", "model")}})
  with pytest.raises(ValueError, match="3 axes"):
    nlr.model_layout(params, axis_names={"fc": {"kernel": P("layers", "embed", "mlp")}})
  with pytest.raises(ValueError, match="axis_roles"):
    nlr.model_layout(params, axis_roles={"x": "sideways"})


def test_axis_roles_extend_the_vocabulary():
  params = {"fc": {"kernel": jnp.zeros((3, 4, 8)), "bias": jnp.zeros((3, 8))}}
  names = {"fc": {"kernel": P("my_layers", "embed", "mlp"), "bias": P("my_layers", "mlp")}}
  by = nlr.model_layout(params, axis_names=names, axis_roles={"my_layers": "stack"}).by_path()
  assert by["fc/kernel"].batch_axes == (0,) and by["fc/kernel"].matrix.shapes((3, 4, 8)) == (
      3, 4, 8)
  assert by["fc/bias"].neuron_axes == (0, 1)
  assert "layers" in nlr.AXIS_ROLES and nlr.AXIS_ROLES["exp"] == "expert"


def test_unnamed_leaves_fall_back_to_paths_and_shapes():
  """All-None names (an unannotated LayerNorm): read by path and shape, said so;
  partly-None names the same, with a note."""
  params = {"ln": {"scale": jnp.zeros(4)}, "fc": {"kernel": jnp.zeros((4, 8))}}
  names = {"ln": {"scale": P()}, "fc": {"kernel": P("embed", None)}}
  by = nlr.model_layout(params, axis_names=names).by_path()
  assert by["ln/scale"].kind == "norm_scale" and by["ln/scale"].source == "name"
  assert by["fc/kernel"].kind == "mlp" and by["fc/kernel"].source == "name"
  assert "unnamed" in by["fc/kernel"].reason


def test_table_shows_source_and_batch(linen):
  params, names = linen
  table = nlr.model_layout(params, axis_names=names).table()
  header = table.splitlines()[0].split()
  assert "source" in header and "batch" in header
  line = next(l for l in table.splitlines() if l.startswith("blocks/fc/kernel"))
  assert "axis_names" in line and "stack 0" in line and "3 x 8 x 16" in line


def test_engine_axis_names_and_a_layout_as_neuron_axes(linen):
  """granularity="neuron" reads its default units from the names; a ModelLayout
  given as neuron_axes is read by path; either with another granularity is an error."""
  params, names = linen
  grads = jax.tree.map(jnp.ones_like, params)
  tx = nlr.scale_by_neuron_norm(1.0, granularity="neuron", axis_names=names)
  _, state = tx.update(grads, tx.init(params), params)
  rates = nlr.learning_rates(state)
  assert jnp.shape(rates["blocks"]["fc"]["kernel"]) == (sm.L, sm.F)
  assert jnp.shape(rates["blocks"]["query"]["kernel"]) == (sm.L, sm.H, sm.HD)
  layout = nlr.model_layout(params, axis_names=names)
  tx = nlr.scale_by_neuron_norm(1.0, granularity="neuron", neuron_axes=layout)
  _, state = tx.update(grads, tx.init(params), params)
  assert jnp.shape(nlr.learning_rates(state)["blocks"]["fc"]["kernel"]) == (sm.L, sm.F)
  with pytest.raises(ValueError, match="axis_names"):
    nlr.scale_by_neuron_norm(1.0, granularity="element", axis_names=names)
  with pytest.raises(ValueError, match="neuron_axes"):
    nlr.scale_by_neuron_norm(1.0, granularity="tensor", neuron_axes=layout)


def test_head_selector_over_named_leaves():
  params = {"a": {"kernel": jnp.zeros((4, 6))}, "b": {"kernel": jnp.zeros((6, 4))}}
  names = {"a": {"kernel": P("embed", "mlp")}, "b": {"kernel": P("mlp", "embed")}}
  by = nlr.model_layout(params, axis_names=names, head="b").by_path()
  assert by["b/kernel"].kind == "head" and by["b/kernel"].source == "given"
  assert not by["b/kernel"].hidden and by["a/kernel"].hidden
