"""Compare the optimizers of optax_neuronlr with SGD, Adam and AdamW.

Trains the same small Flax NNX MLP (64 -> 64 -> 64 -> 10, ReLU) on
scikit-learn's bundled digits data set (no download; standardised, fixed 75/25
train/test split) with every optimizer below. The initialisation, the minibatch
order, the number of epochs and the batch size are the same for every run:

* the recommended optimizers, as a user would first call them: ``nlr.normuon(0.02)``
  and ``nlr.muon(0.02)`` (the hidden matrix orthogonalised, AdamW on the
  input and output layers and the biases), ``nlr.adam_mini(1e-3)``, beside
  ``optax.adamw(1e-3)``;
* to port and study the reference document 000:
  ``optax.sgd(0.1)``, ``optax.sgd(0.01, momentum=0.9)`` (the same effective
  step, ``lr / (1 - momentum) = 0.1``), ``optax.adam(1e-3)``, and
  ``optax.sgd(1.0)``: what a rule whose units all sit at ``max_lr=1.0`` is;
* ``nlr.grad_magnitude_lr``, ``nlr.grad_history_lr`` and
  ``nlr.sign_consistency_lr`` with the reference defaults (``learning_rate=1e-3``,
  ``max_lr=1.0``), at element and at neuron granularity;
* ``grad_history_lr`` and ``sign_consistency_lr`` again with
  ``bias_correction=True`` and ``max_lr=0.1``, because with the reference
  defaults most units sit at ``max_lr=1.0``.

It prints a table (final train loss, test accuracy, wall time including JIT
compilation, and for the per-unit rules the fraction of units pinned at
``max_lr``) and writes a PNG (default ``results/compare_strategies.png``) with
the train-loss curves and a histogram of the final per-neuron rates of the
neuron-granularity runs. No setting is tuned for
any optimizer; whatever the numbers are, they are printed.

Run from the repository root::

    python examples/compare_strategies.py                 # under a minute on 2 CPU cores
    python examples/compare_strategies.py --quick         # ~15 s: 6 of the runs, 2 epochs
    python examples/compare_strategies.py --epochs 60 --out /tmp/figure.png
"""

from __future__ import annotations

import argparse
import os
import sys
import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Optional

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx
from matplotlib import ticker
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
HIDDEN = 64
EPOCHS = 40
QUICK_EPOCHS = 2
NUM_CLASSES = 10
# --quick compiles only these (compilation, ~1 s per optimizer, dominates it):
# two recommended optimizers, one baseline, every reference rule, both
# granularities, one bias-corrected variant.
QUICK_RUNS = (
    "normuon lr=0.02",
    "adam_mini lr=1e-3",
    "adam lr=1e-3",
    "grad_magnitude_lr [element]",
    "grad_history_lr [neuron]",
    "sign_consistency_lr +bc max0.1 [neuron]",
)


@dataclasses.dataclass(frozen=True)
class Data:
  """Standardised digits, split once; ``x`` float32, ``y`` int32 labels."""

  x_train: jax.Array
  y_train: jax.Array
  x_test: jax.Array
  y_test: jax.Array


@dataclasses.dataclass(frozen=True)
class Strategy:
  """One optimizer to compare; ``granularity`` is None for the baselines."""

  name: str
  granularity: Optional[str]
  make_tx: Callable[[], optax.GradientTransformation]
  max_lr: Optional[float] = None

  @property
  def label(self) -> str:
    return self.name + (f" [{self.granularity}]" if self.granularity else "")


@dataclasses.dataclass(frozen=True)
class Result:
  """What one training run produced."""

  strategy: Strategy
  train_losses: list[float]  # full train-set loss at init and after each epoch
  test_accuracy: float
  seconds: float
  frac_at_max_lr: Optional[float]  # None for the baselines
  final_rates: Optional[np.ndarray]  # all per-unit rates, flattened


