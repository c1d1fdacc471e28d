"""Flax NNX glue: an ``nnx.Optimizer`` that follows a model that changed.

The one job of this module is `rebuild_nnx_optimizer`, which rebuilds an
``nnx.Optimizer`` in place for the model's current parameters with
`rebuild`. Flax is imported only when it is
called.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional, Union

import optax

from optax_neuronlr._src import group_edits
from optax_neuronlr._src import migrate
from optax_neuronlr._src import param_groups
from optax_neuronlr._src import validation


def rebuild_nnx_optimizer(
    optimizer: Any,
    model: Any,
    tx: Optional[optax.GradientTransformation] = None,
    *,
    reset: Union[None, str, Iterable[str]] = None,
    strict: bool = False,
) -> Any:
  """Flax NNX: the ``nnx.Optimizer`` follows a model that changed, in place.

  After ``model.head = nnx.Linear(...)`` (or a removed or resized part), the
  optimizer is rebuilt for the model's current parameters (its ``wrt``
  filter), with `rebuild_state`: every statistic of the parameters that
  stay is kept, new ones start fresh, the step counter is kept. With ``tx``
  the optimizer also changes its transformation, e.g. to add a group:

    model.head = nnx.Linear(64, 10, rngs=nnx.Rngs(1))
    nlr.rebuild_nnx_optimizer(
        optimizer, model, optimizer.tx.with_group({"params": "head", "lr": 1e-2}))

  Args:
    optimizer: an ``nnx.Optimizer``; it is changed in place.
    model: the model it optimizes, as it is now.
    tx: the new transformation (default: the optimizer's own).
    reset: groups whose statistics start fresh, as in `rebuild_state`.
    strict: as in `rebuild_state`; for ``nlr.param_groups``
      transformations also an error for parameters that would move from one
      group to another (as `add_param_group`).

  Returns:
    ``optimizer``, rebuilt.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  if not isinstance(optimizer, nnx.Optimizer):
    raise TypeError(f"optimizer must be an nnx.Optimizer, got {type(optimizer).__name__}.")
  strict = validation.check_flag("strict", strict)
  tx = optimizer.tx if tx is None else tx
  graph = getattr(optimizer, "graph", None)
  kwargs = {} if graph is None else {"graph": graph}
  params = nnx.as_pure(nnx.state(model, optimizer.wrt, **kwargs))
  old = nnx.as_pure(optimizer.opt_state)
  old_tx = optimizer.tx
  if (strict and isinstance(old_tx, param_groups.ParamGroups)
      and isinstance(tx, param_groups.ParamGroups)):
    group_edits.check_no_move(old_tx, tx, old, params, "rebuild_nnx_optimizer")
  fresh = nnx.Optimizer(model, tx, wrt=optimizer.wrt, **kwargs)
  new = migrate.rebuild(tx, old, params, reset=reset, strict=strict,
                 what="rebuild_nnx_optimizer", fresh=nnx.as_pure(fresh.opt_state))
  nnx.update(fresh.opt_state, nnx.state(new, **kwargs))
  optimizer.tx = tx
  optimizer.opt_state = fresh.opt_state
  return optimizer
