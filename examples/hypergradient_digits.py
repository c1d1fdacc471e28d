"""Hypergradient descent on digits: SGD-HD and Adam-HD from a poorly chosen rate.

Reproduces, on a small task, the qualitative claim of Baydin et al. (ICLR
2018, "Online Learning Rate Adaptation with Hypergradient Descent"): started
from the same initial rate ``a0``, SGD-HD and Adam-HD reach a lower training
loss than SGD and Adam, because they learn the rate online.

The task is the paper's logistic-regression experiment scaled down: the paper
trains multinomial logistic regression on MNIST; here it is trained on
scikit-learn's bundled digits (1797 8x8 images, no download; standardised,
fixed 75/25 train/test split), minibatches of 128, loss = mean cross-entropy
over the batch (as in the paper), zero initialisation. Every run sees the same
minibatches in the same order. ``--model mlp`` trains a 64-64-10 ReLU MLP
instead (seeded LeCun-normal initialisation, the same for every run).

Runs, all from the same poorly chosen rate (two decades below the usual
default, see ``A0_SGD`` and ``A0_ADAM``):

* ``optax.sgd(a0)`` vs ``nlr.sgd_hd(a0, beta)``, global and per-neuron rates;
* ``optax.adam(a0)`` vs ``nlr.adam_hd(a0, beta)``, global and per-neuron rates;
* the paper's ``beta`` for logistic regression (1e-3 for SGD-HD, 1e-7 for
  Adam-HD); ``--beta-scale F`` adds the HD runs again with ``F`` times that
  ``beta``, labelled as such (a sensitivity check, not in the default run);
* for reference, ``optax.sgd(0.1)`` and ``optax.adam(1e-3)``: well-chosen rates.

It prints a table (final full-train-set loss, its ratio to the plain optimizer
from the same ``a0``, test accuracy, final learned rate: the global rate, or
median [min, max] of the per-neuron rates, kernel units and bias units apart,
and wall time including JIT compilation) and writes a PNG: the full-train-set
loss after every iteration (left) and the learned rates over iterations
(right). Nothing is tuned; whatever the numbers are, they are printed.

At neuron granularity a unit's hypergradient ``<g, d_prev>`` is summed over the
unit's elements: over a kernel column's fan-in (64 inputs) but over a single
element for a bias. With the same ``beta``, the bias units' rates therefore
barely move, which is why kernel and bias units are reported apart.

Run from the repository root::

    python examples/hypergradient_digits.py                # ~10 s on 2 CPU cores
    python examples/hypergradient_digits.py --quick        # a few seconds: 4 runs, 10 epochs
    python examples/hypergradient_digits.py --quick --beta-scale 10  # 6 runs
    python examples/hypergradient_digits.py --model mlp --out /tmp/hd_mlp.png
    python examples/hypergradient_digits.py --beta-scale 100 --out /tmp/hd_beta.png
"""

from __future__ import annotations

import argparse
import sys
import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

import optax_neuronlr as nlr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _cli  # examples/_cli.py: shared checks  # pylint: disable=g-import-not-at-top,wrong-import-position

matplotlib.use("Agg")  # no display needed; no figure exists yet

SEED = 0
BATCH_SIZE = 128  # the paper's minibatch size
EPOCHS = 100  # 10 minibatches per epoch: 1000 iterations
QUICK_EPOCHS = 10
NUM_CLASSES = 10
HIDDEN = 64  # --model mlp only

# The poorly chosen initial rates, fixed before any run was made: two decades
# below the usual defaults (0.1 for plain SGD on standardised inputs, 1e-3 for
# Adam), i.e. "too low", the failure that rate adaptation is meant to repair.
# The same factor for both, so neither optimizer is favoured.
A0_SGD = 1e-3
A0_ADAM = 1e-5
# The paper's hypergradient steps for logistic regression on MNIST. They are
# used unchanged for the per-neuron runs, where they act as a smaller step (the
# per-unit hypergradient is a sum over fewer elements; see the module docstring).
BETA_SGD = 1e-3
BETA_ADAM = 1e-7
# Well-chosen rates, for reference only.
GOOD_SGD = 0.1
GOOD_ADAM = 1e-3

