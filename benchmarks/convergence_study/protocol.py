"""The tuning protocol's rules, the same for every task and method.

The schedule every method trains under, the grid of peak rates by method kind,
the refinement around the grid's best, the choice of the winning rate and the
budget (grid points, refinement, seeds, evaluations) of a run of the study. How
the rules are applied to one method is :mod:`tuning`'s job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import optax

from .settings import FINAL_FRACTION, GRID_POINTS, RATE_RANGES, SCHEDULES, RateSpec


def rate_grid(rates: RateSpec, points: int) -> list[float]:
  """``points`` central rates of the ``GRID_POINTS``-point log grid of ``rates``
  (a ``RATE_RANGES`` kind or a ``(lowest, highest)`` pair)."""
  lo, hi = RATE_RANGES[rates] if isinstance(rates, str) else rates
  full = np.geomspace(lo, hi, GRID_POINTS)
  first = (GRID_POINTS - points) // 2
  return [round_rate(r) for r in full[first:first + points]]


def round_rate(rate: float) -> float:
  """``rate`` to 3 significant digits (the grid's and the refinement's rates)."""
  return float(f"{rate:.3g}")


def edge_side(best: float, rates: Sequence[float]) -> int:
  """-1 if ``best`` is the lowest of ``rates``, +1 if the highest, else 0."""
  return -1 if best <= min(rates) else 1 if best >= max(rates) else 0


def extended_rates(rates: Sequence[float], side: int, points: int = 2) -> list[float]:
  """``points`` rates beyond the ``side`` edge (-1 low, +1 high) of ``rates``, continuing
  their half-decade spacing (a grid whose best rate sits on its edge is extended)."""
  edge = min(rates) if side < 0 else max(rates)
  return [round_rate(edge * 10 ** (0.5 * side * k)) for k in range(1, points + 1)]


def check_sensitive(key: str, losses: np.ndarray, failed: np.ndarray) -> None:
  """Raises if the grid's finite final losses are all equal: the tuned rate changes
  nothing, so the chosen rate would be arbitrary."""
  ok = np.asarray(losses)[~np.asarray(failed) & np.isfinite(losses)]
  if ok.size > 1 and float(ok.max() - ok.min()) <= 1e-7 * max(1.0, float(abs(ok).max())):
    raise ValueError(f"{key}: every rate of the grid gives the same loss ({ok[0]:.6g}); "
                     "its tuned rate changes nothing")


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
  extend: int = 2  # extensions of a grid whose best rate sits on its edge
  add_target: bool = True  # run NAdamW on a task whose --out lacks it

  def json(self, seeds: Optional[int] = None) -> dict[str, Any]:
    """The budget as stored in the JSON (``seeds``: a task's own seed count)."""
    return {"grid_points": self.grid_points, "refine": list(self.refine),
            "seeds": self.seeds if seeds is None else seeds, "evals": self.evals,
            "quick": self.quick}


def pick_rate(rates: Sequence[float], final: np.ndarray, failed: np.ndarray) -> float:
  """The rate with the lowest final validation loss (failed runs never win; if
  every run failed, the lowest rate)."""
  scores = np.where(failed, np.inf, final)
  return rates[int(np.argmin(scores))] if np.isfinite(scores).any() else min(rates)
