"""Does it help? Every strategy against tuned baselines, on three tasks, one budget.

One command runs the study and writes, under ``--out`` (default
``benchmarks/results/``):

* ``convergence.json``: every run (rate, seed, validation curve, final scores,
  clamp fractions), each method's summary and the configuration;
* ``convergence.md``: a summary table (every method x task, with a verdict
  against the best baseline), then one detailed table per task;
* ``curves_<task>.png``: validation-loss curves at each method's chosen rate,
  mean over seeds with a min-max band;
* ``rates_<task>.png``: final validation loss against the base rate, every
  method, failed runs marked.

Tasks (``TASKS``; offline, sized for 2 CPU cores), each importing its data and
model from the example that introduced it:

* ``digits``: the 64-64-64-10 MLP of ``examples/compare_strategies.py`` on
  scikit-learn's digits (its train split cut into train and validation; its
  test split kept for the test scores);
* ``rnn``: the GRU of ``examples/rnn_time_series.py`` (reference 000's case)
  predicting a multi-scale sum of sinusoids, its train/validation/test splits;
* ``char_lm``: the character transformer of ``examples/char_lm.py`` on
  ``pydoc_data.topics``, validation on its held-out topics (a smaller
  configuration than the example's, ``CHAR_LM_SIZES``).

Methods (``methods()``): SGD with momentum, AdamW and Adafactor (the
baselines); plain SGD (the comparison for SGD-HD); SGD-HD and Adam-HD;
Adam-mini; SCALE (per-neuron normalised SGD); and each rule of reference 000 at
element and neuron granularity, with the reference defaults (``ref``), with
``bias_correction=True`` (``+bc``, EMA rules) and on Adam's direction
(``x adam``: bias correction, ``max_lr = 10 x`` the base rate). A method whose
``nlr`` names are missing is listed as unavailable instead of run.

Protocol, the same for every task and method (the base rate is the only
hyperparameter tuned):

1. **Grid.** ``GRID_POINTS`` base rates, half a decade apart (three decades),
   placed by the method's kind (``RATE_RANGES``), one run each from seed 0,
   all in one ``jax.vmap``-ed, jitted call (the rate is an argument of the
   traced run). The rate with the lowest final validation loss wins (a run
   whose final validation loss is non-finite or above its initial one counts
   as failed).
2. **Seeds.** The winning rate rerun from ``SEEDS`` fresh seeds (1, 2, ...;
   seed = initialisation and batch order), one more call of the same compiled
   program. Every reported score comes from these runs.
3. **Cost.** Optimizer-state bytes per parameter (``jax.eval_shape`` of
   ``init``), and ms per training step (forward, backward, update) of a
   single jitted run of ``TIMING_STEPS`` steps in a ``lax.scan``, after
   compilation: the median of ``TIMING_REPEATS`` calls, each paired with a
   call of AdamW's for the ratio to it.

Worker threads (``--jobs``) compile the methods' programs ahead; the programs
run one at a time in the main thread, and the timing runs once every method of
the task has finished.

Reported per task and method: final validation loss (and accuracy for
digits), mean and std over seeds; steps until the seeds' mean curve reaches
the best baseline's final mean validation loss (or "never"); the sensitivity
to the base rate (the max/min ratio of the final validation losses of the
grid's non-failed runs, of all of them and of those up to the chosen rate, and
how many failed); state bytes per parameter; ms/step; for methods with
clamps, the fraction of units at ``min_lr`` / ``max_lr`` at the end
(``nlr.rate_summary``, mean over the governed leaves and seeds).

Run from the repository root::

    python benchmarks/convergence.py                    # the study: ~40 min on 2 cores
    python benchmarks/convergence.py --quick --out /tmp/conv   # every task x method, ~3 min
    python benchmarks/convergence.py --tasks digits --methods 'adamw|grad_history'
    python benchmarks/convergence.py --retime           # re-measure ms/step of --out's study
    python benchmarks/convergence.py --replot           # rewrite tables and figures from its JSON

``--quick`` (run by ``tests/test_convergence.py``) runs 2 rates and 2 seeds
for 20 steps, compiles without XLA's optimisations and skips the dedicated
timing (its ms/step come from the vmapped seed runs); its numbers only show
that everything runs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
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
from typing import Any, Optional

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

GRID_POINTS = 7  # half a decade apart: three decades
SEEDS = 7  # = GRID_POINTS: the grid's compiled run serves the seeds too
EVALS = 20  # validation evaluations per run
TIMING_STEPS = 20
TIMING_REPEATS = 5
QUICK_GRID_POINTS = 2  # the two central points of the grid
QUICK_SEEDS = 2
QUICK_EVALS = 4
WEIGHT_DECAY = 1e-4  # optax.adamw's default; AdamW, Adam-mini and SCALE alike
SGD_HD_HYPER_LR = 1e-3  # Baydin et al. (2018)'s values
ADAM_HD_HYPER_LR = 1e-7
ADAM_DIRECTION_CAP = 10.0  # x adam variants: max_lr = this x the base rate

# Where each kind of method's grid lies: (lowest, highest) base rate.
RATE_RANGES = {
    "plain": (10**-2.5, 10**0.5),  # SGD, SGD-HD, grad_magnitude_lr (rates up to max_lr=1)
    "sgd": (1e-3, 1.0),    # SGD with momentum 0.9 (10x the step), Adafactor (relative steps)
    "adam": (1e-4, 1e-1),  # Adam-like steps: AdamW, Adam-HD, Adam-mini, SCALE, EMA rules
    "low": (1e-5, 1e-2),   # rules on Adam's direction, whose steps reach 10x the base rate
}


def rate_grid(kind: str, points: int) -> list[float]:
  """``points`` central rates of the half-decade grid of ``RATE_RANGES[kind]``."""
  lo, hi = RATE_RANGES[kind]
  full = np.geomspace(lo, hi, GRID_POINTS)
  first = (GRID_POINTS - points) // 2
  return [float(f"{r:.3g}") for r in full[first:first + points]]


@dataclasses.dataclass(frozen=True)
class Budget:
  """How much each method gets; the same for every method of a run."""

  grid_points: int
  seeds: int
  evals: int
  timing: bool  # a dedicated single-run timing (False: from the vmapped seed runs)
  quick: bool
  jobs: int = 2  # threads compiling ahead


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
  """A row of ``TASKS``: how to build the problem, full or quick."""

  name: str
  title: str
  example: str  # the examples/ module it imports
  build: Callable[[Any, bool], Problem]  # (example module, quick) -> Problem
  metric: Optional[str] = None  # a score beside the loss, e.g. "accuracy"
  loss_name: str = "loss"


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
)


# ---------------------------------------------------------------------------
# Methods: one row per optimizer, built from a (possibly traced) base rate.


@dataclasses.dataclass(frozen=True)
class Method:
  """A row of ``methods()``.

  ``build(rate, problem)`` returns the optimizer at base rate ``rate`` (a
  traced scalar inside the vmapped run); ``rates`` names its grid in
  ``RATE_RANGES``; ``requires`` lists the ``nlr`` names it needs (a method
  whose names are missing is reported as unavailable, not run).
  """

  name: str
  family: str
  build: Callable[[Any, Problem], optax.GradientTransformation]
  rates: str
  settings: str
  clamps: bool = False  # whether its rates have clamps worth reporting
  requires: tuple[str, ...] = ()

  def available(self) -> bool:
    return all(hasattr(nlr, name) for name in self.requires)


BASELINE = "baselines"
FAMILIES = (BASELINE, "reference and learned rates", "reference 000, element",
            "reference 000, neuron")
SEED000_RULES = ("grad_magnitude_lr", "grad_history_lr", "sign_consistency_lr")
VARIANTS = ("ref", "+bc", "x adam")


def _decay_mask(params):
  """AdamW's decay mask, Adam-mini's (kernels and embeddings), looked up when used."""
  return nlr.adam_mini_weight_decay_mask(params)


def seed000_method(rule: str, granularity: str, variant: str) -> Method:
  """A reference-000 rule at one granularity, in one of ``VARIANTS``."""
  ema = rule != "grad_magnitude_lr"

  def build(rate, problem):
    del problem
    kwargs: dict[str, Any] = {"granularity": granularity}
    if variant != "ref" and ema:
      kwargs["bias_correction"] = True
    if variant == "x adam":
      kwargs.update(direction=optax.scale_by_adam(), max_lr=ADAM_DIRECTION_CAP * rate)
    return getattr(nlr, rule)(rate, **kwargs)

  settings = {
      "ref": "reference defaults (min_lr=1e-6, max_lr=1)",
      "+bc": "bias_correction=True, max_lr=1",
      "x adam": (f"direction=scale_by_adam(){', bias_correction=True' if ema else ''}, "
                 f"max_lr={ADAM_DIRECTION_CAP:g}x rate"),
  }[variant]
  kind = "low" if variant == "x adam" else ("adam" if ema else "plain")
  return Method(f"{rule}[{granularity}] {variant}", f"reference 000, {granularity}", build,
                kind, settings, clamps=True, requires=(rule,))


def methods() -> list[Method]:
  """Every method of the study, in table order."""
  rows = [
      Method("sgd_momentum", BASELINE, lambda r, p: optax.sgd(r, momentum=0.9), "sgd",
             "optax.sgd(momentum=0.9)"),
      Method("adamw", BASELINE,
             lambda r, p: optax.adamw(r, weight_decay=WEIGHT_DECAY, mask=_decay_mask),
             "adam", f"optax.adamw(weight_decay={WEIGHT_DECAY:g}, kernels and embeddings)",
             requires=("adam_mini_weight_decay_mask",)),
      Method("adafactor", BASELINE, lambda r, p: optax.adafactor(r), "sgd",
             "optax.adafactor defaults (relative steps)"),
      Method("sgd", "reference and learned rates", lambda r, p: optax.sgd(r), "plain",
             "optax.sgd (no momentum; SGD-HD's comparison)"),
      Method("sgd_hd", "reference and learned rates",
             lambda r, p: nlr.sgd_hd(r, SGD_HD_HYPER_LR), "plain",
             f"global rate, hyper_lr={SGD_HD_HYPER_LR:g}", clamps=True, requires=("sgd_hd",)),
      Method("adam_hd", "reference and learned rates",
             lambda r, p: nlr.adam_hd(r, ADAM_HD_HYPER_LR), "adam",
             f"global rate, hyper_lr={ADAM_HD_HYPER_LR:g}", clamps=True, requires=("adam_hd",)),
      Method("adam_mini", "reference and learned rates",
             lambda r, p: nlr.adam_mini(r, weight_decay=WEIGHT_DECAY, on_unrecognised="ignore"),
             "adam", f"blocks from paths, weight_decay={WEIGHT_DECAY:g}",
             requires=("adam_mini",)),
      Method("scale_sgd", "reference and learned rates",
             lambda r, p: nlr.scale_sgd(r, weight_decay=WEIGHT_DECAY, head=p.head), "adam",
             f"SCALE: per-neuron normalised SGD, momentum on the head, AdamW on vectors, "
             f"weight_decay={WEIGHT_DECAY:g}", requires=("scale_sgd",)),
  ]
  for granularity in ("element", "neuron"):
    for rule in SEED000_RULES:
      for variant in VARIANTS:
        if variant == "+bc" and rule == "grad_magnitude_lr":
          continue  # no EMA to correct
        rows.append(seed000_method(rule, granularity, variant))
  return rows


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
  """``(rates, seeds, data) -> outputs``: whole runs, jitted and vmapped over runs."""
  every = problem.steps // evals

  def one_run(rate, seed, data):
    k_init, k_data = jax.random.split(jax.random.key(seed))
    params = problem.init(k_init)
    tx = method.build(rate, problem)
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

  return jax.jit(jax.vmap(one_run, in_axes=(0, 0, None)))


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


def execute(runner: Callable, problem: Problem, rates: Sequence[float],
            seeds: Sequence[int], evals: int) -> RunSet:
  start = time.perf_counter()
  out = jax.device_get(jax.block_until_ready(
      runner(jnp.asarray(rates, jnp.float32), jnp.asarray(seeds, jnp.int32), problem.data)))
  seconds = time.perf_counter() - start
  every = problem.steps // evals
  return RunSet(list(rates), list(seeds), [k * every for k in range(evals + 1)],
                {k: np.asarray(v, np.float64) for k, v in out["val"].items()},
                {k: np.asarray(v, np.float64) for k, v in out.get("test", {}).items()},
                np.asarray(out["train_loss"], np.float64),
                {k: np.asarray(v, np.float64) for k, v in out["clamps"].items()}, seconds)


def pick_rate(grid: RunSet) -> float:
  """The grid's rate with the lowest final validation loss (failed runs never win;
  if every run failed, the lowest rate)."""
  scores = np.where(grid.failed, np.inf, grid.final_loss)
  return grid.rates[int(np.argmin(scores))] if np.isfinite(scores).any() else min(grid.rates)


def state_bytes_per_param(problem: Problem, method: Method) -> float:
  """Optimizer-state bytes (array leaves, abstractly) per model parameter."""
  params = jax.eval_shape(lambda: problem.init(jax.random.key(0)))
  state = jax.eval_shape(lambda p: method.build(1e-3, problem).init(p), params)
  nbytes = lambda tree: sum(x.size * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
  return nbytes(state) / sum(x.size for x in jax.tree.leaves(params))


def make_timer(problem: Problem, method: Method) -> Callable:
  """``(rate, params, indices, data) -> params``: one run of ``len(indices)`` training
  steps in a ``lax.scan``, jitted (the optimizer state is initialised inside)."""

  def run(rate, params, idx, data):
    tx = method.build(rate, problem)
    step = train_step(problem, tx)
    return jax.lax.scan(lambda c, i: step(c, i, data), (params, tx.init(params)), idx)[0][0]

  return jax.jit(run)


@dataclasses.dataclass
class Prepared:
  """A method's programs, compiled in a worker thread; run only in the main thread
  (two executions at once can deadlock XLA:CPU)."""

  method: Method
  runner: Callable  # jitted and vmapped whole runs
  compiled: Any  # ``runner`` compiled for batches of ``grid_points`` runs
  timer: Any  # ``make_timer`` compiled, or None
  state_bytes: float


def prepare(problem: Problem, method: Method, budget: Budget) -> Prepared:
  """Traces and compiles ``method``'s programs from abstract shapes (executes nothing)."""
  spec = jax.ShapeDtypeStruct
  n = budget.grid_points
  runner = make_runner(problem, method, budget.evals)
  compiled = runner.lower(spec((n,), jnp.float32), spec((n,), jnp.int32),
                          problem.data).compile()
  timer = None
  if budget.timing:
    params = jax.eval_shape(lambda: problem.init(jax.random.key(0)))
    idx = jax.eval_shape(lambda: problem.sample(jax.random.key(1), TIMING_STEPS))
    timer = make_timer(problem, method).lower(spec((), jnp.float32), params, idx,
                                              problem.data).compile()
  return Prepared(method, runner, compiled, timer, state_bytes_per_param(problem, method))


