"""Training on 2 processes x 4 CPU devices with JAX's own multi-process runtime;
run by tests/test_multiprocess.py, one copy per process.

``python multiprocess_run.py PROCESS_ID NUM_PROCESSES PORT WORKDIR``: joins the
cluster (``jax.distributed.initialize`` over localhost, gloo collectives on
CPU), builds a ``(fsdp=2, model=4)`` mesh over the 8 devices of both
processes, and trains a small transformer with five optimizers (one jitted step
each): Adam-mini, NorMuon, Muon, the per-neuron sign-consistency rule
on Adam's direction, and ``param_groups`` of Adam whose ``head`` is frozen
until ``add_param_group`` brings it in at step ``SWITCH``. The parameters
are sharded FSDP x tensor-parallel, the states by ``nlr.state_shardings``.

At step ``SWITCH`` both processes save an orbax checkpoint of every
parameter and state, then train on to ``STEPS``. The checkpoint is then
restored onto the same shardings and the run resumed from it, with the same
``add_param_group`` on the restored state: every leaf must equal the first
run's, bit for bit. Process 0 also trains the same five optimizers on one
device (no mesh) as the reference. Each process writes ``result_<id>.json``
and ``params_<id>.npz`` (the final parameters, gathered) to ``WORKDIR``.

This is the multi-host recipe of docs/scaling.md.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

from mesh_helpers import force_host_devices

force_host_devices(4)

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

import optax_neuronlr as nlr  # noqa: E402

VOCAB, D, HEADS, HEAD_DIM, HIDDEN, SEQ, BATCH = 32, 16, 4, 4, 64, 8, 8
SWITCH, STEPS = 3, 6
SHAPES = {
    "embed": {"embedding": (VOCAB, D)},
    "attn": {"query": {"kernel": (D, HEADS, HEAD_DIM)}, "key": {"kernel": (D, HEADS, HEAD_DIM)},
             "value": {"kernel": (D, HEADS, HEAD_DIM)}, "out": {"kernel": (HEADS, HEAD_DIM, D)}},
    "norm": {"scale": (D,)},
    "mlp": {"fc1": {"kernel": (D, HIDDEN), "bias": (HIDDEN,)}, "fc2": {"kernel": (HIDDEN, D)}},
    "head": {"kernel": (D, VOCAB)},
}
# FSDP over "fsdp" (2 devices), tensor parallel over "model" (4): heads and
# the MLP's hidden neurons split over "model", the model dimension over "fsdp".
QKV = P("fsdp", "model", None)
SPECS = {
    "embed": {"embedding": P("model", "fsdp")},
    "attn": {"query": {"kernel": QKV}, "key": {"kernel": QKV}, "value": {"kernel": QKV},
             "out": {"kernel": P("model", None, "fsdp")}},
    "norm": {"scale": P()},
    "mlp": {"fc1": {"kernel": P("fsdp", "model"), "bias": P("model")},
            "fc2": {"kernel": P("model", "fsdp")}},
    "head": {"kernel": P("fsdp", "model")},
}
NEW_GROUP = {"params": "head", "lr": 5e-3, "name": "head"}


def optimizers() -> dict[str, optax.GradientTransformation]:
  return {
      "adam_mini": nlr.adam_mini(1e-2, weight_decay=0.1, on_unrecognised="error"),
      "normuon": nlr.normuon(2e-2, weight_decay=0.1, adam_learning_rate=1e-2),
      "muon": nlr.muon(2e-2, weight_decay=0.1, adam_learning_rate=1e-2),
      "sign_adam": nlr.sign_consistency_lr(
          1e-4, granularity="neuron", bias_correction=True, max_lr=1e-2,
          direction=optax.scale_by_adam()),
      "groups": nlr.param_groups(
          optax.adam, [{"params": "embed|attn", "lr": 1e-2, "name": "body"},
                       {"params": "mlp|norm", "lr": 3e-3, "name": "mlp"}],
          learning_rate=1e-3, rest="freeze"),
  }


def with_new_group(txs, states, params):
  """``add_param_group`` on the ``groups`` optimizer: the head joins."""
  txs, states = dict(txs), dict(states)
  txs["groups"], states["groups"] = nlr.add_param_group(
      txs["groups"], states["groups"], params["groups"], NEW_GROUP)
  return txs, states


def init_params() -> dict:
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: (rng.normal(size=s) / np.sqrt(s[0])).astype(np.float32),
                      SHAPES, is_leaf=lambda s: isinstance(s, tuple))


def batch_at(step: int) -> np.ndarray:
  return np.random.default_rng(1000 + step).integers(0, VOCAB, (BATCH, SEQ + 1), np.int32)


def loss_fn(params, tokens):
  x = params["embed"]["embedding"][tokens[:, :-1]]
  q = jnp.einsum("btd,dhk->bthk", x, params["attn"]["query"]["kernel"])
  k = jnp.einsum("btd,dhk->bthk", x, params["attn"]["key"]["kernel"])
  v = jnp.einsum("btd,dhk->bthk", x, params["attn"]["value"]["kernel"])
  scores = jnp.einsum("bthk,bshk->bhts", q, k) / np.sqrt(HEAD_DIM)
  causal = np.tril(np.ones((SEQ, SEQ), bool))
  attn = jax.nn.softmax(jnp.where(causal, scores, -1e9), axis=-1)
  x = x + jnp.einsum("bhts,bshk,hkd->btd", attn, v, params["attn"]["out"]["kernel"])
  h = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * params["norm"]["scale"]
  h = jax.nn.gelu(h @ params["mlp"]["fc1"]["kernel"] + params["mlp"]["fc1"]["bias"])
  x = x + h @ params["mlp"]["fc2"]["kernel"]
  logits = x @ params["head"]["kernel"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def make_step(tx):
  """One optimizer's jitted-to-be training step."""
  def step(params, state, tokens):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss
  return step


