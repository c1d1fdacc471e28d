"""The per-unit learning-rate engine shared by every strategy.

A strategy is a :class:`Rule`: which per-element quantities of the gradient it
observes, how it initialises and updates its per-unit statistics from their
per-unit means, and how a rate follows from the statistics. The engine owns all
the rest, identically for every rule:

* units: ``granularity`` and ``neuron_axes`` (see :mod:`units`);
* clamps: the applied rate is ``clip(rate, min_lr, max_lr)``;
* schedules: ``learning_rate`` may be a float or an optax schedule of the step
  count, evaluated at the count before the update, as ``optax.scale_by_schedule``;
* dtypes: statistics in ``state_dtype`` (float32 for bf16/f16 leaves by
  default, else the leaf's dtype); updates keep the incoming dtype;
* ``direction``: an optional optax transform whose output the per-unit rate
  scales; statistics always come from the incoming gradient;
* ``None`` leaves and ``optax.MaskedNode`` keep their place in every tree.

For a leaf with gradient ``g``, direction ``d`` (``d = g`` by default) and unit
map ``U`` (the mean over each unit's elements), one step is::

    o_k   = U(q_k(g))                    for each observed quantity q_k
    s_t   = rule.update(s_{t-1}, o, hp_t, hp_{t-1}, t)
    r_t   = clip(rule.rate(s_t, hp_t, t), min_lr, max_lr)
    u_t   = broadcast(r_t) * d_t

The state keeps the step count, the per-unit statistics, the direction's state
and the few scalar hyperparameters of the last step (``hyperparams``), so that
:func:`optax_neuronlr.learning_rates` recomputes the applied rates from the
state alone instead of storing a per-element copy of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optax_neuronlr._src import units as units_lib
from optax_neuronlr._src import validation

Stats = tuple[jax.Array, ...]
Hyper = Mapping[str, jax.Array]


class Rule(NamedTuple):
  """A per-unit learning-rate rule, run by :func:`scale_by_rule`.

  Attributes:
    name: short name, used in logs.
    state_cls: the strategy's NamedTuple state; its fields are ``count``,
      ``hyperparams``, ``direction_state``, ``units`` and one field per
      statistic.
    stat_names: names of the per-unit statistics, in the order the functions
      below take and return them.
    observe: ``g -> (q_1(g), ...)`` per-element quantities; the engine averages
      each over a unit.
    init: ``(unit_shape, dtype, hp) -> stats`` initial statistics.
    update: ``(stats, observed, hp, previous_hp, count) -> stats``; ``count`` is
      the number of updates including this one.
    rate: ``(stats, hp, count) -> rate`` per unit, before the clamp.
  """

  name: str
  state_cls: type
  stat_names: tuple[str, ...]
  observe: Callable[[jax.Array], Stats]
  init: Callable[[tuple[int, ...], Any, Hyper], Stats]
  update: Callable[[Stats, Stats, Hyper, Hyper, jax.Array], Stats]
  rate: Callable[[Stats, Hyper, jax.Array], jax.Array]


RateReader = Callable[[Any], tuple[Any, jax.Array, jax.Array]]
"""``state -> (per-unit rates tree, min_lr, max_lr)``."""

_READERS: dict[type, RateReader] = {}
_UNIT_FIELDS: dict[type, tuple[str, ...]] = {}
_NAMES: dict[type, str] = {}


def register_state(
    state_cls: type,
    reader: RateReader,
    unit_fields: tuple[str, ...],
    name: Optional[str] = None,
) -> None:
  """Makes states of ``state_cls`` visible to ``learning_rates``.

  Args:
    state_cls: a NamedTuple state class with a ``units`` field
      (:class:`~optax_neuronlr._src.units.UnitAxes`).
    reader: ``state -> (per-unit rates, min_lr, max_lr)``.
    unit_fields: the fields holding per-unit trees (shaped by ``units``).
    name: the strategy's name in tables and logs (default: the class name).
  """
  if "units" not in state_cls._fields:
    raise TypeError(f"{state_cls.__name__} lacks the field 'units'.")
  _READERS[state_cls] = reader
  _UNIT_FIELDS[state_cls] = tuple(unit_fields)
  _NAMES[state_cls] = name or state_cls.__name__


def strategy_name(state: Any) -> str:
  """The registered name of a strategy state's type."""
  return _NAMES.get(type(state), type(state).__name__)


