"""Optimizer step time and state size of optax_neuronlr against optax.adam.

What it measures
----------------
For a transformer-like parameter tree (token embedding, ``--layers`` blocks of
attention q/k/v/o kernels ``(d, d)``, MLP kernels ``(d, 4d)`` / ``(4d, d)``,
biases and layer-norm scales ``(d,)``, a final layer norm and an output head;
float32, nested dicts, Flax ``(in, out)`` layout) it times the jitted step::

    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)

with params and state donated (``donate_argnums=(0, 1)``) and fixed random
gradients, for ``optax.adam(1e-3)`` (the baseline), ``optax.sgd(1e-3)`` (a
lower bound: one read-modify-write of the params) and each of
``nlr.grad_magnitude_lr``, ``nlr.grad_history_lr`` and
``nlr.sign_consistency_lr`` at granularity element, neuron and tensor.

Every optimizer is compiled and warmed up first. Then ``--repeats`` rounds are
run. A round runs a chunk of ``--steps`` steps of adam, then of every other
optimizer each followed by adam again (``A X1 A X2 A ... A``), in an order
that rotates from round to round. Each chunk of ``X`` is compared with the
mean of the two adam chunks around it, so that slow phases of a noisy machine
(e.g. 2 shared cores) largely cancel out of the ratio. Per optimizer the table
gives:

* ``ms/step (median)`` / ``(best)``: median / minimum over rounds of the mean
  step time of a chunk (adam: over all its chunks); "best" is the least
  disturbed chunk, closest to the cost on an idle machine;
* ``x adam``: median over rounds of the chunk's ratio to its adam neighbours;
* ``x adam min-max``: the range of those ratios, i.e. how much noise moves
  them; for adam, the range of the ratio of each adam chunk to the previous
  one, the noise floor;
* ``state bytes`` / ``state x adam``: the optimizer state size (sum of the
  ``nbytes`` of the state's array leaves), absolute and divided by adam's.

Below the table it checks the targets of the issue: every ``[element]`` row at
most 1.3x adam's step time, every ``[neuron]`` row faster than adam. Compile
time is excluded; the Python dispatch of each step is included.

How to run
----------
::

    python benchmarks/step_time.py                      # CPU, ~4M params
    python benchmarks/step_time.py --markdown           # table for README
    python benchmarks/step_time.py --d-model 512 --layers 8 --steps 20
    python benchmarks/step_time.py --device gpu         # needs a GPU jaxlib
    python benchmarks/step_time.py --only adam,element  # a subset of rows
    python benchmarks/step_time.py --muon               # Muon, 24 blocks, scanned too

``--muon`` runs :mod:`muon_step_time` instead: ``nlr.muon`` against
``optax.contrib.muon`` on a 24-block transformer, unscanned and scanned
(stacked layers), compile and step time with ratios against optax.

The defaults run in well under 3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

import optax_neuronlr as nlr

Params = dict[str, Any]
Step = Callable[[Any, Any, Any], tuple[Any, Any]]

STRATEGIES: dict[str, Callable[..., optax.GradientTransformation]] = {
    "grad_magnitude_lr": nlr.grad_magnitude_lr,
    "grad_history_lr": nlr.grad_history_lr,
    "sign_consistency_lr": nlr.sign_consistency_lr,
}
BASELINE = "optax.adam"


# ---------------------------------------------------------------------------
# Parameters.


def param_shapes(d_model: int, layers: int, vocab: int) -> Params:
  """Shapes of a transformer-like parameter tree, Flax ``(in, out)`` layout."""
  d, h = d_model, 4 * d_model

  def dense(n_in: int, n_out: int) -> dict[str, tuple[int, ...]]:
    return {"kernel": (n_in, n_out), "bias": (n_out,)}

  def norm() -> dict[str, tuple[int, ...]]:
    return {"scale": (d,), "bias": (d,)}

  def block() -> Params:
    return {
        "ln_1": norm(),
        "attn": {n: dense(d, d) for n in ("query", "key", "value", "out")},
        "ln_2": norm(),
        "mlp": {"fc_in": dense(d, h), "fc_out": dense(h, d)},
    }

  tree: Params = {"embed": {"embedding": (vocab, d)}}
  tree.update({f"block_{i}": block() for i in range(layers)})
  tree["ln_f"] = norm()
  tree["head"] = dense(d, vocab)
  return tree


def _is_shape(x: Any) -> bool:
  return isinstance(x, tuple) and all(isinstance(n, int) for n in x)


def random_tree(shapes: Params, seed: int, scale: float) -> Params:
  """Host (numpy) float32 arrays of the given shapes, normal * ``scale``."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: (scale * rng.standard_normal(s)).astype(np.float32),
      shapes,
      is_leaf=_is_shape,
  )