QUICK_RUNS = ("sgd", "sgd-hd", "adam", "adam-hd")


@dataclasses.dataclass(frozen=True)
class Data:
  """Standardised digits, split once; ``x`` float32, ``y`` int32 labels."""

  x_train: jax.Array
  y_train: jax.Array
  x_test: jax.Array
  y_test: jax.Array


@dataclasses.dataclass(frozen=True)
class Run:
  """One optimizer to train with; ``hyper_lr`` is None for the baselines."""

  name: str
  family: str  # "sgd" or "adam": picks the colour
  lr: float
  make_tx: Callable[[], optax.GradientTransformation]
  hyper_lr: Optional[float] = None
  granularity: Optional[str] = None

  @property
  def is_hd(self) -> bool:
    return self.hyper_lr is not None


@dataclasses.dataclass(frozen=True)
class Result:
  """What one training run produced; arrays are per iteration (0 = init)."""

  run: Run
  train_losses: np.ndarray  # full train-set loss, (steps + 1,)
  # (steps + 1, 2, 3): [kernel units, bias units] x [min, median, max] of the
  # rates applied at each iteration (row 0: a0); None for the baselines.
  rates: Optional[np.ndarray]
  test_accuracy: float
  seconds: float


# ----------------------------------------------------------------------------
# Data, model, runs


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


def init_params(model: str, in_features: int) -> dict[str, jax.Array]:
  """Flax-style ``(in, out)`` kernels, so a neuron is a kernel's last axis."""
  if model == "logreg":
    return {"w": jnp.zeros((in_features, NUM_CLASSES)), "b": jnp.zeros(NUM_CLASSES)}
  k1, k2 = jax.random.split(jax.random.key(SEED))
  lecun = jax.nn.initializers.lecun_normal()
  return {
      "w1": lecun(k1, (in_features, HIDDEN)), "b1": jnp.zeros(HIDDEN),
      "w2": lecun(k2, (HIDDEN, NUM_CLASSES)), "b2": jnp.zeros(NUM_CLASSES),
  }