def timed_calls(problem: Problem, timer: Callable, rate: float) -> Callable[[], float]:
  """A function returning the ms per step of one call of ``timer`` (warmed up)."""
  params = problem.init(jax.random.key(0))
  idx = problem.sample(jax.random.key(1), TIMING_STEPS)
  args = (jnp.float32(rate), params, idx, problem.data)
  jax.block_until_ready(timer(*args))  # compiles if needed, warms up

  def call() -> float:
    start = time.perf_counter()
    jax.block_until_ready(timer(*args))
    return 1e3 * (time.perf_counter() - start) / TIMING_STEPS

  return call


def time_step(problem: Problem, timer: Callable, rate: float,
              reference: Optional[tuple[Callable, float]] = None,
              repeats: int = TIMING_REPEATS) -> tuple[float, Optional[float]]:
  """ms per training step of ``timer`` (median of ``repeats`` calls) and, with a
  ``reference`` (its timer and rate: AdamW's), the median ratio to it, each call of
  ``timer`` paired with one of the reference right after (so that the slow phases
  of a shared machine cancel out of the ratio)."""
  call = timed_calls(problem, timer, rate)
  ref = timed_calls(problem, *reference) if reference else None
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
  seeds: RunSet
  rate: float
  state_bytes: float
  ms_per_step: float
  ms_source: str
  ms_vs_adamw: Optional[float] = None  # paired measurement, see time_step
  summary: dict[str, Any] = dataclasses.field(default_factory=dict)