def unit_fields(state: Any) -> tuple[str, ...]:
  """Fields of a strategy state that hold per-unit trees."""
  return _UNIT_FIELDS.get(type(state), ())


def register(rule: Rule) -> Rule:
  """Makes ``rule``'s states visible to :func:`learning_rates`."""
  missing = {
      "count", "hyperparams", "direction_state", "units", *rule.stat_names
  } - set(rule.state_cls._fields)
  if missing:
    raise TypeError(f"{rule.state_cls.__name__} lacks the fields {sorted(missing)}.")
  register_state(
      rule.state_cls,
      lambda state: (
          _rule_rates(rule, state),
          state.hyperparams["min_lr"],
          state.hyperparams["max_lr"],
      ),
      rule.stat_names,
      rule.name,
  )
  return rule


def is_rate_state(state: Any) -> bool:
  """True for the state of any per-unit learning-rate strategy."""
  return type(state) in _READERS


def read_rates(state: Any) -> tuple[Any, jax.Array, jax.Array]:
  """``(per-unit rates, min_lr, max_lr)`` of a strategy state."""
  return _READERS[type(state)](state)


def stat_dtype(leaf_dtype: Any, state_dtype: Any) -> jnp.dtype:
  """dtype of a leaf's statistics: float32 for half-precision leaves."""
  canonical = jax.dtypes.canonicalize_dtype  # float64 -> float32 without x64
  if state_dtype is not None:
    return canonical(state_dtype)
  leaf_dtype = jnp.dtype(leaf_dtype)
  if leaf_dtype in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return jnp.dtype(jnp.float32)
  if not jnp.issubdtype(leaf_dtype, jnp.floating):
    return jnp.dtype(jnp.result_type(float))
  return canonical(leaf_dtype)


def clamp(rate: jax.Array, hp: Hyper) -> jax.Array:
  """``clip(rate, min_lr, max_lr)`` (``min_lr <= max_lr`` is validated).

  Written with ``where`` rather than ``jnp.clip``: on XLA:CPU, ``clip`` on a
  donated per-element state makes XLA copy every state leaf each step
  (measured in benchmarks/step_time.py: 0.9x -> 0.6x adam's step time for
  ``grad_magnitude_lr``). NaN stays NaN, as with ``clip``.
  """
  lo, hi = hp["min_lr"], hp["max_lr"]
  return jnp.where(rate > hi, hi, jnp.where(rate < lo, lo, rate))


def scalars(values: Mapping[str, Any]) -> dict[str, jax.Array]:
  """Hyperparameters as strongly typed scalars of the default float dtype."""
  dtype = jnp.result_type(float)
  return {k: jnp.asarray(v, dtype) for k, v in values.items()}


def _rule_rates(rule: Rule, state: Any) -> Any:
  """Per-unit rates the last update of a rule's ``state`` applied.

  Before the first update these are ``clip(learning_rate, min_lr, max_lr)``,
  the rate every unit starts from in the reference code.
  """
  hp, count = state.hyperparams, state.count

  def leaf_rate(*stats):
    dtype = stats[0].dtype
    rate = clamp(rule.rate(stats, hp, count), hp).astype(dtype)
    start = clamp(hp["learning_rate"], hp).astype(dtype)
    return jnp.where(count == 0, start, rate)

  return jax.tree.map(leaf_rate, *(getattr(state, n) for n in rule.stat_names))