def train(steps, params, states, batch, start, stop):
  """``stop - start`` steps of every optimizer (``steps``: one jitted step each)."""
  params, states = dict(params), dict(states)
  for k in range(start, stop):
    tokens = batch(k)
    for name, step in steps.items():
      params[name], states[name], _ = step(params[name], states[name], tokens)
  return params, states


class Sharded:
  """The run on the global mesh: shardings, jitted steps, global arrays."""

  def __init__(self, mesh):
    self.mesh = mesh
    self.p_sh = jax.tree.map(lambda s: NamedSharding(mesh, s), SPECS,
                             is_leaf=lambda x: isinstance(x, P))
    self.batch_sh = NamedSharding(mesh, P("fsdp"))
    self.replicated = NamedSharding(mesh, P())

  def put(self, host_tree, shardings):
    """Global arrays from the same host values on every process (each process
    supplies its own shards)."""
    return jax.tree.map(
        lambda x, sh: jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx]),
        host_tree, shardings)

  def state_shardings(self, txs, params):
    return {n: nlr.state_shardings(tx, params[n], self.p_sh) for n, tx in txs.items()}

  def compiled(self, txs, params, steps=None):
    """A jitted step per optimizer; those already in ``steps`` are kept (after
    ``add_param_group`` only the regrouped optimizer compiles again)."""
    s_sh = self.state_shardings(txs, params)
    steps = steps or {}
    # In the optimizers' order: every process must call the same programs in
    # the same order.
    return {n: steps[n] if n in steps else jax.jit(
        make_step(tx), in_shardings=(self.p_sh, s_sh[n], self.batch_sh),
        out_shardings=(self.p_sh, s_sh[n], self.replicated)) for n, tx in txs.items()}

  def init(self, txs, params):
    s_sh = self.state_shardings(txs, params)
    return {n: jax.jit(tx.init, out_shardings=s_sh[n])(params[n]) for n, tx in txs.items()}

  def batch(self, k):
    return jax.make_array_from_callback((BATCH, SEQ + 1), self.batch_sh,
                                        lambda idx: batch_at(k)[idx])

  def regroup(self, txs, states, params):
    """``add_param_group`` on the global state, then each leaf onto the new
    transformation's shardings."""
    txs, states = with_new_group(txs, states, params)
    return txs, jax.device_put(states, self.state_shardings(txs, params))


@jax.jit
def _same_bits(xs, ys):
  return jnp.all(jnp.stack([
      jnp.all(jax.lax.bitcast_convert_type(p, jnp.uint8) == jax.lax.bitcast_convert_type(q, jnp.uint8))
      if p.dtype != jnp.bool_ else jnp.all(p == q) for p, q in zip(xs, ys)]))


def bitwise_equal(a, b) -> bool:
  """Whether two trees of global arrays are equal bit for bit (a jitted
  comparison; the result is replicated, so every process reads it)."""
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  if jax.tree.structure(a) != jax.tree.structure(b) or len(la) != len(lb):
    return False
  out = _same_bits(la, lb)  # replicated on every device: read this process' copy
  return bool(np.asarray(out.addressable_data(0)))