def run_method(problem: Problem, prepared: Prepared, budget: Budget) -> MethodResult:
  """Grid (seed 0), then the chosen rate from ``budget.seeds`` fresh seeds.

  ms/step: from ``prepared.timer`` when there is one (:func:`time_methods`, after
  every method has run), else the seed runs' wall time per run and step."""
  grid = execute(prepared.compiled, problem, rate_grid(prepared.method.rates, budget.grid_points),
                 [0] * budget.grid_points, budget.evals)
  rate = pick_rate(grid)
  runner = prepared.compiled if budget.seeds == budget.grid_points else prepared.runner
  seeds = execute(runner, problem, [rate] * budget.seeds, list(range(1, budget.seeds + 1)),
                  budget.evals)
  ms = 1e3 * seeds.seconds / (problem.steps * budget.seeds)
  return MethodResult(prepared.method, grid, seeds, rate, prepared.state_bytes, ms,
                      "vmapped seed runs: wall time / (steps x seeds)")


def time_methods(problem: Problem, prepared: Sequence[Prepared],
                 results: Sequence[MethodResult]) -> None:
  """Sets each result's ms/step (and its ratio to AdamW's) from the compiled
  single-run timers, one at a time."""
  ref = next(((p.timer, r.rate) for p, r in zip(prepared, results)
              if p.method.name == "adamw" and p.timer is not None), None)
  for p, r in zip(prepared, results):
    if p.timer is not None:
      r.ms_per_step, r.ms_vs_adamw = time_step(problem, p.timer, r.rate, ref)
      r.ms_source = "single jitted run"