class MLP(nnx.Module):
  """64 -> 64 -> 64 -> 10 multilayer perceptron with ReLU activations."""

  def __init__(self, in_features: int, rngs: nnx.Rngs):
    self.hidden1 = nnx.Linear(in_features, HIDDEN, rngs=rngs)
    self.hidden2 = nnx.Linear(HIDDEN, HIDDEN, rngs=rngs)
    self.out = nnx.Linear(HIDDEN, NUM_CLASSES, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.relu(self.hidden1(x))
    x = jax.nn.relu(self.hidden2(x))
    return self.out(x)


def load_data() -> Data:
  """Digits (1797 8x8 images), standardised on the train split."""
  x, y = load_digits(return_X_y=True)
  x_train, x_test, y_train, y_test = train_test_split(
      x, y, test_size=0.25, random_state=SEED, stratify=y
  )
  scaler = StandardScaler().fit(x_train)
  as_x = lambda a: jnp.asarray(scaler.transform(a), jnp.float32)
  as_y = lambda a: jnp.asarray(a, jnp.int32)
  return Data(as_x(x_train), as_y(y_train), as_x(x_test), as_y(y_test))


def strategies(quick: bool) -> list[Strategy]:
  """The baselines, then each per-unit rule at element and neuron granularity.

  The rules use the reference defaults (``max_lr=1.0`` spelled out, as it is
  drawn in the figure), then the bias-corrected variants with ``max_lr=0.1``.
  """
  runs = [
      # The recommended optimizers (the README's "Which optimizer should I use?").
      Strategy("normuon lr=0.02", None, lambda: nlr.normuon(0.02)),
      Strategy("muon lr=0.02", None, lambda: nlr.muon(0.02)),
      Strategy("adam_mini lr=1e-3", None, lambda: nlr.adam_mini(1e-3)),
      Strategy("adamw lr=1e-3", None, lambda: optax.adamw(1e-3)),
      # Port and study: the reference-000 rules against SGD and Adam.
      Strategy("sgd lr=0.1", None, lambda: optax.sgd(0.1)),
      # What a rule pinned at max_lr=1.0 everywhere reduces to:
      Strategy("sgd lr=1.0 (= max_lr)", None, lambda: optax.sgd(1.0)),
      Strategy("sgd+mom0.9 lr=0.01", None, lambda: optax.sgd(0.01, momentum=0.9)),
      Strategy("adam lr=1e-3", None, lambda: optax.adam(1e-3)),
  ]
  rules = [
      ("grad_magnitude_lr", nlr.grad_magnitude_lr, {"max_lr": 1.0}),
      ("grad_history_lr", nlr.grad_history_lr, {"max_lr": 1.0}),
      ("sign_consistency_lr", nlr.sign_consistency_lr, {"max_lr": 1.0}),
      ("grad_history_lr +bc max0.1", nlr.grad_history_lr,
       {"bias_correction": True, "max_lr": 0.1}),
      ("sign_consistency_lr +bc max0.1", nlr.sign_consistency_lr,
       {"bias_correction": True, "max_lr": 0.1}),
  ]
  for name, alias, kwargs in rules:
    for granularity in ("element", "neuron"):
      make_tx = functools.partial(alias, 1e-3, granularity=granularity, **kwargs)
      runs.append(Strategy(name, granularity, make_tx, kwargs["max_lr"]))
  return [s for s in runs if s.label in QUICK_RUNS] if quick else runs


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@nnx.jit
def train_step(
    model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array,
    batch: jax.Array,
) -> jax.Array:
  """One update on the rows ``batch`` of ``(x, y)``; returns the batch loss."""
  loss_fn = lambda model: cross_entropy(model(x[batch]), y[batch])
  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def evaluate(model: MLP, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean cross-entropy and accuracy on ``(x, y)``."""
  logits = model(x)
  return cross_entropy(logits, y), jnp.mean(jnp.argmax(logits, axis=-1) == y)


def epoch_batches(num_examples: int, epochs: int) -> np.ndarray:
  """Shuffled minibatch indices, ``(epochs, steps, BATCH_SIZE)``, same for all runs."""
  rng = np.random.default_rng(SEED)
  steps = num_examples // BATCH_SIZE
  orders = [rng.permutation(num_examples)[: steps * BATCH_SIZE] for _ in range(epochs)]
  return np.stack(orders).reshape(epochs, steps, BATCH_SIZE).astype(np.int32)


def warm_up(data: Data) -> None:
  """Compiles what all runs share (init, evaluation) so no run is charged for it."""
  model = MLP(data.x_train.shape[1], nnx.Rngs(SEED))
  jax.block_until_ready(
      [evaluate(model, data.x_train, data.y_train),
       evaluate(model, data.x_test, data.y_test)]
  )


def rate_statistics(opt_state: nnx.State) -> tuple[float, np.ndarray]:
  """Fraction of units at ``max_lr`` (mean over leaves) and all per-unit rates.

  ``opt_state`` is an ``nnx.Optimizer``'s, passed to the library as it is.
  """
  summary = nlr.rate_summary(opt_state)
  pinned = [float(v) for k, v in summary.items() if k.endswith("/frac_at_max_lr")]
  rates = jax.tree.leaves(nlr.learning_rates(opt_state))
  return float(np.mean(pinned)), np.concatenate([np.ravel(r) for r in rates])


def train(strategy: Strategy, data: Data, batches: np.ndarray, bar: tqdm) -> Result:
  """Trains a freshly initialised MLP with ``strategy``; advances ``bar`` per epoch."""
  start = time.perf_counter()
  model = MLP(data.x_train.shape[1], nnx.Rngs(SEED))
  optimizer = nnx.Optimizer(model, strategy.make_tx(), wrt=nnx.Param)
  losses = [float(evaluate(model, data.x_train, data.y_train)[0])]
  for epoch_batch in batches:
    for batch in epoch_batch:
      train_step(model, optimizer, data.x_train, data.y_train, batch)
    losses.append(float(evaluate(model, data.x_train, data.y_train)[0]))
    bar.update()
  accuracy = float(evaluate(model, data.x_test, data.y_test)[1])
  seconds = time.perf_counter() - start
  pinned, rates = (
      rate_statistics(optimizer.opt_state) if strategy.granularity else (None, None)
  )
  return Result(strategy, losses, accuracy, seconds, pinned, rates)


def print_table(results: Sequence[Result], epochs: int) -> None:
  print(
      f"\n{epochs} epochs, batch {BATCH_SIZE}, same init and batch order for all runs.\n"
      "time (s): wall time of the run, INCLUDING JIT compilation of its train step "
      "(the shared evaluation function is compiled once beforehand).\n"
      "at max_lr: fraction of units whose final rate is pinned at max_lr "
      "(nlr.rate_summary, mean over parameter leaves)."
  )
  header = (
      f"{'strategy':<32} {'granularity':<11} {'train loss':>10} "
      f"{'test acc':>8} {'time (s)':>8} {'at max_lr':>9}"
  )
  print(header)
  print("-" * len(header))
  for r in results:
    pinned = "-" if r.frac_at_max_lr is None else f"{r.frac_at_max_lr:.2f}"
    print(
        f"{r.strategy.name:<32} {r.strategy.granularity or '-':<11} "
        f"{r.train_losses[-1]:>10.4f} {r.test_accuracy:>8.3f} "
        f"{r.seconds:>8.1f} {pinned:>9}"
    )


def plot(results: Sequence[Result], epochs: int, out: str) -> None:
  """Loss curves of every run (left); per-neuron rate histograms (right)."""
  names = list(dict.fromkeys(r.strategy.name for r in results))
  colors = dict(zip(names, plt.get_cmap("tab20").colors))
  neuron_runs = [r for r in results if r.strategy.granularity == "neuron"]
  fig = plt.figure(figsize=(16, 8), layout="constrained")
  left, right = fig.subfigures(1, 2, width_ratios=(1.15, 1))
  plot_losses(left.subplots(), results, colors, epochs)
  rate_axes = right.subplots(len(neuron_runs), 1, sharex=True, squeeze=False)[:, 0]
  plot_rate_histograms(rate_axes, neuron_runs, colors)
  units = neuron_runs[0].final_rates.size
  right.suptitle(
      f"Final per-neuron rates of the neuron-granularity runs ({units} units each:\n"
      "one per output neuron of every kernel and bias); dotted line: max_lr"
  )
  fig.savefig(out, dpi=110)
  plt.close(fig)


def plot_losses(
    ax: plt.Axes, results: Sequence[Result], colors: dict[str, tuple], epochs: int
) -> None:
  for r in results:
    style = "--" if r.strategy.granularity == "neuron" else "-"
    ax.plot(r.train_losses, style, color=colors[r.strategy.name], lw=1.6,
            label=r.strategy.label)
  ax.set_yscale("log")
  ax.set_xlabel("epoch")
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.set_ylabel("train cross-entropy on the full train set (log scale)")
  ax.set_title(f"Train loss: digits MLP 64-64-64-10, {epochs} epochs, batch {BATCH_SIZE}")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=3,
            title="solid: baseline or element granularity; dashed: neuron granularity",
            title_fontsize=8)


def plot_rate_histograms(
    axes: Sequence[plt.Axes], runs: Sequence[Result], colors: dict[str, tuple]
) -> None:
  everything = np.concatenate([r.final_rates for r in runs])
  bins = np.geomspace(everything.min() / 1.3, everything.max() * 1.3, 40)
  for ax, r in zip(axes, runs):
    ax.hist(r.final_rates, bins=bins, color=colors[r.strategy.name])
    ax.axvline(r.strategy.max_lr, color="black", ls=":", lw=1.2)
    ax.set_title(f"{r.strategy.name}: {r.frac_at_max_lr:.0%} at max_lr", loc="left",
                 fontsize=9, color=colors[r.strategy.name], fontweight="bold")
    ax.set_ylabel("units", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)
  axes[0].set_xscale("log")
  axes[-1].set_xlabel("final learning rate of the unit (log scale)")


def positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
  return value


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=positive_int, default=None,
                      help=f"training epochs per run (default {EPOCHS}, "
                           f"{QUICK_EPOCHS} with --quick)")
  parser.add_argument("--out", type=_cli.figure_path, default=_cli.default_figure("compare_strategies.png"),
                      help="where to write the figure (default: %(default)s)")
  parser.add_argument("--quick", action="store_true",
                      help=f"a short run for tests: {len(QUICK_RUNS)} of the "
                           f"runs, {QUICK_EPOCHS} epochs")
  return parser.parse_args()


def main() -> None:
  args = parse_args()
  epochs = args.epochs if args.epochs is not None else (
      QUICK_EPOCHS if args.quick else EPOCHS
  )
  data = load_data()
  batches = epoch_batches(data.x_train.shape[0], epochs)
  runs = strategies(args.quick)
  warm_up(data)
  results = []
  with tqdm(total=len(runs) * epochs, unit="epoch") as bar:
    for strategy in runs:
      bar.set_description(strategy.label)
      results.append(train(strategy, data, batches, bar))
  print_table(results, epochs)
  plot(results, epochs, args.out)
  print(f"\nfigure written to {args.out}")


if __name__ == "__main__":
  main()
