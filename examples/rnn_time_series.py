"""Per-neuron learning rates on a GRU: multi-scale time-series prediction.

Reference 000's own case: an RNN on a time series where "some [hidden units'
gradients] were orders of magnitude higher than others". A Flax NNX GRU
(``nnx.GRUCell`` in ``nnx.RNN``, 32 hidden units, linear read-out) predicts
the next value of a noisy sum of four sinusoids with amplitudes 10, 1, 0.1 and
0.01 and periods of about 100, 25, 8 and 3 steps (frequencies jittered by
+-10 % and phases drawn per sequence, so the network has to infer them from
the sequence so far). The loss is the mean squared error in raw units over
every step after an 8-step warm-up. The series is fed in raw units, not
standardised: units driven hard by the amplitude-10 component saturate, and at
initialisation the per-unit mean |gradient| of the recurrent kernel spans more
than three orders of magnitude (printed, and drawn in the figure).

Compared, with the same initialisation, minibatches (32 sequences of 64
steps), number of steps and data for every run:

* global rates: ``optax.sgd`` and ``optax.adam``, each over a sweep of four
  rates (``SGD_RATES``, ``ADAM_RATES``); the best of each, picked on a
  validation split, is the baseline. A diverged run counts as infinitely bad;
* per-neuron rates (``granularity="neuron"``: one rate per GRU gate unit and
  per read-out unit) of the three rules of reference 000, with the reference
  defaults (``learning_rate=1e-3``, ``max_lr=1.0``, no bias correction), and
  with settings a user would pick after reading the README, fixed by rule, not
  searched: ``grad_magnitude_lr`` with ``max_lr`` = the best SGD rate (its
  rates only grow, so it ends as SGD at ``max_lr``), and ``grad_history_lr``
  and ``sign_consistency_lr`` with ``bias_correction=True`` and ``max_lr`` =
  10 x the best SGD rate (no unit more than one decade faster than the best
  global rate);
* ``sign_consistency_lr`` on top of Adam's direction with the README
  quick-start settings, and ``adam_hd`` with per-neuron rates from Adam's
  default rate with the paper's hypergradient step (``1e-7``).

It prints the sweeps, the per-unit gradient spread at initialisation and a
table (validation and test MSE, full-train-set MSE, final per-neuron rates of
the recurrent kernel, fraction of units at ``max_lr``, wall time including JIT
compilation), and writes a PNG: validation curves, a heatmap of one rule's
per-neuron rates of the recurrent kernel (units x steps), the median/min/max
of every rule's recurrent rates over training, and the gradient spread. Only
the baselines are swept; whatever the numbers are, they are printed.

Run from the repository root::

    python examples/rnn_time_series.py                  # 75 s on 2 busy CPU cores
    python examples/rnn_time_series.py --quick          # about 10 s: 3 runs, 200 steps
    python examples/rnn_time_series.py --steps 6000 --out /tmp/rnn.png
"""

from __future__ import annotations

import argparse
import os
import sys
import dataclasses
import math
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
from matplotlib import colors as mcolors
from tqdm import tqdm

import optax_neuronlr as nlr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _cli  # examples/_cli.py: shared checks  # pylint: disable=g-import-not-at-top,wrong-import-position

matplotlib.use("Agg")  # no display needed; no figure exists yet

SEED = 0
AMPLITUDES = (10.0, 1.0, 0.1, 0.01)
PERIODS = (100.0, 25.0, 8.0, 3.0)  # in steps, each jittered by +-FREQ_JITTER
FREQ_JITTER = 0.1
NOISE = 1e-3  # observation noise; the best possible MSE is about NOISE**2
SEQ_LEN = 64
WARMUP = 8  # steps of each sequence not scored: the GRU needs a context
HIDDEN = 32
N_TRAIN, N_VAL, N_TEST = 512, 256, 256
BATCH_SIZE = 32
STEPS = 3000
QUICK_STEPS = 200
EVAL_EVERY = 100  # steps per jitted chunk; validation MSE after each
SGD_RATES = (3e-3, 1e-2, 3e-2, 1e-1)
ADAM_RATES = (1e-3, 3e-3, 1e-2, 3e-2)
REF_LR = 1e-3  # reference 000's default base rate, for every rule
QUICK_SGD_RATES = (3e-2,)
QUICK_ADAM_RATES = (1e-2,)
QUICK_RULES = ("sign_consistency_lr +bc",)
HEATMAP_RULE = "sign_consistency_lr +bc"  # whose rates the heatmap shows
RECURRENT = ("rnn", "cell", "dense_h", "kernel")  # (HIDDEN, 3 * HIDDEN): r, z, n gates
GATES = ("r (reset)", "z (update)", "n (candidate)")