# ---------------------------------------------------------------------------
# Summaries.


def summarise(results: Sequence[MethodResult]) -> dict[str, Any]:
  """Fills each result's ``summary``; returns the task's target (best baseline)."""
  for r in results:
    s = r.seeds
    r.summary = {
        "rate": r.rate,
        "rate_at_grid_edge": r.rate in (r.grid.rates[0], r.grid.rates[-1]),
        "val_loss_mean": float(np.mean(s.final_loss)),
        "val_loss_std": float(np.std(s.final_loss)),
        "seeds_failed": int(s.failed.sum()),
        "grid_spread": grid_spread(r.grid),
        "grid_spread_below": grid_spread(r.grid, up_to=r.rate),
        "grid_failed": int(r.grid.failed.sum()),
        "grid_points": len(r.grid.rates),
        "state_bytes_per_param": r.state_bytes,
        "ms_per_step": r.ms_per_step,
        "ms_source": r.ms_source,
    }
    for name, values in list(s.val.items()):
      if name != "loss":
        r.summary[f"val_{name}_mean"] = float(np.mean(values[:, -1]))
        r.summary[f"val_{name}_std"] = float(np.std(values[:, -1]))
    for name, values in s.test.items():
      r.summary[f"test_{name}_mean"] = float(np.mean(values))
    if r.method.clamps:
      for name, values in s.clamps.items():
        r.summary[name] = float(np.mean(values))
  baselines = [r for r in results if r.method.family == BASELINE
               and np.isfinite(r.summary["val_loss_mean"])]
  target = None
  if baselines:
    best = min(baselines, key=lambda r: r.summary["val_loss_mean"])
    target = {"method": best.method.name, "val_loss": best.summary["val_loss_mean"]}
  adamw = next((r for r in results if r.method.name == "adamw"), None)
  for r in results:
    r.summary["steps_to_target"] = (
        steps_to(r.seeds, target["val_loss"]) if target else None)
    if adamw is not None:
      r.summary["ms_vs_adamw"] = r.ms_vs_adamw or r.ms_per_step / adamw.ms_per_step
      r.summary["state_vs_adamw"] = r.state_bytes / adamw.state_bytes
  return target or {}


