"""Sharded training on an 8-device CPU mesh; run by tests/test_sharding.py.

Runs in its own process, so that ``--xla_force_host_platform_device_count=8``
takes effect before JAX starts. Prints one JSON object per case: the maximum
parameter difference from a single-device run (and the total parameter change
it is measured against), the shardings of the per-unit statistics, and the
collectives in the compiled step with their per-device element counts.

The ``head_axis`` cases run Adam-mini on attention kernels whose head axis is
sharded (``(d, heads, head_dim)`` kernels and fused ``(d, heads*head_dim)``
ones, 8 heads on 8 devices): the per-head second moment shards with its heads,
so the step needs no collective at all.
"""

from __future__ import annotations

from mesh_helpers import collective_bytes as _collective_bytes
from mesh_helpers import collectives as _collectives
from mesh_helpers import force_host_devices

force_host_devices(8)

import json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import optax_neuronlr as nlr  # noqa: E402

SHAPES = {"dense": {"kernel": (16, 32), "bias": (32,)},
          "out": {"kernel": (32, 8), "bias": (8,)}}
LAYOUTS = {
    # (a) the neuron (output) axis sharded; (b) the fan-in axis sharded.
    "neuron_axis": {"dense": {"kernel": P(None, "x"), "bias": P("x")},
                    "out": {"kernel": P(None, "x"), "bias": P("x")}},
    "fan_in_axis": {"dense": {"kernel": P("x", None), "bias": P()},
                    "out": {"kernel": P("x", None), "bias": P()}},
}
TRANSFORMS = {
    "grad_history_lr/neuron": lambda: nlr.grad_history_lr(1e-2, granularity="neuron"),
    "sign_consistency_lr/neuron+adam": lambda: nlr.sign_consistency_lr(
        1e-3, granularity="neuron", direction=optax.scale_by_adam()),
    "grad_magnitude_lr/element": lambda: nlr.grad_magnitude_lr(1e-2),
    "sign_consistency_lr/tensor": lambda: nlr.sign_consistency_lr(
        1e-2, granularity="tensor", bias_correction=True, max_lr=0.1),
    "adam_hd/neuron": lambda: nlr.adam_hd(1e-2, 1e-4, granularity="neuron"),
    "sgd_hd/global": lambda: nlr.sgd_hd(1e-2, 1e-3),
    "adam_mini/neuron": lambda: nlr.adam_mini(1e-2, weight_decay=0.1),
    "neuron_norm_sgd/neuron": lambda: nlr.neuron_norm_sgd(1e-2),
    # Per-neuron rules that also reduce once per leaf (Nero's weight scale on the
    # first step; LARS/LAMB's one trust ratio per vector): scalar all-reduces.
    "nero/scale+neurons": lambda: nlr.nero(1e-2),
    "lars/vectors+neurons": lambda: nlr.lars(1e-2, weight_decay=1e-4, trust_coefficient=0.1),
    "lamb/vectors+neurons": lambda: nlr.lamb(1e-2, weight_decay=1e-4),
}
# Adam-mini with the head axis sharded: (d, heads, head_dim) kernels as
# nnx.MultiHeadAttention builds them, and fused (d, heads*head_dim) kernels.
HEADS = 8
QKV = {"kernel": P(None, "x", None), "bias": P("x", None)}
FUSED = {"kernel": P(None, "x"), "bias": P("x")}
HEAD_CASES = {
    "adam_mini/heads": (
        {m: {"kernel": (16, HEADS, 4), "bias": (HEADS, 4)} for m in ("query", "key", "value")}
        | {"out": {"kernel": (HEADS, 4, 16), "bias": (16,)}},
        {"query": QKV, "key": QKV, "value": QKV,
         "out": {"kernel": P(None, None, "x"), "bias": P("x")}},
        lambda: nlr.adam_mini(1e-2, weight_decay=0.1, on_unrecognised="error")),
    "adam_mini/fused_heads": (
        {m: {"kernel": (16, HEADS * 4), "bias": (HEADS * 4,)} for m in ("q_proj", "k_proj", "v_proj")}
        | {"o_proj": {"kernel": (HEADS * 4, 16), "bias": (16,)}},
        {"q_proj": FUSED, "k_proj": FUSED, "v_proj": FUSED, "o_proj": FUSED},
        lambda: nlr.adam_mini(1e-2, weight_decay=0.1, num_heads=HEADS,
                              on_unrecognised="error")),
}
# Muon and NorMuon: Newton-Schulz needs each whole matrix, so a sharded hidden
# matrix is gathered; the collectives are recorded against the parameters' size.
MUON_TRANSFORMS = {
    "muon/matrix": lambda: nlr.muon(1e-2, weight_decay=0.1),
    "normuon/matrix": lambda: nlr.normuon(1e-2, weight_decay=0.1),
}
# Newton-Schulz on the shard owners (ns_mesh): whole matrices dealt over the
# devices instead of every matrix gathered onto every device.
_MESH: list = []
OWNER_CASES = {
    "muon/heads+auto": (HEAD_CASES["adam_mini/heads"][0], HEAD_CASES["adam_mini/heads"][1],
                        lambda: nlr.muon(1e-2, weight_decay=0.1)),
    "muon/heads+owner": (HEAD_CASES["adam_mini/heads"][0], HEAD_CASES["adam_mini/heads"][1],
                         lambda: nlr.muon(1e-2, weight_decay=0.1, ns_mesh=_MESH[0])),
    "normuon/heads+owner": (HEAD_CASES["adam_mini/heads"][0], HEAD_CASES["adam_mini/heads"][1],
                            lambda: nlr.normuon(1e-2, weight_decay=0.1, ns_mesh=_MESH[0])),
}
MUON_HEAD_CASES = {
    "normuon/heads": (HEAD_CASES["adam_mini/heads"][0], HEAD_CASES["adam_mini/heads"][1],
                      lambda: nlr.normuon(1e-2, weight_decay=0.1)),
    "muon/heads": (HEAD_CASES["adam_mini/heads"][0], HEAD_CASES["adam_mini/heads"][1],
                   lambda: nlr.muon(1e-2, weight_decay=0.1)),
}
STEPS = 5


