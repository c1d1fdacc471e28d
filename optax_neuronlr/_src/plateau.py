"""``torch.optim.lr_scheduler.ReduceLROnPlateau`` as an optax transform (ref. 003)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_neuronlr._src import aliases
from optax_neuronlr._src import validation


class ReduceLROnPlateauState(NamedTuple):
  """State of `scale_by_reduce_lr_on_plateau`.

  The rate an update applies is ``max(learning_rate * scale, min(min_lr,
  learning_rate))``: the base rate (which ``optax.inject_hyperparams`` can
  change at run time) times the reductions so far, floored at ``min_lr``.

  Attributes:
    scale: the product of the reductions so far (``factor ** k`` after ``k``
      reductions; 1 at the start). It drives the update.
    best: best monitored value so far (PyTorch's ``best``).
    num_bad_epochs: values in a row that were not better than ``best``.
    cooldown_counter: values left before bad values count again.
    count: number of updates.
    applied_lr: the rate the last update applied (``learning_rate`` before the
      first), recorded for logging only: changing it changes nothing.
    last_lr: the rate after the last update's plateau step, the one the next
      update applies (unless ``learning_rate`` is changed in between):
      PyTorch's ``scheduler.get_last_lr()``, which
      `plateau_learning_rate` reads (``learning_rate``
      before the first update). Recorded for logging only.
  """

  scale: jax.Array
  best: jax.Array
  num_bad_epochs: jax.Array
  cooldown_counter: jax.Array
  count: jax.Array
  applied_lr: jax.Array
  last_lr: jax.Array


def _is_better(value, best, mode: str, threshold_mode: str, threshold) -> jax.Array:
  """PyTorch's ``is_better``, quirks included (relative thresholds on values of
  either sign: in max mode a negative ``best`` times ``1 + threshold`` is a
  *lower* bar)."""
  if mode == "min":
    bar = best * (1 - threshold) if threshold_mode == "rel" else best - threshold
    return value < bar
  bar = best * (threshold + 1) if threshold_mode == "rel" else best + threshold
  return value > bar


def _check_arguments(
    learning_rate, factor, patience, threshold, cooldown, min_lr, eps, mode,
    threshold_mode,
) -> None:
  """Construction-time checks; traced values (``inject_hyperparams``) pass."""
  validation.check_rate("learning_rate", learning_rate, allow_schedule=False)
  validation.check_range("factor", factor, low=0.0, high=1.0, low_open=True,
                         high_open=True)
  validation.check_int("patience", patience)
  validation.check_range("threshold", threshold, low=0.0)
  validation.check_int("cooldown", cooldown)
  validation.check_range("min_lr", min_lr, low=0.0)
  validation.check_range("eps", eps, low=0.0)
  validation.check_choice("mode", mode, ("min", "max"))
  validation.check_choice("threshold_mode", threshold_mode, ("rel", "abs"))


def _monitored(value: Any, dtype: Any) -> jax.Array:
  """The monitored value as a scalar of ``dtype`` (NaN allowed, as in PyTorch)."""
  if value is None:
    raise TypeError(
        "reduce_lr_on_plateau needs the monitored value: "
        "update(updates, state, params, value=loss)."
    )
  # Kind and shape are static: a vector of losses fails here, also under jit,
  # rather than turning the rate into a vector applied column by column.
  validation.concrete_number("value", value, what="a scalar (the monitored loss)")
  return jnp.asarray(value, dtype)


def scale_by_reduce_lr_on_plateau(
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
  r"""Scales updates by a rate that follows PyTorch's ``ReduceLROnPlateau``.

  Returns ``+lr * u``; `reduce_lr_on_plateau` is this transform followed
  by ``optax.scale(-1.0)``. Each update takes the monitored value as
  ``update(..., value=loss)``. It first applies the current rate, then steps
  the plateau logic on ``value`` exactly as one ``scheduler.step(value)`` does
  (in PyTorch order: ``optimizer.step(); scheduler.step(value)``):

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
  After ``k`` updates with values ``v_1..v_k``, the next update applies
  PyTorch's rate after ``k`` calls ``scheduler.step(v_i)``.

  The state keeps the reductions as a factor, ``scale``, apart from the base
  rate, and an update applies

  $$
  lr = \max(\mathrm{learning\_rate} \cdot \mathrm{scale},\;
            \min(\mathrm{min\_lr}, \mathrm{learning\_rate}))
  $$

  (PyTorch never raises a rate that starts below ``min_lr``). So under
  ``optax.inject_hyperparams`` a change of ``learning_rate`` takes effect at the
  next update, on top of the reductions so far: seed 003's
  ``for g in optimizer.param_groups: g['lr'] *= 0.9`` is
  ``nlr.set_hyperparams(state, learning_rate=lambda v: v * 0.9)``.

  Args:
    learning_rate: the initial (base) rate, a number ``>= 0``.
    mode: ``"min"`` (lower is better) or ``"max"``.
    factor: the rate is multiplied by it on a plateau, in ``(0, 1)``.
    patience: bad values tolerated before reducing, an int ``>= 0``.
    threshold: the margin of a significant improvement, ``>= 0``.
    threshold_mode: ``"rel"`` or ``"abs"``.
    cooldown: values ignored after a reduction, an int ``>= 0``.
    min_lr: the rate never goes below it, ``>= 0``.
    eps: reductions smaller than this are skipped, ``>= 0``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``value``, a
    scalar.

  Raises:
    TypeError: at construction, for a number argument that is not a number
      (a string, None, a complex number or a schedule); at ``update``, without
      ``value`` or for a non-numeric one.
    ValueError: at construction, for values out of range; at ``update`` (also
      under ``jit``), for a ``value`` that is not a scalar.
  """
  _check_arguments(learning_rate, factor, patience, threshold, cooldown, min_lr,
                   eps, mode, threshold_mode)

  def rate(scale):
    base = jnp.asarray(learning_rate, scale.dtype)
    return jnp.maximum(base * scale, jnp.minimum(min_lr, base)).astype(scale.dtype)

  def init_fn(params):
    del params
    dtype = jnp.result_type(float)
    scale = jnp.ones([], dtype)
    return ReduceLROnPlateauState(
        scale=scale,
        best=jnp.asarray(jnp.inf if mode == "min" else -jnp.inf, dtype),
        num_bad_epochs=jnp.zeros([], jnp.int32),
        cooldown_counter=jnp.zeros([], jnp.int32),
        count=jnp.zeros([], jnp.int32),
        # A copy: under inject_hyperparams, learning_rate is the injected
        # state's own buffer, and no two fields may share one.
        applied_lr=jnp.array(learning_rate, dtype, copy=True),
        last_lr=jnp.array(learning_rate, dtype, copy=True),
    )

  def update_fn(updates, state, params=None, *, value: Any = None, **extra_args):
    del params, extra_args
    value = _monitored(value, state.best.dtype)
    lr = rate(state.scale)
    updates = jax.tree.map(lambda u: (lr * u).astype(u.dtype), updates)

    better = _is_better(value, state.best, mode, threshold_mode, threshold)
    best = jnp.where(better, value, state.best)
    bad = jnp.where(better, 0, state.num_bad_epochs + 1)
    in_cooldown = state.cooldown_counter > 0
    cooldown_counter = jnp.where(in_cooldown, state.cooldown_counter - 1,
                                 state.cooldown_counter)
    bad = jnp.where(in_cooldown, 0, bad)
    reduce = bad > patience
    reduced = jnp.maximum(lr * factor, min_lr)
    apply = reduce & (lr - reduced > eps)
    scale = jnp.where(apply, state.scale * factor, state.scale).astype(state.scale.dtype)
    new_state = ReduceLROnPlateauState(
        scale=scale,
        best=best,
        num_bad_epochs=jnp.where(reduce, 0, bad).astype(jnp.int32),
        cooldown_counter=jnp.where(reduce, cooldown, cooldown_counter).astype(jnp.int32),
        count=jnp.asarray(optax.safe_increment(state.count)),
        applied_lr=lr,
        last_lr=rate(scale),
    )
    return updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


reduce_lr_on_plateau = aliases.negated(
    scale_by_reduce_lr_on_plateau, "reduce_lr_on_plateau",
    r"""SGD whose rate follows PyTorch's ``ReduceLROnPlateau``: ``u = -lr * g``.

  ``optax.chain(scale_by_reduce_lr_on_plateau(...), optax.scale(-1.0))``; see
  `scale_by_reduce_lr_on_plateau` for the rule, the arguments and how a
  change of ``learning_rate`` under ``optax.inject_hyperparams`` combines with
  the reductions. Each update takes the monitored value as ``update(...,
  value=loss)``; its state is ``(ReduceLROnPlateauState, EmptyState)``.

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

  Takes the arguments of `scale_by_reduce_lr_on_plateau`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``value``.
  """)