def grid_spread(grid: RunSet, up_to: Optional[float] = None) -> Optional[float]:
  """max/min final validation loss over the grid's non-failed runs (``up_to``: only
  those at rates up to it: the sensitivity to a rate chosen too low)."""
  keep = ~grid.failed & (np.asarray(grid.rates) <= (np.inf if up_to is None else up_to))
  ok = grid.final_loss[keep]
  return float(ok.max() / ok.min()) if ok.size and ok.min() > 0 else None


def steps_to(runs: RunSet, target: float) -> Optional[int]:
  """First evaluated step where the seeds' mean validation loss is at most ``target``."""
  mean = runs.val["loss"].mean(axis=0)
  hit = np.flatnonzero(mean <= target * (1 + 1e-9))
  return int(runs.eval_steps[hit[0]]) if hit.size else None


# ---------------------------------------------------------------------------
# Output: JSON, markdown, figures.


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


def runset_json(runs: RunSet) -> list[dict[str, Any]]:
  out = []
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


def task_json(task: Task, problem: Problem, results: Sequence[MethodResult],
              target: dict[str, Any], seconds: float) -> dict[str, Any]:
  n_params = sum(x.size for x in jax.tree.leaves(jax.eval_shape(problem.init,
                                                                jax.random.key(0))))
  return {
      "title": task.title, "description": problem.description, "loss": task.loss_name,
      "metric": task.metric, "steps": problem.steps, "parameters": n_params,
      "eval_steps": results[0].seeds.eval_steps if results else [],
      "target": target, "seconds": seconds,
      "methods": {r.method.name: {
          "family": r.method.family, "settings": r.method.settings,
          "grid": runset_json(r.grid), "seeds": runset_json(r.seeds),
          "grid_seconds": r.grid.seconds, "seed_seconds": r.seeds.seconds,
          "summary": r.summary} for r in results},
  }


def fmt(x: Optional[float], digits: int = 3) -> str:
  if x is None or not math.isfinite(x):
    return "-"
  return f"{x:.{digits}g}"


WELCH_T = 2.2  # |t| beyond this is a win or a loss: about p < 0.05 with 7 seeds each


def seed_losses(method: dict[str, Any]) -> np.ndarray:
  return np.asarray([np.nan if run["final"]["val_loss"] is None else run["final"]["val_loss"]
                     for run in method["seeds"]], float)


def verdict(method: dict[str, Any], target: dict[str, Any]) -> str:
  """``win`` / ``tie`` / ``loss`` against the target's seeds (Welch's t of the log
  losses beyond ``WELCH_T``), ``target`` for the target itself, ``fails`` if a seed
  failed."""
  if method is target:
    return "target"
  if any(run["failed"] for run in method["seeds"]):
    return "fails"
  a, b = np.log(seed_losses(method)), np.log(seed_losses(target))
  se = math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
  t = (a.mean() - b.mean()) / se if se > 0 else 0.0
  return "win" if t < -WELCH_T else "loss" if t > WELCH_T else "tie"


