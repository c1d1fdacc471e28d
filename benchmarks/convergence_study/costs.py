"""What a method costs: optimizer-state bytes per parameter and ms per training step.

The state is measured abstractly (``jax.eval_shape`` of ``init``); the time from
a compiled single run (:func:`training.make_timer`), each call paired with one of
the target's (NAdamW) so that a shared machine's slow phases cancel out of the ratio.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from .methods import Method
from .settings import TIMING_REPEATS, TIMING_STEPS
from .tasks import Problem


def state_bytes_per_param(problem: Problem, method: Method) -> float:
  """Optimizer-state bytes (array leaves, abstractly) per model parameter."""
  params = jax.eval_shape(lambda: problem.init(jax.random.key(0)))
  state = jax.eval_shape(lambda p: method.optimizer(1e-3, 1.0, problem).init(p), params)
  nbytes = lambda tree: sum(x.size * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
  return nbytes(state) / sum(x.size for x in jax.tree.leaves(params))


def timed_calls(problem: Problem, timer: Callable, rate: float,
                ratio: float) -> Callable[[], float]:
  """A function returning the ms per step of one call of ``timer`` (warmed up)."""
  params = problem.init(jax.random.key(0))
  idx = problem.sample(jax.random.key(1), TIMING_STEPS)
  args = (jnp.float32(rate), jnp.float32(ratio), params, idx, problem.data)
  jax.block_until_ready(timer(*args))  # compiles if needed, warms up

  def call() -> float:
    start = time.perf_counter()
    jax.block_until_ready(timer(*args))
    return 1e3 * (time.perf_counter() - start) / TIMING_STEPS

  return call


def time_step(problem: Problem, timer: Callable, rate: float, ratio: float,
              reference: Optional[tuple[Callable, float, float]] = None,
              repeats: int = TIMING_REPEATS) -> tuple[float, Optional[float]]:
  """ms per training step of ``timer`` (median of ``repeats`` calls) and, with a
  ``reference`` (its timer, rate and ratio: the target's), the median ratio to it, each call of
  ``timer`` paired with one of the reference right after (so that the slow phases
  of a shared machine cancel out of the ratio)."""
  call = timed_calls(problem, timer, rate, ratio)
  ref = timed_calls(problem, *reference) if reference else None
  times, ratios = [], []
  for _ in range(repeats):
    times.append(call())
    if ref is not None:
      ratios.append(times[-1] / ref())
  return statistics.median(times), (statistics.median(ratios) if ratios else None)
