"""Fine-tuning with different rates per part of a model: param groups, layer-wise decay.

Reference 002's case ("use different learning rates for different parts of a
model ... when fine-tuning a pre-trained model and you want to train new
layers faster than old layers"). A Flax NNX MLP (64 -> 128 -> 64 -> 64 -> 5,
ReLU) is pretrained on scikit-learn's digits of classes 0-4 (all of their
training split). It is then fine-tuned, with a new randomly initialised head,
on classes 5-9 from only ``PER_CLASS`` = 10 training images per class, and
scored on the held-out test images of 5-9. Every fine-tuning run is Adam on
the full 50-image batch for the same number of steps, and is repeated over
``SEEDS`` draws of the 50 images (and of the new head's initialisation); the
table gives mean +- standard deviation over them.

Compared (the pretrained backbone is ``hidden1``-``hidden3``):

* **from scratch**: the same network, freshly initialised, one rate;
* **global rate**: fine-tune everything at one rate;
* both at the best rate of ``SWEEP`` (four rates), picked on the mean
  validation accuracy (the remaining training images of 5-9, never the test set);
* **linear probe**: train the head only (``nlr.param_groups(optax.adam,
  [head], rest="freeze")``);
* **groups (ref. 002)**: ``nlr.param_groups`` with the reference's Adam rates,
  backbone 1e-4 and head 1e-3;
* **+ layer-wise decay**: the same, times ``nlr.scale_by_leaf(
  nlr.layerwise_multipliers(params, 0.5, reverse=True, layer_of=...))``: each
  backbone layer half as fast as the one above it;
* **+ frozen hidden1**: the same, with the first layer frozen (``rest="freeze"``);
* **groups, head at best global**: two groups again, the head at the best
  global rate of the sweep and the backbone ten times slower, to separate
  "slower backbone" from "lower rates overall".

The group rates and the factor 0.5 are fixed (the reference's values and a
round number), not searched; only the two single-rate methods get a sweep.

It prints the sweeps and a table (test accuracy, final train and test loss, the
effective rate of each layer, wall time of all seeds including JIT
compilation) and writes a PNG: the fine-tuning curves (train loss, test
accuracy) and a bar chart of the per-layer effective rates read back from the
optimizer states (``nlr.get_hyperparams`` times the ``scale_by_leaf``
multipliers). Whatever the numbers are, they are printed.

Run from the repository root::

    python examples/transfer_learning.py                 # under 40 s on 2 CPU cores
    python examples/transfer_learning.py --quick         # about 10 s: 1 seed, 2 methods
    python examples/transfer_learning.py --seeds 10 --out /tmp/transfer.png
"""

from __future__ import annotations

import argparse
import os
import sys
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

import optax_neuronlr as nlr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _cli  # examples/_cli.py: shared checks  # pylint: disable=g-import-not-at-top,wrong-import-position

matplotlib.use("Agg")  # no display needed; no figure exists yet

SEED = 0
SEEDS = 5
QUICK_SEEDS = 1
PER_CLASS = 10  # fine-tuning images per class of 5-9
HIDDEN = (128, 64, 64)
LAYERS = ("hidden1", "hidden2", "hidden3", "head")  # bottom to top
NUM_CLASSES = 5
PRETRAIN_EPOCHS = 40
PRETRAIN_BATCH = 64
PRETRAIN_LR = 1e-3
STEPS = 300  # fine-tuning steps, full batch
QUICK_STEPS = 30
EVAL_EVERY = 10
SWEEP = (3e-4, 1e-3, 3e-3, 1e-2)
QUICK_SWEEP = (1e-3,)
HEAD_LR = 1e-3  # reference 002: Adam, head 1e-3 ...
BACKBONE_LR = 1e-4  # ... backbone 1e-4
DECAY = 0.5  # layer-wise decay factor inside the backbone
QUICK_METHODS = ("global rate", "+ frozen hidden1")


@dataclasses.dataclass(frozen=True)
class Split:
  x: jax.Array
  y: jax.Array


@dataclasses.dataclass(frozen=True)
class Data:
  """Standardised digits; labels of 5-9 shifted to 0-4."""

  pretrain: Split  # classes 0-4, training split
  pretrain_test: Split  # classes 0-4, test split
  pool: Split  # classes 5-9, training split: fine-tuning subsets and validation
  test: Split  # classes 5-9, test split


