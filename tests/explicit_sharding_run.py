"""Run by test_optax_states.py in its own process: 4 CPU devices, an
explicit-sharding mesh; prints one JSON line per case."""

from __future__ import annotations

import json

from mesh_helpers import force_host_devices

force_host_devices(4)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

import optax_neuronlr as nlr  # noqa: E402

CASES = {
    "history/element": lambda: nlr.grad_history_lr(0.1),
    "history/neuron": lambda: nlr.grad_history_lr(0.1, granularity="neuron"),
    "magnitude/neuron": lambda: nlr.grad_magnitude_lr(0.1, granularity="neuron"),
    "sign/tensor": lambda: nlr.sign_consistency_lr(0.1, granularity="tensor"),
    "sgd_hd/global": lambda: nlr.sgd_hd(0.1, 1e-3),
    "adam_hd/neuron": lambda: nlr.adam_hd(0.1, 1e-3, granularity="neuron"),
    "history/blocks": lambda: nlr.grad_history_lr(0.1, granularity=nlr.Blocks(-1, 2)),
    "inject/sign/neuron": lambda: optax.inject_hyperparams(nlr.sign_consistency_lr)(
        0.1, granularity="neuron"),
    "history/neuron+adam": lambda: nlr.grad_history_lr(
        0.1, granularity="neuron", direction=optax.scale_by_adam()),
}


def _types(tree):
  return jax.tree.map(lambda x: (x.shape, str(x.dtype), str(jax.typeof(x).sharding.spec),
                                 bool(getattr(jax.typeof(x), "weak_type", False))), tree)


def main() -> None:
  mesh = jax.make_mesh((4,), ("x",), axis_types=(AxisType.Explicit,))
  with jax.set_mesh(mesh):
    put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
    params = {
        "rows": put(jnp.ones((8, 4)), P("x", None)),  # fan-in sharded
        "cols": put(jnp.ones((8, 8)), P(None, "x")),  # neuron axis sharded
        "bias": put(jnp.ones(8), P("x")),
    }
    grads = jax.tree.map(lambda p: p * 0.3, params)
    for name, make in CASES.items():
      tx = make()
      state = tx.init(params)
      traces = []

      def update(g, s, p, tx=tx, traces=traces):
        traces.append(1)
        return tx.update(g, s, p)

      step = jax.jit(update)
      _, s1 = step(grads, state, params)
      _, s2 = step(grads, s1, params)
      try:
        jax.lax.fori_loop(0, 2, lambda i, s, tx=tx: tx.update(grads, s, params)[1], state)
        fori = True
      except Exception:  # pylint: disable=broad-except
        fori = False
      print(json.dumps({
          "case": name,
          "init_equals_update": _types(state) == _types(s1) == _types(s2),
          "compiles": len(traces),
          "fori_loop": fori,
      }))


if __name__ == "__main__":
  main()