def _tree(fn, shapes):
  return jax.tree.map(fn, shapes, is_leaf=lambda x: isinstance(x, tuple))


def _data(shapes):
  rng = np.random.default_rng(0)
  params = _tree(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes)
  grads = [_tree(lambda s: jnp.asarray(rng.normal(size=s) * 10.0 ** rng.integers(-3, 2),
                                       jnp.float32), shapes) for _ in range(STEPS)]
  return params, grads


def _step(tx):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return step


def _unit_stat_specs(state) -> dict:
  """``{"state.<statistic>/<path>": spec}`` of every rule state's unit statistics."""
  out = {}
  rule_states = [x for x in jax.tree.leaves(state, is_leaf=_is_rule_state) if _is_rule_state(x)]
  for rule_state in rule_states:
    for field in type(rule_state).rule.unit_stats:
      tree = getattr(rule_state, field)
      for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        key = "/".join(k.key for k in path)
        out[f"state.{field}/{key}"] = [str(a) for a in leaf.sharding.spec]
  return out


def _is_rule_state(x) -> bool:
  return isinstance(getattr(type(x), "rule", None), nlr.Rule)


def run_case(name: str, layout: str, mesh) -> dict:
  if layout == "head_axis":
    shapes, specs, make = (HEAD_CASES | MUON_HEAD_CASES | OWNER_CASES)[name]
  else:
    shapes, specs, make = SHAPES, LAYOUTS[layout], (TRANSFORMS | MUON_TRANSFORMS)[name]
  tx = make()
  params, grads = _data(shapes)
  start = jax.tree.map(np.asarray, params)  # donation below may reuse its buffers
  step = _step(tx)

  single_params, single_state = params, tx.init(params)
  for g in grads:
    single_params, single_state = jax.jit(step)(single_params, single_state, g)

  p_sh = jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs,
                      is_leaf=lambda x: isinstance(x, P))
  s_sh = nlr.state_shardings(tx, params, p_sh)
  sharded_step = jax.jit(step, in_shardings=(p_sh, s_sh, p_sh),
                         out_shardings=(p_sh, s_sh), donate_argnums=(0, 1))
  state = jax.jit(tx.init, out_shardings=s_sh)(params)
  sharded = jax.device_put(params, p_sh)
  # The compiled step runs the case (a call of ``sharded_step`` would compile it again).
  compiled = sharded_step.lower(sharded, state, jax.device_put(grads[0], p_sh)).compile()
  hlo = compiled.as_text()
  for g in grads:
    sharded, state = compiled(sharded, state, jax.device_put(g, p_sh))

  diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
             zip(jax.tree.leaves(sharded), jax.tree.leaves(single_params)))
  change = max(float(np.max(np.abs(np.asarray(a) - b))) for a, b in
               zip(jax.tree.leaves(single_params), jax.tree.leaves(start)))
  stat_specs = {}
  has_rule = any(_is_rule_state(x) for x in jax.tree.leaves(state, is_leaf=_is_rule_state))
  rates = nlr.learning_rates(state) if has_rule else {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(rates)[0]:
    key = "/".join(k.key for k in path)
    stat_specs[key] = [str(a) for a in leaf.sharding.spec]
  is_rule = lambda x: isinstance(getattr(type(x), "rule", None), nlr.Rule)
  inner = ([s for s in jax.tree.leaves(state, is_leaf=is_rule) if is_rule(s)] or [None])[0]
  for field in ("grad_ema", "sign_ema", "lr"):
    tree = getattr(inner, field, None)
    if tree is not None and not isinstance(tree, jax.Array):
      stat_specs[f"state.{field}/dense/kernel"] = [
          str(a) for a in tree["dense"]["kernel"].sharding.spec]
  stat_specs.update(_unit_stat_specs(state))
  return {"case": name, "layout": layout, "max_diff": diff, "total_change": change,
          "stat_specs": stat_specs, "collectives": _collectives(hlo),
          "collective_bytes": _collective_bytes(hlo),
          "param_elements": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)),
          "family": ("owner" if name in OWNER_CASES else
                     "muon" if name in MUON_TRANSFORMS | MUON_HEAD_CASES else "rule")}


def main() -> None:
  assert len(jax.devices()) == 8, jax.devices()
  mesh = jax.make_mesh((8,), ("x",))
  _MESH.append(mesh)
  for layout in LAYOUTS:
    for name in TRANSFORMS:
      print(json.dumps(run_case(name, layout, mesh)))
  for name in HEAD_CASES:
    print(json.dumps(run_case(name, "head_axis", mesh)))
  for layout in LAYOUTS:
    for name in MUON_TRANSFORMS:
      print(json.dumps(run_case(name, layout, mesh)))
  for name in MUON_HEAD_CASES:
    print(json.dumps(run_case(name, "head_axis", mesh)))
  # ns_mesh needs automatic sharding: these run on a mesh of Auto axes.
  auto = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
  _MESH[:] = [auto]
  for name in OWNER_CASES:
    print(json.dumps(run_case(name, "head_axis", auto)))


if __name__ == "__main__":
  main()