@dataclasses.dataclass(frozen=True)
class Method:
  """One way to fine-tune; ``rate`` is set for the swept single-rate methods."""

  name: str
  pretrained: bool
  make_tx: Callable[[nnx.State], optax.GradientTransformation]
  rate: Optional[float] = None
  frozen: tuple[str, ...] = ()  # layers no group claims (rest="freeze")

  @property
  def label(self) -> str:
    return self.name + (f" lr={self.rate:g}" if self.rate is not None else "")


@dataclasses.dataclass(frozen=True)
class Result:
  """Over seeds: curves ``(seeds, evals)``, finals ``(seeds,)``."""

  method: Method
  eval_steps: np.ndarray
  train_loss: np.ndarray
  test_acc: np.ndarray
  val_acc: np.ndarray  # final, per seed
  test_loss: np.ndarray  # final, per seed
  layer_rates: dict[str, float]  # effective rate per layer, 0 = frozen
  seconds: float


# ----------------------------------------------------------------------------
# Data and model


def load_data() -> Data:
  x, y = load_digits(return_X_y=True)
  x_train, x_test, y_train, y_test = train_test_split(
      x, y, test_size=0.25, random_state=SEED, stratify=y
  )
  old_train, old_test = y_train < 5, y_test < 5
  scaler = StandardScaler().fit(x_train[old_train])  # the pretrained model's preprocessing

  def split(xs: np.ndarray, ys: np.ndarray, shift: int) -> Split:
    return Split(jnp.asarray(scaler.transform(xs), jnp.float32),
                 jnp.asarray(ys - shift, jnp.int32))

  return Data(
      pretrain=split(x_train[old_train], y_train[old_train], 0),
      pretrain_test=split(x_test[old_test], y_test[old_test], 0),
      pool=split(x_train[~old_train], y_train[~old_train], 5),
      test=split(x_test[~old_test], y_test[~old_test], 5),
  )


def fine_tune_split(pool: Split, seed: int) -> tuple[Split, Split]:
  """``PER_CLASS`` images per class to train on; the rest of the pool validates."""
  rng = np.random.default_rng(seed)
  labels = np.asarray(pool.y)
  chosen = np.concatenate([
      rng.choice(np.flatnonzero(labels == c), PER_CLASS, replace=False)
      for c in range(NUM_CLASSES)
  ])
  rest = np.setdiff1d(np.arange(len(labels)), chosen)
  take = lambda idx: Split(pool.x[idx], pool.y[idx])
  return take(chosen), take(rest)


