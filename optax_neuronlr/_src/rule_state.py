"""The state classes of `scale_by_rule`, one per rule.

A rule's state is a NamedTuple (like every optax state, so that checkpoints,
``optax.tree_utils``, donation and sharding see plain pytrees) with the fields

* ``count``: the number of updates so far;
* one field per unit statistic (``Rule.unit_stats``), each a tree shaped like
  the parameters' units;
* one field per element statistic (``Rule.element_stats``), each a tree
  shaped like the parameters;
* one field per leaf statistic (``Rule.leaf_stats``), each a tree of 0-d
  arrays;
* ``applied``: the scalars of the last update (`RuleState`);
* ``direction_state``: the state of ``direction``.

Why one class per rule: the statistics are named fields
(``state.grad_ema``, ``optax.tree_utils.tree_get(state, "grad_ema")``), and a
state holds no static metadata (it must stay a tree of arrays), so the class
is where the rule lives. Each class carries two class attributes:

* ``rule``: the `Rule` instance that built it, from
  which readers recompute the applied rates
  (`learning_rates`);
* ``is_global``: True for the variant of ``granularity="global"``.

The classes, from the most general:

* the *base* class of a rule class (``ScaleByGradHistoryLRState`` for
  ``GradHistory``; name: ``Rule.state_name``, default the rule class' name +
  ``"State"``), whose ``rule`` is the rule's default instance (None when the
  rule has required options);
* a subclass of the same name per rule instance with other static options
  (``GradHistory(bias_correction=True)``), so that ``isinstance(state,
  ScaleByGradHistoryLRState)`` holds for every option;
* a subclass of either with ``is_global = True`` for ``granularity="global"``
  (each leaf holds a copy of the one per-tree statistic, so readers still see
  parameter-shaped trees).

Classes are cached: equal rules get the same class, so states of two equal
transforms are interchangeable. Readers recognise a rule state by its type
alone (`is_rule_state`): a class built here, carrying a rule.
"""

from __future__ import annotations

import functools
import typing
from typing import Any, NamedTuple

import jax
import optax

# Set on every class built here: how readers tell a rule state from any other
# NamedTuple (a user's NamedTuple may well have a field named ``rule``).
_MARK = "_is_rule_state_class"


class RuleState(NamedTuple):
  """Fields every rule state has; a rule's state class adds its statistics.

  Each rule gets its own NamedTuple state class (`Rule.state_class`),
  with the fields ``count``, one per unit statistic, one per element
  statistic, ``applied`` and ``direction_state``:

  Attributes:
    count: number of updates so far (int32, safe from overflow).
    applied: the scalars the last update used, in the order of
      `Rule.scalar_names` (``learning_rate``, ``min_lr``, ``max_lr``,
      then the rule's hyperparameters), kept so that the applied rates can be
      recomputed from the state alone. A tuple, not a dict: the
      hyperparameters that drive the update are those of
      ``optax.inject_hyperparams``, and ``optax.tree_utils.tree_get`` /
      ``tree_set`` find only those.
    direction_state: the state of ``direction`` (``optax.EmptyState()`` when
      there is none).
  """

  count: jax.Array
  applied: tuple[jax.Array, ...]
  direction_state: optax.OptState


def state_fields(rule_cls: type) -> tuple[str, ...]:
  """The fields of a rule class' state, in order (see the module docstring)."""
  fields = ("count", *rule_cls.unit_stats, *rule_cls.element_stats,
            *rule_cls.leaf_stats, "applied", "direction_state")
  if len(set(fields)) != len(fields):
    raise TypeError(
        f"{rule_cls.__name__}: statistic names "
        f"{rule_cls.unit_stats + rule_cls.element_stats + rule_cls.leaf_stats} "
        "must be distinct and differ from 'count', 'applied' and 'direction_state'."
    )
  return fields


def _subclass(base: type, **attrs: Any) -> type:
  """A field-less subclass of a state class (same name, doc and module)."""
  return type(base.__name__, (base,), {
      "__slots__": (), "__doc__": base.__doc__, "__module__": base.__module__,
      **attrs})


@functools.lru_cache(maxsize=None)
def base_state_class(rule_cls: type) -> type:
  """The NamedTuple state of a rule class (its default instance's state)."""
  fields = state_fields(rule_cls)
  name = rule_cls.state_name or f"{rule_cls.__name__}State"
  # The functional form, with fields known only at run time.
  state_cls: Any = typing.cast(Any, NamedTuple)(name, [(f, Any) for f in fields])
  setattr(state_cls, _MARK, True)
  state_cls.rule = None  # the default instance, set by rule_state_class
  state_cls.is_global = False
  state_cls.__doc__ = (
      f"State of `scale_by_rule` for `{rule_cls.__name__}`: `count`, "
      f"unit statistics {rule_cls.unit_stats}, element statistics "
      f"{rule_cls.element_stats}, leaf statistics {rule_cls.leaf_stats}, `applied` "
      "and `direction_state` (see `optax_neuronlr.RuleState`)."
  )
  state_cls.__module__ = rule_cls.__module__
  return state_cls


@functools.lru_cache(maxsize=None)
def rule_state_class(rule: Any) -> type:
  """The state class of one rule instance (cached: one per equal rule).

  The rule class' default instance gets the base class; a rule with other
  static options gets a subclass of it, so ``isinstance`` sees them all.
  """
  base = base_state_class(type(rule))
  try:
    default = type(rule)()
  except TypeError:  # a rule with required options has no default instance
    default = None
  if rule == default:
    base.rule = rule
    return base
  return _subclass(base, rule=rule)


@functools.lru_cache(maxsize=None)
def global_state_class(state_cls: type) -> type:
  """The state class of a rule run with ``granularity="global"``: each leaf
  holds a copy of the one per-tree statistic, so readers see params-shaped
  trees, and ``is_global`` tells tools that they are one unit."""
  return _subclass(state_cls, is_global=True)


def state_class(rule: Any, is_global: bool = False) -> type:
  """The state class of ``rule`` (``is_global``: its ``"global"`` variant)."""
  cls = rule_state_class(rule)
  return global_state_class(cls) if is_global else cls


def is_rule_state(x: Any) -> bool:
  """True for the state of any `scale_by_rule` transform."""
  cls = type(x)
  return (getattr(cls, _MARK, False) and getattr(cls, "rule", None) is not None
          and hasattr(x, "_fields"))


def rule_of(state: Any) -> Any:
  """The `Rule` that built a rule state."""
  return type(state).rule


def applied_scalars(state: Any) -> dict[str, jax.Array]:
  """The scalars the last update of a rule state used, by name."""
  return dict(zip(rule_of(state).scalar_names(), state.applied))
