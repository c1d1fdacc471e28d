"""A model gains a head during training: keep the optimizer's statistics, or start afresh?

Reference 002's fine-tuning case ("train new layers faster than old layers")
with reference 003's ``optimizer.add_param_group``. A Flax NNX MLP (a
``backbone`` of three ReLU layers, 64 -> 128 -> 64 -> 64, and a ``head`` for
digits 0-4) trains with Adam on scikit-learn's digits 0-4 for ``STEPS_BEFORE``
steps, its two parts as two groups of ``nlr.param_groups``. Then the model
gains a second head for digits 5-9 (its own group, ten times the rate) and
trains on all ten classes (logits: both heads concatenated) for
``STEPS_AFTER`` more steps. Two ways to follow the change, from the same model,
the same new head and the same minibatches:

* **rebuild (kept)**: ``nlr.rebuild_nnx_optimizer(optimizer, model,
  optimizer.tx.with_group({"params": "head2", "lr": ...}))``: the ``backbone``
  and ``head`` groups keep every Adam moment and count, the new group starts
  fresh (step 0);
* **fresh optimizer**: what optax users do today, a new
  ``nnx.Optimizer(model, new_tx, wrt=nnx.Param)``: every moment and count of
  every group restarts (Adam's first steps are then ``lr * sign(g)``-sized).

The PyTorch equivalent of the first::

    model.head2 = nn.Linear(64, 5)
    optimizer.add_param_group({"params": model.head2.parameters(), "lr": 1e-2})

and its NNX form here (``head2`` is declared data in ``__init__``:
``self.head2 = nnx.data(None)``)::

    model.head2 = nnx.Linear(64, 5, rngs=nnx.Rngs(...))
    nlr.rebuild_nnx_optimizer(optimizer, model, optimizer.tx.with_group(
        {"params": "head2", "lr": 1e-2, "name": "head2"}))

The jitted training step (``nnx.jit``) retraces once after the change, in both
methods: the model has a new sub-module and the optimizer a new
transformation; the table's last column times that first step (tracing and
compilation included).

Measured, over ``SEEDS`` seeds (initialisation, new head, batch order), mean
+- std: the minibatch train loss of the ten steps after the change (updates 1
to 10 of the new phase), the test loss 50 steps after it, the final train
loss (mean of the last ten steps), and the final loss and accuracy on the
held-out test images of all ten digits (and the accuracy on 0-4 and on 5-9
apart); then the differences paired by seed. It also checks that the statistics of
the old groups are kept bit for bit across the rebuild (every leaf of
``nnx.as_pure(optimizer.opt_state).inner_states[g]`` for ``g`` in
``backbone``, ``head``) and prints ``nlr.optimizer_layout`` after the change.
Whichever method the numbers favour, and by how much, they are printed as they
come; nothing here claims that keeping the statistics trains better. The
figure (``--out``) shows the train loss around the change and the test loss
after it.

One full run (5 seeds, 2 CPU cores, 39 s) gave, rebuild minus fresh, paired
by seed: train loss over the 10 steps after the change -0.074 +- 0.029 (lower
in 5/5 seeds), test loss 50 steps after -0.060 +- 0.014 (5/5); but final test
loss +0.030 +- 0.035 (lower in 1/5) and final test accuracy 0.971 vs 0.969
(+0.001 +- 0.005): keeping the statistics recovered faster from the change
here, and ended no better.

Data, preprocessing, the jitted train/eval steps and argument checks come from
``examples/transfer_learning.py``.

Run from the repository root::

    python examples/add_param_group.py                 # about 40 s on 2 CPU cores
    python examples/add_param_group.py --quick         # about 10 s: 1 seed, 60 + 60 steps
    python examples/add_param_group.py --seeds 10 --out /tmp/add_param_group.png
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import optax_neuronlr as nlr

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _cli  # pylint: disable=g-import-not-at-top,wrong-import-position
import transfer_learning as tl  # pylint: disable=g-import-not-at-top,wrong-import-position

SEEDS = 5
STEPS_BEFORE = 300  # digits 0-4
STEPS_AFTER = 300  # all ten digits, with the second head
QUICK = dict(seeds=1, before=60, after=60)
BATCH = 64
LR = 1e-3  # backbone and head
HEAD2_LR = 1e-2  # the new head: ten times faster (reference 002)
AFTER_WINDOW = 10  # steps after the change that the "right after" column averages
MID_STEP = 50  # steps after the change of the intermediate test loss column
EVAL_EVERY = 10
METHODS = ("rebuild (kept)", "fresh optimizer")
OLD_GROUPS = ("backbone", "head")
HEAD2_GROUP = {"params": "head2", "lr": HEAD2_LR, "name": "head2"}


class Backbone(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    sizes = (64, *tl.HIDDEN)
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes, sizes[1:])])

  def __call__(self, x: jax.Array) -> jax.Array:
    for layer in self.layers:
      x = jax.nn.relu(layer(x))
    return x


class Net(nnx.Module):
  """Backbone, head for digits 0-4, and (once added) head2 for digits 5-9."""

  def __init__(self, rngs: nnx.Rngs):
    self.backbone = Backbone(rngs)
    self.head = nnx.Linear(tl.HIDDEN[-1], 5, rngs=rngs)
    self.head2 = nnx.data(None)  # a sub-module may be assigned here later

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.backbone(x)
    if self.head2 is None:
      return self.head(h)
    return jnp.concatenate([self.head(h), self.head2(h)], axis=-1)


@dataclasses.dataclass(frozen=True)
class Data:
  old: tl.Split  # digits 0-4, training split
  all: tl.Split  # all ten digits, training split
  test: tl.Split  # all ten digits, test split
  test_old_n: int  # the first test_old_n test images are digits 0-4


def load_data() -> Data:
  d = tl.load_data()  # 0-4 and 5-9 apart, 5-9 relabelled 0-4; scaled as 0-4
  join = lambda a, b: tl.Split(jnp.concatenate([a.x, b.x]), jnp.concatenate([a.y, b.y + 5]))
  return Data(d.pretrain, join(d.pretrain, d.pool), join(d.pretrain_test, d.test),
              d.pretrain_test.y.shape[0])


def batches(split: tl.Split, steps: int, rng: np.random.Generator):
  """``steps`` minibatches of ``BATCH``, reshuffled every epoch."""
  n, order = split.y.shape[0], np.empty(0, int)
  for _ in range(steps):
    if order.size < BATCH:
      order = np.concatenate([order, rng.permutation(n)])
    idx, order = order[:BATCH], order[BATCH:]
    yield split.x[idx], split.y[idx]


def pure_leaves(optimizer: nnx.Optimizer, group: str) -> dict[str, np.ndarray]:
  state = nnx.as_pure(optimizer.opt_state).inner_states[group]
  return {jax.tree_util.keystr(p): np.array(v)
          for p, v in jax.tree_util.tree_flatten_with_path(state)[0]}


def same_bits(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
  return a.keys() == b.keys() and all(
      a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
      and a[k].tobytes() == b[k].tobytes() for k in a)


def adam_counts(optimizer: nnx.Optimizer) -> dict[str, int]:
  """Each group's Adam step count (its ``ScaleByAdamState.count``)."""
  inner = nnx.as_pure(optimizer.opt_state).inner_states
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  return {g: int(next(s for s in jax.tree.leaves(st, is_leaf=is_adam) if is_adam(s)).count)
          for g, st in inner.items()}