def count_params(tree: Params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def tree_nbytes(tree: Any) -> int:
  """Bytes of the array leaves of ``tree`` (the optimizer state)."""
  return sum(
      int(x.nbytes) for x in jax.tree.leaves(tree) if hasattr(x, "nbytes")
  )


# ---------------------------------------------------------------------------
# Optimizers and the step.


def optimizers() -> dict[str, optax.GradientTransformation]:
  """The baseline, sgd, then every strategy at every granularity."""
  out: dict[str, optax.GradientTransformation] = {
      BASELINE: optax.adam(1e-3),
      "optax.sgd": optax.sgd(1e-3),
  }
  for name, make in STRATEGIES.items():
    for granularity in nlr.GRANULARITIES:
      out[f"{name}[{granularity}]"] = make(1e-3, granularity=granularity)
  return out


def make_step(tx: optax.GradientTransformation) -> Step:
  """The jitted step, donating params and state."""

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1))


@dataclasses.dataclass
class Runner:
  """One optimizer's step, with the params and state it carries along."""

  step: Step
  params: Any
  state: Any
  grads: Any
  state_bytes: int

  def run(self, steps: int) -> float:
    """Runs ``steps`` steps; returns the mean seconds per step."""
    params, state = self.params, self.state
    start = time.perf_counter()
    for _ in range(steps):
      params, state = self.step(params, state, self.grads)
    jax.block_until_ready((params, state))
    elapsed = time.perf_counter() - start
    self.params, self.state = params, state
    return elapsed / steps


def make_runner(
    tx: optax.GradientTransformation,
    host_params: Params,
    grads: Any,
    device: jax.Device,
    warmup: int,
) -> Runner:
  """Fresh params on ``device``, the initial state, compiled and warmed up."""
  params = jax.device_put(host_params, device)
  state = jax.jit(tx.init)(params)
  runner = Runner(make_step(tx), params, state, grads, tree_nbytes(state))
  runner.run(max(warmup, 1))  # The first call compiles.
  return runner


# ---------------------------------------------------------------------------
# Measurement and report.


@dataclasses.dataclass
class Result:
  """Timings of one optimizer over all rounds."""

  name: str
  times: list[float]  # seconds per step, one per chunk
  ratios: list[float]  # per chunk: time / mean of the adjacent adam chunks
  state_bytes: int
  state_ratio: float

  @property
  def median_ms(self) -> float:
    return 1e3 * statistics.median(self.times)

  @property
  def best_ms(self) -> float:
    return 1e3 * min(self.times)

  @property
  def ratio(self) -> float:
    return statistics.median(self.ratios)


def round_order(names: list[str], r: int) -> list[str]:
  """``names`` rotated by ``r``, reversed on odd rounds."""
  k = r % len(names)
  order = names[k:] + names[:k]
  return order[::-1] if r % 2 else order


def measure(
    runners: dict[str, Runner], steps: int, repeats: int
) -> dict[str, tuple[list[float], list[float]]]:
  """Per optimizer: seconds per step of each chunk, and its ratio to adam.

  Each round runs adam, then every other optimizer followed by adam again
  (``A X1 A X2 A ... A``), in an order rotated from round to round. An
  optimizer's chunk is compared with the mean of the adam chunks just before
  and after it, so that slow phases of the machine cancel out of the ratio.
  For adam itself the "ratio" is that of each adam chunk to the one before,
  the noise floor of the ratios.
  """
  base = runners[BASELINE]
  others = [n for n in runners if n != BASELINE]
  out: dict[str, tuple[list[float], list[float]]] = {
      n: ([], []) for n in runners
  }
  for r in range(repeats):
    before = base.run(steps)
    out[BASELINE][0].append(before)
    for name in round_order(others, r):
      t = runners[name].run(steps)
      after = base.run(steps)
      out[name][0].append(t)
      out[name][1].append(t / (0.5 * (before + after)))
      out[BASELINE][0].append(after)
      out[BASELINE][1].append(after / before)
      before = after
  return out


def results(
    measured: dict[str, tuple[list[float], list[float]]],
    state_bytes: dict[str, int],
) -> list[Result]:
  base_b = state_bytes[BASELINE]
  return [
      Result(name, ts, ratios, state_bytes[name], state_bytes[name] / base_b)
      for name, (ts, ratios) in measured.items()
  ]


def table(rows: list[Result]) -> tuple[list[str], list[list[str]]]:
  header = [
      "optimizer", "ms/step (median)", "ms/step (best)", "x adam",
      "x adam min-max", "state bytes", "state x adam",
  ]
  body = []
  for r in rows:
    body.append([
        r.name,
        f"{r.median_ms:.2f}",
        f"{r.best_ms:.2f}",
        "1.00" if r.name == BASELINE else f"{r.ratio:.2f}",
        f"{min(r.ratios):.2f}-{max(r.ratios):.2f}",
        f"{r.state_bytes:,}",
        f"{r.state_ratio:.3g}",
    ])
  return header, body