class MLP(nnx.Module):
  """64 -> 128 -> 64 -> 64 -> 5, ReLU; ``head`` is replaced for fine-tuning."""

  def __init__(self, rngs: nnx.Rngs):
    self.hidden1 = nnx.Linear(64, HIDDEN[0], rngs=rngs)
    self.hidden2 = nnx.Linear(HIDDEN[0], HIDDEN[1], rngs=rngs)
    self.hidden3 = nnx.Linear(HIDDEN[1], HIDDEN[2], rngs=rngs)
    self.head = nnx.Linear(HIDDEN[2], NUM_CLASSES, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for layer in (self.hidden1, self.hidden2, self.hidden3):
      x = jax.nn.relu(layer(x))
    return self.head(x)


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@nnx.jit
def train_step(model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
  loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(x), y))(model)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def evaluate(model: MLP, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  logits = model(x)
  return cross_entropy(logits, y), jnp.mean(jnp.argmax(logits, -1) == y)


def pretrain(data: Data) -> tuple[MLP, float]:
  """Adam on classes 0-4; returns the model and its test accuracy on 0-4."""
  model = MLP(nnx.Rngs(SEED))
  optimizer = nnx.Optimizer(model, optax.adam(PRETRAIN_LR), wrt=nnx.Param)
  rng = np.random.default_rng(SEED)
  n = data.pretrain.y.shape[0]
  for _ in range(PRETRAIN_EPOCHS):
    order = rng.permutation(n)
    for first in range(0, n - PRETRAIN_BATCH + 1, PRETRAIN_BATCH):
      batch = order[first:first + PRETRAIN_BATCH]
      train_step(model, optimizer, data.pretrain.x[batch], data.pretrain.y[batch])
  return model, float(evaluate(model, data.pretrain_test.x, data.pretrain_test.y)[1])


def start_model(method: Method, pretrained: MLP, seed: int) -> MLP:
  """The pretrained network with a new head, or a fresh network."""
  rngs = nnx.Rngs(1000 + seed)
  if not method.pretrained:
    return MLP(rngs)
  model = nnx.clone(pretrained)
  model.head = nnx.Linear(HIDDEN[2], NUM_CLASSES, rngs=rngs)
  return model


# ----------------------------------------------------------------------------
# Methods


def layer_of(path: str) -> int:
  """Backbone layers 0, 1, 2 from the bottom; the head counts as the top layer."""
  return {"hidden1": 0, "hidden2": 1, "hidden3": 2, "head": 2}[path.split("/")[0]]


def groups_tx(params: nnx.State, head_lr: float, backbone_lr: float, decay: bool,
              freeze_first: bool) -> optax.GradientTransformation:
  """Adam param groups (head, backbone), optional layer-wise decay and frozen hidden1."""
  backbone = r"hidden[23]/.*" if freeze_first else r"hidden[123]/.*"
  tx = nlr.param_groups(optax.adam, [
      {"name": "head", "params": r"head/.*", "lr": head_lr},
      {"name": "backbone", "params": backbone, "lr": backbone_lr},
  ], rest="freeze" if freeze_first else "error")
  if not decay:
    return tx
  multipliers = nlr.layerwise_multipliers(params, DECAY, reverse=True, layer_of=layer_of)
  return optax.chain(tx, nlr.scale_by_leaf(multipliers))


def sweep_methods(quick: bool) -> list[Method]:
  """The single-rate methods, once per rate of the sweep."""
  sweep = QUICK_SWEEP if quick else SWEEP
  out = [Method("from scratch", False, lambda p, lr=lr: optax.adam(lr), lr) for lr in sweep]
  out += [Method("global rate", True, lambda p, lr=lr: optax.adam(lr), lr) for lr in sweep]
  return [m for m in out if m.name in QUICK_METHODS] if quick else out


def group_methods(best_global: float, quick: bool) -> list[Method]:
  """Rates per part: the reference's values, and the head at the best global rate."""
  h, b = HEAD_LR, BACKBONE_LR
  out = [
      Method("linear probe", True, lambda p: nlr.param_groups(
          optax.adam, [{"name": "head", "params": r"head/.*", "lr": h}], rest="freeze"),
             frozen=LAYERS[:-1]),
      Method("groups (ref. 002)", True, lambda p: groups_tx(p, h, b, False, False)),
      Method("+ layer-wise decay", True, lambda p: groups_tx(p, h, b, True, False)),
      Method("+ frozen hidden1", True, lambda p: groups_tx(p, h, b, True, True),
             frozen=("hidden1",)),
      Method("groups, head at best global", True,
             lambda p: groups_tx(p, best_global, best_global / 10, False, False)),
  ]
  return [m for m in out if m.name in QUICK_METHODS] if quick else out


def layer_rates(method: Method, opt_state: Any) -> dict[str, float]:
  """Per layer: the Adam rate it gets, read back from the optimizer state.

  The group's ``learning_rate`` (``nlr.get_hyperparams``) times the layer's
  ``scale_by_leaf`` multiplier; 0 for frozen layers. Single-rate methods: the rate.
  """
  if method.rate is not None:
    return {layer: method.rate for layer in LAYERS}
  groups = nlr.get_hyperparams(opt_state)
  is_leaf_state = lambda x: isinstance(x, nlr.ScaleByLeafState)
  leaf_states = [s for s in jax.tree.leaves(opt_state, is_leaf=is_leaf_state)
                 if is_leaf_state(s)]
  multipliers = leaf_states[0].multipliers if leaf_states else None
  out = {}
  for layer in LAYERS:
    if layer in method.frozen:
      out[layer] = 0.0
      continue
    group = "head" if layer == "head" else "backbone"
    scale = float(jnp.asarray(multipliers[layer]["kernel"][...])) if multipliers else 1.0
    out[layer] = float(groups[group]["learning_rate"]) * scale
  return out


# ----------------------------------------------------------------------------
# Training


def fine_tune(method: Method, pretrained: MLP, data: Data, seeds: int, steps: int,
              bar: tqdm) -> Result:
  """Trains ``method`` once per seed; time covers all seeds, compilation included."""
  start = time.perf_counter()
  tx = method.make_tx(nnx.state(pretrained, nnx.Param))  # one tx: compiled once
  losses, accs, val_accs, test_losses = [], [], [], []
  for seed in range(seeds):
    train, val = fine_tune_split(data.pool, seed)
    model = start_model(method, pretrained, seed)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    loss_curve, acc_curve = [], []
    for step in range(steps + 1):
      if step % EVAL_EVERY == 0:
        loss_curve.append(float(evaluate(model, train.x, train.y)[0]))
        acc_curve.append(float(evaluate(model, data.test.x, data.test.y)[1]))
      if step < steps:
        train_step(model, optimizer, train.x, train.y)
    losses.append(loss_curve)
    accs.append(acc_curve)
    val_accs.append(float(evaluate(model, val.x, val.y)[1]))
    test_losses.append(float(evaluate(model, data.test.x, data.test.y)[0]))
    bar.update()
  return Result(
      method=method,
      eval_steps=np.arange(0, steps + 1, EVAL_EVERY),
      train_loss=np.asarray(losses),
      test_acc=np.asarray(accs),
      val_acc=np.asarray(val_accs),
      test_loss=np.asarray(test_losses),
      layer_rates=layer_rates(method, optimizer.opt_state),
      seconds=time.perf_counter() - start,
  )


def best_of(results: Sequence[Result], name: str) -> Result:
  """The swept method's run with the highest mean validation accuracy."""
  return max((r for r in results if r.method.name == name), key=lambda r: r.val_acc.mean())


def reported(results: Sequence[Result]) -> list[Result]:
  """Each method once: the swept ones at their best rate."""
  names = list(dict.fromkeys(r.method.name for r in results))
  return [best_of(results, n) for n in names]


# ----------------------------------------------------------------------------
# Report


def fmt_rate(rate: float) -> str:
  return "frozen" if rate == 0 else f"{rate:.3g}"


def print_sweeps(results: Sequence[Result]) -> None:
  print("\nSweeps of the single-rate methods (mean validation accuracy over seeds; "
        "validation = the 5-9 training images not used for fine-tuning):")
  for name in ("from scratch", "global rate"):
    if not any(r.method.name == name for r in results):
      continue
    best = best_of(results, name)
    for r in (r for r in results if r.method.name == name):
      mark = "  <- best" if r is best else ""
      print(f"  {r.method.label:<30} val acc {r.val_acc.mean():.3f}{mark}")


def print_table(results: Sequence[Result], seeds: int, steps: int, pretrain_acc: float,
                data: Data) -> None:
  print(
      f"\nPretrained on classes 0-4 ({data.pretrain.y.shape[0]} images; its test accuracy "
      f"on 0-4: {pretrain_acc:.3f}).\nFine-tuned on classes 5-9 from {PER_CLASS} images per "
      f"class: Adam, full batch, {steps} steps; mean +- std over {seeds} seeds (the 50 "
      f"images and the new head).\ntest: the {data.test.y.shape[0]} held-out images of 5-9. "
      "train loss: cross-entropy on the 50 fine-tuning images after the last step.\n"
      "rates: the Adam rate of hidden1 / hidden2 / hidden3 / head. time: all seeds, "
      "INCLUDING JIT compilation."
  )
  header = (f"{'method':<30} {'test acc':>13} {'test loss':>9} {'train loss':>10}  "
            f"{'rates (hidden1 / hidden2 / hidden3 / head)':<44} {'time (s)':>8}")
  print(header)
  print("-" * len(header))
  for r in results:
    rates = " / ".join(fmt_rate(r.layer_rates[layer]) for layer in LAYERS)
    acc = f"{r.test_acc[:, -1].mean():.3f} +- {r.test_acc[:, -1].std():.3f}"
    print(f"{r.method.label:<30} {acc:>13} {r.test_loss.mean():>9.3f} "
          f"{r.train_loss[:, -1].mean():>10.4f}  {rates:<44} {r.seconds:>8.1f}")


# ----------------------------------------------------------------------------
# Figure


def plot(results: Sequence[Result], seeds: int, out: str) -> None:
  colors = dict(zip((r.method.name for r in results), plt.get_cmap("tab10").colors))
  fig, (ax_loss, ax_acc, ax_rates) = plt.subplots(1, 3, figsize=(19, 6.2),
                                                  layout="constrained")
  for r in results:
    style = {"color": colors[r.method.name], "lw": 2.0,
             "ls": ":" if not r.method.pretrained else "-"}
    ax_loss.plot(r.eval_steps, r.train_loss.mean(0), label=r.method.label, **style)
    mean, std = r.test_acc.mean(0), r.test_acc.std(0)
    ax_acc.plot(r.eval_steps, mean, label=r.method.label, **style)
    ax_acc.fill_between(r.eval_steps, mean - std, mean + std, color=style["color"],
                        alpha=0.12, lw=0)
  ax_loss.set_yscale("log")
  ax_loss.set_ylabel("cross-entropy on the 50 fine-tuning images (log scale)")
  ax_loss.set_title(f"Fine-tuning loss on classes 5-9 (mean over {seeds} seeds)")
  ax_acc.set_ylabel("accuracy on the held-out images of 5-9")
  ax_acc.set_title(f"Test accuracy (mean, band: +- 1 std over {seeds} seeds)")
  low = min(r.test_acc.mean(0)[len(r.eval_steps) // 10:].min() for r in results)
  ax_acc.set_ylim(max(0.0, low - 0.05), 1.0)
  for ax in (ax_loss, ax_acc):
    ax.set_xlabel("fine-tuning step (full batch)")
    ax.grid(True, which="both", alpha=0.3)
  ax_acc.legend(fontsize=8.5, loc="lower right", title="dotted: not pretrained",
                title_fontsize=8.5)
  plot_rates(ax_rates, results, colors)
  fig.suptitle(f"Transfer from digits 0-4 to 5-9 with {PER_CLASS} images per class: one "
               "global rate vs rates per part of the model (nlr.param_groups)",
               fontsize=13, fontweight="bold")
  fig.savefig(out, dpi=100)
  plt.close(fig)


def plot_rates(ax: plt.Axes, results: Sequence[Result], colors: dict[str, Any]) -> None:
  """Grouped bars: per layer, the Adam rate of each method; frozen layers marked."""
  rated = [r for r in results if r.method.pretrained]
  width = 0.8 / len(rated)
  floor = min(v for r in rated for v in r.layer_rates.values() if v > 0) / 4
  for i, r in enumerate(rated):
    xs = np.arange(len(LAYERS)) + (i - (len(rated) - 1) / 2) * width
    values = [r.layer_rates[layer] for layer in LAYERS]
    heights = [v if v > 0 else np.nan for v in values]
    ax.bar(xs, heights, width, color=colors[r.method.name], label=r.method.label)
    for x, v in zip(xs, values):
      if v == 0:
        ax.text(x, floor * 1.15, "frozen", rotation=90, ha="center", va="bottom",
                fontsize=8, color=colors[r.method.name], fontweight="bold")
  ax.set_yscale("log")
  top = max(v for r in rated for v in r.layer_rates.values())
  ax.set_ylim(floor, top * 30)  # room for the legend above the bars
  ax.set_xticks(np.arange(len(LAYERS)), [f"{l}\n({'new' if l == 'head' else 'pretrained'})"
                                         for l in LAYERS])
  ax.set_ylabel("Adam learning rate of the layer (log scale)")
  ax.set_title("Per-layer Adam rates, read from the optimizer states\n"
               "(group learning_rate x scale_by_leaf multiplier)")
  ax.grid(True, axis="y", which="both", alpha=0.3)
  ax.legend(fontsize=8.5, loc="upper center", ncol=2)


# ----------------------------------------------------------------------------


def positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
  return value


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=positive_int, default=None,
                      help=f"fine-tuning subsets per method (default {SEEDS}, "
                           f"{QUICK_SEEDS} with --quick)")
  parser.add_argument("--steps", type=positive_int, default=None,
                      help=f"fine-tuning steps (default {STEPS}, {QUICK_STEPS} with --quick)")
  parser.add_argument("--out", type=_cli.figure_path, default=_cli.default_figure("transfer_learning.png"),
                      help="where to write the figure (default: %(default)s)")
  parser.add_argument("--quick", action="store_true",
                      help=f"a short smoke run: {len(QUICK_METHODS)} methods, one rate, "
                           f"{QUICK_SEEDS} seed, {QUICK_STEPS} steps")
  return parser.parse_args()


def main() -> None:
  args = parse_args()
  seeds = args.seeds or (QUICK_SEEDS if args.quick else SEEDS)
  steps = args.steps or (QUICK_STEPS if args.quick else STEPS)
  data = load_data()
  pretrained, pretrain_acc = pretrain(data)
  sweeps = sweep_methods(args.quick)
  n_groups = len(group_methods(1.0, args.quick))
  results = []
  with tqdm(total=(len(sweeps) + n_groups) * seeds, unit="run") as bar:
    for method in sweeps:
      bar.set_description(method.label)
      results.append(fine_tune(method, pretrained, data, seeds, steps, bar))
    best_global = best_of(results, "global rate").method.rate
    for method in group_methods(best_global, args.quick):
      bar.set_description(method.label)
      results.append(fine_tune(method, pretrained, data, seeds, steps, bar))
  print_sweeps(results)
  shown = reported(results)
  print_table(shown, seeds, steps, pretrain_acc, data)
  plot(shown, seeds, args.out)
  print(f"\nfigure written to {args.out}")


if __name__ == "__main__":
  main()
