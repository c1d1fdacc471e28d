"""Group edits during training: add, drop or reset a parameter group.

The one job of this module is PyTorch's ``optimizer.add_param_group(...)``
(reference 003, "useful for fine-tuning") and its siblings: each edit builds
the new transformation (`ParamGroups` methods) and
carries the state over with `rebuild`,
every statistic of the groups that stay kept bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Union

import jax
import optax

from optax_neuronlr._src import migrate
from optax_neuronlr._src import param_groups as param_groups_lib


def _as_param_groups(tx: Any, what: str) -> param_groups_lib.ParamGroups:
  if not isinstance(tx, param_groups_lib.ParamGroups):
    raise TypeError(
        f"{what} needs the transformation built by nlr.param_groups, got "
        f"{type(tx).__name__}. For another optax.multi_transform, build the new "
        "transformation and call nlr.rebuild_state(new_tx, state, params).")
  return tx


def add_param_group(
    tx: param_groups_lib.ParamGroups,
    state: Any,
    params: Any,
    group: Mapping[str, Any],
) -> tuple[param_groups_lib.ParamGroups, Any]:
  """Adds a parameter group during training: PyTorch's ``add_param_group``.

  ``optimizer.add_param_group({"params": model.head.parameters(), "lr":
  1e-2})`` becomes:

    model_params = {**params, "head": head_params}
    tx, state = nlr.add_param_group(tx, state, model_params,
                                    {"params": "head", "lr": 1e-2})

  The new group's parameters start with fresh statistics (step 0, as in
  PyTorch) and the hyperparameters it sets, the others take ``tx``'s
  defaults; every statistic of the existing groups is kept bit for bit. The
  new parameters may be new leaves of the model or leaves that ``rest="freeze"``
  kept frozen (unfreezing a block with its own rate).

  Args:
    tx: a `param_groups` transformation.
    state: its state.
    params: the parameters, with the new ones.
    group: a group dict as in `param_groups`.

  Returns:
    ``(new_tx, new_state)``; rebuild the jitted training step with ``new_tx``.

  Raises:
    TypeError: if ``tx`` is not a `param_groups` transformation.
    ValueError: for an invalid group (as `param_groups`), a group that
      claims no parameter, or one that claims parameters of another group
      (PyTorch raises too; also when it would take every parameter of the
      ``rest=`` group), or parameters that left the model (their statistics
      would be lost).
  """
  tx = _as_param_groups(tx, "add_param_group")
  new_tx = tx.with_group(group)
  check_no_move(tx, new_tx, state, params, "add_param_group")
  return new_tx, migrate.rebuild(new_tx, state, params, strict=True, what="add_param_group")


def check_no_move(tx: param_groups_lib.ParamGroups, new_tx: param_groups_lib.ParamGroups,
                  state: Any, params: Any, what: str) -> None:
  """Raises if a leaf that a group of ``tx`` holds statistics for in
  ``state`` goes to another group in ``new_tx``, as PyTorch's
  ``add_param_group`` raises "some parameters appear in more than one
  parameter group". New leaves (no statistics yet) may go to any group, also
  where the pattern of an old group would select them, and so may the leaves
  of a frozen group (unfreezing).
  """
  old, new = tx.owners(params), new_tx.owners(params)
  present = migrate.state_param_paths(state)
  moved: dict[str, list[str]] = {}
  to = set()
  for path, owner in old.items():
    if owner is not None and path in present and new.get(path) != owner:
      moved.setdefault(owner, []).append(path)
      to.add(str(new.get(path)))
  if moved:
    raise ValueError(
        f"{what}: parameters already in a group would move to another one: "
        f"{moved} (to {sorted(to)}; a parameter belongs to one group: PyTorch's "
        "add_param_group raises 'some parameters appear in more than one parameter "
        "group'). "
        "Narrow the new group's 'params' to new parameters or frozen ones; to move "
        "parameters on purpose, build the new nlr.param_groups and carry the state "
        "over with nlr.rebuild_state(new_tx, state, params) (their statistics "
        "start fresh).")


def drop_param_group(
    tx: param_groups_lib.ParamGroups,
    state: Any,
    params: Any,
    name: str,
) -> tuple[param_groups_lib.ParamGroups, Any]:
  """Removes a parameter group and releases its state.

  PyTorch has no method for it; the equivalent is ``opt.param_groups.remove(g)``
  and ``opt.state.pop(p)`` for each of its parameters. Where the group's
  parameters left the model, the group is removed; where some are still in
  ``params`` the group stays, frozen (zero updates, no state: PyTorch's
  ``requires_grad_(False)``). Every statistic of the other groups is kept bit
  for bit.

  Args:
    tx: a `param_groups` transformation.
    state: its state.
    params: the parameters (without the group's, or with them to freeze them).
    name: the group's name.

  Returns:
    ``(new_tx, new_state)``.

  Raises:
    TypeError: if ``tx`` is not a `param_groups` transformation.
    ValueError: for an unknown name, or if other groups would lose statistics
      (parameters of theirs that left the model: use `rebuild_state`).
  """
  tx = _as_param_groups(tx, "drop_param_group")
  frozen = tx.without_group(name, freeze=True)
  probe = param_groups_lib.param_groups(tx.optimizer, frozen.groups, rest=frozen.rest,
                                  allow_empty=True, **tx.defaults)
  claims = name in jax.tree.leaves(probe.labels(params))
  new_tx = frozen if claims else tx.without_group(name)
  return new_tx, migrate.rebuild(new_tx, state, params, strict=True, released=[name],
                          what="drop_param_group")


def reset_param_group(
    tx: optax.GradientTransformation,
    state: Any,
    params: Any,
    name: Union[str, Iterable[str]],
) -> Any:
  """Fresh statistics for one group, the same hyperparameters.

  PyTorch: ``for p in group["params"]: optimizer.state[p].clear()``. The
  group's statistics (moments, per-unit rates, EMAs, the counts that bias
  corrections read) restart as at ``init``; its injected hyperparameters,
  including values set with `set_hyperparams`, and the count that drives
  their schedules are kept, as PyTorch keeps the group's ``lr`` and its
  scheduler. Other groups are untouched. Works for any ``optax.multi_transform``
  state (optax issue #1371), ``name`` being its label; a label whose
  transform is not wrapped in ``optax.inject_hyperparams`` restarts whole,
  the counts of its schedules included.

  Args:
    tx: the transformation (a `param_groups` one or any optax optimizer
      with ``optax.multi_transform`` labels).
    state: its state.
    params: the parameters.
    name: the group's name or label (nested labels joined by ``"/"``), or
      several.

  Returns:
    The new state.

  Raises:
    ValueError: for an unknown group name, or if ``params`` lost parameters
      that other groups hold statistics for.
  """
  if name is None:
    raise TypeError("name must be a group name (str) or several, got None.")
  return migrate.rebuild(tx, state, params, reset=name, strict=True, what="reset_param_group")
