"""Construction-time checks of Python-number hyperparameters.

Values that are not concrete Python (or NumPy) numbers are left alone: under
``optax.inject_hyperparams`` hyperparameters arrive as traced arrays, and a
schedule is a callable.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def is_number(value: Any) -> bool:
  """True for concrete real numbers (not bools, arrays or callables)."""
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_range(
    name: str,
    value: Any,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    allow_inf: bool = False,
) -> None:
  """Raises ValueError unless ``value`` lies in the given interval.

  Args:
    name: the argument's name, used in the message.
    value: the value; ignored unless it is a Python or NumPy number.
    low: lower bound.
    high: upper bound.
    low_open: exclude ``low`` itself.
    high_open: exclude ``high`` itself.
    allow_inf: accept ``+inf`` (e.g. ``max_lr=inf`` disables a clamp).
  """
  if not is_number(value):
    return
  value = float(value)
  interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
  if math.isnan(value) or (math.isinf(value) and not allow_inf):
    raise ValueError(f"{name} must be a finite number in {interval}, got {value}.")
  too_low = value <= low if low_open else value < low
  too_high = value >= high if high_open else value > high
  if too_low or too_high:
    raise ValueError(f"{name} must lie in {interval}, got {value:g}.")


def check_rate(name: str, value: Any) -> None:
  """A learning rate: a finite number >= 0 (or a schedule / array)."""
  check_range(name, value, low=0.0)


def check_beta(name: str, value: Any) -> None:
  """An EMA decay in [0, 1)."""
  check_range(name, value, low=0.0, high=1.0, high_open=True)


def check_clamps(min_lr: Any, max_lr: Any) -> None:
  """``0 <= min_lr <= max_lr``, ``max_lr`` may be ``inf``."""
  check_range("min_lr", min_lr, low=0.0)
  check_range("max_lr", max_lr, low=0.0, allow_inf=True)
  if is_number(min_lr) and is_number(max_lr) and min_lr > max_lr:
    raise ValueError(
        f"min_lr must not exceed max_lr, got min_lr={min_lr:g} > max_lr={max_lr:g}."
    )