@dataclasses.dataclass(frozen=True)
class Split:
  """Inputs ``x`` (values 0..T-1) and targets ``y`` (values 1..T), ``(n, T, 1)``."""

  x: jax.Array
  y: jax.Array


@dataclasses.dataclass(frozen=True)
class Data:
  train: Split
  val: Split
  test: Split


@dataclasses.dataclass(frozen=True)
class Run:
  """One optimizer; ``group`` is "sgd", "adam" (the sweeps) or "neuron"."""

  name: str
  group: str
  settings: str
  make_tx: Callable[[], optax.GradientTransformation]
  max_lr: Optional[float] = None
  rate: Optional[float] = None  # the global rate of a sweep run


@dataclasses.dataclass(frozen=True)
class Result:
  """What one run produced; curves are sampled every ``EVAL_EVERY`` steps."""

  run: Run
  eval_steps: np.ndarray
  val_curve: np.ndarray
  val_mse: float
  test_mse: float
  train_mse: float
  rates: Optional[np.ndarray]  # (steps, 3 * HIDDEN) recurrent-kernel rates
  frac_at_max: Optional[float]  # of the recurrent kernel's units, at the end
  seconds: float
  params: nnx.State  # after the last step

  @property
  def diverged(self) -> bool:
    return not math.isfinite(self.val_mse)


# ----------------------------------------------------------------------------
# Data and model


def make_split(n: int, rng: np.random.Generator) -> Split:
  """``n`` sequences of a noisy sum of sinusoids, random phase and frequency."""
  amps, periods = np.asarray(AMPLITUDES), np.asarray(PERIODS)
  t = np.arange(SEQ_LEN + 1)[None, :, None]
  omega = 2 * np.pi / periods * rng.uniform(1 - FREQ_JITTER, 1 + FREQ_JITTER, (n, 1, 4))
  phase = rng.uniform(0, 2 * np.pi, (n, 1, 4))
  series = (amps * np.sin(omega * t + phase)).sum(-1)
  series += NOISE * rng.standard_normal(series.shape)
  as_x = lambda a: jnp.asarray(a[..., None], jnp.float32)
  return Split(as_x(series[:, :-1]), as_x(series[:, 1:]))


def load_data() -> Data:
  rng = np.random.default_rng(SEED)
  return Data(make_split(N_TRAIN, rng), make_split(N_VAL, rng), make_split(N_TEST, rng))


