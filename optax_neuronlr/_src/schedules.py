"""PyTorch ``torch.optim.lr_scheduler`` semantics as optax schedules (ref. 003).

A PyTorch scheduler changes the rate once per ``scheduler.step()``, usually once
per epoch. Here a schedule maps the optimizer's step count to a rate; with
``steps_per_epoch=S``, optimizer steps ``k*S .. k*S + S - 1`` use the rate that
PyTorch gives after ``k`` calls of ``scheduler.step()``:

    ``schedule(k * S) == PyTorch's lr after k scheduler.step() calls``

(PyTorch's schedulers apply their first, epoch-0 step at construction, so
``k = 0`` is the initial rate.) The closed forms below are the ones PyTorch
documents; its recursive, "chainable" implementation reaches the same values up
to floating-point rounding. Where optax has the same closed form, it is used.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from optax_neuronlr._src import validation


def _check_steps_per_epoch(steps_per_epoch: Any) -> int:
  """An int >= 1 (NumPy ints too), returned as a Python int."""
  return validation.check_int("steps_per_epoch", steps_per_epoch, low=1)


def _check_init_value(init_value: Any) -> None:
  """The initial rate: a finite number >= 0, as PyTorch's optimizers require."""
  validation.check_range("init_value", init_value, low=0.0)


def _check_milestones(milestones: Any) -> list[int]:
  """Epochs >= 0 as Python ints; never splits a string or truncates a float."""
  hint = "a list of epochs (ints >= 0), e.g. [30, 80]"
  if isinstance(milestones, (str, bytes, Mapping)) or not isinstance(
      milestones, Iterable
  ) or getattr(milestones, "ndim", 1) != 1:
    raise TypeError(f"milestones must be {hint}, got {milestones!r}.")
  out = []
  for m in milestones:
    try:
      out.append(validation.check_int("milestones", m))
    except ValueError as e:
      raise ValueError(f"milestones must be {hint}, got the epoch {m!r}.") from e
  return out


def _epoch(count: Any, steps_per_epoch: int) -> jax.Array:
  return jnp.asarray(count) // steps_per_epoch


def _float_count(schedule: optax.Schedule) -> optax.Schedule:
  """Feeds the count as the default float, so that the rate is float64 under
  x64 (optax's decays compute in the count's dtype, float32 for int32)."""
  return lambda count: schedule(jnp.asarray(count, jnp.result_type(float)))


def step_lr(
    init_value: float, step_size: int, gamma: float = 0.1, *, steps_per_epoch: int = 1
) -> optax.Schedule:
  """``torch.optim.lr_scheduler.StepLR``: ``init * gamma ** (epoch // step_size)``."""
  _check_init_value(init_value)
  step_size = validation.check_int("step_size", step_size, low=1)
  validation.check_range("gamma", gamma, low=0.0, low_open=True)
  steps_per_epoch = _check_steps_per_epoch(steps_per_epoch)
  return _float_count(optax.exponential_decay(
      init_value, step_size * steps_per_epoch, gamma, staircase=True
  ))


def multi_step_lr(
    init_value: float,
    milestones: Iterable[int],
    gamma: float = 0.1,
    *,
    steps_per_epoch: int = 1,
) -> optax.Schedule:
  """``MultiStepLR``: ``init * gamma ** (number of milestones <= epoch)``.

  A milestone listed twice multiplies by ``gamma`` twice, and a milestone 0
  applies from the start, as in PyTorch. ``milestones`` is a list (or any
  iterable) of integer epochs: a single int, a string or a fractional epoch is
  an error, not read as something else.
  """
  _check_init_value(init_value)
  counts = collections.Counter(_check_milestones(milestones))
  validation.check_range("gamma", gamma, low=0.0, low_open=True)
  steps_per_epoch = _check_steps_per_epoch(steps_per_epoch)
  return optax.piecewise_constant_schedule(
      init_value, {m * steps_per_epoch: gamma**n for m, n in sorted(counts.items())}
  )


def exponential_lr(
    init_value: float, gamma: float, *, steps_per_epoch: int = 1
) -> optax.Schedule:
  """``ExponentialLR``: ``init * gamma ** epoch``."""
  _check_init_value(init_value)
  validation.check_range("gamma", gamma, low=0.0, low_open=True)
  steps_per_epoch = _check_steps_per_epoch(steps_per_epoch)
  return _float_count(
      optax.exponential_decay(init_value, steps_per_epoch, gamma, staircase=True)
  )


def cosine_annealing_lr(
    init_value: float, t_max: int, eta_min: float = 0.0, *, steps_per_epoch: int = 1
) -> optax.Schedule:
  r"""``CosineAnnealingLR``, PyTorch's values also after ``t_max``.

  $$
  \eta_e = \eta_{min} + (\eta_0 - \eta_{min})
           \frac{1 + \cos(\pi e / T_{max})}{2}
  $$

  for every epoch $e$. Past ``t_max`` the rate rises again (period
  ``2 * t_max``), as PyTorch's does; ``optax.cosine_decay_schedule`` instead
  stays at its final value, so it is not used here.
  """
  _check_init_value(init_value)
  t_max = validation.check_int("t_max", t_max, low=1)
  validation.check_range("eta_min", eta_min, low=0.0)
  steps_per_epoch = _check_steps_per_epoch(steps_per_epoch)

  def schedule(count):
    # (1 + cos x) / 2 = cos(x / 2)**2, with the epoch reduced modulo the period
    # in integers first: float32 keeps PyTorch's values to ~1e-6 relative even
    # far past t_max and near eta_min.
    phase = _epoch(count, steps_per_epoch) % (2 * t_max)
    half = jnp.cos(jnp.pi * phase.astype(jnp.result_type(float)) / (2 * t_max))
    return eta_min + (init_value - eta_min) * half**2

  return schedule


def lambda_lr(
    init_value: float,
    lr_lambda: Callable[[jax.Array], jax.Array],
    *,
    steps_per_epoch: int = 1,
) -> optax.Schedule:
  """``LambdaLR``: ``init * lr_lambda(epoch)``.

  ``lr_lambda`` receives the epoch as an integer array (traced under ``jit``), so
  write it with ``jnp`` operations (``jnp.where`` rather than ``if``).
  """
  _check_init_value(init_value)
  if not callable(lr_lambda):
    raise TypeError(
        f"lr_lambda must be a function epoch -> factor, got {lr_lambda!r}."
    )
  steps_per_epoch = _check_steps_per_epoch(steps_per_epoch)
  return lambda count: init_value * lr_lambda(_epoch(count, steps_per_epoch))
