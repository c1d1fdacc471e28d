"""The `Rule` base class, `LeafContext`, and the engine's scalars.

What a rule declares and the methods the engine calls; ``clamp`` and
``scalars``, the two things every rule's rate goes through. The engine that runs
a rule is `optax_neuronlr._src.engine.transform`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Union

import jax
import jax.numpy as jnp

from optax_neuronlr._src import rule_checks
from optax_neuronlr._src import rule_state

Hyper = Mapping[str, jax.Array]
Stats = dict[str, jax.Array]
ENGINE_SCALARS = rule_checks.ENGINE_SCALARS
REDUCTIONS = rule_checks.REDUCTIONS


@dataclasses.dataclass(frozen=True)
class LeafContext:
  """Static facts about one leaf, for `Rule.update_leaf`.

  Attributes:
    path: the leaf's path (keys joined by ``"/"``).
    shape: the leaf's shape.
    unit_shape: the shape of its unit statistics.
    unit_size: the number of elements in each unit.
    info: the leaf's entry of ``scale_by_rule``'s ``leaf_info`` (None when
      not given): any static Python value, e.g. a matrix's shape factor.
  """

  path: str
  shape: tuple[int, ...]
  unit_shape: tuple[int, ...]
  unit_size: int
  info: Any = None


@dataclasses.dataclass(frozen=True)
class Rule:
  r"""A per-unit learning-rate rule, run by `scale_by_rule`.

  Subclass it as a frozen dataclass. Fields of the dataclass are *static
  options* (Python values such as ``bias_correction: bool``; they select code
  paths at trace time and are never traced); numeric hyperparameters are
  named in ``hyperparams`` and arrive in ``hp``. They are keyword arguments
  of the transform `rule_transform` builds, so that
  ``optax.inject_hyperparams`` may change them at run time; given to
  `scale_by_rule` as a dict they are fixed (there only
  ``learning_rate``, ``min_lr`` and ``max_lr`` are injectable). Class
  attributes declare the rest:

  Attributes:
    unit_stats: names of the statistics kept per unit (one array per leaf,
      shaped like the leaf's units).
    element_stats: names of the statistics kept per element (one array per
      leaf, shaped like the leaf).
    leaf_stats: names of the statistics kept once per leaf (a 0-d array per
      leaf, in the statistics' dtype, zero at ``init``). `update_leaf`
      sets them from this step's reduced observations and updated unit
      statistics, and `rate` reads them beside the unit statistics:
      the place for a per-leaf reduction that the rate needs (NorMuon's
      norm-preserving rescale), so that the rates read back from the state
      are still exactly the applied ones. Not with ``granularity="global"``.
      `update_leaf` may also return unit statistics that need the
      leaf's static facts (NorMuon's rescale, one per matrix of a stacked
      leaf, kept per unit); it runs when the rule declares ``leaf_stats`` or
      overrides it.
    hyperparams: names of the rule's numeric hyperparameters (besides
      ``learning_rate``, ``min_lr`` and ``max_lr``, which every rule gets and
      which no hyperparameter may be named), a tuple; or a dict ``{name:
      default}``, whose defaults `rule_transform` puts in
      the signature of the transform it builds.
    reduce: the default of ``scale_by_rule``'s ``reduce`` option: ``"mean"``
      or ``"sum"``, how each quantity that `observe` returns is reduced
      over a unit.
    state_name: name of the rule's state class (default: the class name +
      ``"State"``).
    weights: names of statistics of the current parameters that
      `update` and `update_leaf` read, computed by the engine per
      unit (``"norm"``, ``"sum_sq"``, ``"mean"``, ``"rms"``,
      ``"centered_norm"``; see `optax_neuronlr._src.weight_stats`), as
      ``stats["weight_<name>"]``. A rule that declares any needs ``params``
      at ``update``. They are not kept in the state: a rate that depends on
      the weights keeps what it needs as a statistic, so that the rates read
      back are the applied ones.

  Each method gets ``hp``, a dict of this step's scalars (``learning_rate``,
  ``min_lr``, ``max_lr`` and the rule's ``hyperparams``), and ``count``, the
  number of updates including this one (``t``, starting at 1).

  Per-leaf statistics are optional: a rule that declares ``leaf_stats``
  defines `update_leaf`, which receives this step's reduced
  observations of the whole leaf and a `LeafContext` (the leaf's path,
  shape, units, and a static value per leaf that
  ``scale_by_rule(..., leaf_info=...)`` gives); ``stats`` in `rate`
  then holds the leaf statistics too. A rule without them never sees either. A rule may also declare
  ``weights``: per-unit statistics of the parameters (LARS/LAMB's trust
  ratios, Nero's weight scale).

  The engine checks what each method returns (names, shapes, real dtypes) at
  trace time and raises an error naming the rule, the method and the
  statistic; see the docs page "Writing a rule".

  Example: a rate inversely proportional to an EMA of the unit's RMS gradient:

      @dataclasses.dataclass(frozen=True)
      class InverseRMS(nlr.Rule):
        unit_stats = ("ms",)
        hyperparams = {"beta": 0.9}

        def observe(self, g, d, elements, hp):
          return (g * g,)

        def update(self, stats, observed, hp, prev_hp, count):
          b = hp["beta"]
          return {"ms": b * stats["ms"] + (1 - b) * observed[0]}

        def rate(self, stats, hp, count):
          return hp["learning_rate"] / (jnp.sqrt(stats["ms"]) + 1e-8)

      scale_by_inverse_rms = nlr.rule_transform(InverseRMS)
      tx = scale_by_inverse_rms(1e-3, beta=0.9, granularity="neuron")
      # or, without a transform of its own:
      tx = nlr.scale_by_rule(InverseRMS(), 1e-3, {"beta": 0.9}, granularity="neuron")
  """

  unit_stats: ClassVar[tuple[str, ...]] = ()
  element_stats: ClassVar[tuple[str, ...]] = ()
  leaf_stats: ClassVar[tuple[str, ...]] = ()
  hyperparams: ClassVar[Union[tuple[str, ...], Mapping[str, float]]] = ()
  weights: ClassVar[tuple[str, ...]] = ()
  reduce: ClassVar[str] = "mean"
  state_name: ClassVar[str] = ""
  # The rule's name in tables and logs: the class name unless the class sets
  # ``name = "..."`` (a class attribute, not inherited by subclasses).
  name: ClassVar[str] = "Rule"

  def __init_subclass__(cls, **kwargs: Any) -> None:
    super().__init_subclass__(**kwargs)
    if "name" not in cls.__dict__:
      cls.name = cls.__name__

  def scalar_names(self) -> tuple[str, ...]:
    """Names of the scalars in ``hp`` and in a state's ``applied`` tuple."""
    return ENGINE_SCALARS + rule_checks.hyperparam_names(self)

  def check_hyperparams(self, values: Mapping[str, Any]) -> None:
    """Checks the hyperparameters' values when a transform is built.

    The engine has already checked that each is a real scalar and not NaN;
    override this to check ranges (raise ``ValueError`` naming the value and
    the allowed range). ``values`` maps each name to
    a Python number, or to None where the value is traced (under
    ``optax.inject_hyperparams`` inside ``jit``) and cannot be checked.
    Default: no further check.
    """
    del values

  @staticmethod
  def clamp(rate: jax.Array, hp: Hyper) -> jax.Array:
    """``clip(rate, hp["min_lr"], hp["max_lr"])``, as the engine clamps
    every rate (see `clamp`)."""
    return clamp(rate, hp)

  def state_class(self, is_global: bool = False) -> type:
    """This rule's NamedTuple state class (one per equal rule; ``is_global``:
    the variant for ``granularity="global"``, a subclass)."""
    return rule_state.state_class(self, is_global)

  def init(self, zeros: jax.Array, hp: Hyper) -> Stats:
    """Initial unit statistics of a leaf, from the leaf's per-unit zeros.

    Default: zeros for every statistic.
    """
    del hp
    return {name: zeros for name in self.unit_stats}

  def init_elements(self, zeros: jax.Array, hp: Hyper) -> Stats:
    """Initial element statistics of a leaf (default: zeros)."""
    del hp
    return {name: zeros for name in self.element_stats}

  def observe(
      self, g: jax.Array, d: jax.Array, elements: Stats, hp: Hyper
  ) -> tuple[jax.Array, ...]:
    """Per-element quantities to reduce over each unit (default: none).

    Args:
      g: the incoming gradient (in the compute dtype).
      d: the direction's output for this step.
      elements: the element statistics before this step.
      hp: this step's scalars.
    """
    del g, d, elements, hp
    return ()

  def update(
      self, stats: Stats, observed: tuple[jax.Array, ...], hp: Hyper,
      prev_hp: Hyper, count: jax.Array,
  ) -> Stats:
    """New unit statistics from the old ones and the reduced observations.

    ``prev_hp`` holds the previous step's scalars (equal to ``hp`` on the first
    step), e.g. to follow a change of the base rate.
    """
    del observed, hp, prev_hp, count
    return stats

  def update_elements(
      self, elements: Stats, g: jax.Array, d: jax.Array, hp: Hyper,
      count: jax.Array,
  ) -> Stats:
    """New element statistics (default: unchanged)."""
    del g, d, hp, count
    return elements

  def update_leaf(
      self, stats: Stats, observed: tuple[jax.Array, ...], hp: Hyper,
      count: jax.Array, leaf: "LeafContext",
  ) -> Stats:
    """New per-leaf statistics (``leaf_stats``; default: unchanged).

    Called after `update`, once per leaf. The dict may also hold unit
    statistics (shaped like the units), which replace `update`'s.

    Args:
      stats: the leaf's unit statistics after `update` and its leaf
        statistics before this step.
      observed: this step's observations, reduced over each unit (one array
        per quantity of `observe`, shaped like the units): summing
        them over the units gives per-leaf reductions.
      hp: this step's scalars.
      count: the number of updates including this one.
      leaf: the leaf's static `LeafContext`.
    """
    del observed, hp, count, leaf
    return {name: stats[name] for name in self.leaf_stats}

  def rate(self, stats: Stats, hp: Hyper, count: jax.Array) -> jax.Array:
    """The per-unit rate before the clamp, from the updated statistics (unit
    and leaf statistics, by name)."""
    raise NotImplementedError(f"{self.name} must define rate().")


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