@dataclasses.dataclass
class Run:
  """One method, one seed: per-step train losses (both phases) and test curves."""

  train_loss: list[float] = dataclasses.field(default_factory=list)
  test_loss: list[float] = dataclasses.field(default_factory=list)
  first_step_s: float = 0.0
  test_acc: float = 0.0
  acc_old: float = 0.0
  acc_new: float = 0.0


def make_tx() -> nlr.ParamGroups:
  """The groups before the change (built once: the training step compiles once)."""
  return nlr.param_groups(optax.adam, [
      {"params": "backbone", "lr": LR, "name": "backbone"},
      {"params": "head", "lr": LR, "name": "head"},
  ])


def run_seed(seed: int, tx: nlr.ParamGroups, data: Data, before: int, after: int,
             show_layout: bool):
  """Both methods from one phase 1; returns their runs and the kept-statistics check."""
  model = Net(nnx.Rngs(seed))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  rng = np.random.default_rng(seed)
  shared = [float(tl.train_step(model, optimizer, x, y))
            for x, y in batches(data.old, before, rng)]
  after_batches = list(batches(data.all, after, rng))  # the same ones for both methods

  # The change: the model gains head2 (same initialisation in both methods).
  model_fresh = nnx.clone(model)
  old_stats = {g: pure_leaves(optimizer, g) for g in OLD_GROUPS}
  model.head2 = nnx.Linear(tl.HIDDEN[-1], 5, rngs=nnx.Rngs(10_000 + seed))
  model_fresh.head2 = nnx.Linear(tl.HIDDEN[-1], 5, rngs=nnx.Rngs(10_000 + seed))
  nlr.rebuild_nnx_optimizer(optimizer, model, optimizer.tx.with_group(HEAD2_GROUP))
  fresh = nnx.Optimizer(model_fresh, tx.with_group(HEAD2_GROUP), wrt=nnx.Param)
  check = {
      "kept": all(same_bits(old_stats[g], pure_leaves(optimizer, g)) for g in OLD_GROUPS),
      "leaves": sum(len(v) for v in old_stats.values()),
      "counts kept": adam_counts(optimizer),
      "counts fresh": adam_counts(fresh),
  }
  if show_layout:
    print(f"\nnlr.optimizer_layout after the change (seed {seed}, rebuild):")
    print(nlr.optimizer_layout(optimizer.opt_state, nnx.state(model, nnx.Param)))

  runs = {}
  for name, m, opt in ((METHODS[0], model, optimizer), (METHODS[1], model_fresh, fresh)):
    run = Run(train_loss=list(shared))
    for step, (x, y) in enumerate(after_batches):
      if step % EVAL_EVERY == 0:
        run.test_loss.append(float(tl.evaluate(m, data.test.x, data.test.y)[0]))
      start = time.perf_counter()
      run.train_loss.append(float(tl.train_step(m, opt, x, y)))
      if step == 0:
        run.first_step_s = time.perf_counter() - start
    loss, acc = tl.evaluate(m, data.test.x, data.test.y)
    run.test_loss.append(float(loss))
    run.test_acc = float(acc)
    correct = np.asarray(jnp.argmax(m(data.test.x), -1) == data.test.y)
    run.acc_old, run.acc_new = correct[:data.test_old_n].mean(), correct[data.test_old_n:].mean()
    runs[name] = run
  return runs, check


