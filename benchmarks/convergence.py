"""Does it help? Every method against the scheduled AdamW, tuned like practitioners tune.

Study v2: every method trains under the schedule its users give it, its peak
rate tuned on a grid refined around the best point, then run from fresh seeds;
the reference is AdamW under the same schedule and tuning.

One command runs the study (or a part of it) and writes, under ``--out``
(default ``benchmarks/results/``):

* ``convergence.json``: every run (rate, seed, validation curve, final scores,
  clamp fractions), each method's summary, each task's budget and command;
* ``summary.csv``: one row per task x steps x method x schedule, columns
  ``task,steps,method,schedule,rate,mean,std,seeds,bytes_per_param,
  steps_to_target,verdict`` (``rate`` the chosen peak rate; ``mean``/``std``
  the final validation loss over the seeds; ``steps_to_target`` empty where the
  target is never reached; ``verdict`` against the scheduled AdamW, below);
* ``convergence.md``: a summary table (every method x task, with the verdict),
  then one detailed table per task;
* ``curves_<task>.png``: validation-loss curves at each method's chosen rate,
  mean over seeds with a min-max band;
* ``rates_<task>.png``: final validation loss against the peak rate (grid and
  refinement), every method, failed runs marked.

Partial runs merge: the tasks (and, within a task whose steps and evaluations
match, the methods) already in ``--out``'s JSON are kept, the ones run now
replace theirs, and the table, the CSV and the figures are rewritten from the
merged JSON (``--replot`` rewrites them from the JSON alone). So the full study
can run one task at a time, in separate processes. A JSON of another format or
of the other mode (``--quick`` or not) is replaced.

Tasks (``TASKS``; offline, sized for 2 CPU cores), each importing its data and
model from the example that introduced it:

* ``digits``: the 64-64-64-10 MLP of ``examples/compare_strategies.py`` on
  scikit-learn's digits (its train split cut into train and validation; its
  test split kept for the test scores); 600 steps;
* ``rnn``: the GRU of ``examples/rnn_time_series.py`` (reference 000's case)
  predicting a multi-scale sum of sinusoids, its train/validation/test splits;
  1500 steps;
* ``char_lm``: the character transformer of ``examples/char_lm.py`` on
  ``pydoc_data.topics``, validation on its held-out topics (a smaller
  configuration than the example's, ``CHAR_LM_SIZES``); 800 steps;
* ``char_lm_x3``: the same task at 3x the steps (2400), for ``LONG_METHODS``
  only (AdamW, Adam-mini, SCALE, Muon, NorMuon) and ``LONG_SEEDS`` (3) seeds.
  In the CSV its rows read task ``char_lm``, steps 2400.

Methods (``methods()``), every one under the warm-up-cosine schedule:

* ``adamw`` (``optax.adamw``, weight decay 1e-4 on kernels and embeddings; the
  reference), ``adafactor`` (optax's defaults), ``sgd_momentum`` (momentum 0.9);
* ``muon`` and ``normuon`` (``nlr.muon`` / ``nlr.normuon``: Muon / NorMuon on
  the hidden matrices, AdamW on the rest);
* ``adam_mini``, ``scale_sgd`` (SCALE), ``adam_hd`` (Adam-HD);
* each rule of reference 000 (``grad_magnitude_lr``, ``grad_history_lr``,
  ``sign_consistency_lr``) at granularity element and neuron: on the gradient
  with the reference defaults (``ref``), on Adam's direction (``x adam``:
  ``bias_correction=True`` for the EMA rules, ``max_lr = 10 x`` the peak rate)
  and on Muon's direction (``x muon``: the same settings with
  ``direction=nlr.scale_by_muon()``, on the hidden matrices only, AdamW on the
  rest, through ``optax.partition`` and ``nlr.normuon_labels``). The ``ref``
  rules run a second time at a constant rate (schedule ``constant``: their
  rates are their own schedule), which is the study's first protocol plus the
  refinement.

Muon-family methods (``muon``, ``normuon``, the ``x muon`` rules): the tuned
peak is the hidden matrices' rate; their AdamW leaves (embeddings, the output
head, norms, biases) run at the scheduled AdamW's tuned peak rate on the same
task, under the same schedule shape (what a practitioner keeps). So ``adamw``
always runs first in a task: it is added to every run whose ``--out`` does not
already hold it for that task (then its stored rate is used).

Dropped from the first study (constant rates): plain ``sgd``, ``sgd_hd`` (both
far behind on the GRU and the transformer, and the sgd_hd comparison they
served is not the practitioner's question) and the ``+bc`` variants of the EMA
rules (within noise of ``ref``); their numbers stay in that study's history.

A method whose ``nlr`` names are missing (Muon's, until they land) is listed as
unavailable instead of run; one whose optimizer fails to build is reported
with its error, and the rest of the study goes on.

Your own method, through the same protocol::

    python benchmarks/convergence.py --method-from mymodule:make_tx
    python benchmarks/convergence.py --method-from path/to/file.py:make_tx --grid 1e-4 1e-1

``make_tx(learning_rate)`` receives the scheduled learning rate, an optax
schedule (step -> rate: the peak rate under test times the warm-up-cosine
shape; the peak is a traced value inside the vmapped runs, so use it only in
arithmetic) and returns an ``optax.GradientTransformation``. The method is
named after the function; its grid is the Adam-like one (``RATE_RANGES["adam"]``)
unless ``--grid LO HI`` (``GRID_POINTS`` rates from LO to HI, log-spaced).
``mymodule`` is imported from the current directory (or the path). Combine
with ``--methods none`` to run only it (and the reference AdamW).

Protocol, the same for every task and method (the peak rate is the only
hyperparameter tuned):

0. **Schedule.** ``optax.warmup_cosine_decay_schedule(0.0, peak, steps // 10,
   steps, 0.1 * peak)``: linear warm-up over the first 10% of the steps, then
   cosine decay to 10% of the peak (built as ``peak x`` the unit schedule, so
   that the peak can be traced). Schedule ``constant``: the peak throughout.
1. **Grid.** ``GRID_POINTS`` peak rates, half a decade apart (three decades),
   placed by the method's kind (``RATE_RANGES``), one run each from seed 0,
   all in one ``jax.vmap``-ed, jitted call (the rate is an argument of the
   traced run). A run whose final validation loss is non-finite or above its
   initial one counts as failed and never wins.
2. **Refinement.** The grid's best rate times ``10**-0.25`` and ``10**0.25``
   (quarter-decade neighbours), seed 0; the best of all 9 runs wins.
3. **Seeds.** The winning rate rerun from ``SEEDS`` fresh seeds (1, 2, ...;
   seed = initialisation and batch order). Every reported score comes from
   these runs.
4. **Cost.** Optimizer-state bytes per parameter (``jax.eval_shape`` of
   ``init``), and ms per training step (forward, backward, update) of a
   single jitted run of ``TIMING_STEPS`` steps in a ``lax.scan``, after
   compilation: the median of ``TIMING_REPEATS`` calls, each paired with a
   call of AdamW's for the ratio to it.

Rate ranges (``RATE_RANGES``, lowest and highest grid rate):

* ``"adam"`` 1e-4 .. 1e-1: AdamW, Adam-HD, Adam-mini, SCALE, the EMA rules on
  the gradient, user methods by default;
* ``"sgd"`` 1e-3 .. 1: SGD with momentum, Adafactor (relative steps), Muon and
  NorMuon (Muon's usual rate, ~0.02, lies inside, two points from each edge);
* ``"plain"`` 10**-2.5 .. 10**0.5: ``grad_magnitude_lr`` on the gradient
  (rates up to its ``max_lr`` of 1);
* ``"low"`` 1e-5 .. 1e-2: rules on Adam's direction, whose rates reach 10x
  the peak (a decade below Adam's range);
* ``"muon_rule"`` 1e-4 .. 1e-1: rules on Muon's direction, whose rates reach
  10x the peak (a decade below Muon's range).

The target of a task (at its steps) is the scheduled AdamW's final mean
validation loss. Reported per task and method: final validation loss (and
accuracy for digits), mean and std over seeds; the verdict (*win* / *loss*:
the seeds' log losses lower / higher than AdamW's by more than ``WELCH_T``
standard errors, Welch; else *tie*; *target* for AdamW; *fails*: a seed
failed); steps to target (the first evaluated step where the seeds' mean
validation curve reaches it); the sensitivity to the peak rate (max/min ratio
of the final validation losses of the non-failed grid and refinement runs, of
all of them and of those up to the chosen rate, and how many failed); state
bytes per parameter; ms/step; for methods with clamps, the fraction of units
at ``min_lr`` / ``max_lr`` at the end (``nlr.rate_summary``, mean over the
governed leaves and seeds).

Worker threads (``--jobs``) compile the methods' programs ahead; the programs
run one at a time in the main thread, and the timing runs once every method of
the task has finished.

Run from the repository root::

    python benchmarks/convergence.py --quick --out /tmp/conv   # every task x method, a few min
    python benchmarks/convergence.py --tasks '^digits$'         # one task at a time, merged
    python benchmarks/convergence.py --tasks '^rnn$'
    python benchmarks/convergence.py --tasks '^char_lm$'
    python benchmarks/convergence.py --tasks '^char_lm_x3$'
    python benchmarks/convergence.py --tasks digits --methods 'adamw|grad_history'
    python benchmarks/convergence.py --retime           # re-measure ms/step of --out's study
    python benchmarks/convergence.py --replot           # rewrite tables, CSV, figures from its JSON

``--quick`` (run by ``tests/test_convergence.py``) runs 2 grid rates, the 2
refinement rates and 2 seeds (one compiled program of 2 runs) for 20 steps
(60 for ``char_lm_x3``), compiles without XLA's optimisations and skips the
dedicated timing (its ms/step come from the vmapped seed runs); its numbers
only show that everything runs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import importlib
import importlib.util
import io
import json
import math
import os
import pathlib
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

ROOT = pathlib.Path(__file__).resolve().parents[1]

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.ticker
import numpy as np
import optax
from flax import nnx

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

import optax_neuronlr as nlr

# ---------------------------------------------------------------------------
# Configuration.

VERSION = 2  # of convergence.json; another version in --out is replaced, not merged
GRID_POINTS = 7  # half a decade apart: three decades
REFINE = (10**-0.25, 10**0.25)  # the grid's best rate times these: quarter-decade neighbours
SEEDS = 7  # = GRID_POINTS: the grid's compiled run serves the seeds too
EVALS = 20  # validation evaluations per run
TIMING_STEPS = 20
TIMING_REPEATS = 5
QUICK_GRID_POINTS = 2  # the two central points of the grid
QUICK_SEEDS = 2  # = QUICK_GRID_POINTS = len(REFINE): one compiled program
QUICK_EVALS = 4
LONG_SEEDS = 3  # seeds of the long-run variant (char_lm_x3)
LONG_METHODS = ("adamw", "adam_mini", "scale_sgd", "muon", "normuon")
WEIGHT_DECAY = 1e-4  # optax.adamw's default; AdamW, Adam-mini, SCALE, Muon alike
ADAM_HD_HYPER_LR = 1e-7  # Baydin et al. (2018)'s value
DIRECTION_CAP = 10.0  # x adam / x muon variants: max_lr = this x the peak rate
FINAL_FRACTION = 0.1  # of the peak, at the end of the cosine decay
SCHEDULES = ("warmup_cosine", "constant")
REFERENCE = "adamw"  # the target: the scheduled AdamW
CSV_COLUMNS = ("task", "steps", "method", "schedule", "rate", "mean", "std", "seeds",
               "bytes_per_param", "steps_to_target", "verdict")

# Where each kind of method's grid lies: (lowest, highest) peak rate.
RATE_RANGES = {
    "plain": (10**-2.5, 10**0.5),  # grad_magnitude_lr on the gradient (rates up to max_lr=1)
    "sgd": (1e-3, 1.0),    # SGD with momentum 0.9, Adafactor (relative steps), Muon, NorMuon
    "adam": (1e-4, 1e-1),  # Adam-like steps: AdamW, Adam-HD, Adam-mini, SCALE, EMA rules
    "low": (1e-5, 1e-2),   # rules on Adam's direction, whose rates reach 10x the peak
    "muon_rule": (1e-4, 1e-1),  # rules on Muon's direction, whose rates reach 10x the peak
}

RateSpec = Union[str, tuple[float, float]]  # a RATE_RANGES kind, or (lowest, highest)


def rate_grid(rates: RateSpec, points: int) -> list[float]:
  """``points`` central rates of the ``GRID_POINTS``-point log grid of ``rates``
  (a ``RATE_RANGES`` kind or a ``(lowest, highest)`` pair)."""
  lo, hi = RATE_RANGES[rates] if isinstance(rates, str) else rates
  full = np.geomspace(lo, hi, GRID_POINTS)
  first = (GRID_POINTS - points) // 2
  return [round_rate(r) for r in full[first:first + points]]


def round_rate(rate: float) -> float:
  return float(f"{rate:.3g}")


def refined_rates(best: float, factors: Sequence[float]) -> list[float]:
  """The refinement's rates around the grid's ``best``."""
  return [round_rate(best * f) for f in factors]


def schedule_shape(steps: int) -> optax.Schedule:
  """The warm-up-cosine schedule of peak 1: ``peak x`` this is
  ``optax.warmup_cosine_decay_schedule(0.0, peak, steps // 10, steps, 0.1 * peak)``."""
  return optax.warmup_cosine_decay_schedule(
      0.0, 1.0, steps // 10, steps, FINAL_FRACTION)


def learning_rate(peak: Any, schedule: str, steps: int) -> optax.ScalarOrSchedule:
  """The learning rate of a run at ``peak`` (possibly traced): a schedule, or the peak."""
  if schedule == "constant":
    return peak
  if schedule != "warmup_cosine":
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
  shape = schedule_shape(steps)
  return lambda count: peak * shape(count)


@dataclasses.dataclass(frozen=True)
class Budget:
  """How much each method gets; the same for every method of a run."""

  grid_points: int
  refine: tuple[float, ...]  # factors around the grid's best
  seeds: int
  evals: int
  timing: bool  # a dedicated single-run timing (False: from the vmapped seed runs)
  quick: bool
  jobs: int = 2  # threads compiling ahead

  def json(self, seeds: Optional[int] = None) -> dict[str, Any]:
    return {"grid_points": self.grid_points, "refine": list(self.refine),
            "seeds": self.seeds if seeds is None else seeds, "evals": self.evals,
            "quick": self.quick}


# ---------------------------------------------------------------------------
# Tasks: data, a pure model and how to batch and score it.


@dataclasses.dataclass(frozen=True)
class Problem:
  """A built task. Every function is pure, so whole runs can be vmapped.

  ``data`` holds the arrays (passed to the jitted run as an argument, not
  baked into it): ``train`` (what ``batch`` reads), ``val`` and optionally
  ``test`` (what ``scores`` reads).
  """

  init: Callable[[jax.Array], Any]  # key -> params
  loss: Callable[[Any, Any], jax.Array]  # params, batch -> training loss
  scores: Callable[[Any, Any], dict[str, jax.Array]]  # params, eval set -> {"loss", ...}
  sample: Callable[[jax.Array, int], jax.Array]  # key, steps -> per-step batch indices
  batch: Callable[[Any, jax.Array], Any]  # train data, indices -> batch
  data: dict[str, Any]
  steps: int
  head: Optional[str]  # path of the output layer (SCALE's momentum)
  description: str


@dataclasses.dataclass(frozen=True)
class Task:
  """A row of ``TASKS``: how to build the problem, full or quick.

  A variant of a task (``base``: the task's name in the CSV) runs ``steps_factor``
  times its steps, for ``only`` those methods (keys), from ``seeds`` seeds.
  """

  name: str
  title: str
  example: str  # the examples/ module it imports
  build: Callable[[Any, bool], Problem]  # (example module, quick) -> Problem
  metric: Optional[str] = None  # a score beside the loss, e.g. "accuracy"
  loss_name: str = "loss"
  base: Optional[str] = None
  steps_factor: int = 1
  only: Optional[tuple[str, ...]] = None
  seeds: Optional[int] = None

  @property
  def csv_name(self) -> str:
    return self.base or self.name


def load_example(name: str):
  """Imports ``examples/<name>.py`` (its ``main`` does not run)."""
  key = f"examples.{name}"
  if key in sys.modules:
    return sys.modules[key]
  path = ROOT / "examples" / f"{name}.py"
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist")
  spec = importlib.util.spec_from_file_location(key, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[key] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def nnx_init(make_module: Callable[[nnx.Rngs], nnx.Module]):
  """``(graphdef, key -> params)`` for an NNX model built by ``make_module``."""
  graphdef = nnx.split(make_module(nnx.Rngs(0)), nnx.Param)[0]
  return graphdef, lambda key: nnx.split(make_module(nnx.Rngs(key)), nnx.Param)[1]


def epoch_batches(n: int, batch_size: int):
  """``sample`` for a data set of ``n`` rows: shuffled epochs, ``(steps, batch_size)``."""
  per_epoch = n // batch_size

  def sample(key: jax.Array, steps: int) -> jax.Array:
    epochs = -(-steps // per_epoch)
    orders = jax.vmap(lambda k: jax.random.permutation(k, n)[:per_epoch * batch_size])(
        jax.random.split(key, epochs))
    return orders.reshape(-1, batch_size)[:steps]

  return sample


def rows(train: tuple[jax.Array, jax.Array], idx: jax.Array):
  """``batch`` for ``(x, y)`` arrays: the rows ``idx`` of both."""
  return train[0][idx], train[1][idx]


def digits_problem(example, quick: bool) -> Problem:
  """The MLP of compare_strategies on digits; 300 of its train rows for validation."""
  data = example.load_data()
  perm = np.random.default_rng(0).permutation(data.x_train.shape[0])
  val, train = perm[:300], perm[300:]
  graphdef, init = nnx_init(lambda rngs: example.MLP(data.x_train.shape[1], rngs))

  def loss(params, batch):
    x, y = batch
    return example.cross_entropy(nnx.merge(graphdef, params)(x), y)

  def scores(params, split):
    x, y = split
    logits = nnx.merge(graphdef, params)(x)
    return {"loss": example.cross_entropy(logits, y),
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}

  arrays = {"train": (data.x_train[train], data.y_train[train]),
            "val": (data.x_train[val], data.y_train[val]),
            "test": (data.x_test, data.y_test)}
  return Problem(init, loss, scores, epoch_batches(len(train), example.BATCH_SIZE), rows,
                 arrays, steps=20 if quick else 600, head="out",
                 description=f"MLP 64-64-64-10, batch {example.BATCH_SIZE}, "
                             f"{len(train)} train / {len(val)} val / "
                             f"{data.x_test.shape[0]} test images")


def rnn_problem(example, quick: bool) -> Problem:
  """The GRU forecaster of rnn_time_series on its multi-scale sinusoids."""
  data = example.load_data()
  graphdef, init = nnx_init(example.GRUForecaster)

  def loss(params, batch):
    return example.mse(graphdef, params, *batch)

  def scores(params, split):
    return {"loss": example.mse(graphdef, params, *split)}

  arrays = {"train": (data.train.x, data.train.y), "val": (data.val.x, data.val.y),
            "test": (data.test.x, data.test.y)}
  n = data.train.x.shape[0]
  return Problem(init, loss, scores, epoch_batches(n, example.BATCH_SIZE), rows, arrays,
                 steps=20 if quick else 1500, head="out",
                 description=f"GRU {example.HIDDEN} units, batch {example.BATCH_SIZE} "
                             f"sequences of {example.SEQ_LEN} steps, {n} train / "
                             f"{data.val.x.shape[0]} val / {data.test.x.shape[0]} test "
                             "sequences; MSE in raw units")


# The study's transformer: smaller than the example's default, to fit 2 cores.
CHAR_LM_SIZES = dict(d_model=32, heads=4, layers=2, seq_len=32, batch=16, eval_batches=8)
CHAR_LM_QUICK_SIZES = dict(d_model=16, heads=2, layers=1, seq_len=16, batch=8, eval_batches=2)


def char_lm_problem(example, quick: bool) -> Problem:
  """The character transformer of char_lm; validation on its held-out topics."""
  corpus = example.load_corpus()
  c = dataclasses.replace(example.Config(),
                          **(CHAR_LM_QUICK_SIZES if quick else CHAR_LM_SIZES))
  graphdef, init = nnx_init(lambda rngs: example.CharTransformer(c, corpus.vocab_size, rngs))
  windows = jnp.arange(c.seq_len + 1)

  def loss(params, batch):
    return example.loss_fn(nnx.merge(graphdef, params), batch)

  def scores(params, val):
    return {"loss": loss(params, val)}

  def sample(key, steps):
    return jax.random.randint(key, (steps, c.batch), 0, len(corpus.train) - c.seq_len - 1)

  val = example.make_batches(corpus.val, c.eval_batches, c.batch, c.seq_len, seed=1)
  arrays = {"train": jnp.asarray(corpus.train),
            "val": jnp.asarray(val.reshape(-1, c.seq_len + 1))}
  n_val = c.eval_batches * c.batch
  return Problem(init, loss, scores, sample,
                 lambda text, starts: text[starts[:, None] + windows], arrays,
                 steps=20 if quick else 800, head="head",
                 description=f"transformer d={c.d_model}, {c.layers} layers, {c.heads} "
                             f"heads, batch {c.batch} x {c.seq_len} characters; "
                             f"{len(corpus.train):,} train characters, {n_val} held-out "
                             f"windows; cross-entropy in nats per character")


TASKS = (
    Task("digits", "Digits classification (MLP)", "compare_strategies", digits_problem,
         metric="accuracy", loss_name="cross-entropy"),
    Task("rnn", "GRU time series (reference 000's case)", "rnn_time_series", rnn_problem,
         loss_name="MSE"),
    Task("char_lm", "Character transformer LM (pydoc_data.topics)", "char_lm",
         char_lm_problem, loss_name="cross-entropy (nats/char)"),
    Task("char_lm_x3", "Character transformer LM, 3x the steps", "char_lm",
         char_lm_problem, loss_name="cross-entropy (nats/char)", base="char_lm",
         steps_factor=3, only=LONG_METHODS, seeds=LONG_SEEDS),
)


# ---------------------------------------------------------------------------
# Methods: one row per optimizer, built from a (possibly traced) peak rate.


@dataclasses.dataclass(frozen=True)
class Rates:
  """What a method's ``build`` gets.

  ``peak``: the peak rate under test (a traced scalar inside the vmapped run);
  ``lr``: the learning rate, ``peak`` under the method's schedule (an optax
  schedule, or ``peak`` itself for ``constant``); ``adam_lr``: the scheduled
  AdamW's tuned peak rate on the task under the same schedule (the AdamW leaves
  of Muon-family methods); ``problem``: the task.
  """

  peak: Any
  lr: optax.ScalarOrSchedule
  adam_lr: optax.ScalarOrSchedule
  problem: Problem


@dataclasses.dataclass(frozen=True)
class Method:
  """A row of ``methods()``.

  ``build(rates)`` returns the optimizer (:class:`Rates`); ``rates`` names its
  grid (a ``RATE_RANGES`` kind or a ``(lowest, highest)`` pair); ``requires``
  lists the ``nlr`` names it needs (a method whose names are missing is reported
  as unavailable, not run). ``key`` names it in the JSON and the tables: its
  name, with `` (constant)`` for the constant schedule.
  """

  name: str
  family: str
  build: Callable[[Rates], optax.GradientTransformation]
  rates: RateSpec
  settings: str
  schedule: str = "warmup_cosine"
  clamps: bool = False  # whether its rates have clamps worth reporting
  requires: tuple[str, ...] = ()

  @property
  def key(self) -> str:
    return self.name if self.schedule == "warmup_cosine" else f"{self.name} ({self.schedule})"

  def available(self) -> bool:
    return all(hasattr(nlr, name) for name in self.requires)

  def optimizer(self, peak: Any, adam_peak: Any,
                problem: Problem) -> optax.GradientTransformation:
    lr = learning_rate(peak, self.schedule, problem.steps)
    return self.build(Rates(peak, lr, learning_rate(adam_peak, self.schedule, problem.steps),
                            problem))


BASELINE = "baselines"
MUON = "Muon family"
LEARNED = "per-unit and learned rates"
USER = "user methods"
FAMILIES = (BASELINE, MUON, LEARNED, "reference 000, element", "reference 000, neuron", USER)
SEED000_RULES = ("grad_magnitude_lr", "grad_history_lr", "sign_consistency_lr")
VARIANTS = ("ref", "x adam", "x muon")
MUON_REQUIRES = ("scale_by_muon", "normuon_labels")


def _decay_mask(params):
  """AdamW's decay mask, Adam-mini's (kernels and embeddings), looked up when used."""
  return nlr.adam_mini_weight_decay_mask(params)


def _adamw(lr) -> optax.GradientTransformation:
  return optax.adamw(lr, weight_decay=WEIGHT_DECAY, mask=_decay_mask)


def seed000_method(rule: str, granularity: str, variant: str,
                   schedule: str = "warmup_cosine") -> Method:
  """A reference-000 rule at one granularity, in one of ``VARIANTS``."""
  ema = rule != "grad_magnitude_lr"

  def build(r: Rates) -> optax.GradientTransformation:
    kwargs: dict[str, Any] = {"granularity": granularity}
    if variant == "ref":
      return getattr(nlr, rule)(r.lr, **kwargs)
    if ema:
      kwargs["bias_correction"] = True
    kwargs["max_lr"] = DIRECTION_CAP * r.peak
    if variant == "x adam":
      return getattr(nlr, rule)(r.lr, direction=optax.scale_by_adam(), **kwargs)
    hidden = getattr(nlr, rule)(r.lr, direction=nlr.scale_by_muon(), **kwargs)
    return optax.partition({"hidden": hidden, "adamw": _adamw(r.adam_lr)}, nlr.normuon_labels)

  bc = ", bias_correction=True" if ema else ""
  settings = {
      "ref": "reference defaults (min_lr=1e-6, max_lr=1)",
      "x adam": f"direction=scale_by_adam(){bc}, max_lr={DIRECTION_CAP:g}x peak",
      "x muon": (f"hidden matrices: direction=nlr.scale_by_muon(){bc}, "
                 f"max_lr={DIRECTION_CAP:g}x peak; the rest: AdamW at its tuned rate"),
  }[variant]
  kind = {"ref": "adam" if ema else "plain", "x adam": "low", "x muon": "muon_rule"}[variant]
  requires = (rule,) + (MUON_REQUIRES if variant == "x muon" else ())
  return Method(f"{rule}[{granularity}] {variant}", f"reference 000, {granularity}", build,
                kind, settings, schedule=schedule, clamps=True, requires=requires)


def methods() -> list[Method]:
  """Every method of the study, in table order (``adamw`` first: the others need its rate)."""
  rows = [
      Method("adamw", BASELINE, lambda r: _adamw(r.lr), "adam",
             f"optax.adamw(weight_decay={WEIGHT_DECAY:g}, kernels and embeddings)",
             requires=("adam_mini_weight_decay_mask",)),
      Method("adafactor", BASELINE, lambda r: optax.adafactor(r.lr), "sgd",
             "optax.adafactor defaults (relative steps)"),
      Method("sgd_momentum", BASELINE, lambda r: optax.sgd(r.lr, momentum=0.9), "sgd",
             "optax.sgd(momentum=0.9)"),
      Method("muon", MUON,
             lambda r: nlr.muon(r.lr, weight_decay=WEIGHT_DECAY, adam_learning_rate=r.adam_lr,
                                adam_weight_decay=WEIGHT_DECAY),
             "sgd", f"nlr.muon defaults, weight_decay={WEIGHT_DECAY:g} (both parts); AdamW "
                    "leaves at AdamW's tuned rate", requires=("muon",)),
      Method("normuon", MUON,
             lambda r: nlr.normuon(r.lr, weight_decay=WEIGHT_DECAY,
                                   adam_learning_rate=r.adam_lr,
                                   adam_weight_decay=WEIGHT_DECAY),
             "sgd", f"nlr.normuon defaults, weight_decay={WEIGHT_DECAY:g} (both parts); AdamW "
                    "leaves at AdamW's tuned rate", requires=("normuon",)),
      Method("adam_mini", LEARNED,
             lambda r: nlr.adam_mini(r.lr, weight_decay=WEIGHT_DECAY, on_unrecognised="ignore"),
             "adam", f"blocks from paths, weight_decay={WEIGHT_DECAY:g}",
             requires=("adam_mini",)),
      Method("scale_sgd", LEARNED,
             lambda r: nlr.scale_sgd(r.lr, weight_decay=WEIGHT_DECAY, head=r.problem.head),
             "adam", f"SCALE: per-neuron normalised SGD, momentum on the head, AdamW on vectors, "
                     f"weight_decay={WEIGHT_DECAY:g}", requires=("scale_sgd",)),
      Method("adam_hd", LEARNED, lambda r: nlr.adam_hd(r.lr, ADAM_HD_HYPER_LR), "adam",
             f"global rate, hyper_lr={ADAM_HD_HYPER_LR:g}", clamps=True, requires=("adam_hd",)),
  ]
  for granularity in ("element", "neuron"):
    for rule in SEED000_RULES:
      rows.append(seed000_method(rule, granularity, "ref"))
      rows.append(seed000_method(rule, granularity, "ref", schedule="constant"))
      rows.append(seed000_method(rule, granularity, "x adam"))
      rows.append(seed000_method(rule, granularity, "x muon"))
  return rows


def load_user_method(spec: str, grid: Optional[tuple[float, float]] = None,
                     taken: Sequence[str] = ()) -> Method:
  """The method of ``--method-from module:function`` (or ``path/file.py:function``).

  ``function(learning_rate)`` gets the scheduled learning rate (an optax
  schedule) and returns an ``optax.GradientTransformation``; the method is named
  after it (`` (user)`` added if a built-in has that name)."""
  target, sep, func = spec.rpartition(":")
  if not sep or not target or not func:
    raise ValueError(f"--method-from {spec!r}: expected module:function or file.py:function")
  if target.endswith(".py") or "/" in target or os.sep in target:
    path = pathlib.Path(target).expanduser().resolve()
    if not path.exists():
      raise FileNotFoundError(f"--method-from {spec!r}: {path} does not exist")
    name = f"_convergence_user_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
  else:
    if os.getcwd() not in sys.path:
      sys.path.insert(0, os.getcwd())
    module = importlib.import_module(target)
  make_tx = getattr(module, func, None)
  if not callable(make_tx):
    raise AttributeError(f"--method-from {spec!r}: {target} has no function {func!r}")
  name = func if func not in taken else f"{func} (user)"
  rates: RateSpec = tuple(grid) if grid else "adam"
  return Method(name, USER, lambda r: make_tx(r.lr), rates,
                f"{spec}(learning_rate), warm-up-cosine schedule")


# ---------------------------------------------------------------------------
# Training: a whole run as one pure function, vmapped over (rate, seed).


def clamp_fractions(opt_state: Any) -> dict[str, jax.Array]:
  """Fractions of units at each clamp, mean over the governed leaves (rate_summary)."""
  summary = nlr.rate_summary(opt_state)
  out = {}
  for clamp in ("min", "max"):
    values = [v for k, v in summary.items() if k.endswith(f"/frac_at_{clamp}_lr")]
    if values:
      out[f"at_{clamp}_lr"] = jnp.mean(jnp.stack(values))
  return out


def train_step(problem: Problem, tx: optax.GradientTransformation):
  """``((params, state), indices) -> ((params, state), loss)`` for ``lax.scan``."""

  def step(carry, idx, data):
    params, state = carry
    loss, grads = jax.value_and_grad(problem.loss)(params, problem.batch(data["train"], idx))
    updates, state = tx.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), loss

  return step


def make_runner(problem: Problem, method: Method, evals: int) -> Callable:
  """``(rates, seeds, adam_rate, data) -> outputs``: whole runs, jitted and vmapped over
  runs (``adam_rate``: the scheduled AdamW's peak, shared by the runs)."""
  every = problem.steps // evals

  def one_run(rate, seed, adam_rate, data):
    k_init, k_data = jax.random.split(jax.random.key(seed))
    params = problem.init(k_init)
    tx = method.optimizer(rate, adam_rate, problem)
    step = train_step(problem, tx)
    idx = problem.sample(k_data, every * evals)
    idx = idx.reshape((evals, every) + idx.shape[1:])

    def chunk(carry, chunk_idx):
      carry, losses = jax.lax.scan(lambda c, i: step(c, i, data), carry, chunk_idx)
      return carry, (problem.scores(carry[0], data["val"]), losses.mean())

    start = problem.scores(params, data["val"])
    (params, state), (val, train) = jax.lax.scan(chunk, (params, tx.init(params)), idx)
    out = {"val": jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), start, val),
           "train_loss": train, "clamps": clamp_fractions(state)}
    if "test" in data:
      out["test"] = problem.scores(params, data["test"])
    return out

  return jax.jit(jax.vmap(one_run, in_axes=(0, 0, None, None)))


@dataclasses.dataclass
class RunSet:
  """The outputs of one vmapped call: one entry per run."""

  rates: list[float]
  seeds: list[int]
  eval_steps: list[int]
  val: dict[str, np.ndarray]  # score -> (runs, evals + 1)
  test: dict[str, np.ndarray]  # score -> (runs,)
  train_loss: np.ndarray  # (runs, evals): mean minibatch loss of each chunk
  clamps: dict[str, np.ndarray]  # "at_min_lr"/"at_max_lr" -> (runs,)
  seconds: float  # wall time of the call

  @property
  def final_loss(self) -> np.ndarray:
    return self.val["loss"][:, -1]

  @property
  def failed(self) -> np.ndarray:
    """Non-finite, or worse than at initialisation."""
    final, first = self.final_loss, self.val["loss"][:, 0]
    return ~np.isfinite(final) | (final > first)


def execute(compiled: Callable, problem: Problem, rates: Sequence[float],
            seeds: Sequence[int], adam_rate: float, evals: int) -> RunSet:
  start = time.perf_counter()
  out = jax.device_get(jax.block_until_ready(
      compiled(jnp.asarray(rates, jnp.float32), jnp.asarray(seeds, jnp.int32),
               jnp.float32(adam_rate), problem.data)))
  seconds = time.perf_counter() - start
  every = problem.steps // evals
  return RunSet(list(rates), list(seeds), [k * every for k in range(evals + 1)],
                {k: np.asarray(v, np.float64) for k, v in out["val"].items()},
                {k: np.asarray(v, np.float64) for k, v in out.get("test", {}).items()},
                np.asarray(out["train_loss"], np.float64),
                {k: np.asarray(v, np.float64) for k, v in out["clamps"].items()}, seconds)


def pick_rate(rates: Sequence[float], final: np.ndarray, failed: np.ndarray) -> float:
  """The rate with the lowest final validation loss (failed runs never win; if
  every run failed, the lowest rate)."""
  scores = np.where(failed, np.inf, final)
  return rates[int(np.argmin(scores))] if np.isfinite(scores).any() else min(rates)


def state_bytes_per_param(problem: Problem, method: Method) -> float:
  """Optimizer-state bytes (array leaves, abstractly) per model parameter."""
  params = jax.eval_shape(lambda: problem.init(jax.random.key(0)))
  state = jax.eval_shape(lambda p: method.optimizer(1e-3, 1e-3, problem).init(p), params)
  nbytes = lambda tree: sum(x.size * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
  return nbytes(state) / sum(x.size for x in jax.tree.leaves(params))


def make_timer(problem: Problem, method: Method) -> Callable:
  """``(rate, adam_rate, params, indices, data) -> params``: one run of ``len(indices)``
  training steps in a ``lax.scan``, jitted (the optimizer state is initialised inside)."""

  def run(rate, adam_rate, params, idx, data):
    tx = method.optimizer(rate, adam_rate, problem)
    step = train_step(problem, tx)
    return jax.lax.scan(lambda c, i: step(c, i, data), (params, tx.init(params)), idx)[0][0]

  return jax.jit(run)


@dataclasses.dataclass
class Prepared:
  """A method's programs, compiled in a worker thread; run only in the main thread
  (two executions at once can deadlock XLA:CPU)."""

  method: Method
  compiled: dict[int, Any]  # batch size -> the vmapped whole runs, compiled
  timer: Any  # ``make_timer`` compiled, or None
  state_bytes: float


def prepare(problem: Problem, method: Method, sizes: Sequence[int],
            timing: bool, evals: int) -> Prepared:
  """Traces and compiles ``method``'s programs from abstract shapes (executes nothing),
  one per batch size in ``sizes``."""
  spec = jax.ShapeDtypeStruct
  runner = make_runner(problem, method, evals)
  compiled = {n: runner.lower(spec((n,), jnp.float32), spec((n,), jnp.int32),
                              spec((), jnp.float32), problem.data).compile()
              for n in sorted(set(sizes))}
  timer = None
  if timing:
    params = jax.eval_shape(lambda: problem.init(jax.random.key(0)))
    idx = jax.eval_shape(lambda: problem.sample(jax.random.key(1), TIMING_STEPS))
    timer = make_timer(problem, method).lower(spec((), jnp.float32), spec((), jnp.float32),
                                              params, idx, problem.data).compile()
  return Prepared(method, compiled, timer, state_bytes_per_param(problem, method))


def timed_calls(problem: Problem, timer: Callable, rate: float,
                adam_rate: float) -> Callable[[], float]:
  """A function returning the ms per step of one call of ``timer`` (warmed up)."""
  params = problem.init(jax.random.key(0))
  idx = problem.sample(jax.random.key(1), TIMING_STEPS)
  args = (jnp.float32(rate), jnp.float32(adam_rate), params, idx, problem.data)
  jax.block_until_ready(timer(*args))  # compiles if needed, warms up

  def call() -> float:
    start = time.perf_counter()
    jax.block_until_ready(timer(*args))
    return 1e3 * (time.perf_counter() - start) / TIMING_STEPS

  return call


def time_step(problem: Problem, timer: Callable, rate: float, adam_rate: float,
              reference: Optional[tuple[Callable, float]] = None,
              repeats: int = TIMING_REPEATS) -> tuple[float, Optional[float]]:
  """ms per training step of ``timer`` (median of ``repeats`` calls) and, with a
  ``reference`` (its timer and rate: AdamW's), the median ratio to it, each call of
  ``timer`` paired with one of the reference right after (so that the slow phases
  of a shared machine cancel out of the ratio)."""
  call = timed_calls(problem, timer, rate, adam_rate)
  ref = timed_calls(problem, *reference, adam_rate) if reference else None
  times, ratios = [], []
  for _ in range(repeats):
    times.append(call())
    if ref is not None:
      ratios.append(times[-1] / ref())
  return statistics.median(times), (statistics.median(ratios) if ratios else None)


@dataclasses.dataclass
class MethodResult:
  """Everything measured for one method on one task."""

  method: Method
  grid: RunSet
  refine: Optional[RunSet]
  seeds: RunSet
  rate: float
  state_bytes: float
  ms_per_step: float
  ms_source: str
  ms_vs_adamw: Optional[float] = None  # paired measurement, see time_step
  summary: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def tuning(self) -> tuple[list[float], np.ndarray, np.ndarray]:
    """Rates, final validation losses and failures of the grid and refinement runs."""
    sets = [self.grid] + ([self.refine] if self.refine else [])
    return ([r for s in sets for r in s.rates], np.concatenate([s.final_loss for s in sets]),
            np.concatenate([s.failed for s in sets]))


def run_method(problem: Problem, prepared: Prepared, budget: Budget, seeds: int,
               adam_rate: float) -> MethodResult:
  """Grid (seed 0), refinement around its best (seed 0), then the chosen rate from
  ``seeds`` fresh seeds.

  ms/step: from ``prepared.timer`` when there is one (:func:`time_methods`, after
  every method has run), else the seed runs' wall time per run and step."""
  method = prepared.method
  grid = execute(prepared.compiled[budget.grid_points], problem,
                 rate_grid(method.rates, budget.grid_points), [0] * budget.grid_points,
                 adam_rate, budget.evals)
  refine = None
  if budget.refine:
    best = pick_rate(grid.rates, grid.final_loss, grid.failed)
    refine = execute(prepared.compiled[len(budget.refine)], problem,
                     refined_rates(best, budget.refine), [0] * len(budget.refine), adam_rate,
                     budget.evals)
  result = MethodResult(method, grid, refine, grid, 0.0, prepared.state_bytes, 0.0, "")
  result.rate = pick_rate(*result.tuning)
  result.seeds = execute(prepared.compiled[seeds], problem, [result.rate] * seeds,
                         list(range(1, seeds + 1)), adam_rate, budget.evals)
  result.ms_per_step = 1e3 * result.seeds.seconds / (problem.steps * seeds)
  result.ms_source = "vmapped seed runs: wall time / (steps x seeds)"
  return result


def time_methods(problem: Problem, prepared: Sequence[Prepared],
                 results: Sequence[MethodResult], adam_rate: float) -> None:
  """Sets each result's ms/step (and its ratio to AdamW's) from the compiled
  single-run timers, one at a time."""
  ref = next(((p.timer, r.rate) for p, r in zip(prepared, results)
              if p.method.key == REFERENCE and p.timer is not None), None)
  for p, r in zip(prepared, results):
    if p.timer is not None:
      r.ms_per_step, r.ms_vs_adamw = time_step(problem, p.timer, r.rate, adam_rate, ref)
      r.ms_source = "single jitted run"


# ---------------------------------------------------------------------------
# Summaries: each method's from its runs; the task's (target, steps to it,
# ratios to AdamW) from the JSON, so that merged and replotted studies agree.


def summarise(r: MethodResult) -> dict[str, Any]:
  """The method's own summary (nothing that depends on the other methods)."""
  s = r.seeds
  rates, final, failed = r.tuning
  summary = {
      "rate": r.rate,
      "rate_at_grid_edge": r.rate in (min(rates), max(rates)),
      "val_loss_mean": float(np.mean(s.final_loss)),
      "val_loss_std": float(np.std(s.final_loss)),
      "seeds_failed": int(s.failed.sum()),
      "grid_spread": grid_spread(rates, final, failed),
      "grid_spread_below": grid_spread(rates, final, failed, up_to=r.rate),
      "grid_failed": int(failed.sum()),
      "grid_points": len(rates),
      "state_bytes_per_param": r.state_bytes,
      "ms_per_step": r.ms_per_step,
      "ms_source": r.ms_source,
      "ms_vs_adamw_paired": r.ms_vs_adamw,
  }
  for name, values in s.val.items():
    if name != "loss":
      summary[f"val_{name}_mean"] = float(np.mean(values[:, -1]))
      summary[f"val_{name}_std"] = float(np.std(values[:, -1]))
  for name, values in s.test.items():
    summary[f"test_{name}_mean"] = float(np.mean(values))
  if r.method.clamps:
    for name, values in s.clamps.items():
      summary[name] = float(np.mean(values))
  return summary


def grid_spread(rates: Sequence[float], final: np.ndarray, failed: np.ndarray,
                up_to: Optional[float] = None) -> Optional[float]:
  """max/min final validation loss over the non-failed tuning runs (``up_to``: only
  those at rates up to it: the sensitivity to a rate chosen too low)."""
  keep = ~failed & (np.asarray(rates) <= (np.inf if up_to is None else up_to))
  ok = final[keep]
  return float(ok.max() / ok.min()) if ok.size and ok.min() > 0 else None


def seed_curves(method: dict[str, Any]) -> np.ndarray:
  """(seeds, evals + 1) validation losses of a JSON method entry; NaN where missing."""
  return np.asarray([[np.nan if v is None else v for v in run["val_curve"]["loss"]]
                     for run in method["seeds"]], float)


def steps_to(method: dict[str, Any], eval_steps: Sequence[int],
             target: float) -> Optional[int]:
  """First evaluated step where the seeds' mean validation loss is at most ``target``."""
  mean = seed_curves(method).mean(axis=0)
  hit = np.flatnonzero(mean <= target * (1 + 1e-9))
  return int(eval_steps[hit[0]]) if hit.size else None


def finalise_task(task: dict[str, Any]) -> None:
  """Sets the task's target (the scheduled AdamW's final mean validation loss) and each
  method's steps to it and ratios to AdamW (time, state), from the JSON entry."""
  ms = task.get("methods") or {}
  ref = ms.get(REFERENCE)
  target_loss = ref["summary"]["val_loss_mean"] if ref else None
  task["target"] = ({"method": REFERENCE, "val_loss": target_loss}
                    if target_loss is not None else {})
  # The curves' mean at AdamW's last evaluation: its summary's mean, computed as the
  # curves' are (from the stored 6-digit values), so that AdamW reaches it at its end.
  curve_target = float(seed_curves(ref).mean(axis=0)[-1]) if ref else None
  for m in ms.values():
    s = m["summary"]
    s["steps_to_target"] = (steps_to(m, task["eval_steps"], curve_target)
                            if target_loss is not None else None)
    if ref is not None:
      r = ref["summary"]
      s["ms_vs_adamw"] = (s.get("ms_vs_adamw_paired")
                          or (s["ms_per_step"] / r["ms_per_step"] if r["ms_per_step"] else None))
      s["state_vs_adamw"] = (s["state_bytes_per_param"] / r["state_bytes_per_param"]
                             if r["state_bytes_per_param"] else None)


# ---------------------------------------------------------------------------
# Output: JSON, CSV, markdown, figures.


def clean(x: Any) -> Any:
  """JSON-ready: arrays to lists, floats to 6 significant digits, non-finite to None."""
  if isinstance(x, dict):
    return {k: clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [clean(v) for v in x]
  if isinstance(x, np.ndarray):
    return clean(x.tolist())
  if isinstance(x, (bool, np.bool_)):
    return bool(x)
  if isinstance(x, (int, np.integer)):
    return int(x)
  if isinstance(x, (float, np.floating)):
    return float(f"{x:.6g}") if math.isfinite(x) else None
  return x


def runset_json(runs: Optional[RunSet]) -> list[dict[str, Any]]:
  out = []
  if runs is None:
    return out
  for i, (rate, seed) in enumerate(zip(runs.rates, runs.seeds)):
    out.append({
        "rate": rate, "seed": seed, "failed": bool(runs.failed[i]),
        "final": {f"val_{k}": v[i, -1] for k, v in runs.val.items()}
                 | {f"test_{k}": v[i] for k, v in runs.test.items()},
        "val_curve": {k: v[i] for k, v in runs.val.items()},
        "train_loss": runs.train_loss[i],
        "clamps": {k: v[i] for k, v in runs.clamps.items()},
    })
  return out


def method_json(r: MethodResult) -> dict[str, Any]:
  return {"method": r.method.name, "schedule": r.method.schedule, "family": r.method.family,
          "settings": r.method.settings, "grid_kind": r.method.rates,
          "grid": runset_json(r.grid), "refine": runset_json(r.refine),
          "seeds": runset_json(r.seeds), "grid_seconds": r.grid.seconds,
          "refine_seconds": r.refine.seconds if r.refine else 0.0,
          "seed_seconds": r.seeds.seconds, "summary": summarise(r)}


def fmt(x: Optional[float], digits: int = 3) -> str:
  if x is None or not math.isfinite(x):
    return "-"
  return f"{x:.{digits}g}"


WELCH_T = 2.2  # |t| beyond this is a win or a loss: about p < 0.05 with 7 seeds each


def seed_losses(method: dict[str, Any]) -> np.ndarray:
  return np.asarray([np.nan if run["final"]["val_loss"] is None else run["final"]["val_loss"]
                     for run in method["seeds"]], float)


def verdict(method: dict[str, Any], target: Optional[dict[str, Any]]) -> str:
  """``win`` / ``tie`` / ``loss`` against the target's seeds (Welch's t of the log
  losses beyond ``WELCH_T``), ``target`` for the target itself, ``fails`` if a seed
  failed; empty without a target."""
  if target is None:
    return ""
  if method is target:
    return "target"
  if any(run["failed"] for run in method["seeds"]):
    return "fails"
  a, b = np.log(seed_losses(method)), np.log(seed_losses(target))
  if not (np.isfinite(a).all() and np.isfinite(b).all()):
    return "fails" if not np.isfinite(a).all() else "win"
  var = lambda x: x.var(ddof=1) if x.size > 1 else 0.0
  se = math.sqrt(var(a) / a.size + var(b) / b.size)
  diff = a.mean() - b.mean()
  t = diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
  return "win" if t < -WELCH_T else "loss" if t > WELCH_T else "tie"


def csv_rows(study: dict[str, Any]) -> list[dict[str, Any]]:
  """``summary.csv``'s rows: one per task x steps x method x schedule."""
  rows = []
  for key, task in study["tasks"].items():
    ms = task.get("methods") or {}
    ref = ms.get(REFERENCE)
    for m in ms.values():
      s = m["summary"]
      cell = lambda x: "" if x is None else x
      rows.append({
          "task": task.get("task", key), "steps": task["steps"], "method": m["method"],
          "schedule": m["schedule"], "rate": s["rate"], "mean": cell(s["val_loss_mean"]),
          "std": cell(s["val_loss_std"]), "seeds": len(m["seeds"]),
          "bytes_per_param": f"{s['state_bytes_per_param']:.4g}",
          "steps_to_target": cell(s.get("steps_to_target")), "verdict": verdict(m, ref)})
  return rows


def write_csv(study: dict[str, Any], path: pathlib.Path) -> None:
  with path.open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(study))


def summary_table(study: dict[str, Any]) -> list[str]:
  """Every method x task: final validation loss, its ratio to AdamW's and the verdict;
  grid spread and failures; state bytes per parameter."""
  tasks = {n: t for n, t in study["tasks"].items() if t.get("methods")}
  names = list(dict.fromkeys(m for t in tasks.values() for m in t["methods"]))
  short = " / ".join(tasks)
  head = ([f"{n}: val {t['loss']}" for n, t in tasks.items()]
          + [f"grid spread, all/low ({'; '.join(tasks)})", f"failed rates ({short})",
             f"B/param ({short})"])
  lines = ["| method | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
  for name in names:
    cells, spread, failed, nbytes = [], [], [], []
    for task in tasks.values():
      m = task["methods"].get(name)
      if m is None:
        cells.append("-")
        spread.append("-")
        failed.append("-")
        nbytes.append("-")
        continue
      s = m["summary"]
      target = task["target"].get("val_loss")
      ratio = s["val_loss_mean"] / target if s["val_loss_mean"] and target else None
      v = verdict(m, task["methods"].get(REFERENCE))
      cells.append(f"{fmt(s['val_loss_mean'], 4)} "
                   + (f"({ratio:.2f}x, {v})" if ratio else f"({v or 'no target'})"))
      spread.append(f"{fmt(s['grid_spread'], 2)}/{fmt(s.get('grid_spread_below'), 2)}")
      failed.append(f"{s['grid_failed']}/{s['grid_points']}")
      nbytes.append(f"{s['state_bytes_per_param']:.2f}")
    cells += ["; ".join(spread), " / ".join(failed), " / ".join(nbytes)]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return lines


def budget_text(b: dict[str, Any]) -> str:
  refine = (f", refined with {len(b['refine'])} rates around the best (x"
            + ", x".join(f"10^{math.log10(f):+.2g}" for f in b["refine"]) + ")"
            if b["refine"] else ", no refinement")
  return (f"{b['grid_points']} grid rates{refine}, {b['seeds']} seeds, "
          f"{b['evals']} evaluations")


def markdown(study: dict[str, Any]) -> str:
  """A summary table, then one table per task, from the JSON-ready study."""
  cfg = study["config"]
  lines = [
      "# Convergence study (v2: scheduled, refined)",
      "",
      "Every method trains under the same schedule, "
      "`optax.warmup_cosine_decay_schedule(0.0, peak, steps // 10, steps, 0.1 * peak)`: "
      "linear warm-up over the first 10% of the steps, cosine decay to 10% of the peak. "
      "The peak rate is the one hyperparameter tuned: a grid of "
      f"{GRID_POINTS} rates half a decade apart by method kind (seed 0, chosen on the "
      "validation split), refined with the quarter-decade neighbours of its best "
      "(best x 10^-0.25 and x 10^0.25; the best of the 9 runs wins), then the chosen rate "
      f"from fresh seeds ({SEEDS}; {LONG_SEEDS} on the 3x-steps variant); scores are "
      "mean ± std over those seeds. Schedule `constant`: the reference-000 rules on the raw "
      "gradient at a constant rate (their rates are their own schedule), same tuning. "
      "Muon-family methods run their AdamW leaves at the scheduled AdamW's tuned peak on "
      "the same task. The target of each task is the scheduled AdamW's final mean "
      f"validation loss. Measured on {cfg['machine']}; "
      f"{cfg['wall_seconds'] / 60:.1f} min in all"
      + ("; ms/step re-measured alone afterwards (`--retime`)." if cfg.get("retimed_on")
         else "."),
      "",
      "Columns: *rate* the chosen peak rate (`*`: at the edge of the tuned rates); *steps to "
      "target* the first evaluated step where the mean validation loss reaches AdamW's "
      "final mean; *spread* max/min final validation loss over the non-failed grid and "
      "refinement rates / over those up to the chosen rate (too low a rate), *failed* "
      "how many of them ended non-finite or above the initial loss; *B/param* "
      "optimizer-state bytes per parameter; *ms/step* one jitted training step after "
      "compilation (x AdamW); *min/max clamp* fraction of units at `min_lr` / `max_lr` at "
      "the end (mean over governed leaves and seeds). The same numbers, one row per task x "
      "steps x method x schedule: `summary.csv`.",
      *([f"Not run (their `nlr` names are missing): "
         + ", ".join(f"{k} ({v})" for k, v in cfg["unavailable_methods"].items()) + "."]
        if cfg.get("unavailable_methods") else []),
      "",
      "## Summary",
      "",
      "Final validation loss, mean over seeds (its ratio to the scheduled AdamW's; *win* / "
      "*loss*: the log losses of the seeds lower / higher than AdamW's by "
      f"more than {WELCH_T:g} standard errors (Welch), else *tie*; *fails*: a seed "
      "failed). Grid spread: max/min final validation loss over the non-failed tuning "
      "rates, all of them / those up to the chosen rate (the cost of starting too low); "
      "failed rates: of the tuning runs.",
      "",
      *summary_table(study),
  ]
  for name, task in study["tasks"].items():
    if "unavailable" in task:
      lines += ["", f"## {name}", "", f"Not run: {task['unavailable']}"]
      continue
    target = task["target"]
    metric = task["metric"]
    lines += [
        "", f"## {task['title']} (`{name}`)", "",
        f"{task['description']}; {task['steps']} steps, {task['parameters']:,} parameters; "
        f"{budget_text(task['budget'])}. Target: the scheduled AdamW's final validation "
        f"{task['loss']} {fmt(target.get('val_loss'), 4)}.",
        *([f"Failed to build: " + "; ".join(f"{k} ({v})" for k, v in task["errors"].items())
           + "."] if task.get("errors") else []),
        "",
    ]
    head = ["method", "schedule", "rate", f"val {task['loss']}", "verdict"]
    if metric:
      head += [f"val {metric}", f"test {metric}"]
    head += ["steps to target", "spread", "failed", "B/param", "ms/step", "min/max clamp"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, m in task["methods"].items():
      s = m["summary"]
      loss = (f"{fmt(s['val_loss_mean'], 4)} ± {fmt(s['val_loss_std'], 2)}"
              + (f" ({s['seeds_failed']} failed)" if s["seeds_failed"] else ""))
      row = [key, m["schedule"], f"{s['rate']:.3g}" + ("*" if s["rate_at_grid_edge"] else ""),
             loss, verdict(m, task["methods"].get(REFERENCE)) or "-"]
      if metric:
        row += [f"{fmt(s.get(f'val_{metric}_mean'), 3)} ± {fmt(s.get(f'val_{metric}_std'), 1)}",
                fmt(s.get(f"test_{metric}_mean"), 3)]
      steps = s.get("steps_to_target")
      clamp = ("-" if "at_min_lr" not in s else
               f"{fmt(s['at_min_lr'], 2)} / {fmt(s.get('at_max_lr'), 2)}")
      row += ["never" if steps is None else str(steps),
              f"{fmt(s['grid_spread'])} / {fmt(s.get('grid_spread_below'))}",
              f"{s['grid_failed']}/{s['grid_points']}", f"{s['state_bytes_per_param']:.2f}",
              f"{fmt(s['ms_per_step'])} ({fmt(s.get('ms_vs_adamw'), 2)}x)", clamp]
      lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines) + "\n"


STYLES = {" ref (constant)": ":", " ref": "--", " x adam": "-", " x muon": "-."}


def family_panels(task: dict[str, Any]) -> list[tuple[str, list[str]]]:
  """(title, method keys) per panel: baselines, then the other families."""
  by_family: dict[str, list[str]] = {}
  for key, m in task["methods"].items():
    by_family.setdefault(m["family"], []).append(key)
  known = [(f, by_family[f]) for f in FAMILIES if f in by_family]
  return known + [(f, names) for f, names in by_family.items() if f not in FAMILIES]


def line_style(name: str, index: int) -> dict[str, Any]:
  variant = next((v for v in STYLES if name.endswith(v)), None)
  rule = next((i for i, r in enumerate(SEED000_RULES) if name.startswith(r)), None)
  color = plt.get_cmap("tab10").colors[(rule if rule is not None else index) % 10]
  return {"color": color, "ls": STYLES.get(variant, "-")}


def panel_axes(n: int) -> tuple[plt.Figure, np.ndarray]:
  """A 2-column grid of ``n`` panels sharing the y axis, as a flat array."""
  rows = -(-n // 2)
  fig, axes = plt.subplots(rows, 2, figsize=(13, 4.8 * rows), sharey=True, squeeze=False,
                           layout="constrained")
  for ax in axes.flat[n:]:
    ax.set_axis_off()
  return fig, axes.flat[:n]


def band(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Mean, min and max over runs (axis 0) of the finite values; NaN where none."""
  ok = np.isfinite(curves)
  count = ok.sum(0)
  safe = np.where(ok, curves, 0.0)
  mean = np.where(count > 0, safe.sum(0) / np.maximum(count, 1), np.nan)
  low = np.where(count > 0, np.where(ok, curves, np.inf).min(0), np.nan)
  high = np.where(count > 0, np.where(ok, curves, -np.inf).max(0), np.nan)
  return mean, low, high


def label_log_axis(ax: plt.Axes) -> None:
  """Labels the minor ticks too when the log axis spans less than a decade and a half."""
  low, high = ax.get_ylim()
  if 0 < low < high < 30 * low:
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
    ax.tick_params(axis="y", which="minor", labelsize=7)


def plot_curves(name: str, task: dict[str, Any], path: pathlib.Path) -> None:
  """Validation loss at each method's chosen rate: mean over seeds, min-max band."""
  panels = family_panels(task)
  fig, axes = panel_axes(len(panels))
  steps = np.asarray(task["eval_steps"])
  target = task["target"].get("val_loss")
  for ax, (title, names) in zip(axes, panels):
    for i, method in enumerate(names):
      style = line_style(method, i)
      mean, low, high = band(seed_curves(task["methods"][method]))
      ax.plot(steps, mean, lw=1.5, label=method, **style)
      ax.fill_between(steps, low, high, alpha=0.15, color=style["color"])
    if target is not None:
      ax.axhline(target, color="black", lw=0.8, ls="-.")
    ax.set_title(title, fontsize=10)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
  for ax in axes[::2]:
    ax.set_ylabel(f"validation {task['loss']}\n(mean over seeds, min-max band)")
  fig.suptitle(f"{task['title']}: each method at its chosen peak rate, warm-up-cosine "
               "schedule unless (constant); dash-dot: the target (scheduled AdamW)",
               fontsize=11)
  finite = np.asarray([v for m in task["methods"].values() for run in m["seeds"]
                       for v in run["val_curve"]["loss"] if v is not None])
  finite = finite[finite > 0]
  if finite.size:
    axes[0].set_ylim(np.min(finite) * 0.8, min(np.max(finite), np.median(finite) * 30))
  label_log_axis(axes[0])
  save(fig, path)


def plot_rates(name: str, task: dict[str, Any], path: pathlib.Path) -> None:
  """Final validation loss against the peak rate (seed 0: grid and refinement), every
  method; x: failed."""
  panels = family_panels(task)
  fig, axes = panel_axes(len(panels))
  finite = [run["final"]["val_loss"] for m in task["methods"].values()
            for run in m["grid"] + m.get("refine", []) if not run["failed"]]
  top = max(finite) * 1.5 if finite else 1.0
  for ax, (title, names) in zip(axes, panels):
    for i, method in enumerate(names):
      m = task["methods"][method]
      runs = sorted(m["grid"] + m.get("refine", []), key=lambda run: run["rate"])
      rates = np.asarray([run["rate"] for run in runs])
      loss = np.asarray([np.nan if run["failed"] else run["final"]["val_loss"] for run in runs])
      style = line_style(method, i)
      ax.plot(rates, loss, marker="o", ms=3, lw=1.3, label=method, **style)
      failed = np.isnan(loss)
      ax.plot(rates[failed], np.full(failed.sum(), top), "x", color=style["color"], ms=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("peak rate")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
  for ax in axes[::2]:
    ax.set_ylabel(f"final validation {task['loss']} (seed 0)")
  label_log_axis(axes[0])
  fig.suptitle(f"{task['title']}: sensitivity to the peak rate, grid and refinement "
               "(x at the top: failed run)", fontsize=11)
  save(fig, path)


def save(fig: plt.Figure, path: pathlib.Path) -> None:
  """Writes ``fig`` as a 256-colour PNG (about a third of the RGBA size)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top (matplotlib's dependency)
  buffer = io.BytesIO()
  fig.savefig(buffer, dpi=80)
  plt.close(fig)
  image = Image.open(buffer).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
  image.save(path, optimize=True)


def write_outputs(study: dict[str, Any], out: pathlib.Path) -> None:
  """convergence.json, summary.csv, convergence.md and the figures, from ``study``
  (its task-level numbers recomputed: see :func:`finalise_task`)."""
  out.mkdir(parents=True, exist_ok=True)
  study = clean(study)
  for task in study["tasks"].values():
    if "methods" in task:
      finalise_task(task)
  study = clean(study)
  (out / "convergence.json").write_text(json.dumps(study, separators=(",", ":")))
  write_csv(study, out / "summary.csv")
  (out / "convergence.md").write_text(markdown(study))
  for name, task in study["tasks"].items():
    if task.get("methods"):
      plot_curves(name, task, out / f"curves_{name}.png")
      plot_rates(name, task, out / f"rates_{name}.png")


# ---------------------------------------------------------------------------
# The study.


def build_problem(task: Task, budget_quick: bool, evals: int) -> Problem:
  """The task's problem at its steps (x ``steps_factor``, a multiple of ``evals``)."""
  problem = task.build(load_example(task.example), budget_quick)
  steps = problem.steps * task.steps_factor
  description = problem.description + (f"; {task.steps_factor}x the steps"
                                        if task.steps_factor != 1 else "")
  return dataclasses.replace(problem, steps=steps // evals * evals, description=description)


def task_methods(task: Task, selected: Sequence[Method]) -> list[Method]:
  return [m for m in selected if task.only is None or m.key in task.only]


def run_task(task: Task, selected: Sequence[Method], budget: Budget,
             existing: Optional[dict[str, Any]], command: str,
             log: Callable[[str], None]) -> dict[str, Any]:
  """The selected methods on one task, merged into ``existing`` (the task's entry in
  ``--out``'s JSON) when its steps and evaluations match; the task's JSON entry.

  AdamW (the target, and the AdamW rate of the Muon-family methods) runs first; it
  is added when neither selected nor in ``existing``. ``budget.jobs`` worker threads
  compile the methods' programs ahead (XLA's compilation is single-threaded); the
  main thread runs them in order, then times every method's step alone.
  """
  try:
    problem = build_problem(task, budget.quick, budget.evals)
  except (FileNotFoundError, ImportError, AttributeError) as e:
    log(f"{task.name}: not run ({e})")
    return {"title": task.title, "task": task.csv_name,
            "unavailable": f"examples/{task.example}.py: {e}"}
  seeds = min(task.seeds or budget.seeds, budget.seeds)
  compatible = (existing is not None and existing.get("methods") is not None
                and existing.get("steps") == problem.steps
                and existing.get("budget", {}).get("evals") == budget.evals)
  if existing is not None and not compatible:
    log(f"{task.name}: replacing the stored results (other steps or evaluations)")
  kept = dict(existing["methods"]) if compatible else {}
  chosen = task_methods(task, selected)
  reference = next(m for m in methods() if m.key == REFERENCE)
  adam_rate = None
  if not any(m.key == REFERENCE for m in chosen):
    if REFERENCE in kept:
      adam_rate = kept[REFERENCE]["summary"]["rate"]
    else:
      chosen = [reference] + chosen
  chosen = sorted(chosen, key=lambda m: m.key != REFERENCE)  # AdamW first, else in order
  start = time.perf_counter()
  sizes = [budget.grid_points, seeds] + ([len(budget.refine)] if budget.refine else [])

  results, prepared, errors = [], [], {}
  with concurrent.futures.ThreadPoolExecutor(budget.jobs) as pool:
    futures = [pool.submit(prepare, problem, m, sizes, budget.timing, budget.evals)
               for m in chosen]
    for method, future in zip(chosen, futures):  # in order; later methods compile meanwhile
      t0 = time.perf_counter()
      try:
        p = future.result()
      except Exception as e:  # pylint: disable=broad-except  (an API mismatch: report it)
        errors[method.key] = f"{type(e).__name__}: {e}"
        kept.pop(method.key, None)  # no stale results beside the error
        log(f"{task.name:10s} {method.key:36s} failed to build: {errors[method.key]}")
        continue
      r = run_method(problem, p, budget, seeds, adam_rate if adam_rate is not None else 0.0)
      if method.key == REFERENCE:
        adam_rate = r.rate
      prepared.append(p)
      results.append(r)
      log(f"{task.name:10s} {method.key:36s} rate {r.rate:<8.3g} "
          f"val {np.mean(r.seeds.final_loss):<10.4g} tuning failed {int(r.tuning[2].sum())}"
          f"  {time.perf_counter() - t0:.0f} s")
  time_methods(problem, prepared, results, adam_rate or 0.0)
  seconds = time.perf_counter() - start
  log(f"{task.name}: {seconds:.0f} s")
  new = {r.method.key: method_json(r) for r in results}
  order = [m.key for m in methods()]
  merged = {**kept, **new}
  merged = dict(sorted(merged.items(),
                       key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
  n_params = sum(x.size for x in jax.tree.leaves(jax.eval_shape(problem.init,
                                                                jax.random.key(0))))
  runs = (existing.get("runs", []) if compatible else []) + [
      {"command": command, "machine": machine(), "seconds": seconds, "methods": list(new),
       "budget": budget.json(seeds)}]
  return {
      "title": task.title, "task": task.csv_name, "description": problem.description,
      "loss": task.loss_name, "metric": task.metric, "steps": problem.steps,
      "parameters": n_params, "schedule": "warmup_cosine: linear warm-up over steps // 10, "
                                          "cosine decay to 0.1 x peak",
      "eval_steps": [k * (problem.steps // budget.evals) for k in range(budget.evals + 1)],
      "budget": budget.json(seeds), "seconds": sum(r["seconds"] for r in runs), "runs": runs,
      "errors": {**{k: v for k, v in (existing.get("errors", {}) if compatible else {}).items()
                    if k not in new}, **errors},
      "methods": merged,
  }


def machine() -> str:
  return (f"{platform.machine()} CPU, {os.cpu_count()} cores ({platform.system()}), "
          f"jax {jax.__version__}, optax {optax.__version__}")


def select(rows: Sequence[Any], pattern: Optional[str]) -> list[Any]:
  return [r for r in rows if pattern is None or re.search(pattern, r.name)]


def load_study(out: pathlib.Path, quick: bool,
               log: Callable[[str], None]) -> dict[str, Any]:
  """``out``'s study to merge into: empty if there is none, if it has another format
  (``VERSION``) or the other mode (quick or not)."""
  path = out / "convergence.json"
  empty = {"version": VERSION, "tasks": {}, "config": {}}
  if not path.exists():
    return empty
  study = json.loads(path.read_text())
  if study.get("version") != VERSION:
    log(f"{path}: an older format; replaced, not merged")
    return empty
  if study.get("config", {}).get("quick") != quick:
    log(f"{path}: a {'full' if quick else 'quick'} study; replaced, not merged")
    return empty
  return study


def study_config(study: dict[str, Any], chosen: Sequence[Method], unavailable: dict[str, str],
                 budget: Budget, command: str) -> dict[str, Any]:
  """The merged study's configuration."""
  old = study.get("config", {})
  ran = {k for t in study["tasks"].values() for k in t.get("methods", {})}
  missing = {k: v for k, v in {**old.get("unavailable_methods", {}), **unavailable}.items()
             if k not in ran}
  methods_cfg = {**old.get("methods", {}),
                 **{m.key: {"method": m.name, "schedule": m.schedule, "family": m.family,
                            "settings": m.settings, "grid": m.rates} for m in chosen}}
  return {
      "quick": budget.quick, "grid_points": budget.grid_points, "refine": list(budget.refine),
      "seeds": budget.seeds, "evals": budget.evals,
      "schedule": "optax.warmup_cosine_decay_schedule(0.0, peak, steps // 10, steps, "
                  "0.1 * peak); constant: the peak",
      "grids": {k: rate_grid(k, budget.grid_points) for k in RATE_RANGES},
      "methods": methods_cfg, "unavailable_methods": missing,
      "commands": old.get("commands", []) + [command], "machine": machine(),
      "wall_seconds": sum(t.get("seconds", 0.0) for t in study["tasks"].values()),
      **({"retimed_on": old["retimed_on"]} if "retimed_on" in old else {}),
  }


def retime(out: pathlib.Path, log: Callable[[str], None],
           extra: Sequence[Method] = ()) -> None:
  """Re-measures ms/step of every (task, method) in ``out``'s JSON at its chosen rate
  and rewrites the files."""
  study = json.loads((out / "convergence.json").read_text())
  by_key = {m.key: m for m in [*methods(), *extra]}
  for task in TASKS:
    entry = study["tasks"].get(task.name)
    if not entry or not entry.get("methods"):
      continue
    problem = build_problem(task, False, entry["budget"]["evals"])
    adam_rate = entry["methods"].get(REFERENCE, {}).get("summary", {}).get("rate", 0.0)
    timer = lambda key: make_timer(problem, by_key[key])
    ref = ((timer(REFERENCE), adam_rate) if REFERENCE in entry["methods"] else None)
    for key, m in entry["methods"].items():
      if key not in by_key or not by_key[key].available():
        log(f"{task.name:10s} {key:36s} not retimed (unknown here)")
        continue
      s = m["summary"]
      s["ms_per_step"], s["ms_vs_adamw_paired"] = time_step(problem, timer(key), s["rate"],
                                                            adam_rate, ref)
      s["ms_source"] = "single jitted run (retimed)"
      log(f"{task.name:10s} {key:36s} {s['ms_per_step']:.2f} ms/step "
          f"({fmt(s['ms_vs_adamw_paired'], 3)}x adamw)")
  study["config"]["retimed_on"] = machine()
  write_outputs(study, out)


def positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
  return value


def positive_float(text: str) -> float:
  value = float(text)
  if not value > 0:
    raise argparse.ArgumentTypeError(f"must be positive, got {value}")
  return value


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      epilog="Your method: --method-from module:make_tx (or path/to/file.py:make_tx), where "
             "make_tx(learning_rate) gets the scheduled learning rate (an optax schedule: the "
             "peak under test times the warm-up-cosine shape; the peak is traced, use it only "
             "in arithmetic) and returns an optax.GradientTransformation. It is tuned and run "
             "like every method (grid, refinement, seeds), named after the function, on the "
             "Adam-like grid unless --grid LO HI. --methods none runs only it (and AdamW, the "
             "target). Results merge into --out's JSON: run the study one task at a time "
             "with --tasks '^digits$', '^rnn$', '^char_lm$', '^char_lm_x3$'.")
  p.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results",
                 help="folder for the JSON, the CSV, the table and the figures; results "
                      "already there are kept and merged (default: %(default)s)")
  p.add_argument("--quick", action="store_true",
                 help="every task x method, tiny: 2 grid rates, 2 refinement rates, 2 seeds, "
                      "a few steps")
  p.add_argument("--tasks", default=None,
                 help="regex: only the tasks it matches (" + ", ".join(t.name for t in TASKS)
                      + "; 'char_lm' matches both char_lm tasks, '^char_lm$' only the first; "
                      "char_lm_x3 runs " + ", ".join(LONG_METHODS) + " only)")
  p.add_argument("--methods", default=None,
                 help="regex: only the built-in methods whose key it matches (e.g. "
                      "'adamw|grad_history', 'none' for none of them); AdamW runs anyway "
                      "unless --out holds it for the task")
  p.add_argument("--method-from", action="append", default=[], metavar="MODULE:FUNCTION",
                 help="add your method: FUNCTION(learning_rate schedule) -> "
                      "optax.GradientTransformation, from MODULE (importable from the current "
                      "directory) or a file path.py; repeatable")
  p.add_argument("--grid", nargs=2, type=positive_float, metavar=("LO", "HI"), default=None,
                 help=f"the --method-from methods' grid: {GRID_POINTS} log-spaced peak rates "
                      "from LO to HI (default: the Adam-like grid, 1e-4 to 0.1)")
  p.add_argument("--seeds", type=positive_int, default=None,
                 help=f"seeds per method (default {SEEDS}, {LONG_SEEDS} on char_lm_x3; "
                      f"{GRID_POINTS} reuses the grid's compiled program)")
  p.add_argument("--jobs", type=positive_int, default=2,
                 help="threads compiling ahead (default %(default)s); runs and timings are "
                      "one at a time")
  p.add_argument("--retime", action="store_true",
                 help="re-measure ms/step of the study in --out and rewrite its files")
  p.add_argument("--replot", action="store_true",
                 help="rewrite the table, summary.csv and the figures from the JSON in --out")
  return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = parse_args(argv)
  log = lambda text: print(text, flush=True)
  builtins = methods()
  user = []
  for spec in args.method_from:
    user.append(load_user_method(spec, args.grid,
                                 taken=[m.key for m in builtins] + [m.key for m in user]))
  if args.retime:
    retime(args.out, log, user)
    return
  if args.replot:
    write_outputs(json.loads((args.out / "convergence.json").read_text()), args.out)
    return
  if args.quick:
    # Compilation dominates the quick run: about 2x faster without XLA's optimisations.
    jax.config.update("jax_disable_most_optimizations", True)
  budget = Budget(grid_points=QUICK_GRID_POINTS if args.quick else GRID_POINTS,
                  refine=REFINE, seeds=args.seeds or (QUICK_SEEDS if args.quick else SEEDS),
                  evals=QUICK_EVALS if args.quick else EVALS,
                  timing=not args.quick, quick=args.quick, jobs=args.jobs)
  chosen = [m for m in builtins if args.methods is None or re.search(args.methods, m.key)]
  chosen += user
  command = "python benchmarks/convergence.py " + " ".join(sys.argv[1:] if argv is None
                                                           else argv)
  start = time.perf_counter()
  study = load_study(args.out, args.quick, log)
  unavailable = {m.key: f"needs nlr.{', nlr.'.join(n for n in m.requires if not hasattr(nlr, n))}"
                 for m in chosen if not m.available()}
  for task in select(TASKS, args.tasks):
    study["tasks"][task.name] = run_task(
        task, [m for m in chosen if m.available()], budget, study["tasks"].get(task.name),
        command, log)
  order = [t.name for t in TASKS]
  study["tasks"] = dict(sorted(study["tasks"].items(),
                               key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))
  study["version"] = VERSION
  study["config"] = study_config(study, chosen, unavailable, budget, command)
  write_outputs(study, args.out)
  log(f"\n{(time.perf_counter() - start) / 60:.1f} min; written to {args.out}")


if __name__ == "__main__":
  main()
