"""Muon on deep models: compile and step time of ``nlr.muon`` against
``optax.contrib.muon`` (``python benchmarks/step_time.py --muon``).

Two forms of the same transformer (``--layers`` blocks of attention q/k/v/o
``(d, d)`` kernels, MLP ``(d, 4d)`` / ``(4d, d)`` kernels, biases and layer
norms, an embedding and an output head; float32):

* ``unscanned``: one subtree per block (``block_0``, ``block_1``, ...), as a
  Python loop over Flax modules gives;
* ``scanned``: every block's leaf stacked on a leading layer axis
  (``blocks/attn/query/kernel`` of shape ``(layers, d, d)``), as ``nn.scan`` /
  ``nnx.vmap`` give. ``nlr.muon`` finds the stack axis and runs one batched
  Newton-Schulz per stacked leaf.

Both optimizers get the same work: ``optax.contrib.muon`` is given the
dimension numbers of ``nlr.model_layout``'s hidden matrices (the stack axis a
batch axis, ``MuonDimensionNumbers(1, 2)``; embedding, head, norms and biases
to its Adam), as MaxText-style code writes them by hand.

Per form and optimizer: the compile time of the jitted step (lowering and
XLA compilation; median of ``--compile-repeats`` fresh compilations) and the
step time (median over ``--repeats`` rounds of ``--steps`` steps, the two
optimizers alternating within each round so that a noisy machine's slow
phases cancel out of the ratio). Ratios are against optax on the same run.
Targets: ``nlr.muon`` no slower than optax unscanned (compile and step), and
its scanned compile at most half its unscanned compile.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

import optax_neuronlr as nlr

Params = dict[str, Any]


def block_shapes(d: int) -> Params:
  h = 4 * d
  dense = lambda i, o: {"kernel": (i, o), "bias": (o,)}
  norm = {"scale": (d,), "bias": (d,)}
  return {"ln_1": dict(norm), "ln_2": dict(norm),
          "attn": {n: dense(d, d) for n in ("query", "key", "value", "out")},
          "mlp": {"fc_in": dense(d, h), "fc_out": dense(h, d)}}


def _is_shape(x: Any) -> bool:
  return isinstance(x, tuple) and all(isinstance(n, int) for n in x)


def model_shapes(d: int, layers: int, vocab: int, scanned: bool) -> Params:
  tree: Params = {"embed": {"embedding": (vocab, d)}}
  if scanned:
    tree["blocks"] = jax.tree.map(lambda s: (layers,) + s, block_shapes(d), is_leaf=_is_shape)
  else:
    tree.update({f"block_{i}": block_shapes(d) for i in range(layers)})
  tree["ln_f"] = {"scale": (d,), "bias": (d,)}
  tree["head"] = {"kernel": (d, vocab)}
  return tree


def random_tree(shapes: Params, seed: int, scale: float) -> Params:
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (scale * rng.standard_normal(s)).astype(np.float32),
                      shapes, is_leaf=_is_shape)


def optax_dimension_numbers(params: Params) -> Any:
  """``MuonDimensionNumbers`` of the layout's hidden matrices, None elsewhere."""
  layout = nlr.model_layout(params)
  dims = [optax.contrib.MuonDimensionNumbers(r.matrix.reduction_axes, r.matrix.output_axes)
          if r.hidden else None for r in layout.leaves]
  return jax.tree.structure(params).unflatten(dims)


def optimizers(params: Params) -> dict[str, optax.GradientTransformation]:
  return {
      "optax.contrib.muon": optax.contrib.muon(
          0.02, muon_weight_dimension_numbers=optax_dimension_numbers(params)),
      "nlr.muon": nlr.muon(0.02),
  }


def make_step(tx: optax.GradientTransformation) -> Callable:
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return jax.jit(step, donate_argnums=(0, 1))


def compile_seconds(tx, params, state, grads) -> float:
  """Seconds to trace, lower and compile a fresh jitted step."""
  start = time.perf_counter()
  make_step(tx).lower(params, state, grads).compile()
  return time.perf_counter() - start