def summary_table(study: dict[str, Any]) -> list[str]:
  """Every method x task: final validation loss, its ratio to the best baseline's and
  the verdict; grid spread and failures; state bytes per parameter."""
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
        continue
      s, target = m["summary"], task["methods"][task["target"]["method"]]
      ratio = s["val_loss_mean"] / task["target"]["val_loss"] if s["val_loss_mean"] else None
      cells.append(f"{fmt(s['val_loss_mean'], 4)} "
                   + (f"({ratio:.2f}x, {verdict(m, target)})" if ratio else "(fails)"))
      spread.append(f"{fmt(s['grid_spread'], 2)}/{fmt(s.get('grid_spread_below'), 2)}")
      failed.append(str(s["grid_failed"]))
      nbytes.append(f"{s['state_bytes_per_param']:.2f}")
    cells += ["; ".join(spread), " / ".join(failed), " / ".join(nbytes)]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return lines


def markdown(study: dict[str, Any]) -> str:
  """A summary table, then one table per task, from the JSON-ready study."""
  cfg = study["config"]
  lines = [
      "# Convergence study",
      "",
      f"Budget per method: a grid of {cfg['grid_points']} base rates half a decade apart "
      f"(chosen on the validation split, seed 0), then the chosen rate from "
      f"{cfg['seeds']} fresh seeds; scores are mean ± std over those seeds. Constant "
      "rates, no schedule. Measured on "
      f"{cfg['machine']}; {cfg['wall_seconds'] / 60:.1f} min in all"
      + ("; ms/step re-measured alone afterwards (`--retime`)." if cfg.get("retimed_on")
         else "."),
      "",
      "Columns: *rate* the chosen base rate (`*`: at the grid's edge); *steps to target* "
      "the first evaluated step where the mean validation loss reaches the best "
      "baseline's final mean; *spread* max/min final validation loss over the grid's "
      "non-failed rates / over those up to the chosen rate (too low a rate), *failed* "
      "how many grid rates ended non-finite or above the "
      "initial loss; *B/param* optimizer-state bytes per parameter; *ms/step* one jitted "
      "training step after compilation (x AdamW); *min/max clamp* fraction of units at "
      "`min_lr` / `max_lr` at the end (mean over governed leaves and seeds).",
      *([f"Not run (their `nlr` names are missing): "
         + ", ".join(f"{k} ({v})" for k, v in cfg["unavailable_methods"].items()) + "."]
        if cfg.get("unavailable_methods") else []),
      "",
      "## Summary",
      "",
      "Final validation loss, mean over seeds (its ratio to the best baseline's; *win* / "
      "*loss*: the log losses of the seeds lower / higher than the best baseline's by "
      f"more than {WELCH_T:g} standard errors (Welch), else *tie*; *fails*: a seed "
      "failed). Grid spread: max/min final validation loss over the non-failed grid "
      "rates, all of them / those up to the chosen rate (the cost of starting too low); "
      f"failed rates: of {cfg['grid_points']}.",
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
        "", f"## {task['title']}", "",
        f"{task['description']}; {task['steps']} steps, {task['parameters']:,} parameters. "
        f"Target: {target.get('method', '-')}'s final validation {task['loss']} "
        f"{fmt(target.get('val_loss'), 4)}.", "",
    ]
    head = ["method", "rate", f"val {task['loss']}"]
    if metric:
      head += [f"val {metric}", f"test {metric}"]
    head += ["steps to target", "spread", "failed", "B/param", "ms/step", "min/max clamp"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, m in task["methods"].items():
      s = m["summary"]
      loss = (f"{fmt(s['val_loss_mean'], 4)} ± {fmt(s['val_loss_std'], 2)}"
              + (f" ({s['seeds_failed']} failed)" if s["seeds_failed"] else ""))
      row = [method, f"{s['rate']:.3g}" + ("*" if s["rate_at_grid_edge"] else ""), loss]
      if metric:
        row += [f"{fmt(s.get(f'val_{metric}_mean'), 3)} ± {fmt(s.get(f'val_{metric}_std'), 1)}",
                fmt(s.get(f"test_{metric}_mean"), 3)]
      steps = s["steps_to_target"]
      clamp = ("-" if "at_min_lr" not in s else
               f"{s['at_min_lr']:.2f} / {s['at_max_lr']:.2f}")
      row += ["never" if steps is None else str(steps),
              f"{fmt(s['grid_spread'])} / {fmt(s.get('grid_spread_below'))}",
              f"{s['grid_failed']}/{s['grid_points']}", f"{s['state_bytes_per_param']:.2f}",
              f"{fmt(s['ms_per_step'])} ({fmt(s.get('ms_vs_adamw'), 2)}x)", clamp]
      lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines) + "\n"