class GRUForecaster(nnx.Module):
  """GRU (``HIDDEN`` units) over the sequence, a linear read-out at every step."""

  def __init__(self, rngs: nnx.Rngs):
    self.rnn = nnx.RNN(nnx.GRUCell(1, HIDDEN, rngs=rngs), rngs=False)
    self.out = nnx.Linear(HIDDEN, 1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    carry = jnp.zeros((x.shape[0], HIDDEN), x.dtype)
    return self.out(self.rnn(x, initial_carry=carry))


def init_model() -> tuple[nnx.GraphDef, nnx.State]:
  """The same initial parameters for every run."""
  return nnx.split(GRUForecaster(nnx.Rngs(SEED)), nnx.Param)


def mse(graphdef: nnx.GraphDef, params: nnx.State, x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean squared error over every sequence and every step after the warm-up."""
  prediction = nnx.merge(graphdef, params)(x)
  return jnp.mean((prediction - y)[:, WARMUP:] ** 2)


def reference_levels(data: Data) -> dict[str, float]:
  """MSE of trivial predictors and of ignoring each small component, for scale."""
  x, y = data.val.x, data.val.y
  levels = {"persistence (predict y[t+1] = y[t])": float(jnp.mean((x - y)[:, WARMUP:] ** 2))}
  for amp in AMPLITUDES[1:]:
    levels[f"ignore the amplitude-{amp:g} component"] = amp**2 / 2
  levels["noise floor"] = 2 * NOISE**2  # the target's noise plus the input's
  return levels


def unit_grad_magnitudes(graphdef: nnx.GraphDef, params: nnx.State, split: Split) -> nnx.State:
  """Per-neuron mean |gradient| of every leaf on ``split`` (as the rules see it)."""
  grads = jax.grad(mse, argnums=1)(graphdef, params, split.x, split.y)
  return jax.tree.map(
      lambda g: jnp.mean(jnp.abs(g), axis=tuple(range(g.ndim - 1))) if g.ndim > 1
      else jnp.abs(g), grads,
  )


# ----------------------------------------------------------------------------
# Runs


def sweep_runs(quick: bool) -> list[Run]:
  sgd_rates, adam_rates = (
      (QUICK_SGD_RATES, QUICK_ADAM_RATES) if quick else (SGD_RATES, ADAM_RATES)
  )
  runs = [Run(f"sgd lr={lr:g}", "sgd", f"lr={lr:g}", lambda lr=lr: optax.sgd(lr), rate=lr)
          for lr in sgd_rates]
  runs += [Run(f"adam lr={lr:g}", "adam", f"lr={lr:g}", lambda lr=lr: optax.adam(lr), rate=lr)
           for lr in adam_rates]
  return runs


def neuron_runs(best_sgd: float, quick: bool) -> list[Run]:
  """The per-neuron runs; the user-style settings are fixed functions of ``best_sgd``."""
  n = "neuron"
  cap = 10 * best_sgd
  runs = [
      Run("grad_magnitude_lr ref", n, f"lr={REF_LR:g}, max_lr=1",
          lambda: nlr.grad_magnitude_lr(REF_LR, granularity=n), 1.0),
      Run("grad_history_lr ref", n, f"lr={REF_LR:g}, max_lr=1",
          lambda: nlr.grad_history_lr(REF_LR, granularity=n), 1.0),
      Run("sign_consistency_lr ref", n, f"lr={REF_LR:g}, max_lr=1",
          lambda: nlr.sign_consistency_lr(REF_LR, granularity=n), 1.0),
      Run("grad_magnitude_lr", n, f"lr={REF_LR:g}, max_lr={best_sgd:g}",
          lambda: nlr.grad_magnitude_lr(REF_LR, granularity=n, max_lr=best_sgd), best_sgd),
      Run("grad_history_lr +bc", n, f"lr={REF_LR:g}, bc, max_lr={cap:g}",
          lambda: nlr.grad_history_lr(REF_LR, granularity=n, bias_correction=True,
                                      max_lr=cap), cap),
      Run("sign_consistency_lr +bc", n, f"lr={REF_LR:g}, bc, max_lr={cap:g}",
          lambda: nlr.sign_consistency_lr(REF_LR, granularity=n, bias_correction=True,
                                          max_lr=cap), cap),
      Run("sign_consistency_lr +bc x adam", n, "lr=1e-3, bc, max_lr=1e-2, adam dir.",
          lambda: nlr.sign_consistency_lr(1e-3, granularity=n, bias_correction=True,
                                          max_lr=1e-2, direction=optax.scale_by_adam()),
          1e-2),
      Run("adam_hd", n, "lr0=1e-3, hyper_lr=1e-7",
          lambda: nlr.adam_hd(1e-3, 1e-7, granularity=n), math.inf),
  ]
  return [r for r in runs if r.name in QUICK_RULES] if quick else runs


# ----------------------------------------------------------------------------
# Training


def recurrent_of(tree: Any) -> Any:
  """The recurrent kernel's entry of a params-shaped tree."""
  for key in RECURRENT:
    tree = tree[key]
  return tree


def recurrent_rates(opt_state: Any) -> jax.Array:
  return recurrent_of(nlr.learning_rates(opt_state))


def make_chunk(
    tx: optax.GradientTransformation, graphdef: nnx.GraphDef, track: bool
) -> Callable:
  """A jitted function running ``len(batches)`` steps in one ``lax.scan``."""

  @jax.jit
  def chunk(params, opt_state, x, y, batches):
    def step(carry, batch):
      params, opt_state = carry
      loss, grads = jax.value_and_grad(mse, argnums=1)(graphdef, params, x[batch], y[batch])
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      rates = recurrent_rates(opt_state) if track else jnp.zeros(())
      return (params, opt_state), (loss, rates)

    (params, opt_state), (losses, rates) = jax.lax.scan(step, (params, opt_state), batches)
    return params, opt_state, losses, rates

  return chunk


def minibatches(steps: int) -> np.ndarray:
  """``(steps, BATCH_SIZE)`` indices of shuffled epochs, the same for every run."""
  rng = np.random.default_rng(SEED)
  per_epoch = N_TRAIN // BATCH_SIZE
  epochs = -(-steps // per_epoch)
  order = np.concatenate([rng.permutation(N_TRAIN)[: per_epoch * BATCH_SIZE]
                          for _ in range(epochs)])
  return order.reshape(-1, BATCH_SIZE)[:steps].astype(np.int32)


def recurrent_frac_at_max(opt_state: Any) -> float:
  """Fraction of the recurrent kernel's units pinned at max_lr (nlr.rate_summary)."""
  return float(nlr.rate_summary(opt_state)["/".join(RECURRENT) + "/frac_at_max_lr"])


def train(run: Run, data: Data, batches: np.ndarray, evaluate: Callable, bar: tqdm) -> Result:
  """Trains the shared initial parameters with ``run``; time includes compilation."""
  start = time.perf_counter()
  graphdef, params = init_model()
  tx = run.make_tx()
  opt_state = tx.init(params)
  track = run.group == "neuron"
  chunk = make_chunk(tx, graphdef, track)
  eval_steps, val_curve, rates = [0], [float(evaluate(params, data.val.x, data.val.y))], []
  for first in range(0, len(batches), EVAL_EVERY):
    block = jnp.asarray(batches[first:first + EVAL_EVERY])
    params, opt_state, _, block_rates = chunk(params, opt_state, data.train.x,
                                              data.train.y, block)
    eval_steps.append(first + len(block))
    val_curve.append(float(evaluate(params, data.val.x, data.val.y)))
    if track:
      rates.append(np.asarray(block_rates))
    bar.update()
  as_score = lambda v: v if math.isfinite(v) else math.inf
  result = Result(
      run=run,
      eval_steps=np.asarray(eval_steps),
      val_curve=np.asarray(val_curve),
      val_mse=as_score(val_curve[-1]),
      test_mse=as_score(float(evaluate(params, data.test.x, data.test.y))),
      train_mse=as_score(float(evaluate(params, data.train.x, data.train.y))),
      rates=np.concatenate(rates) if track else None,
      frac_at_max=recurrent_frac_at_max(opt_state) if track else None,
      seconds=time.perf_counter() - start,
      params=params,
  )
  return result


def best_of(results: Sequence[Result], group: str) -> Result:
  return min((r for r in results if r.run.group == group), key=lambda r: r.val_mse)


# ----------------------------------------------------------------------------
# Report


def fmt(value: float) -> str:
  return "diverged" if not math.isfinite(value) else f"{value:.3g}"


def print_gradient_spread(magnitudes: nnx.State) -> None:
  print("\nPer-unit mean |gradient| at initialisation on the train set "
        "(what the per-neuron rules average over each unit's fan-in):")
  print(f"{'leaf':<24} {'units':>5} {'min':>9} {'median':>9} {'max':>9} {'max/min':>9}")
  for path, m in jax.tree_util.tree_flatten_with_path(magnitudes)[0]:
    m = np.asarray(m)
    name = "/".join(str(k.key) for k in path if hasattr(k, "key"))  # drops NNX's .value
    spread = f"{m.max() / m.min():.1e}" if m.size > 1 else "-"
    print(f"{name:<24} {m.size:>5} {m.min():>9.2e} {np.median(m):>9.2e} "
          f"{m.max():>9.2e} {spread:>9}")


def print_sweeps(results: Sequence[Result]) -> None:
  print("\nSweeps of the global-rate baselines (picked on the validation split):")
  print(f"{'optimizer':<16} {'val MSE':>10}")
  for group in ("sgd", "adam"):
    best = best_of(results, group)
    for r in (r for r in results if r.run.group == group):
      mark = "  <- best" if r is best else ""
      print(f"{r.run.name:<16} {fmt(r.val_mse):>10}{mark}")


def print_table(results: Sequence[Result], levels: dict[str, float], steps: int) -> None:
  print(
      f"\n{steps} steps of {BATCH_SIZE} sequences x {SEQ_LEN} steps; the same init and "
      "minibatches for every run.\nMSE in raw units over every step after the warm-up; "
      "val/test: held-out sequences; train: the whole train set after the last step.\n"
      "recurrent rates: median [min, max] of the per-neuron rates of the GRU's recurrent "
      f"kernel ({3 * HIDDEN} units) at the end;\nat max: the fraction of those units pinned "
      "at max_lr (nlr.rate_summary); time: wall time INCLUDING JIT compilation."
  )
  print("For scale (validation split): " + "; ".join(
      f"{k}: {v:.3g}" for k, v in levels.items()))
  header = (f"{'optimizer':<31} {'settings':<36} {'val MSE':>9} {'test MSE':>9} "
            f"{'train MSE':>9} {'recurrent rates':<27} {'at max':>6} {'time (s)':>8}")
  print(header)
  print("-" * len(header))
  rows = [best_of(results, "sgd"), best_of(results, "adam")]
  rows += [r for r in results if r.run.group == "neuron"]
  for r in rows:
    name = r.run.name + (" (best)" if r.run.group != "neuron" else "")
    if r.rates is not None and not r.diverged:
      last = r.rates[-1]
      rates = f"{np.median(last):.2g} [{last.min():.2g}, {last.max():.2g}]"
      pinned = f"{r.frac_at_max:.2f}" if math.isfinite(r.run.max_lr) else "-"
    else:
      rates, pinned = "-", "-"
    print(f"{name:<31} {r.run.settings:<36} {fmt(r.val_mse):>9} {fmt(r.test_mse):>9} "
          f"{fmt(r.train_mse):>9} {rates:<27} {pinned:>6} {r.seconds:>8.1f}")


# ----------------------------------------------------------------------------
# Figure


def neuron_colors(results: Sequence[Result]) -> dict[str, Any]:
  names = [r.run.name for r in results if r.run.group == "neuron"]
  return dict(zip(names, plt.get_cmap("tab10").colors))


def plot(results: Sequence[Result], levels: dict[str, float],
         magnitudes: tuple[np.ndarray, np.ndarray], out: str) -> None:
  """Curves and gradient spread (left); the heatmap run's rates over them (right)."""
  colors = neuron_colors(results)
  fig, axes = plt.subplots(2, 2, figsize=(17, 11), layout="constrained",
                           width_ratios=(1, 1.1))
  plot_curves(axes[0, 0], results, levels, colors)
  plot_gradient_spread(axes[1, 0], *magnitudes)
  heat = next((r for r in results if r.run.name == HEATMAP_RULE and r.rates is not None
               and not r.diverged), None)
  if heat is not None:
    plot_heatmap(fig, axes[0, 1], heat)
  else:
    axes[0, 1].set_axis_off()
  plot_rate_lines(axes[1, 1], results, colors, heat)
  if heat is not None:
    axes[1, 1].sharex(axes[0, 1])
  fig.suptitle(
      f"GRU ({HIDDEN} units) predicting a sum of sinusoids (amplitudes "
      f"{', '.join(f'{a:g}' for a in AMPLITUDES)}, raw units): global rates vs "
      "per-neuron rates", fontsize=14, fontweight="bold",
  )
  fig.savefig(out, dpi=100)
  plt.close(fig)


def plot_curves(ax: plt.Axes, results: Sequence[Result], levels: dict[str, float],
                colors: dict[str, Any]) -> None:
  best = {best_of(results, "sgd").run.name, best_of(results, "adam").run.name}
  for r in results:
    if r.run.group == "neuron":
      ax.plot(r.eval_steps, r.val_curve, color=colors[r.run.name], lw=1.8,
              ls="--" if r.run.name.endswith("ref") else "-", label=r.run.name)
    elif r.run.name in best:
      ax.plot(r.eval_steps, r.val_curve, color="black", lw=2.4,
              ls="-" if r.run.group == "adam" else "-.", label=f"{r.run.name} (best of sweep)")
    else:
      ax.plot(r.eval_steps, r.val_curve, color="0.7", lw=0.9,
              ls="-" if r.run.group == "adam" else "-.")
  ax.plot([], [], color="0.7", lw=0.9, label="other sweep rates (solid adam, dash-dot sgd)")
  finite = np.concatenate([r.val_curve[np.isfinite(r.val_curve)] for r in results])
  low, high = finite.min() / 2, finite.max() * 2
  for (label, value), ls in zip(levels.items(), ((0, (1, 1)), ":", ":", ":", ":")):
    if low < value < high:
      ax.axhline(value, color="#8c564b" if "persistence" in label else "0.45", ls=ls,
                 lw=1.3, label=f"level: {label}")
  ax.set_ylim(low, high)
  ax.set_yscale("log")
  ax.set_xlabel("training step")
  ax.set_ylabel("validation MSE (log scale)")
  ax.set_title("Validation MSE over training (dashed: rule with the reference defaults;\n"
               "dotted levels: the MSE of predicting y[t+1] = y[t], and of ignoring one "
               "sinusoid entirely)", fontsize=10)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=7.5, loc="upper right", ncol=2)


def plot_heatmap(fig: plt.Figure, ax: plt.Axes, result: Result) -> None:
  rates = result.rates.T  # (units, steps); step s is column s - 1
  edges = np.arange(rates.shape[1] + 1) + 0.5
  norm = mcolors.LogNorm(vmin=rates.min(), vmax=rates.max())
  mesh = ax.pcolormesh(edges, np.arange(rates.shape[0] + 1) - 0.5, rates, cmap="viridis",
                       norm=norm, rasterized=True)
  ax.set_xscale("log")
  ax.invert_yaxis()
  for g in range(1, 3):
    ax.axhline(g * HIDDEN - 0.5, color="white", lw=1.5)
  ax.set_yticks([HIDDEN * g + HIDDEN / 2 - 0.5 for g in range(3)], GATES)
  ax.set_ylabel(f"unit of the recurrent kernel ({HIDDEN} per gate)")
  ax.set_title(f"{result.run.name} ({result.run.settings}): the per-neuron rate of every "
               f"recurrent unit at every step\n(log colour and step axes); at the end "
               f"{result.frac_at_max:.0%} of these units sit at max_lr = "
               f"{result.run.max_lr:g} (yellow)", fontsize=10)
  ax.tick_params(labelbottom=False)
  bar = fig.colorbar(mesh, ax=ax, pad=0.01)
  bar.set_label("learning rate")


def plot_rate_lines(ax: plt.Axes, results: Sequence[Result], colors: dict[str, Any],
                    heat: Optional[Result]) -> None:
  for r in results:
    if r.rates is None or r.diverged:
      continue
    steps = np.arange(1, len(r.rates) + 1)
    c = colors[r.run.name]
    ls = "--" if r.run.name.endswith("ref") else "-"
    if r is heat:
      ax.plot(steps, np.median(r.rates, axis=1), color=c, lw=2.6, label=f"{r.run.name}: median")
      ax.plot(steps, r.rates.min(axis=1), color=c, lw=1.0, ls=(0, (4, 2)), label="  same run: min")
      ax.plot(steps, r.rates.max(axis=1), color=c, lw=1.0, ls=(0, (1, 1)), label="  same run: max")
    else:
      ax.plot(steps, np.median(r.rates, axis=1), color=c, lw=1.4, ls=ls, alpha=0.8,
              label=f"{r.run.name}: median")
  sgd = best_of(results, "sgd")
  ax.axhline(sgd.run.rate, color="black", ls="-.", lw=1.2,
             label=f"best global SGD rate ({sgd.run.rate:g})")
  ax.set_xscale("log")
  ax.set_yscale("log")
  low = min(np.min(r.rates) for r in results if r.rates is not None and not r.diverged)
  ax.set_ylim(low / 20, None)  # room for the legend below the lowest rate
  ax.set_xlabel("training step (log scale)")
  ax.set_ylabel("per-neuron learning rate (log scale)")
  diverged = [r.run.name for r in results if r.rates is not None and r.diverged]
  note = f"\nnot drawn, diverged: {', '.join(diverged)}" if diverged else ""
  ax.set_title("Recurrent-kernel rates: median over the units of every per-neuron run; "
               "min and max for the heatmap's run\n('x adam' and adam_hd rates multiply "
               f"Adam's direction, the others the raw gradient){note}", fontsize=10)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=7.5, loc="lower center", ncol=3)


def plot_gradient_spread(ax: plt.Axes, at_init: np.ndarray, at_end: np.ndarray) -> None:
  gate_colors = ("#1f77b4", "#ff7f0e", "#2ca02c")
  for values, when, marker, alpha in ((at_init, "at init", "o", 0.9),
                                      (at_end, f"after {HEATMAP_RULE}", "^", 0.5)):
    for g, (name, color) in enumerate(zip(GATES, gate_colors)):
      units = np.arange(g * HIDDEN, (g + 1) * HIDDEN)
      ax.scatter(units, values[units], s=18, marker=marker, color=color, alpha=alpha,
                 label=f"gate {name.split()[0]}, {when}")
  ax.set_yscale("log")
  ax.set_xlabel(f"unit of the recurrent kernel (gates r | z | n, {HIDDEN} units each)")
  ax.set_ylabel("mean |gradient| over the unit's fan-in (log scale)")
  ratio = at_init.max() / at_init.min()
  ax.set_title("The premise: per-unit gradient magnitudes of the recurrent kernel on the "
               f"train set\n(at initialisation they span a factor of {ratio:.1e}: circles; "
               "triangles: after training)", fontsize=10)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=7.5, ncol=2, loc="lower left")



