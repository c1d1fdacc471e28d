"""A method's training programs on a task, and their execution.

A whole run (initialisation, every training step, the validation scores at each
evaluation, the test scores and clamp fractions at the end) is one pure function,
jitted and vmapped over (rate, seed) (:func:`make_runner`); :func:`execute` calls
a compiled one and collects a :class:`RunSet`. :func:`make_timer` is the single
run that measures ms/step (:mod:`costs`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_neuronlr as nlr

from .methods import Method
from .tasks import Problem


def clamp_fractions(opt_state: Any) -> dict[str, jax.Array]:
  """Fractions of units at each clamp, mean over the governed leaves (rate_summary)."""
  summary = nlr.rate_summary(opt_state)
  out = {}
  for clamp in ("min", "max"):
    values = [v for k, v in summary.items() if k.endswith(f"/frac_at_{clamp}_lr")]
    if values:
      out[f"at_{clamp}_lr"] = jnp.mean(jnp.stack(values))
  return out


def train_step(problem: Problem, tx: optax.GradientTransformation) -> Callable:
  """``((params, state), indices) -> ((params, state), loss)`` for ``lax.scan``."""

  def step(carry, idx, data):
    params, state = carry
    loss, grads = jax.value_and_grad(problem.loss)(params, problem.batch(data["train"], idx))
    updates, state = tx.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), loss

  return step


def make_runner(problem: Problem, method: Method, evals: int) -> Callable:
  """``(rates, ratios, seeds, data) -> outputs``: whole runs, jitted and vmapped over
  runs (``ratios``: the method's second tuned number, see ``Method.ratios``)."""
  every = problem.steps // evals

  def one_run(rate, ratio, seed, data):
    k_init, k_data = jax.random.split(jax.random.key(seed))
    params = problem.init(k_init)
    tx = method.optimizer(rate, ratio, problem)
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

  return jax.jit(jax.vmap(one_run, in_axes=(0, 0, 0, None)))


@dataclasses.dataclass
class RunSet:
  """The outputs of one vmapped call: one entry per run."""

  rates: list[float]
  ratios: list[float]
  seeds: list[int]
  eval_steps: list[int]
  val: dict[str, np.ndarray]  # score -> (runs, evals + 1)
  test: dict[str, np.ndarray]  # score -> (runs,)
  train_loss: np.ndarray  # (runs, evals): mean minibatch loss of each chunk
  clamps: dict[str, np.ndarray]  # "at_min_lr"/"at_max_lr" -> (runs,)
  seconds: float  # wall time of the call

  @property
  def final_loss(self) -> np.ndarray:
    """The final validation loss of each run."""
    return self.val["loss"][:, -1]

  @property
  def final_test(self) -> np.ndarray:
    """The final test loss of each run (the validation loss for a task without one)."""
    return self.test["loss"] if "loss" in self.test else self.final_loss

  @property
  def failed(self) -> np.ndarray:
    """Non-finite, or worse than at initialisation."""
    final, first = self.final_loss, self.val["loss"][:, 0]
    return ~np.isfinite(final) | (final > first)


def execute(compiled: Callable, problem: Problem, rates: Sequence[float],
            ratios: Sequence[float], seeds: Sequence[int], evals: int) -> RunSet:
  """Runs ``compiled`` (from :func:`make_runner`) at ``rates`` x ``ratios`` x ``seeds``
  (paired), on the host when done."""
  start = time.perf_counter()
  out = jax.device_get(jax.block_until_ready(
      compiled(jnp.asarray(rates, jnp.float32), jnp.asarray(ratios, jnp.float32),
               jnp.asarray(seeds, jnp.int32), problem.data)))
  seconds = time.perf_counter() - start
  every = problem.steps // evals
  return RunSet(list(rates), list(ratios), list(seeds), [k * every for k in range(evals + 1)],
                {k: np.asarray(v, np.float64) for k, v in out["val"].items()},
                {k: np.asarray(v, np.float64) for k, v in out.get("test", {}).items()},
                np.asarray(out["train_loss"], np.float64),
                {k: np.asarray(v, np.float64) for k, v in out["clamps"].items()}, seconds)


def make_timer(problem: Problem, method: Method) -> Callable:
  """``(rate, ratio, params, indices, data) -> params``: one run of ``len(indices)``
  training steps in a ``lax.scan``, jitted (the optimizer state is initialised inside)."""

  def run(rate, ratio, params, idx, data):
    tx = method.optimizer(rate, ratio, problem)
    step = train_step(problem, tx)
    return jax.lax.scan(lambda c, i: step(c, i, data), (params, tx.init(params)), idx)[0][0]

  return jax.jit(run)