STYLES = {"ref": "--", "+bc": ":", "x adam": "-"}


def family_panels(task: dict[str, Any]) -> list[tuple[str, list[str]]]:
  """(title, method names) per panel: baselines, then the other families."""
  by_family: dict[str, list[str]] = {}
  for name, m in task["methods"].items():
    by_family.setdefault(m["family"], []).append(name)
  return [(f, by_family[f]) for f in FAMILIES if f in by_family]


def line_style(name: str, index: int) -> dict[str, Any]:
  variant = next((v for v in STYLES if name.endswith(" " + v)), None)
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
      curves = np.asarray([[np.nan if v is None else v for v in run["val_curve"]["loss"]]
                           for run in task["methods"][method]["seeds"]], float)
      style = line_style(method, i)
      mean, low, high = band(curves)
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
  fig.suptitle(f"{task['title']}: each method at its chosen rate; dash-dot: the target "
               f"({task['target'].get('method', '-')})", fontsize=11)
  finite = np.asarray([v for m in task["methods"].values() for run in m["seeds"]
                       for v in run["val_curve"]["loss"] if v is not None])
  if finite.size:
    axes[0].set_ylim(np.min(finite) * 0.8, min(np.max(finite), np.median(finite) * 30))
  label_log_axis(axes[0])
  save(fig, path)


