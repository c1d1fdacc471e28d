"""Per-neuron rates in a Flax linen ``TrainState`` loop, logged with ``nlr.rate_summary``.

The shortest complete use of optax_neuronlr with ``flax.linen`` and
``flax.training.train_state.TrainState``: a 64 -> 64 -> 64 -> 10 ReLU MLP on
scikit-learn's digits (standardised, fixed 75/25 split, minibatches of 64)
trained with::

    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        nlr.sign_consistency_lr(1e-3, granularity="neuron", bias_correction=True,
                                max_lr=1.0),
    )
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

in a jitted step (``state.apply_gradients``) that also returns
``nlr.rate_summary(state.opt_state)`` (it is jittable) and the per-neuron
rates of every kernel (``nlr.learning_rates``). Every ``LOG_EVERY`` steps it
prints a row of a table: minibatch loss, test accuracy, and for each kernel
the median [min, max] of its per-neuron rates and the fraction of its neurons
pinned at ``max_lr``. It writes a small PNG of the per-neuron rates over
training and at the end. The settings are the reference's (``max_lr=1.0``)
with bias correction, not tuned; the table shows what the README warns about:
the rates rise as the gradients shrink until every neuron sits at ``max_lr``.

Run from the repository root::

    python examples/linen_train_state.py                 # a few seconds on 2 CPU cores
    python examples/linen_train_state.py --quick         # 60 steps
    python examples/linen_train_state.py --steps 2000 --out /tmp/linen.png
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax.training import train_state
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

import optax_neuronlr as nlr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _cli  # examples/_cli.py: shared checks  # pylint: disable=g-import-not-at-top,wrong-import-position

matplotlib.use("Agg")  # no display needed; no figure exists yet

SEED = 0
BATCH_SIZE = 64
STEPS = 600  # about 29 epochs of the 1347 training images
QUICK_STEPS = 60
LOG_EVERY = 50
QUICK_LOG_EVERY = 10
LEARNING_RATE = 1e-3
MAX_LR = 1.0  # the reference's default
CLIP_NORM = 1.0
KERNELS = ("Dense_0", "Dense_1", "Dense_2")


class MLP(nn.Module):
  """64 -> 64 -> 64 -> 10 with ReLU; linen names the layers Dense_0..Dense_2."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(nn.Dense(64)(x))
    x = nn.relu(nn.Dense(64)(x))
    return nn.Dense(10)(x)


def load_data() -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  x, y = load_digits(return_X_y=True)
  x_train, x_test, y_train, y_test = train_test_split(
      x, y, test_size=0.25, random_state=SEED, stratify=y
  )
  scaler = StandardScaler().fit(x_train)
  as_x = lambda a: jnp.asarray(scaler.transform(a), jnp.float32)
  return as_x(x_train), jnp.asarray(y_train), as_x(x_test), jnp.asarray(y_test)


def make_tx() -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(CLIP_NORM),
      nlr.sign_consistency_lr(LEARNING_RATE, granularity="neuron", bias_correction=True,
                              max_lr=MAX_LR),
  )


def kernel_rates(opt_state: Any) -> dict[str, jax.Array]:
  """Per-neuron rates of each kernel: ``(out,)`` for a ``(in, out)`` kernel."""
  rates = nlr.learning_rates(opt_state)
  return {name: rates[name]["kernel"] for name in KERNELS}