def run_chunk(step, carry, grads, steps: int) -> tuple[float, Any]:
  params, state = carry
  start = time.perf_counter()
  for _ in range(steps):
    params, state = step(params, state, grads)
  jax.block_until_ready((params, state))
  return (time.perf_counter() - start) / steps, (params, state)


def measure_form(args: argparse.Namespace, scanned: bool) -> dict[str, dict[str, float]]:
  shapes = model_shapes(args.d_model, args.layers, args.vocab, scanned)
  host = random_tree(shapes, 0, 0.02)
  grads = jax.device_put(random_tree(shapes, 1, 1e-3))
  txs = optimizers(host)
  out: dict[str, dict[str, Any]] = {}
  for name, tx in txs.items():
    params = jax.device_put(host)
    state = jax.jit(tx.init)(params)
    times = [compile_seconds(tx, params, state, grads) for _ in range(args.compile_repeats)]
    step = make_step(tx)
    carry = step(params, state, grads)
    out[name] = {"compile": times, "step": [], "ratio": [], "run": (step, carry)}
  names = list(txs)
  for r in range(args.repeats):
    order = names if r % 2 == 0 else names[::-1]
    chunk = {}
    for name in order:
      step, carry = out[name]["run"]
      chunk[name], carry = run_chunk(step, carry, grads, args.steps)
      out[name]["run"] = (step, carry)
      out[name]["step"].append(chunk[name])
    for name in names:
      out[name]["ratio"].append(chunk[name] / chunk[names[0]])
  return {name: {"compile": statistics.median(v["compile"]),
                 "compile_ratio": statistics.median(v["compile"])
                 / statistics.median(out[names[0]]["compile"]),
                 "step_ms": 1e3 * statistics.median(v["step"]),
                 "step_ratio": statistics.median(v["ratio"])}
          for name, v in out.items()}


def main(args: argparse.Namespace) -> None:
  warnings.filterwarnings("ignore", message=".*donated buffers.*")
  warnings.filterwarnings("ignore", message=r"nlr\.")  # the scanned tree's stack axes, found by shape
  device = jax.devices()[0]
  print(f"device: {device.platform} ({device.device_kind}); jax {jax.__version__}, "
        f"optax {optax.__version__}; {args.layers} blocks, d_model={args.d_model}, "
        f"vocab={args.vocab}; compile: median of {args.compile_repeats}; step: "
        f"{args.repeats} rounds x {args.steps} steps", flush=True)
  results = {form: measure_form(args, form == "scanned") for form in ("unscanned", "scanned")}
  rows = [("form", "optimizer", "compile s", "x optax", "ms/step", "x optax")]
  for form, by_name in results.items():
    for name, r in by_name.items():
      rows.append((form, name, f"{r['compile']:.2f}", f"{r['compile_ratio']:.2f}",
                   f"{r['step_ms']:.2f}", f"{r['step_ratio']:.2f}"))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  if args.markdown:
    print("| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]))
    print("\n".join("| " + " | ".join(row) + " |" for row in rows[1:]))
  else:
    print("\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows))
  unscanned, scanned = results["unscanned"]["nlr.muon"], results["scanned"]["nlr.muon"]
  half = scanned["compile"] / unscanned["compile"]
  print("targets:")
  print(f"  nlr.muon unscanned compile {unscanned['compile_ratio']:.2f}x optax (<= 1): "
        f"{'ok' if unscanned['compile_ratio'] <= 1 else 'MISSED'}")
  print(f"  nlr.muon unscanned step {unscanned['step_ratio']:.2f}x optax (<= 1): "
        f"{'ok' if unscanned['step_ratio'] <= 1 else 'MISSED'}")
  print(f"  nlr.muon scanned compile {half:.2f}x its unscanned compile (<= 0.5): "
        f"{'ok' if half <= 0.5 else 'MISSED'}")