def gathered(tree) -> dict[str, np.ndarray]:
  flat = jax.tree_util.tree_flatten_with_path(multihost_utils.process_allgather(tree, tiled=True))
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat[0]}


def reference(params0) -> dict:
  """The same training on one device, no mesh."""
  txs = optimizers()
  params = {n: jax.tree.map(jnp.asarray, params0) for n in txs}
  states = {n: tx.init(params[n]) for n, tx in txs.items()}
  steps = {n: jax.jit(make_step(tx)) for n, tx in txs.items()}
  params, states = train(steps, params, states, batch_at, 0, SWITCH)
  txs, states = with_new_group(txs, states, params)
  steps["groups"] = jax.jit(make_step(txs["groups"]))
  params, states = train(steps, params, states, batch_at, SWITCH, STEPS)
  return params


def main() -> None:
  process_id, num_processes, port, workdir = sys.argv[1:5]
  process_id, num_processes, workdir = int(process_id), int(num_processes), pathlib.Path(workdir)
  start = time.time()
  jax.distributed.initialize(f"localhost:{port}", num_processes=int(num_processes),
                             process_id=process_id, initialization_timeout=60,
                             heartbeat_timeout_seconds=30, shutdown_timeout_seconds=30)
  assert jax.process_count() == num_processes and jax.device_count() == 4 * num_processes
  mesh = jax.make_mesh((2, jax.device_count() // 2), ("fsdp", "model"),
                       axis_types=(AxisType.Auto, AxisType.Auto))
  run = Sharded(mesh)
  txs0 = optimizers()
  params0 = init_params()
  params = {n: run.put(params0, run.p_sh) for n in txs0}
  states = run.init(txs0, params)
  steps0 = run.compiled(txs0, params)

  # Phase 1: SWITCH steps; a checkpoint of every parameter and state.
  params, states = train(steps0, params, states, run.batch, 0, SWITCH)
  checkpointer = ocp.StandardCheckpointer()
  ckpt = (workdir / "ckpt").absolute()
  saved = {"params": params, "states": states}
  checkpointer.save(ckpt, saved)
  checkpointer.wait_until_finished()
  # Phase 2: the head joins the param groups; train to STEPS.
  txs, states = run.regroup(txs0, states, params)
  steps = run.compiled(txs, params, {n: f for n, f in steps0.items() if n != "groups"})
  final_params, final_states = train(steps, params, states, run.batch, SWITCH, STEPS)

  # Resume: restore onto the same shardings, regroup the restored state, go on.
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      {"params": params, "states": run.init(txs0, params)})
  restored = checkpointer.restore(ckpt, abstract)
  restored_equal = bitwise_equal(restored, saved)
  _, states_r = run.regroup(txs0, restored["states"], restored["params"])
  params_r, states_r = train(steps, restored["params"], states_r, run.batch, SWITCH, STEPS)
  resumed_params_equal = bitwise_equal(params_r, final_params)
  resumed_states_equal = bitwise_equal(states_r, final_states)

  out = {"process_id": process_id, "process_count": jax.process_count(),
         "device_count": jax.device_count(), "local_devices": len(jax.local_devices()),
         "restored_equal": restored_equal,
         "resumed_params_equal": resumed_params_equal,
         "resumed_states_equal": resumed_states_equal,
         "head_in_groups": sorted(nlr.get_hyperparams(final_states["groups"]))}
  final = gathered(final_params)
  np.savez(workdir / f"params_{process_id}.npz", **final)
  if process_id == 0:
    ref = reference(params0)
    ref = {jax.tree_util.keystr(p): np.asarray(x)
           for p, x in jax.tree_util.tree_flatten_with_path(ref)[0]}
    start_flat = {jax.tree_util.keystr(p): x
                  for p, x in jax.tree_util.tree_flatten_with_path(params0)[0]}
    out["max_diff"] = {n: max(float(np.max(np.abs(final[k] - ref[k])))
                              for k in final if k.startswith(f"['{n}']")) for n in txs}
    out["total_change"] = {n: max(float(np.max(np.abs(ref[k] - start_flat[k[len(f"['{n}']"):]])))
                                  for k in ref if k.startswith(f"['{n}']")) for n in txs}
  out["seconds"] = time.time() - start
  (workdir / f"result_{process_id}.json").write_text(json.dumps(out))
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
