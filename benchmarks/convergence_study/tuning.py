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
from .protocol import (Budget, check_sensitive, edge_side, extended_rates, rate_grid,
                       refined_rates)
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


def program_sizes(method: Method, budget: Budget, seeds: int) -> list[int]:
  """The batch sizes of a method's compiled programs: its grid (every rate at every
  ratio), the refinement and grid extensions, the seeds."""
  if method.fixed is not None:
    return [seeds]
  sizes = [budget.grid_points * len(method.ratios), seeds]
  return sizes + ([len(budget.refine)] if budget.refine or budget.extend else [])


def prepare(problem: Problem, method: Method, sizes: Sequence[int],
            timing: bool, evals: int) -> Prepared:
  """Traces and compiles ``method``'s programs from abstract shapes (executes nothing),
  one per batch size in ``sizes``."""
  spec = jax.ShapeDtypeStruct
  runner = make_runner(problem, method, evals)
  compiled = {n: runner.lower(spec((n,), jnp.float32), spec((n,), jnp.float32),
                              spec((n,), jnp.int32), problem.data).compile()
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
  ratio: float
  state_bytes: float
  ms_per_step: float
  ms_source: str
  ms_vs_target: Optional[float] = None  # paired measurement, see time_step
  summary: dict[str, Any] = dataclasses.field(default_factory=dict)

  extensions: list[RunSet] = dataclasses.field(default_factory=list)

  @property
  def tuning_sets(self) -> list[RunSet]:
    """The tuning runs: grid, its extensions, refinement."""
    return [self.grid, *self.extensions] + ([self.refine] if self.refine else [])

  @property
  def tuning(self) -> tuple[list[float], np.ndarray, np.ndarray]:
    """Rates, final validation losses and failures of the tuning runs at the chosen
    ratio (every run for a method without ratios)."""
    rates, final, failed = [], [], []
    for s in self.tuning_sets:
      for i, (rate, ratio) in enumerate(zip(s.rates, s.ratios)):
        if ratio == self.ratio:
          rates.append(rate)
          final.append(s.final_loss[i])
          failed.append(s.failed[i])
    return rates, np.asarray(final, float), np.asarray(failed, bool)


def pick(sets: Sequence[RunSet]) -> tuple[float, float]:
  """The (rate, ratio) of the lowest final validation loss over ``sets`` (failed runs
  never win; if every run failed, the lowest rate at the first ratio)."""
  pairs = [(r, q) for s in sets for r, q in zip(s.rates, s.ratios)]
  final = np.concatenate([s.final_loss for s in sets])
  failed = np.concatenate([s.failed for s in sets])
  scores = np.where(failed, np.inf, final)
  if not np.isfinite(scores).any():
    return min(pairs)
  return pairs[int(np.argmin(scores))]


def run_method(problem: Problem, prepared: Prepared, budget: Budget, seeds: int
               ) -> MethodResult:
  """Grid (every rate at every ratio, seed 0), extended while its best rate sits on its
  edge (up to ``budget.extend`` times, two rates further each), refinement around the
  best (seed 0), then the chosen rate (and ratio) from ``seeds`` fresh seeds. A method
  with a ``fixed`` rate skips the tuning; one whose grid's losses are all equal raises.

  ms/step: from ``prepared.timer`` when there is one (:func:`run.time_methods`, after
  every method has run), else the seed runs' wall time per run and step."""
  method = prepared.method
  run = lambda rates, ratios, seed: execute(prepared.compiled[len(rates)], problem, rates,
                                            ratios, [seed] * len(rates), budget.evals)
  extensions: list[RunSet] = []
  refine = None
  if method.fixed is not None:
    rate, ratio = method.fixed, 1.0
    grid = RunSet([], [], [], [], {"loss": np.zeros((0, budget.evals + 1))}, {},
                  np.zeros((0, budget.evals)), {}, 0.0)
  else:
    rates = rate_grid(method.rates, budget.grid_points)
    grid = run([r for r in rates for _ in method.ratios],
               [q for _ in rates for q in method.ratios], 0)
    check_sensitive(method.key, grid.final_loss, grid.failed)
    rate, ratio = pick([grid])
    tried = list(rates)
    for _ in range(budget.extend):
      side = edge_side(rate, tried)
      if not side:
        break
      new = extended_rates(tried, side, len(budget.refine) or 2)
      extensions.append(run(new, [ratio] * len(new), 0))
      tried += new
      rate, ratio = pick([grid, *extensions])
    if budget.refine:
      refine = run(refined_rates(rate, budget.refine), [ratio] * len(budget.refine), 0)
    rate, ratio = pick([grid, *extensions] + ([refine] if refine else []))
  seed_runs = execute(prepared.compiled[seeds], problem, [rate] * seeds, [ratio] * seeds,
                      list(range(1, seeds + 1)), budget.evals)
  result = MethodResult(method, grid, refine, seed_runs, rate, ratio, prepared.state_bytes,
                        1e3 * seed_runs.seconds / (problem.steps * seeds),
                        "vmapped seed runs: wall time / (steps x seeds)",
                        extensions=extensions)
  return result