def pm(values) -> str:
  values = np.asarray(values, float)
  return f"{values.mean():.3f} +- {values.std():.3f}"


def report(runs: dict[str, list[Run]], checks: list[dict], before: int, after: int,
           data: Data) -> None:
  seeds = len(checks)
  kept = all(c["kept"] for c in checks)
  print(f"\nKept statistics across the change: backbone and head groups, "
        f"{checks[0]['leaves']} leaves (Adam mu, nu, counts, injected "
        f"hyperparameters), {seeds} seed(s): "
        + ("identical bit for bit: PASS" if kept else "DIFFER: FAIL"))
  print(f"Adam step counts right after the change: rebuild {checks[0]['counts kept']}; "
        f"fresh optimizer {checks[0]['counts fresh']}")
  at_change = np.mean([r.train_loss[before] for r in runs[METHODS[0]]])
  print(f"\nAdam, batch {BATCH}: {before} steps on digits 0-4 ({data.old.y.shape[0]} "
        f"images; backbone and head at lr {LR:g}), then {after} steps on all ten "
        f"({data.all.y.shape[0]} images) with head2 at lr {HEAD2_LR:g}; "
        f"mean +- std over {seeds} seed(s).\nTrain loss at the change (before any "
        f"update, the same for both): {at_change:.3f}. 'after 1-{AFTER_WINDOW}': mean "
        f"minibatch loss after updates 1-{AFTER_WINDOW} of the new phase; 'final "
        f"train': mean of the last {AFTER_WINDOW} steps; test: the "
        f"{data.test.y.shape[0]} held-out images of all ten digits.\n'1st step (s)': "
        "the first training step after the change (retrace + compilation included).")
  mid = min(MID_STEP, after) // EVAL_EVERY
  header = (f"{'method':<17} {'after 1-' + str(AFTER_WINDOW):>15} "
            f"{'test loss @' + str(mid * EVAL_EVERY):>15} {'final train':>15} "
            f"{'test loss':>15} {'test acc':>15} {'acc 0-4 / 5-9':>13} {'1st step (s)':>12}")
  print(header)
  print("-" * len(header))
  scores = {}
  for name in METHODS:
    rs = runs[name]
    scores[name] = {
        "after": [np.mean(r.train_loss[before + 1:before + 1 + AFTER_WINDOW]) for r in rs],
        "mid": [r.test_loss[mid] for r in rs],
        "final train": [np.mean(r.train_loss[-AFTER_WINDOW:]) for r in rs],
        "test loss": [r.test_loss[-1] for r in rs],
        "test acc": [r.test_acc for r in rs],
    }
    split = f"{np.mean([r.acc_old for r in rs]):.3f} / {np.mean([r.acc_new for r in rs]):.3f}"
    print(f"{name:<17} " + " ".join(f"{pm(v):>15}" for v in scores[name].values())
          + f" {split:>13} {np.mean([r.first_step_s for r in rs]):>12.2f}")
  print("\nPaired by seed, rebuild - fresh (mean +- std; seeds where rebuild is better):")
  for key, label, sign in (("after", f"train loss after 1-{AFTER_WINDOW}", -1),
                           ("mid", f"test loss @{mid * EVAL_EVERY}", -1),
                           ("test loss", "final test loss", -1),
                           ("test acc", "final test acc", 1)):
    diff = np.subtract(scores[METHODS[0]][key], scores[METHODS[1]][key])
    print(f"  {label:<24} {diff.mean():+.3f} +- {diff.std():.3f}   "
          f"(better in {int((sign * diff > 0).sum())}/{seeds})")