def logits_fn(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
  if "w" in params:
    return x @ params["w"] + params["b"]
  h = jax.nn.relu(x @ params["w1"] + params["b1"])
  return h @ params["w2"] + params["b2"]


def cross_entropy(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean over the batch, as in the paper."""
  logits = logits_fn(params, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def accuracy(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(logits_fn(params, x), axis=-1) == y)


def runs(quick: bool, beta_scale: Optional[float]) -> list[Run]:
  """Baselines at ``a0``, the HD optimizers from ``a0``, the tuned references.

  With ``beta_scale``, every HD run again with ``beta * beta_scale``; with
  ``quick``, only the baselines and the global-rate HD runs (``QUICK_RUNS``),
  and their ``beta * beta_scale`` variants.
  """
  out = []
  for family, a0, beta, make_base, make_hd in (
      ("sgd", A0_SGD, BETA_SGD, optax.sgd, nlr.sgd_hd),
      ("adam", A0_ADAM, BETA_ADAM, optax.adam, nlr.adam_hd),
  ):
    out.append(Run(family, family, a0, lambda f=make_base, a=a0: f(a)))
    betas = [(beta, "")]
    if beta_scale is not None:
      betas.append((beta * beta_scale, f" (beta x{beta_scale:g})"))
    for b, suffix in betas:
      for granularity, tag in (("global", ""), ("neuron", " [neuron]")):
        out.append(Run(
            f"{family}-hd{tag}{suffix}", family, a0,
            lambda f=make_hd, a=a0, b=b, g=granularity: f(a, b, granularity=g),
            hyper_lr=b, granularity=granularity,
        ))
  out.append(Run("sgd (tuned)", "sgd", GOOD_SGD, lambda: optax.sgd(GOOD_SGD)))
  out.append(Run("adam (tuned)", "adam", GOOD_ADAM, lambda: optax.adam(GOOD_ADAM)))
  if not quick:
    return out
  return [r for r in out if r.name.split(" (beta x")[0] in QUICK_RUNS]


# ----------------------------------------------------------------------------
# Training


def epoch_batches(num_examples: int, epochs: int) -> np.ndarray:
  """Shuffled minibatch indices, ``(epochs * steps, BATCH_SIZE)``, same for all runs."""
  rng = np.random.default_rng(SEED)
  steps = num_examples // BATCH_SIZE
  orders = [rng.permutation(num_examples)[: steps * BATCH_SIZE] for _ in range(epochs)]
  return np.stack(orders).reshape(epochs * steps, BATCH_SIZE).astype(np.int32)


def rate_stats(opt_state: Any) -> jax.Array:
  """``(2, 3)``: min, median and max of the kernel units' rates, then the biases'.

  All six are equal for a global rate. Kernels are the leaves named ``w*``.
  """
  rates = nlr.learning_rates(opt_state)

  def stats(kind: str) -> jax.Array:
    r = jnp.concatenate([jnp.ravel(v) for k, v in rates.items() if k.startswith(kind)])
    return jnp.stack([r.min(), jnp.median(r), r.max()])

  return jnp.stack([stats("w"), stats("b")])


def make_trainer(tx: optax.GradientTransformation, track_rates: bool) -> Callable:
  """A jitted function training from ``params`` over all ``batches`` in one scan."""

  @jax.jit
  def train(params, x, y, batches):
    opt_state = tx.init(params)

    def step(carry, batch):
      params, opt_state = carry
      grads = jax.grad(cross_entropy)(params, x[batch], y[batch])
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      rates = rate_stats(opt_state) if track_rates else jnp.zeros((2, 3))
      return (params, opt_state), (cross_entropy(params, x, y), rates)

    (params, opt_state), (losses, rates) = jax.lax.scan(step, (params, opt_state), batches)
    return params, losses, rates

  return train


def warm_up(model: str, data: Data) -> None:
  """Compiles what all runs share (loss, accuracy) so no run is charged for it."""
  params = init_params(model, data.x_train.shape[1])
  jax.block_until_ready([cross_entropy(params, data.x_train, data.y_train),
                         accuracy(params, data.x_test, data.y_test)])


def train(run: Run, model: str, data: Data, batches: np.ndarray) -> Result:
  """Trains freshly initialised params with ``run``; time includes compilation."""
  start = time.perf_counter()
  params = init_params(model, data.x_train.shape[1])
  initial_loss = float(cross_entropy(params, data.x_train, data.y_train))
  trainer = make_trainer(run.make_tx(), run.is_hd)
  params, losses, rates = trainer(
      params, data.x_train, data.y_train, jnp.asarray(batches)
  )
  acc = float(accuracy(params, data.x_test, data.y_test))
  seconds = time.perf_counter() - start
  losses = np.concatenate([[initial_loss], np.asarray(losses)])
  if run.is_hd:
    rates = np.concatenate([np.full((1, 2, 3), run.lr), np.asarray(rates)])
  else:
    rates = None
  return Result(run, losses, rates, acc, seconds)


# ----------------------------------------------------------------------------
# Report


def fmt_rate(result: Result) -> str:
  if result.rates is None:
    return "-"
  (w_lo, w_med, w_hi), (b_lo, b_med, b_hi) = result.rates[-1]
  if result.run.granularity == "global":
    return f"{w_med:.3g}"
  return f"W {w_med:.2g} [{w_lo:.2g}, {w_hi:.2g}]  b {b_med:.2g} [{b_lo:.2g}, {b_hi:.2g}]"


def baseline_of(result: Result, results: Sequence[Result]) -> Optional[Result]:
  """The plain optimizer started from the same rate (None if not run)."""
  for r in results:
    if r.run.name == result.run.family:
      return r
  return None


def print_table(results: Sequence[Result], model: str, steps: int) -> None:
  print(
      f"\n{model} on digits, {steps} iterations (batch {BATCH_SIZE}), zero/seeded init, "
      "same batch order for every run.\n"
      "train loss: mean cross-entropy on the full train set after the last iteration; "
      "vs base: its ratio to the plain optimizer from the same a0 (< 1: HD is lower).\n"
      "final rate: the learned rate (global), or median [min, max] of the per-neuron "
      "rates, kernel units (W) and bias units (b) apart.\n"
      "time (s): wall time of the run, INCLUDING JIT compilation of its training scan."
  )
  header = (
      f"{'optimizer':<30} {'a0':>7} {'hyper_lr':>8} {'train loss':>10} {'vs base':>7} "
      f"{'test acc':>8} {'final rate':<56} {'time (s)':>8}"
  )
  print(header)
  print("-" * len(header))
  for r in results:
    base = baseline_of(r, results)
    ratio = (
        f"{r.train_losses[-1] / base.train_losses[-1]:.2f}"
        if r.run.is_hd and base is not None else "-"
    )
    beta = "-" if r.run.hyper_lr is None else f"{r.run.hyper_lr:.0e}"
    print(
        f"{r.run.name:<30} {r.run.lr:>7.0e} {beta:>8} {r.train_losses[-1]:>10.4f} "
        f"{ratio:>7} {r.test_accuracy:>8.3f} {fmt_rate(r):<56} {r.seconds:>8.1f}"
    )


def style(run: Run) -> dict[str, Any]:
  """Colour by optimizer family and beta; line style by granularity/role."""
  shades = {
      "sgd": {None: "#9e9e9e", "small": "#1f77b4", "large": "#17becf", "tuned": "black"},
      "adam": {None: "#e6a06b", "small": "#d62728", "large": "#e377c2", "tuned": "#8c564b"},
  }
  if "tuned" in run.name:
    key = "tuned"
  elif not run.is_hd:
    key = None
  else:
    key = "large" if "beta x" in run.name else "small"
  linestyle = {None: "-", "global": "-", "neuron": "--"}[run.granularity]
  if key == "tuned":
    linestyle = ":"
  return {"color": shades[run.family][key], "ls": linestyle, "lw": 2.0 if run.is_hd else 1.6}


def plot(results: Sequence[Result], model: str, out: str) -> None:
  """Loss of every run (left); learned rates, SGD-HD and Adam-HD (right)."""
  fig = plt.figure(figsize=(16, 8), layout="constrained")
  left, right = fig.subfigures(1, 2, width_ratios=(1.1, 1))
  plot_losses(left.subplots(), results, model)
  rate_axes = right.subplots(2, 1, sharex=True)
  for ax, family, a0, tuned in zip(
      rate_axes, ("sgd", "adam"), (A0_SGD, A0_ADAM), (GOOD_SGD, GOOD_ADAM)
  ):
    plot_rates(ax, [r for r in results if r.run.family == family], family, a0, tuned)
  rate_axes[-1].set_xlabel("iteration")
  right.suptitle(
      "Learned rates of the HD runs (log scale): global rate (solid); per-neuron runs:\n"
      "kernel units' median (dashed) with min-max band, bias units' median (dotted)"
  )
  fig.savefig(out, dpi=110)
  plt.close(fig)


def plot_losses(ax: plt.Axes, results: Sequence[Result], model: str) -> None:
  steps = len(results[0].train_losses) - 1
  for r in results:
    ax.plot(np.arange(steps + 1), r.train_losses, label=r.run.name, **style(r.run))
  ax.set_yscale("log")
  ax.set_xlabel("iteration")
  ax.set_ylabel("mean cross-entropy on the full train set (log scale)")
  name = {"logreg": "logistic regression", "mlp": f"MLP 64-{HIDDEN}-10"}[model]
  ax.set_title(
      f"Training loss: {name} on digits, batch {BATCH_SIZE}\n"
      f"grey/orange: SGD/Adam at the poor a0 ({A0_SGD:g}/{A0_ADAM:g}); "
      f"dotted: tuned SGD/Adam ({GOOD_SGD:g}/{GOOD_ADAM:g})"
  )
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=9, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.08))


def plot_rates(
    ax: plt.Axes, results: Sequence[Result], family: str, a0: float, tuned: float
) -> None:
  steps = len(results[0].train_losses) - 1
  it = np.arange(steps + 1)
  for r in results:
    if r.rates is None:
      continue
    kw = style(r.run)
    # The rates are clamped at min_lr=0; a log axis cannot show 0.
    rates = np.where(r.rates > 0, r.rates, np.nan)
    (w_lo, w_med, w_hi), b_med = rates[:, 0].T, rates[:, 1, 1]
    if r.run.granularity == "global":
      ax.plot(it, w_med, label=f"{r.run.name}: rate", **kw)
    else:
      ax.plot(it, w_med, label=f"{r.run.name}: kernel units, median", **kw)
      ax.fill_between(it, w_lo, w_hi, color=kw["color"], alpha=0.18, lw=0,
                      label=f"{r.run.name}: kernel units, min-max")
      ax.plot(it, b_med, color=kw["color"], ls=(0, (1, 1.2)), lw=2.2, zorder=3,
              label=f"{r.run.name}: bias units, median")
  ax.axhline(a0, color="silver", lw=3.0, zorder=1, label=f"a0 = {a0:g}")
  ax.axhline(tuned, color="black", lw=1.0, ls=":", label=f"tuned {family} rate = {tuned:g}")
  ax.set_yscale("log")
  ax.set_ylabel("learning rate")
  ax.set_title(f"{family.upper()}-HD from a0 = {a0:g}", loc="left", fontsize=10,
               fontweight="bold")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))


# ----------------------------------------------------------------------------


def positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
  return value


def positive_float(text: str) -> float:
  """A finite number > 0 (``inf`` and ``nan`` are rejected here, not by the
  library after the data are loaded)."""
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
  if not (math.isfinite(value) and value > 0):
    raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
  return value


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=("logreg", "mlp"), default="logreg",
                      help="multinomial logistic regression (the paper's experiment, "
                           "default) or a 64-64-10 ReLU MLP")
  parser.add_argument("--epochs", type=positive_int, default=None,
                      help=f"training epochs per run, {BATCH_SIZE}-example batches "
                           f"(default {EPOCHS}, {QUICK_EPOCHS} with --quick)")
  parser.add_argument("--out", type=_cli.figure_path, default=_cli.default_figure("hypergradient_digits.png"),
                      help="where to write the figure (default: %(default)s)")
  parser.add_argument("--beta-scale", type=positive_float, default=None,
                      metavar="F",
                      help="also run every HD optimizer with F times the paper's "
                           "hyper_lr, labelled '(beta xF)'")
  parser.add_argument("--quick", action="store_true",
                      help=f"a short run for tests: {len(QUICK_RUNS)} of the runs "
                           "(and their --beta-scale variants), "
                           f"{QUICK_EPOCHS} epochs")
  return parser.parse_args(argv)


def main() -> None:
  args = parse_args()
  epochs = args.epochs if args.epochs is not None else (
      QUICK_EPOCHS if args.quick else EPOCHS
  )
  data = load_data()
  batches = epoch_batches(data.x_train.shape[0], epochs)
  todo = runs(args.quick, args.beta_scale)
  start = time.perf_counter()
  warm_up(args.model, data)
  results = []
  with tqdm(total=len(todo), unit="run") as bar:
    for run in todo:
      bar.set_description(run.name)
      results.append(train(run, args.model, data, batches))
      bar.update()
  print_table(results, args.model, len(batches))
  plot(results, args.model, args.out)
  print(f"\nfigure written to {args.out}; total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
  main()