def plot_rates(name: str, task: dict[str, Any], path: pathlib.Path) -> None:
  """Final validation loss against the base rate (seed 0), every method; x: failed."""
  panels = family_panels(task)
  fig, axes = panel_axes(len(panels))
  finite = [run["final"]["val_loss"] for m in task["methods"].values() for run in m["grid"]
            if not run["failed"]]
  top = max(finite) * 1.5 if finite else 1.0
  for ax, (title, names) in zip(axes, panels):
    for i, method in enumerate(names):
      grid = task["methods"][method]["grid"]
      rates = np.asarray([run["rate"] for run in grid])
      loss = np.asarray([np.nan if run["failed"] else run["final"]["val_loss"] for run in grid])
      style = line_style(method, i)
      ax.plot(rates, loss, marker="o", ms=3, lw=1.3, label=method, **style)
      failed = np.isnan(loss)
      ax.plot(rates[failed], np.full(failed.sum(), top), "x", color=style["color"], ms=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("base rate")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
  for ax in axes[::2]:
    ax.set_ylabel(f"final validation {task['loss']} (seed 0)")
  label_log_axis(axes[0])
  fig.suptitle(f"{task['title']}: sensitivity to the base rate (x at the top: failed run)",
               fontsize=11)
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
  out.mkdir(parents=True, exist_ok=True)
  study = clean(study)
  (out / "convergence.json").write_text(json.dumps(study, separators=(",", ":")))
  (out / "convergence.md").write_text(markdown(study))
  for name, task in study["tasks"].items():
    if "methods" in task and task["methods"]:
      plot_curves(name, task, out / f"curves_{name}.png")
      plot_rates(name, task, out / f"rates_{name}.png")


# ---------------------------------------------------------------------------
# The study.


def run_task(task: Task, selected: Sequence[Method], budget: Budget,
             log: Callable[[str], None]) -> dict[str, Any]:
  """Every selected method on one task; the task's JSON entry.

  ``budget.jobs`` worker threads compile the methods' programs ahead (XLA's
  compilation is single-threaded); the main thread runs them in order, then
  times every method's step alone.
  """
  try:
    problem = task.build(load_example(task.example), budget.quick)
  except (FileNotFoundError, ImportError, AttributeError) as e:
    log(f"{task.name}: not run ({e})")
    return {"title": task.title, "unavailable": f"examples/{task.example}.py: {e}"}
  problem = dataclasses.replace(problem, steps=problem.steps // budget.evals * budget.evals)
  start = time.perf_counter()

  results, prepared = [], []
  with concurrent.futures.ThreadPoolExecutor(budget.jobs) as pool:
    futures = [pool.submit(prepare, problem, m, budget) for m in selected]
    for future in futures:  # in order; later methods compile meanwhile
      t0 = time.perf_counter()
      p = future.result()
      r = run_method(problem, p, budget)
      prepared.append(p)
      results.append(r)
      log(f"{task.name:8s} {p.method.name:36s} rate {r.rate:<8.3g} "
          f"val {np.mean(r.seeds.final_loss):<10.4g} grid failed {int(r.grid.failed.sum())}"
          f"  {time.perf_counter() - t0:.0f} s")
  time_methods(problem, prepared, results)
  target = summarise(results)
  log(f"{task.name}: {time.perf_counter() - start:.0f} s")
  return task_json(task, problem, results, target, time.perf_counter() - start)


def machine() -> str:
  return (f"{platform.machine()} CPU, {os.cpu_count()} cores ({platform.system()}), "
          f"jax {jax.__version__}, optax {optax.__version__}")


def select(rows: Sequence[Any], pattern: Optional[str]) -> list[Any]:
  return [r for r in rows if pattern is None or re.search(pattern, r.name)]


def retime(out: pathlib.Path, log: Callable[[str], None]) -> None:
  """Re-measures ms/step of every (task, method) in ``out``'s JSON at its chosen rate
  and rewrites the files."""
  study = json.loads((out / "convergence.json").read_text())
  by_name = {m.name: m for m in methods()}
  for task in TASKS:
    entry = study["tasks"].get(task.name)
    if not entry or "methods" not in entry:
      continue
    problem = task.build(load_example(task.example), False)
    timer = lambda name: make_timer(problem, by_name[name])
    ref = ((timer("adamw"), entry["methods"]["adamw"]["summary"]["rate"])
           if "adamw" in entry["methods"] else None)
    for name, m in entry["methods"].items():
      s = m["summary"]
      s["ms_per_step"], ratio = time_step(problem, timer(name), s["rate"], ref)
      s["ms_vs_adamw"] = ratio
      s["ms_source"] = "single jitted run (retimed)"
      log(f"{task.name:8s} {name:36s} {s['ms_per_step']:.2f} ms/step ({ratio:.2f}x adamw)")
  study["config"]["retimed_on"] = machine()
  write_outputs(study, out)


def positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
  return value


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results",
                 help="folder for the JSON, the table and the figures (default: %(default)s)")
  p.add_argument("--quick", action="store_true",
                 help="every task x method, tiny: 2 rates, 2 seeds, a few steps")
  p.add_argument("--tasks", default=None, help="regex: only the tasks it matches")
  p.add_argument("--methods", default=None, help="regex: only the methods it matches")
  p.add_argument("--seeds", type=positive_int, default=None,
                 help=f"seeds per method (default {SEEDS}; {GRID_POINTS} reuses the grid's "
                      "compiled program)")
  p.add_argument("--jobs", type=positive_int, default=2,
                 help="threads compiling ahead (default %(default)s); runs and timings are "
                      "one at a time")
  p.add_argument("--retime", action="store_true",
                 help="re-measure ms/step of the study in --out and rewrite its files")
  p.add_argument("--replot", action="store_true",
                 help="rewrite the table and figures from the JSON in --out")
  return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = parse_args(argv)
  log = lambda text: print(text, flush=True)
  if args.retime:
    retime(args.out, log)
    return
  if args.replot:
    write_outputs(json.loads((args.out / "convergence.json").read_text()), args.out)
    return
  if args.quick:
    # Compilation dominates the quick run: about 2x faster without XLA's optimisations.
    jax.config.update("jax_disable_most_optimizations", True)
  budget = Budget(grid_points=QUICK_GRID_POINTS if args.quick else GRID_POINTS,
                  seeds=args.seeds or (QUICK_SEEDS if args.quick else SEEDS),
                  evals=QUICK_EVALS if args.quick else EVALS,
                  timing=not args.quick, quick=args.quick, jobs=args.jobs)
  chosen = select(methods(), args.methods)
  start = time.perf_counter()
  study: dict[str, Any] = {"tasks": {}}
  unavailable = {m.name: f"needs nlr.{', nlr.'.join(m.requires)}" for m in chosen
                 if not m.available()}
  for task in select(TASKS, args.tasks):
    study["tasks"][task.name] = run_task(
        task, [m for m in chosen if m.available()], budget, log)
  study["config"] = {
      "command": "python benchmarks/convergence.py " + " ".join(sys.argv[1:] if argv is None
                                                                 else argv),
      "quick": args.quick, "grid_points": budget.grid_points, "seeds": budget.seeds,
      "evals": budget.evals, "grids": {k: rate_grid(k, budget.grid_points)
                                       for k in RATE_RANGES},
      "methods": {m.name: {"family": m.family, "settings": m.settings, "grid": m.rates}
                  for m in chosen},
      "unavailable_methods": unavailable,
      "machine": machine(), "wall_seconds": time.perf_counter() - start,
  }
  write_outputs(study, args.out)
  log(f"\n{(time.perf_counter() - start) / 60:.1f} min; written to {args.out}")


if __name__ == "__main__":
  main()
