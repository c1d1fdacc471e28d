"""The study's tasks: data, a pure model and how to batch and score it.

Each task (a row of :data:`TASKS`) imports its data and model from the example
that introduced it (``examples/<name>.py``) and builds a :class:`Problem` whose
functions are pure, so that whole runs can be vmapped; :func:`build_problem`
gives it the task's steps.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import types
from collections.abc import Callable
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .settings import LONG_METHODS, LONG_SEEDS, ROOT


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


def load_example(name: str) -> types.ModuleType:
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


def nnx_init(make_module: Callable[[nnx.Rngs], nnx.Module]
             ) -> tuple[Any, Callable[[jax.Array], Any]]:
  """``(graphdef, key -> params)`` for an NNX model built by ``make_module``."""
  graphdef = nnx.split(make_module(nnx.Rngs(0)), nnx.Param)[0]
  return graphdef, lambda key: nnx.split(make_module(nnx.Rngs(key)), nnx.Param)[1]


def epoch_batches(n: int, batch_size: int) -> Callable[[jax.Array, int], jax.Array]:
  """``sample`` for a data set of ``n`` rows: shuffled epochs, ``(steps, batch_size)``."""
  per_epoch = n // batch_size

  def sample(key: jax.Array, steps: int) -> jax.Array:
    epochs = -(-steps // per_epoch)
    orders = jax.vmap(lambda k: jax.random.permutation(k, n)[:per_epoch * batch_size])(
        jax.random.split(key, epochs))
    return orders.reshape(-1, batch_size)[:steps]

  return sample


def rows(train: tuple[jax.Array, jax.Array], idx: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``batch`` for ``(x, y)`` arrays: the rows ``idx`` of both."""
  return train[0][idx], train[1][idx]


def digits_problem(example: types.ModuleType, quick: bool) -> Problem:
  """The MLP of compare_strategies on digits; 300 of its train rows for validation, its
  test split for the reported scores."""
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


def rnn_problem(example: types.ModuleType, quick: bool) -> Problem:
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
TEST_WINDOWS = 480  # non-overlapping test windows of the held-out text's second half


def held_out_splits(stream: np.ndarray, example: types.ModuleType, c: Any
                    ) -> tuple[np.ndarray, np.ndarray]:
  """The held-out topics cut in two: validation windows (random, from the first half:
  what the rate is picked on) and test windows (non-overlapping, from the second half:
  what is reported)."""
  half = len(stream) // 2
  val = example.make_batches(stream[:half], c.eval_batches, c.batch, c.seq_len, seed=1)
  w = c.seq_len + 1
  n = min(TEST_WINDOWS, (len(stream) - half) // w)
  test = stream[half:half + n * w].reshape(n, w)
  return val.reshape(-1, w), test


def char_lm_problem(example: types.ModuleType, quick: bool,
                    sizes: Optional[dict[str, int]] = None,
                    steps: Optional[int] = None) -> Problem:
  """The character transformer of char_lm; validation and test on its held-out topics
  (``sizes`` overrides :data:`CHAR_LM_SIZES`, ``steps`` the 800 steps: the width sweep)."""
  corpus = example.load_corpus()
  base = CHAR_LM_QUICK_SIZES if quick else CHAR_LM_SIZES
  c = dataclasses.replace(example.Config(), **{**base, **(sizes or {})})
  graphdef, init = nnx_init(lambda rngs: example.CharTransformer(c, corpus.vocab_size, rngs))
  windows = jnp.arange(c.seq_len + 1)

  def loss(params, batch):
    return example.loss_fn(nnx.merge(graphdef, params), batch)

  def scores(params, split):
    return {"loss": loss(params, split)}

  def sample(key, steps):
    return jax.random.randint(key, (steps, c.batch), 0, len(corpus.train) - c.seq_len - 1)

  val, test = held_out_splits(corpus.val, example, c)
  arrays = {"train": jnp.asarray(corpus.train), "val": jnp.asarray(val),
            "test": jnp.asarray(test)}
  return Problem(init, loss, scores, sample,
                 lambda text, starts: text[starts[:, None] + windows], arrays,
                 steps=steps or (20 if quick else 800), head="head",
                 description=f"transformer d={c.d_model}, {c.layers} layers, {c.heads} "
                             f"heads, batch {c.batch} x {c.seq_len} characters; "
                             f"{len(corpus.train):,} train characters; held-out topics: "
                             f"{len(val)} validation windows (first half), {len(test)} "
                             f"test windows (second half); cross-entropy in nats per "
                             "character")


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


def build_problem(task: Task, budget_quick: bool, evals: int) -> Problem:
  """The task's problem at its steps (x ``steps_factor``, a multiple of ``evals``)."""
  problem = task.build(load_example(task.example), budget_quick)
  steps = problem.steps * task.steps_factor
  description = problem.description + (f"; {task.steps_factor}x the steps"
                                        if task.steps_factor != 1 else "")
  return dataclasses.replace(problem, steps=steps // evals * evals, description=description)