def scale_by_rule(
    rule: Rule,
    learning_rate: optax.ScalarOrSchedule,
    hyperparams: Mapping[str, Any],
    *,
    min_lr: Any,
    max_lr: Any,
    granularity: str,
    neuron_axes: units_lib.NeuronAxes,
    state_dtype: Any,
    direction: Optional[optax.GradientTransformation],
) -> optax.GradientTransformationExtraArgs:
  """Runs ``rule`` per unit; returns ``+rate * direction(g)``.

  Args:
    rule: the strategy's rule.
    learning_rate: base rate, a number or an optax schedule of the step count.
    hyperparams: the rule's own numeric hyperparameters (validated by the
      caller); they are stored in the state as scalars.
    min_lr: lower clamp of the per-unit rate.
    max_lr: upper clamp of the per-unit rate.
    granularity: ``"element"``, ``"neuron"`` or ``"tensor"``.
    neuron_axes: axes that index neurons (see :mod:`units`).
    state_dtype: dtype of the statistics, or None for the default.
    direction: optax transform giving the step direction, or None for the
      incoming gradient.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.
  """
  if not callable(learning_rate):
    validation.check_rate("learning_rate", learning_rate)
  validation.check_clamps(min_lr, max_lr)
  units_lib.check_granularity(granularity)
  if direction is not None:
    if not isinstance(direction, optax.GradientTransformation):
      raise TypeError(
          "direction must be an optax.GradientTransformation or None, got "
          f"{type(direction).__name__}."
      )
    direction = optax.with_extra_args_support(direction)

  def lr_at(count):
    return learning_rate(count) if callable(learning_rate) else learning_rate

  def step_scalars(lr):
    return scalars(
        {**hyperparams, "learning_rate": lr, "min_lr": min_lr, "max_lr": max_lr}
    )

  def init_fn(params):
    layouts, treedef = units_lib.tree_layouts(params, granularity, neuron_axes)
    hp = step_scalars(lr_at(jnp.zeros([], jnp.int32)))
    per_leaf = [
        rule.init(layout.unit_shape, stat_dtype(leaf.dtype, state_dtype), hp)
        for layout, leaf in zip(layouts, treedef.flatten_up_to(params))
    ]
    stats = {
        name: treedef.unflatten([s[i] for s in per_leaf])
        for i, name in enumerate(rule.stat_names)
    }
    return rule.state_cls(
        count=jnp.zeros([], jnp.int32),
        hyperparams=hp,
        units=units_lib.unit_axes(params, layouts, granularity),
        direction_state=(
            optax.EmptyState() if direction is None else direction.init(params)
        ),
        **stats,
    )

  def update_fn(updates, state, params=None, **extra_args):
    count = optax.safe_increment(state.count)
    hp = step_scalars(lr_at(state.count))
    layouts, treedef = units_lib.tree_layouts(updates, granularity, neuron_axes)
    grads = treedef.flatten_up_to(updates)
    old = [treedef.flatten_up_to(getattr(state, n)) for n in rule.stat_names]
    if direction is None:
      dirs, direction_state = grads, state.direction_state
    else:
      d, direction_state = direction.update(
          updates, state.direction_state, params, **extra_args
      )
      dirs = treedef.flatten_up_to(d)

    outs, new = [], []
    for i, (layout, g, d) in enumerate(zip(layouts, grads, dirs)):
      leaf_old = tuple(s[i] for s in old)
      dtype = leaf_old[0].dtype
      compute = jnp.promote_types(g.dtype, dtype)
      observed = tuple(
          layout.mean(q, compute).astype(dtype)
          for q in rule.observe(g.astype(compute))
      )
      leaf_new = tuple(
          s.astype(dtype)
          for s in rule.update(leaf_old, observed, hp, state.hyperparams, count)
      )
      rate = clamp(rule.rate(leaf_new, hp, count), hp).astype(dtype)
      outs.append((d * layout.broadcast(rate)).astype(g.dtype))
      new.append(leaf_new)

    stats = {
        name: treedef.unflatten([s[i] for s in new])
        for i, name in enumerate(rule.stat_names)
    }
    new_state = rule.state_cls(
        count=count,
        hyperparams=hp,
        direction_state=direction_state,
        units=state.units,
        **stats,
    )
    return treedef.unflatten(outs), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
