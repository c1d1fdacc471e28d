r"""A learning rate kept in the state, for the readers: `record_learning_rate`.

An optax optimizer built around a Python number (``optax.adamw(3e-4)``, the
hidden chain of `muon`) closes over its rate: its state
holds no trace of it, so `learning_rates` has nothing to
read. `record_learning_rate` is the identity on the updates and keeps, in
a `RecordLearningRateState`, the rate $\eta_t$ the step applied (a
schedule evaluated at the step count before the update, as
``optax.scale_by_learning_rate``). The readers show it on every leaf that the
transforms beside it keep statistics for (Adam's moments, Muon's momentum):
one unit per leaf, as the groups of ``param_groups(optax.adam, ...)``.

The state is two scalars whatever the parameters: ``count`` (int32) and
``applied_lr``. Neither is shaped like the parameters, so
``optax.tree_utils.tree_map_params`` passes them by, and ``applied_lr`` is not
named ``learning_rate``: ``optax.tree_utils.tree_set(state,
learning_rate=...)`` changes only the hyperparameters that drive the update
(those of ``optax.inject_hyperparams``), never this record of them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_neuronlr._src import validation


class RecordLearningRateState(NamedTuple):
  """State of `record_learning_rate`.

  Attributes:
    count: number of updates so far (int32, safe from overflow).
    applied_lr: the rate the last update applied, $\\eta_{t}$ (before the
      first update: the rate of step 0), in the default float dtype.
  """

  count: jax.Array
  applied_lr: jax.Array


def _rate_at(learning_rate: optax.ScalarOrSchedule, count: jax.Array) -> jax.Array:
  value = learning_rate(count) if callable(learning_rate) else learning_rate
  return jnp.asarray(value, dtype=jnp.result_type(float))


def record_learning_rate(
    learning_rate: optax.ScalarOrSchedule,
) -> optax.GradientTransformation:
  r"""Keeps the learning rate of each step in the state; updates unchanged.

  With $c$ the update count, the state after update $t$ holds
  $\eta_t = \mathrm{lr}(c_{t-1})$ for a schedule (the value
  ``optax.scale_by_learning_rate(lr)`` applied at that update) or the number
  itself. Chain it beside the transform that applies the rate, so that
  `learning_rates` and the other readers show it on the
  leaves those transforms keep statistics for:

  ```python
  tx = optax.chain(optax.adamw(schedule), nlr.record_learning_rate(schedule))
  ```

  `muon` and `normuon` record their
  Muon and AdamW rates this way. The leaves are those of the first
  per-leaf statistic in the enclosing chain (Adam's ``mu``, a momentum); beside
  transforms that keep none (``optax.sgd`` without momentum) there is no leaf
  to show the rate on, and the readers skip it.

  Args:
    learning_rate: the rate, a number ``>= 0`` or an optax schedule (a traced
      value under ``optax.inject_hyperparams``).

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    `RecordLearningRateState`.
  """
  validation.check_rate("learning_rate", learning_rate)

  def init_fn(params):
    del params
    count = jnp.zeros([], jnp.int32)
    return RecordLearningRateState(count, _rate_at(learning_rate, count))

  def update_fn(updates, state, params=None):
    del params
    applied = _rate_at(learning_rate, state.count)
    count = jnp.asarray(optax.safe_increment(state.count))
    return updates, RecordLearningRateState(count, applied)

  return optax.GradientTransformation(init_fn, update_fn)


def with_recorded_rate(
    tx: optax.GradientTransformation, learning_rate: optax.ScalarOrSchedule,
) -> optax.GradientTransformationExtraArgs:
  """``tx`` (an ``optax.chain``, such as ``optax.adamw``, that applies
  ``learning_rate`` itself) followed by `record_learning_rate`.

  The state is ``tx``'s tuple with a `RecordLearningRateState`
  appended, not nested: every statistic keeps its place, so
  `rebuild_state` carries a state saved without the
  record over whole.
  """
  record = record_learning_rate(learning_rate)
  tx = optax.with_extra_args_support(tx)

  def init_fn(params):
    inner = tx.init(params)
    if type(inner) is not tuple:  # pylint: disable=unidiomatic-typecheck
      raise TypeError(
          "with_recorded_rate extends the state of an optax.chain (a tuple); got "
          f"{type(inner).__name__}.")
    return (*inner, record.init(params))

  def update_fn(updates, state: Any, params=None, **extra_args):
    *inner, rec = state
    updates, new_inner = tx.update(updates, tuple(inner), params, **extra_args)
    updates, rec = record.update(updates, rec, params)
    return updates, (*tuple(new_inner), rec)  # type: ignore[misc]

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
