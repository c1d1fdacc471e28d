"""The protocol applied to one method on one task: compile ahead, grid, refinement, seeds.

:func:`prepare` compiles a method's programs (in a worker thread);
:func:`run_method` runs them in the protocol's order (:mod:`protocol`): the grid
from seed 0, the refinement around its best, the chosen rate from fresh seeds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .costs import state_bytes_per_param
from .methods import Method
from .protocol import Budget, pick_rate, rate_grid, refined_rates
from .settings import TIMING_STEPS
from .tasks import Problem
from .training import RunSet, execute, make_runner, make_timer


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

  ms/step: from ``prepared.timer`` when there is one (:func:`run.time_methods`, after
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