# ----------------------------------------------------------------------------


def positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
  return value


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=positive_int, default=None,
                      help=f"training steps per run (default {STEPS}, {QUICK_STEPS} with "
                           "--quick)")
  parser.add_argument("--out", type=_cli.figure_path, default=_cli.default_figure("rnn_time_series.png"),
                      help="where to write the figure (default: %(default)s)")
  parser.add_argument("--quick", action="store_true",
                      help="a short smoke run: one rate per baseline, one rule, "
                           f"{QUICK_STEPS} steps")
  return parser.parse_args()


def main() -> None:
  args = parse_args()
  steps = args.steps or (QUICK_STEPS if args.quick else STEPS)
  data = load_data()
  graphdef, params = init_model()
  evaluate = jax.jit(lambda p, x, y: mse(graphdef, p, x, y))
  for split in (data.train, data.val, data.test):  # compiled once, for every run
    evaluate(params, split.x, split.y).block_until_ready()
  magnitudes = unit_grad_magnitudes(graphdef, params, data.train)
  print_gradient_spread(magnitudes)
  levels = reference_levels(data)
  batches = minibatches(steps)
  chunks = -(-steps // EVAL_EVERY)
  sweeps = sweep_runs(args.quick)
  n_rules = len(QUICK_RULES) if args.quick else len(neuron_runs(1.0, False))
  results = []
  with tqdm(total=(len(sweeps) + n_rules) * chunks, unit="chunk") as bar:
    for run in sweeps:
      bar.set_description(run.name)
      results.append(train(run, data, batches, evaluate, bar))
    best_sgd = best_of(results, "sgd").run.rate
    for run in neuron_runs(best_sgd, args.quick):
      bar.set_description(run.name)
      results.append(train(run, data, batches, evaluate, bar))
  print_sweeps(results)
  print_table(results, levels, steps)
  at_init = np.asarray(recurrent_of(magnitudes))
  heat = next((r for r in results if r.run.name == HEATMAP_RULE), None)
  at_end = np.full_like(at_init, np.nan)
  if heat is not None and not heat.diverged:
    at_end = np.asarray(recurrent_of(unit_grad_magnitudes(graphdef, heat.params, data.train)))
  plot(results, levels, (at_init, at_end), args.out)
  print(f"\nfigure written to {args.out}")


if __name__ == "__main__":
  main()