def format_markdown(header: list[str], body: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |"]
  lines.append("|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|")
  lines += ["| " + " | ".join(row) + " |" for row in body]
  return "\n".join(lines)


def format_plain(header: list[str], body: list[list[str]]) -> str:
  rows = [header, *body]
  widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

  def fmt(row: list[str]) -> str:
    cells = [c.ljust(w) if i == 0 else c.rjust(w)
             for i, (c, w) in enumerate(zip(row, widths))]
    return "  ".join(cells)

  return "\n".join([fmt(header), fmt(["-" * w for w in widths]),
                    *map(fmt, body)])


def target_lines(rows: list[Result]) -> list[str]:
  """The issue's targets: element <= 1.3x adam, neuron faster than adam."""
  limits = {"element": 1.3, "neuron": 1.0}
  out = []
  for r in rows:
    for granularity, limit in limits.items():
      if r.name.endswith(f"[{granularity}]"):
        ok = r.ratio <= limit if granularity == "element" else r.ratio < limit
        sign = "<=" if granularity == "element" else "<"
        out.append(f"  {'met   ' if ok else 'MISSED'} {r.name}: {r.ratio:.2f}x "
                   f"adam (target {sign} {limit}x)")
  return out


# ---------------------------------------------------------------------------
# Main.


def pick_device(kind: str) -> jax.Device:
  """The first CPU or GPU device; exits with a message if there is no GPU."""
  if kind == "cpu":
    return jax.devices("cpu")[0]
  try:
    devices = jax.devices("gpu")
  except RuntimeError as e:
    devices, why = [], str(e)
  else:
    why = "no GPU devices"
  if not devices:
    sys.exit(
        f"--device gpu: JAX sees no GPU ({why}). Install a CUDA jaxlib "
        "(pip install 'jax[cuda12]') or use --device cpu."
    )
  return devices[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
  p.add_argument("--d-model", type=int, default=256)
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--vocab", type=int, default=2048)
  p.add_argument("--steps", type=int, default=40, help="steps per chunk")
  p.add_argument("--repeats", type=int, default=15, help="rounds")
  p.add_argument("--warmup", type=int, default=3, help="steps after compiling")
  p.add_argument("--only", default="", help="comma-separated substrings of "
                 "optimizer names to run (adam always runs)")
  p.add_argument("--markdown", action="store_true", help="Markdown table")
  p.add_argument("--muon", action="store_true", help="instead: nlr.muon against "
                 "optax.contrib.muon on a deep model, unscanned and scanned, compile "
                 "and step time (benchmarks/muon_step_time.py)")
  p.add_argument("--compile-repeats", type=int, default=3,
                 help="--muon: fresh compilations per optimizer")
  args = p.parse_args(argv)
  if args.muon:  # the deep model's defaults, unless given
    given = set(argv if argv is not None else sys.argv[1:])
    for flag, attr, value in (("--layers", "layers", 24), ("--d-model", "d_model", 128),
                              ("--vocab", "vocab", 1024), ("--steps", "steps", 10),
                              ("--repeats", "repeats", 7)):
      if not any(g == flag or g.startswith(flag + "=") for g in given):
        setattr(args, attr, value)
  return args


def selected(only: str) -> dict[str, optax.GradientTransformation]:
  wanted = [s for s in only.split(",") if s]
  return {
      k: v for k, v in optimizers().items()
      if k == BASELINE or not wanted or any(w in k for w in wanted)
  }


def describe(
    args: argparse.Namespace, device: jax.Device, params: Params
) -> str:
  n = count_params(params)
  return (
      f"device: {device.platform} ({device.device_kind}); "
      f"jax {jax.__version__}, optax {optax.__version__}\n"
      f"params: {n:,} ({4 * n / 2**20:.1f} MiB float32) in "
      f"{len(jax.tree.leaves(params))} leaves; d_model={args.d_model}, "
      f"layers={args.layers}, vocab={args.vocab}\n"
      f"timing: {args.repeats} rounds x {args.steps} steps per chunk"
  )


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  if args.muon:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import muon_step_time  # pylint: disable=g-import-not-at-top
    muon_step_time.main(args)
    return
  warnings.filterwarnings("ignore", message=".*donated buffers.*")
  device = pick_device(args.device)
  shapes = param_shapes(args.d_model, args.layers, args.vocab)
  host_params = random_tree(shapes, seed=0, scale=0.02)
  grads = jax.device_put(random_tree(shapes, seed=1, scale=1e-3), device)
  print(describe(args, device, host_params), flush=True)

  start = time.perf_counter()
  with jax.default_device(device):
    runners = {
        name: make_runner(tx, host_params, grads, device, args.warmup)
        for name, tx in selected(args.only).items()
    }
    compiled = time.perf_counter()
    measured = measure(runners, args.steps, args.repeats)
  rows = results(measured, {k: r.state_bytes for k, r in runners.items()})
  header, body = table(rows)
  fmt = format_markdown if args.markdown else format_plain
  print(fmt(header, body))
  print("\n".join(["targets:", *target_lines(rows)]))
  print(
      f"adam state: {runners[BASELINE].state_bytes / 2**20:.1f} MiB; "
      f"compile+warmup {compiled - start:.1f}s, "
      f"timing {time.perf_counter() - compiled:.1f}s"
  )


if __name__ == "__main__":
  main()
