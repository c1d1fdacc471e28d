"""``torch.optim.lr_scheduler.ReduceLROnPlateau`` as an optax transform (ref. 003)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_neuronlr._src import validation


class ReduceLROnPlateauState(NamedTuple):
  """State of :func:`reduce_lr_on_plateau`.

  Attributes:
    lr: the rate the next update applies (PyTorch's ``param_group['lr']``).
    best: best monitored value so far (PyTorch's ``best``).
    num_bad_epochs: values in a row that were not better than ``best``.
    cooldown_counter: values left before bad values count again.
    count: number of updates.
  """

  lr: jax.Array
  best: jax.Array
  num_bad_epochs: jax.Array
  cooldown_counter: jax.Array
  count: jax.Array


def _is_better(value, best, mode: str, threshold_mode: str, threshold) -> jax.Array:
  """PyTorch's ``is_better``, quirks included (relative thresholds on values of
  either sign: in max mode a negative ``best`` times ``1 + threshold`` is a
  *lower* bar)."""
  if mode == "min":
    bar = best * (1 - threshold) if threshold_mode == "rel" else best - threshold
    return value < bar
  bar = best * (threshold + 1) if threshold_mode == "rel" else best + threshold
  return value > bar


def reduce_lr_on_plateau(
    learning_rate: float,
    *,
    mode: str = "min",
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    threshold_mode: str = "rel",
    cooldown: int = 0,
    min_lr: float = 0.0,
    eps: float = 1e-8,
) -> optax.GradientTransformationExtraArgs:
  r"""SGD whose rate follows PyTorch's ``ReduceLROnPlateau``: ``u = -lr * g``.

  Each update takes the monitored value as ``update(..., value=loss)``. It
  first applies the current rate, then steps the plateau logic on ``value``
  exactly as one ``scheduler.step(value)`` does (in PyTorch order:
  ``optimizer.step(); scheduler.step(value)``)::

    if is_better(value, best):  best, bad = value, 0
    else:                       bad += 1
    if cooldown_counter > 0:    cooldown_counter -= 1; bad = 0
    if bad > patience:
      new = max(lr * factor, min_lr)
      if lr - new > eps: lr = new
      cooldown_counter, bad = cooldown, 0

  with ``is_better`` by ``mode`` and ``threshold_mode``: ``value < best * (1 -
  threshold)`` (min, rel), ``value < best - threshold`` (min, abs), ``value >
  best * (1 + threshold)`` (max, rel), ``value > best + threshold`` (max, abs).
  After ``k`` updates with values ``v_1..v_k``, ``state.lr`` equals PyTorch's
  rate after ``k`` calls ``scheduler.step(v_i)``.

  To put a plateau rate on another direction, chain that direction before it:
  ``optax.chain(optax.scale_by_adam(), nlr.reduce_lr_on_plateau(1e-3))``.
  Flax NNX passes the value through ``optimizer.update(model, grads,
  value=loss)``; linen's ``TrainState.apply_gradients`` passes no extra
  arguments, so call ``state.tx.update(grads, state.opt_state, state.params,
  value=loss)`` yourself there.

  Differences from ``optax.contrib.reduce_on_plateau`` (which is not reused,
  because none of its modes has these semantics): it scales updates by a
  factor in ``(0, 1]`` rather than holding a rate; it knows only the min mode;
  its improvement test is ``value < (1 - rtol) * best - atol`` (both at once);
  it reduces when the count of bad values reaches ``patience`` (PyTorch: exceeds
  it); it can average the value over ``accumulation_size`` updates; its floor is
  ``min_scale`` rather than ``min_lr``, and it has no ``eps``.

  Args:
    learning_rate: the initial rate, ``>= 0``.
    mode: ``"min"`` (lower is better) or ``"max"``.
    factor: the rate is multiplied by it on a plateau, in ``(0, 1)``.
    patience: bad values tolerated before reducing, an int ``>= 0``.
    threshold: the margin of a significant improvement, ``>= 0``.
    threshold_mode: ``"rel"`` or ``"abs"``.
    cooldown: values ignored after a reduction, an int ``>= 0``.
    min_lr: the rate never goes below it, ``>= 0``.
    eps: reductions smaller than this are skipped, ``>= 0``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``value``.
  """
  validation.check_rate("learning_rate", learning_rate)
  validation.check_range("factor", factor, low=0.0, high=1.0, low_open=True,
                         high_open=True)
  validation.check_range("threshold", threshold, low=0.0)
  validation.check_range("min_lr", min_lr, low=0.0)
  validation.check_range("eps", eps, low=0.0)
  for name, value in (("patience", patience), ("cooldown", cooldown)):
    # Under inject_hyperparams these arrive as int32 arrays: not checked here.
    if validation.is_number(value) and (int(value) != value or value < 0):
      raise ValueError(f"{name} must be an int >= 0, got {value!r}.")
    if isinstance(value, (bool, str)) or value is None:
      raise TypeError(f"{name} must be an int >= 0, got {value!r}.")
  if mode not in ("min", "max"):
    raise ValueError(f"mode must be 'min' or 'max', got {mode!r}.")
  if threshold_mode not in ("rel", "abs"):
    raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}.")

  def init_fn(params):
    del params
    dtype = jnp.result_type(float)
    return ReduceLROnPlateauState(
        lr=jnp.asarray(learning_rate, dtype),
        best=jnp.asarray(jnp.inf if mode == "min" else -jnp.inf, dtype),
        num_bad_epochs=jnp.zeros([], jnp.int32),
        cooldown_counter=jnp.zeros([], jnp.int32),
        count=jnp.zeros([], jnp.int32),
    )

  def update_fn(updates, state, params=None, *, value: Any = None, **extra_args):
    del params, extra_args
    if value is None:
      raise TypeError(
          "reduce_lr_on_plateau needs the monitored value: "
          "update(updates, state, params, value=loss)."
      )
    lr = state.lr
    updates = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)

    value = jnp.asarray(value, state.best.dtype)
    better = _is_better(value, state.best, mode, threshold_mode, threshold)
    best = jnp.where(better, value, state.best)
    bad = jnp.where(better, 0, state.num_bad_epochs + 1)
    in_cooldown = state.cooldown_counter > 0
    cooldown_counter = jnp.where(in_cooldown, state.cooldown_counter - 1,
                                 state.cooldown_counter)
    bad = jnp.where(in_cooldown, 0, bad)
    reduce = bad > patience
    reduced = jnp.maximum(lr * factor, min_lr)
    new_lr = jnp.where(reduce & (lr - reduced > eps), reduced, lr)
    new_state = ReduceLROnPlateauState(
        lr=new_lr.astype(lr.dtype),
        best=best,
        num_bad_epochs=jnp.where(reduce, 0, bad).astype(jnp.int32),
        cooldown_counter=jnp.where(reduce, cooldown, cooldown_counter).astype(jnp.int32),
        count=optax.safe_increment(state.count),
    )
    return updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
