"""Soak: 100,000+ jitted steps per strategy on an extreme gradient stream.

Not run in CI. ``python benchmarks/soak.py [--steps 100000]`` prints one row
per strategy and the wall time.

What it runs
------------
Each strategy (the three rules of reference 000 at element and neuron
granularity, SGD-HD per neuron, Adam-HD global), wrapped in
``optax.apply_if_finite(tx, max_consecutive_errors=5)``, takes ``--steps``
float32 steps inside one ``jax.lax.scan`` on a small tree (a ``(16, 8)``
kernel, its ``(8,)`` bias, a ``(3, 3, 4, 8)`` conv kernel and a 0-d scalar; 425
elements), with gradients built as follows:

* magnitudes: each element's magnitude is one of 13 classes -- exact 0, the
  float32 subnormals 1e-44 and 1e-40, and 1e-30, 1e-25, 1e-20, 1e-10, 1e-5,
  1, 1e5, 1e10, 1e20, 1e30 -- times a factor in [1, 2); each element
  starts in a different class and moves to the next one every 50 accepted
  steps, so that every unit sees every class, neighbours in one unit differ
  by up to 60 decades, and every statistic is dragged from 1e30 down to 0
  and back;
* signs flip on every accepted step, so that the gradients of any two
  consecutive accepted steps cancel: the stream is as extreme as float32
  allows in magnitude, but its sum stays bounded, and so do the parameters
  as long as a unit's rate does not jump between the two steps of a pair
  (a 1e30 gradient times a rate of 1 moves a parameter by 1e30, which float32
  holds; a stream of same-signed 1e30 gradients would overflow any
  optimizer's parameters, legitimately, and is not what this soak tests);
* NaN / +Inf / -Inf injected into one element every 97 / 89 / 83 steps:
  ``apply_if_finite`` must skip exactly those steps, and the stream does not
  advance on a skipped step.

Every step it checks, inside the scan: that every floating leaf of the state
and of the params is finite, and that the rates :func:`nlr.learning_rates`
reads lie within ``[min_lr, max_lr]``; it keeps the smallest and largest rate
seen and counts the steps that broke each check.

What it proves, and what not
----------------------------
It shows that, on this stream, the state, the rates and the parameters stay
finite and the rates stay in their clamps for 10^5 steps, that a NaN/Inf step
is skipped without a trace, and that the clamps hold at the extremes of
float32 (an EMA of 0 gives ``lr / eps``; a 1e30 gradient gives ``lr / 1e30``).
Adam-HD's direction is ``optax.scale_by_adam``, whose second moment ``g**2``
overflows float32 for ``|g| > ~1.8e19``: its ``nu`` becomes ``inf`` (the
direction of that element is 0 from then on, so the params stay finite). That
is optax's Adam, not this library; the table counts it in its own column.

It does not show convergence or any quality of training; it runs float32 only
(half precision and float64 are covered by the contract tests); it runs on
XLA:CPU, which flushes subnormals to zero in arithmetic, so here the
subnormal classes behave as exact zeros (another backend may keep them); it
covers only this stream (e.g. no long same-signed runs of 1e30), one tree
and one setting of each strategy.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_neuronlr as nlr

SHAPES = {"dense": {"kernel": (16, 8), "bias": (8,)}, "conv": (3, 3, 4, 8), "scalar": ()}
CLASSES = np.asarray([0.0, 1e-44, 1e-40, 1e-30, 1e-25, 1e-20, 1e-10, 1e-5, 1.0, 1e5,
                      1e10, 1e20, 1e30], np.float32)
BLOCK = 50  # accepted steps per magnitude class (even: signs cancel in pairs)
INJECT = ((97, jnp.nan), (89, jnp.inf), (83, -jnp.inf))  # period, value

STRATEGIES = {
    # name: (transform, min_lr, max_lr)
    "grad_magnitude_lr/element": (nlr.grad_magnitude_lr(1e-3, alpha=0.01), 1e-6, 1.0),
    "grad_magnitude_lr/neuron": (
        nlr.grad_magnitude_lr(1e-3, alpha=0.01, granularity="neuron"), 1e-6, 1.0),
    "grad_history_lr/element": (nlr.grad_history_lr(1e-3), 1e-6, 1.0),
    "grad_history_lr/neuron+bc": (
        nlr.grad_history_lr(1e-3, granularity="neuron", bias_correction=True), 1e-6, 1.0),
    "sign_consistency_lr/element": (nlr.sign_consistency_lr(1e-3), 1e-6, 1.0),
    "sign_consistency_lr/neuron": (
        nlr.sign_consistency_lr(1e-3, granularity="neuron"), 1e-6, 1.0),
    "sgd_hd/neuron": (
        nlr.sgd_hd(1e-3, hyper_lr=1e-3, granularity="neuron", max_lr=1.0), 0.0, 1.0),
    "adam_hd/global": (nlr.adam_hd(1e-3, hyper_lr=1e-4, max_lr=1.0), 0.0, 1.0),
}


def _tree(fn):
  return jax.tree.map(fn, SHAPES, is_leaf=lambda s: isinstance(s, tuple))


def initial_params(seed: int = 0):
  rng = np.random.default_rng(seed)
  return _tree(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32))


def _offsets_and_factors(seed: int = 1):
  """Per element: its first magnitude class and a factor in [1, 2)."""
  rng = np.random.default_rng(seed)
  count = [0]

  def leaf(shape):
    n = int(np.prod(shape, dtype=int))
    start = count[0]
    count[0] += n
    offsets = (np.arange(start, start + n) % len(CLASSES)).reshape(shape)
    return (jnp.asarray(offsets, jnp.int32),
            jnp.asarray(1 + rng.random(shape), jnp.float32))

  return _tree(leaf)


def gradient(table, accepted: jax.Array, t: jax.Array):
  """The gradient of the ``accepted``-th stream step, at scan step ``t``."""
  classes = jnp.asarray(CLASSES)
  block = accepted // BLOCK
  sign = jnp.where(accepted % 2 == 0, 1.0, -1.0).astype(jnp.float32)

  def leaf(pair):
    offsets, factors = pair
    m = classes[(offsets + block) % len(CLASSES)]
    return sign * m * factors

  g = jax.tree.map(leaf, table, is_leaf=lambda x: isinstance(x, tuple))
  # Injections: NaN into the dense kernel, +Inf into the conv kernel, -Inf
  # into the scalar.
  hits = [t % period == 0 for period, _ in INJECT]
  (_, nan), (_, pos), (_, neg) = INJECT
  kernel = g["dense"]["kernel"]
  g["dense"]["kernel"] = kernel.at[0, 0].set(jnp.where(hits[0], nan, kernel[0, 0]))
  g["conv"] = g["conv"].at[0, 0, 0, 1].set(jnp.where(hits[1], pos, g["conv"][0, 0, 0, 1]))
  g["scalar"] = jnp.where(hits[2], jnp.float32(neg), g["scalar"])
  return g, hits[0] | hits[1] | hits[2]


def _all_finite(leaves) -> jax.Array:
  leaves = [x for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in leaves] or [True]))


def _split_state(state):
  """(the strategy's own leaves, the leaves of its optax ``direction``'s state)."""
  own, direction = [], []
  for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
    names = {getattr(k, "name", None) for k in path}
    (direction if "direction_state" in names else own).append(x)
  return own, direction


def soak(name: str, steps: int) -> dict:
  inner, min_lr, max_lr = STRATEGIES[name]
  tx = optax.apply_if_finite(inner, max_consecutive_errors=5)
  table = _offsets_and_factors()
  params = initial_params()
  state = tx.init(params)

  def body(carry, t):
    params, state, stats = carry
    g, injected = gradient(table, stats["accepted"], t)
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    rates = jnp.concatenate([jnp.ravel(r) for r in jax.tree.leaves(
        nlr.learning_rates(state.inner_state))])
    lo, hi = jnp.min(rates), jnp.max(rates)
    stats = {
        "accepted": stats["accepted"] + state.last_finite.astype(jnp.int32),
        "injected": stats["injected"] + injected.astype(jnp.int32),
        "min_rate": jnp.minimum(stats["min_rate"], lo),
        "max_rate": jnp.maximum(stats["max_rate"], hi),
        "rate_outside": stats["rate_outside"]
        + ((lo < jnp.float32(min_lr)) | (hi > jnp.float32(max_lr)) | ~jnp.isfinite(lo)
           | ~jnp.isfinite(hi)).astype(jnp.int32),
        "state_nonfinite": stats["state_nonfinite"]
        + (~_all_finite(_split_state(state.inner_state)[0])).astype(jnp.int32),
        "direction_nonfinite": stats["direction_nonfinite"]
        + (~_all_finite(_split_state(state.inner_state)[1])).astype(jnp.int32),
        "params_nonfinite": stats["params_nonfinite"]
        + (~_all_finite(jax.tree.leaves(params))).astype(jnp.int32),
        "max_abs_param": jnp.maximum(stats["max_abs_param"], jnp.max(jnp.asarray(
            [jnp.max(jnp.abs(p)) for p in jax.tree.leaves(params)]))),
    }
    return (params, state, stats), None

  stats = {
      "accepted": jnp.zeros([], jnp.int32), "injected": jnp.zeros([], jnp.int32),
      "min_rate": jnp.asarray(jnp.inf, jnp.float32),
      "max_rate": jnp.asarray(-jnp.inf, jnp.float32),
      "rate_outside": jnp.zeros([], jnp.int32), "state_nonfinite": jnp.zeros([], jnp.int32),
      "direction_nonfinite": jnp.zeros([], jnp.int32),
      "params_nonfinite": jnp.zeros([], jnp.int32),
      "max_abs_param": jnp.zeros([], jnp.float32),
  }
  run = jax.jit(lambda c: jax.lax.scan(body, c, jnp.arange(steps, dtype=jnp.int32))[0])
  start = time.perf_counter()
  params, state, stats = jax.block_until_ready(run((params, state, stats)))
  wall = time.perf_counter() - start
  out = {k: v.item() for k, v in stats.items()}
  out.update(name=name, steps=steps, skipped=int(state.total_notfinite),
             min_lr=min_lr, max_lr=max_lr, wall=wall)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=100_000)
  parser.add_argument("--only", nargs="*", default=sorted(STRATEGIES),
                      help="strategies to run (default: all)")
  args = parser.parse_args()
  header = ("| strategy | steps | injected NaN/Inf | skipped | min rate | max rate | "
            "clamps | steps: rate outside clamps | steps: non-finite state | "
            "steps: non-finite direction state (optax) | steps: non-finite params | "
            "max abs param | wall s (incl. compile) |")
  print(header)
  print("|" + "---|" * (header.count("|") - 1))
  total = time.perf_counter()
  failed, direction = False, []
  for name in STRATEGIES:
    if name not in args.only:
      continue
    r = soak(name, args.steps)
    bad = (r["rate_outside"] or r["state_nonfinite"] or r["params_nonfinite"]
           or r["skipped"] != r["injected"])
    failed |= bool(bad)
    if r["direction_nonfinite"]:
      direction.append(name)
    print(f"| {name} | {r['steps']} | {r['injected']} | {r['skipped']} | "
          f"{r['min_rate']:.3g} | {r['max_rate']:.3g} | [{r['min_lr']:g}, {r['max_lr']:g}] | "
          f"{r['rate_outside']} | {r['state_nonfinite']} | {r['direction_nonfinite']} | "
          f"{r['params_nonfinite']} | "
          f"{r['max_abs_param']:.3g} | {r['wall']:.1f} |", flush=True)
  print(f"\ntotal wall time: {time.perf_counter() - total:.1f} s")
  print("FAILED: see the non-zero columns" if failed else
        "all checks held: rates in their clamps, optax_neuronlr's state and the "
        "params finite, exactly the injected steps skipped")
  if direction:
    print(f"non-finite optax direction state (not optax_neuronlr's own) in: {direction}")


if __name__ == "__main__":
  main()