@jax.jit
def train_step(state: train_state.TrainState, x: jax.Array, y: jax.Array):
  def loss_fn(params):
    logits = state.apply_fn({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  state = state.apply_gradients(grads=grads)
  return state, loss, nlr.rate_summary(state.opt_state), kernel_rates(state.opt_state)


@jax.jit
def accuracy(state: train_state.TrainState, x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(state.apply_fn({"params": state.params}, x), -1) == y)


CELL = 30  # characters per kernel in the table


def table_header() -> str:
  first = f"{'':>5}  {'':>8}  {'':>8}  " + " ".join(
      f"{name + '/kernel':^{CELL}}" for name in KERNELS)
  second = f"{'step':>5}  {'loss':>8}  {'test acc':>8}  " + " ".join(
      f"{'median [min, max]':<23}{'at max':>7}" for _ in KERNELS)
  return first + "\n" + second


def log_row(step: int, loss: float, acc: float, summary: dict[str, jax.Array]) -> str:
  cells = []
  for name in KERNELS:
    stat = lambda s: float(summary[f"{name}/kernel/{s}"])
    rates = f"{stat('median'):.3g} [{stat('min'):.2g}, {stat('max'):.2g}]"
    cells.append(f"{rates:<23}{stat('frac_at_max_lr'):>7.2f}")
  return f"{step:>5}  {loss:>8.4f}  {acc:>8.3f}  " + " ".join(cells)


def plot(history: dict[str, np.ndarray], out: str) -> None:
  """Each kernel's median and min-max band over steps (left); snapshots, sorted (right)."""
  fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained",
                                   width_ratios=(1.4, 1))
  colors = dict(zip(KERNELS, plt.get_cmap("tab10").colors))
  for name in KERNELS:
    rates = history[name]  # (steps, units)
    steps = np.arange(1, len(rates) + 1)
    ax_t.plot(steps, np.median(rates, 1), color=colors[name], lw=2,
              label=f"{name}/kernel ({rates.shape[1]} neurons): median")
    ax_t.fill_between(steps, rates.min(1), rates.max(1), color=colors[name], alpha=0.15,
                      lw=0)
  everything = np.concatenate([history[name] for name in KERNELS], axis=1)  # (steps, all)
  total = len(everything)
  snapshots = sorted({1, *(s for s in (10, 50, 100, 150, 200, 300) if s < total), total})
  shades = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(snapshots)))
  for step, shade in zip(snapshots, shades):
    final = np.sort(everything[step - 1])[::-1]
    ax_s.plot(np.arange(1, len(final) + 1), final, color=shade, lw=1.8,
              label=f"step {step}: {np.mean(final >= MAX_LR):.0%} at max_lr")
  for ax in (ax_t, ax_s):
    ax.axhline(MAX_LR, color="black", ls=":", lw=1.2)
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
  ax_t.set_xscale("log")
  ax_t.set_xlabel("training step (log scale)")
  ax_t.set_ylabel("per-neuron learning rate (log scale)")
  ax_t.set_title("Per-neuron rates over training (band: min-max over the layer's "
                 f"neurons; dotted: max_lr = {MAX_LR:g})", fontsize=10)
  ax_t.legend(fontsize=8, loc="lower right")
  ax_s.set_xlabel(f"neuron rank ({everything.shape[1]} neurons of the three kernels, "
                  "sorted by rate)")
  ax_s.set_title("All per-neuron rates at a few steps, sorted", fontsize=10)
  ax_s.legend(fontsize=8, loc="lower left")
  fig.suptitle(
      f"linen MLP on digits, TrainState + clip_by_global_norm({CLIP_NORM:g}) + "
      f"sign_consistency_lr({LEARNING_RATE:g}, neuron, bias_correction, max_lr={MAX_LR:g})",
      fontsize=11, fontweight="bold",
  )
  fig.savefig(out, dpi=100)
  plt.close(fig)


def positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
  return value


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=positive_int, default=None,
                      help=f"training steps (default {STEPS}, {QUICK_STEPS} with --quick)")
  parser.add_argument("--out", type=_cli.figure_path, default=_cli.default_figure("linen_train_state.png"),
                      help="where to write the figure (default: %(default)s)")
  parser.add_argument("--quick", action="store_true",
                      help=f"a short smoke run: {QUICK_STEPS} steps")
  return parser.parse_args()


def main() -> None:
  args = parse_args()
  steps = args.steps or (QUICK_STEPS if args.quick else STEPS)
  log_every = QUICK_LOG_EVERY if args.quick else LOG_EVERY
  x_train, y_train, x_test, y_test = load_data()
  model = MLP()
  params = model.init(jax.random.key(SEED), x_train[:1])["params"]
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=make_tx())

  rng = np.random.default_rng(SEED)
  per_epoch = x_train.shape[0] // BATCH_SIZE
  order = np.concatenate([rng.permutation(x_train.shape[0])[: per_epoch * BATCH_SIZE]
                          for _ in range(-(-steps // per_epoch))]).reshape(-1, BATCH_SIZE)

  header = table_header()
  rows = []
  history: dict[str, list[np.ndarray]] = {name: [] for name in KERNELS}
  start = time.perf_counter()
  for step in tqdm(range(1, steps + 1), unit="step"):
    batch = order[step - 1]
    state, loss, summary, rates = train_step(state, x_train[batch], y_train[batch])
    for name in KERNELS:
      history[name].append(np.asarray(rates[name]))
    if step % log_every == 0 or step in (1, steps):
      rows.append(log_row(step, float(loss), float(accuracy(state, x_test, y_test)), summary))
  seconds = time.perf_counter() - start

  print(f"\nflax.linen MLP 64-64-64-10 on digits, TrainState, batch {BATCH_SIZE}, {steps} "
        f"steps, {seconds:.1f} s including JIT compilation.\nloss: the step's minibatch "
        "cross-entropy; test acc: on the 450 held-out images; per kernel, from "
        "nlr.rate_summary(state.opt_state): median [min, max] of the per-neuron rates and "
        "the fraction at max_lr.")
  print(header)
  print("-" * len(header.splitlines()[-1]))
  print("\n".join(rows))
  plot({name: np.stack(v) for name, v in history.items()}, args.out)
  print(f"\nfigure written to {args.out}")


if __name__ == "__main__":
  main()