def plot(runs: dict[str, list[Run]], before: int, after: int, out: str) -> None:
  fig, (ax_train, ax_test) = plt.subplots(1, 2, figsize=(14, 5.2), layout="constrained")
  lo, hi = max(0, before - 50), min(before + after, before + 150)
  steps = np.arange(lo, hi)
  for (name, rs), color in zip(runs.items(), ("tab:blue", "tab:orange")):
    curves = np.asarray([r.train_loss[lo:hi] for r in rs])
    ax_train.plot(steps, curves.mean(0), color=color, lw=1.6, label=name)
    if len(rs) > 1:
      ax_train.fill_between(steps, curves.min(0), curves.max(0), color=color, alpha=0.15, lw=0)
    test = np.asarray([r.test_loss for r in rs])
    test_steps = np.minimum(np.arange(test.shape[1]) * EVAL_EVERY, after)
    ax_test.plot(test_steps, test.mean(0), color=color, lw=2, marker=".", label=name)
  ax_train.axvline(before, color="k", ls="--", lw=1)
  ax_train.text(before, ax_train.get_ylim()[1], " head2 added", va="top", fontsize=9)
  ax_train.set(xlabel="training step", yscale="log",
               ylabel=f"minibatch cross-entropy (batch {BATCH}, log scale)",
               title="Train loss around the change (mean over seeds, band: min-max)")
  ax_test.set(xlabel="steps after the change", yscale="log",
              ylabel="cross-entropy on the held-out images of all ten digits",
              title="Test loss after the change (mean over seeds)")
  for ax in (ax_train, ax_test):
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
  fig.suptitle("A second head joins training: nlr.rebuild_nnx_optimizer (statistics kept) "
               "vs a fresh nnx.Optimizer", fontweight="bold")
  fig.savefig(out, dpi=100)
  plt.close(fig)


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=tl.positive_int, default=None,
                      help=f"seeds (default {SEEDS}, {QUICK['seeds']} with --quick)")
  parser.add_argument("--out", type=_cli.figure_path, default=_cli.default_figure("add_param_group.png"),
                      help="where to write the figure (default: %(default)s)")
  parser.add_argument("--quick", action="store_true",
                      help=f"a short smoke run: {QUICK['before']} + {QUICK['after']} steps")
  return parser.parse_args()


def main() -> None:
  args = parse_args()
  start = time.perf_counter()
  seeds = args.seeds or (QUICK["seeds"] if args.quick else SEEDS)
  before, after = (QUICK["before"], QUICK["after"]) if args.quick else (STEPS_BEFORE, STEPS_AFTER)
  data = load_data()
  runs = {name: [] for name in METHODS}
  checks, tx = [], make_tx()
  for seed in range(seeds):
    seed_runs, check = run_seed(seed, tx, data, before, after, show_layout=seed == 0)
    for name in METHODS:
      runs[name].append(seed_runs[name])
    checks.append(check)
  report(runs, checks, before, after, data)
  plot(runs, before, after, args.out)
  print(f"\nfigure written to {args.out}; total {time.perf_counter() - start:.1f} s")
  if not all(c["kept"] for c in checks):
    sys.exit(1)


if __name__ == "__main__":
  main()
