r"""The per-unit learning-rate engine: :class:`Rule` and :func:`scale_by_rule`.

Every per-unit strategy of the package, and any user's, is a :class:`Rule`: a
frozen dataclass that says which statistics it keeps and how a rate follows
from them. :func:`scale_by_rule` runs it and owns everything else, the same way
for every rule:

* units per leaf (element, neurons, blocks, tensor) or one for the whole tree
  (``"global"``), see :mod:`optax_neuronlr._src.units`;
* clamps: the applied rate is ``clip(rate, min_lr, max_lr)``;
* schedules: ``learning_rate`` may be a number or an optax schedule of the step
  count, evaluated at the count before the update (as ``optax.scale_by_schedule``);
* dtypes: statistics in ``state_dtype`` (float32 for bf16/f16 leaves by
  default, else the leaf's dtype); sums are accumulated in at least float32;
  updates keep the incoming dtype. Complex leaves get real per-unit
  statistics (the real part of each observed quantity: $|g|$ is the modulus,
  the sign rule keeps $\mathrm{Re}(g/|g|)$) and complex element statistics;
* ``direction``: an optional optax transform whose output the rate scales;
* inspection (:func:`optax_neuronlr.learning_rates`), sharding, checkpoints and
  ``optax.inject_hyperparams``.

For a leaf with gradient $g$, direction $d$ ($d = g$ by default), element
statistics $e$, unit statistics $s$ and unit reduction $U$ (mean or sum over
each unit's elements), one step $t$ is

$$
o_t = U(\mathrm{observe}(g_t, d_t, e_{t-1})), \quad
s_t = \mathrm{update}(s_{t-1}, o_t), \quad
e_t = \mathrm{update\_elements}(e_{t-1}, g_t, d_t),
$$

$$
l_t = \mathrm{update\_leaf}(l_{t-1}, s_t, o_t), \qquad
r_t = \mathrm{clip}(\mathrm{rate}(s_t, l_t), \mathrm{min\_lr}, \mathrm{max\_lr}),
\qquad u_t = r_t \, d_t ,
$$

where $l$ are the rule's per-leaf statistics (none for most rules).

The sign convention of the package: every ``scale_by_*`` transform returns
``+rate * d``; every alias chains ``optax.scale(-1.0)``.

Beside this module: the state classes (one NamedTuple per rule) and the
readers that recognise them live in :mod:`optax_neuronlr._src.rule_state`;
the layouts that ``init`` reports to :func:`optax_neuronlr.state_shardings`
go through :mod:`optax_neuronlr._src.layout_channel`; what is checked of a
rule and of what it returns, in :mod:`optax_neuronlr._src.rule_checks`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optax_neuronlr._src import layout_channel
from optax_neuronlr._src import paths
from optax_neuronlr._src import rule_checks
from optax_neuronlr._src import rule_state
from optax_neuronlr._src import units as units_lib
from optax_neuronlr._src import validation
from optax_neuronlr._src import weight_stats
from optax_neuronlr._src.roles import kinds as roles_kinds
from optax_neuronlr._src.roles import layout as roles_layout
from optax_neuronlr._src.rule_state import RuleState  # noqa: F401  # pylint: disable=unused-import

Hyper = Mapping[str, jax.Array]
Stats = dict[str, jax.Array]
ENGINE_SCALARS = rule_checks.ENGINE_SCALARS
REDUCTIONS = rule_checks.REDUCTIONS


@dataclasses.dataclass(frozen=True)
class LeafContext:
  """Static facts about one leaf, for :meth:`Rule.update_leaf`.

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
  r"""A per-unit learning-rate rule, run by :func:`scale_by_rule`.

  Subclass it as a frozen dataclass. Fields of the dataclass are *static
  options* (Python values such as ``bias_correction: bool``; they select code
  paths at trace time and are never traced); numeric hyperparameters are
  named in ``hyperparams`` and arrive in ``hp``. They are keyword arguments
  of the transform :func:`optax_neuronlr.rule_transform` builds, so that
  ``optax.inject_hyperparams`` may change them at run time; given to
  :func:`scale_by_rule` as a dict they are fixed (there only
  ``learning_rate``, ``min_lr`` and ``max_lr`` are injectable). Class
  attributes declare the rest:

  Attributes:
    unit_stats: names of the statistics kept per unit (one array per leaf,
      shaped like the leaf's units).
    element_stats: names of the statistics kept per element (one array per
      leaf, shaped like the leaf).
    leaf_stats: names of the statistics kept once per leaf (a 0-d array per
      leaf, in the statistics' dtype, zero at ``init``). :meth:`update_leaf`
      sets them from this step's reduced observations and updated unit
      statistics, and :meth:`rate` reads them beside the unit statistics:
      the place for a per-leaf reduction that the rate needs (NorMuon's
      norm-preserving rescale), so that the rates read back from the state
      are still exactly the applied ones. Not with ``granularity="global"``.
      :meth:`update_leaf` may also return unit statistics that need the
      leaf's static facts (NorMuon's rescale, one per matrix of a stacked
      leaf, kept per unit); it runs when the rule declares ``leaf_stats`` or
      overrides it.
    hyperparams: names of the rule's numeric hyperparameters (besides
      ``learning_rate``, ``min_lr`` and ``max_lr``, which every rule gets and
      which no hyperparameter may be named), a tuple; or a dict ``{name:
      default}``, whose defaults :func:`optax_neuronlr.rule_transform` puts in
      the signature of the transform it builds.
    reduce: the default of ``scale_by_rule``'s ``reduce`` option: ``"mean"``
      or ``"sum"``, how each quantity that :meth:`observe` returns is reduced
      over a unit.
    state_name: name of the rule's state class (default: the class name +
      ``"State"``).
    weights: names of statistics of the current parameters that
      :meth:`update` and :meth:`update_leaf` read, computed by the engine per
      unit (``"norm"``, ``"sum_sq"``, ``"mean"``, ``"rms"``,
      ``"centered_norm"``; see :mod:`optax_neuronlr._src.weight_stats`), as
      ``stats["weight_<name>"]``. A rule that declares any needs ``params``
      at ``update``. They are not kept in the state: a rate that depends on
      the weights keeps what it needs as a statistic, so that the rates read
      back are the applied ones.

  Each method gets ``hp``, a dict of this step's scalars (``learning_rate``,
  ``min_lr``, ``max_lr`` and the rule's ``hyperparams``), and ``count``, the
  number of updates including this one (``t``, starting at 1).

  Per-leaf statistics are optional: a rule that declares ``leaf_stats``
  defines :meth:`update_leaf`, which receives this step's reduced
  observations of the whole leaf and a :class:`LeafContext` (the leaf's path,
  shape, units, and a static value per leaf that
  ``scale_by_rule(..., leaf_info=...)`` gives); ``stats`` in :meth:`rate`
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
  hyperparams: ClassVar[tuple[str, ...]] = ()
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
    every rate (see :func:`optax_neuronlr.clamp`)."""
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

    Called after :meth:`update`, once per leaf. The dict may also hold unit
    statistics (shaped like the units), which replace :meth:`update`'s.

    Args:
      stats: the leaf's unit statistics after :meth:`update` and its leaf
        statistics before this step.
      observed: this step's observations, reduced over each unit (one array
        per quantity of :meth:`observe`, shaped like the units): summing
        them over the units gives per-leaf reductions.
      hp: this step's scalars.
      count: the number of updates including this one.
      leaf: the leaf's static :class:`LeafContext`.
    """
    del observed, hp, count, leaf
    return {name: stats[name] for name in self.leaf_stats}

  def rate(self, stats: Stats, hp: Hyper, count: jax.Array) -> jax.Array:
    """The per-unit rate before the clamp, from the updated statistics (unit
    and leaf statistics, by name)."""
    raise NotImplementedError(f"{self.name} must define rate().")


def stat_dtype(leaf_dtype: Any, state_dtype: Any) -> jnp.dtype:
  """dtype of a leaf's statistics: float32 for half-precision leaves."""
  canonical = jax.dtypes.canonicalize_dtype  # float64 -> float32 without x64
  if state_dtype is not None:
    return canonical(state_dtype)
  leaf_dtype = jnp.dtype(leaf_dtype)
  if leaf_dtype in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return jnp.dtype(jnp.float32)
  if not jnp.issubdtype(leaf_dtype, jnp.floating):  # complex leaves: real statistics
    return jnp.dtype(jnp.result_type(float))
  return canonical(leaf_dtype)


def _element_dtype(leaf_dtype: Any, dtype: Any) -> jnp.dtype:
  """Element statistics of complex leaves are complex (e.g. a stored direction)."""
  if jnp.issubdtype(leaf_dtype, jnp.complexfloating):
    return jnp.promote_types(dtype, jnp.complex64)
  return jnp.dtype(dtype)


def abs_sq(x: jax.Array) -> jax.Array:
  r"""$|x|^2$, elementwise: ``x * x`` for real ``x``, ``Re(x * conj(x))`` for
  complex ``x`` (where ``x * x`` would keep $\mathrm{Re}(x^2) = a^2 - b^2$,
  negative when the imaginary part outweighs the real part)."""
  if jnp.iscomplexobj(x):
    return jnp.real(x * jnp.conj(x))
  return x * x


def element_dtype(leaf_dtype: Any, dtype: Any) -> jnp.dtype:
  """dtype of an element statistic (or a first moment) of a leaf: complex for
  complex leaves, so that a moment keeps the imaginary part."""
  return _element_dtype(leaf_dtype, dtype)


def _real(x: jax.Array) -> jax.Array:
  """Per-unit statistics are real: observed complex quantities keep their real part."""
  return jnp.real(x) if jnp.iscomplexobj(x) else x


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


def _copy(x: jax.Array) -> jax.Array:
  # init runs eagerly: a statistic built from a shared array (zeros, a
  # hyperparameter) must own its buffer, or donating the state fails.
  return jnp.array(x, copy=True)


def rates_of(state: Any) -> Any:
  """Per-unit rates the last update of a rule ``state`` applied.

  A tree shaped like the parameters' units. Before the first update every unit
  shows ``clip(learning_rate, min_lr, max_lr)``.
  """
  rule = rule_state.rule_of(state)
  hp = rule_state.applied_scalars(state)
  count = state.count
  names = rule.unit_stats or rule.element_stats
  if not names:
    raise ValueError(f"{rule.name} keeps no statistics to read rates from.")

  def leaf_rate(path, *stats):
    dtype = stats[0].dtype
    r = rule_checks.check_rate(
        rule, rule.rate(dict(zip(rule.unit_stats + rule.leaf_stats, stats)), hp, count),
        stats[0].shape, paths.path_str(path))
    rate = clamp(jnp.broadcast_to(r, stats[0].shape), hp).astype(dtype)
    start = clamp(hp["learning_rate"], hp).astype(dtype)
    return jnp.where(count == 0, start, rate)

  if not rule.unit_stats:
    r = rule_checks.check_rate(rule, rule.rate({}, hp, count), None, "(every leaf)")
    return jax.tree_util.tree_map_with_path(
        lambda path, e: leaf_rate(path, jnp.zeros(jnp.shape(r), e.dtype)),
        getattr(state, names[0]))
  return jax.tree_util.tree_map_with_path(
      leaf_rate, *(getattr(state, n) for n in rule.unit_stats + rule.leaf_stats))


def _check_rule(rule: Any, hyperparams: Mapping[str, Any]) -> None:
  if not isinstance(rule, Rule):
    raise TypeError(f"rule must be an nlr.Rule instance, got {type(rule).__name__}.")
  rule_checks.check_declaration(rule)
  rule_checks.check_hyperparams(rule, hyperparams)


def _check_shapes(layouts, treedef, state, rule, is_global) -> None:
  """The update's leaves must have the shapes the state was built for."""
  names = rule.element_stats or (() if is_global else rule.unit_stats)
  if not treedef.num_leaves:
    return
  if not names:
    return
  old = treedef.flatten_up_to(getattr(state, names[0]))
  for layout, s, path in zip(layouts, old, _paths(treedef)):
    want = layout.shape if rule.element_stats else layout.unit_shape
    if tuple(s.shape) != tuple(want):
      raise ValueError(
          f"leaf '{path}' has shape {layout.shape} in update, but the state "
          f"was built for another shape (statistic '{names[0]}' has shape "
          f"{tuple(s.shape)}, expected {tuple(want)}); rebuild the state with "
          "init for the new parameters."
      )


def _paths(treedef) -> list[str]:
  """The path of every leaf of ``treedef``, in order."""
  dummy = treedef.unflatten([0] * treedef.num_leaves)
  return [paths.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(dummy)[0]]


class LeafStep(NamedTuple):
  """One leaf in the middle of an update: what ``observe`` saw and returned.

  Built for every leaf before any statistic is updated (so that
  ``granularity="global"`` can reduce the observations of the whole tree
  first), then read back to update the leaf's statistics and scale its
  direction.

  Attributes:
    path: the leaf's path (keys joined by ``"/"``), for error messages.
    layout: the leaf's units (a :mod:`~optax_neuronlr._src.units` layout).
    grad: the incoming gradient, in its own dtype.
    grad_compute: the gradient in the compute dtype (the promotion of its
      dtype and the statistics' dtype), as the rule's methods get it.
    direction: the direction's output for the leaf.
    dtype: the dtype of the leaf's statistics.
    elements: the leaf's element statistics before this step.
    observed: the quantities of ``observe``, reduced over each unit (summed
      over the leaf for ``granularity="global"``).
  """

  path: str
  layout: Any
  grad: jax.Array
  grad_compute: jax.Array
  direction: jax.Array
  dtype: Any
  elements: Stats
  observed: tuple[jax.Array, ...]


def scale_by_rule(
    rule: Rule,
    learning_rate: optax.ScalarOrSchedule = 1.0,
    hyperparams: Optional[Mapping[str, Any]] = None,
    *,
    min_lr: Any = 0.0,
    max_lr: Any = math.inf,
    granularity: Any = "element",
    neuron_axes: Any = None,
    state_dtype: Any = None,
    direction: Optional[optax.GradientTransformation] = None,
    leaf_info: Any = None,
    reduce: Optional[str] = None,
    axis_names: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Runs ``rule`` per unit; returns ``+rate * d``.

  Shared engine arguments: ``min_lr``, ``max_lr``, ``granularity``,
  ``neuron_axes``, ``state_dtype`` and ``direction`` are documented here once.
  Every ``scale_by_*`` transform of the package that runs a rule passes
  those of them it takes on unchanged, and so does its optimizer alias; their
  own docstrings say only what differs there (a default, what the statistics
  are).

  Args:
    rule: the rule, an instance of a :class:`Rule` subclass.
    learning_rate: base rate $\eta$, a number or an optax schedule of the step
      count; the rule reads it as ``hp["learning_rate"]``.
    hyperparams: the rule's numeric hyperparameters, ``{name: value}`` for
      the names in ``rule.hyperparams`` (those with a declared default may be
      left out); real scalars, checked as the package's own. A dict is one
      argument, which ``optax.inject_hyperparams`` cannot see into: only
      ``learning_rate``, ``min_lr`` and ``max_lr`` of ``scale_by_rule`` are
      injectable. For a rule whose hyperparameters change at run time, build
      its transform with :func:`optax_neuronlr.rule_transform`.
    min_lr: lower clamp of the per-unit rate, ``>= 0``.
    max_lr: upper clamp, ``>= min_lr`` (``inf``: none).
    granularity: the units. One of ``"element"`` (one rate per scalar
      parameter), ``"neuron"`` (one per output neuron, see ``neuron_axes``),
      ``"tensor"`` (one per leaf) and ``"global"`` (one for the whole tree);
      or per leaf: a unit spec (``"element"``, ``"neuron"``, ``"tensor"``,
      :class:`~optax_neuronlr.Neurons`, :class:`~optax_neuronlr.Blocks`), a
      pytree of specs whose paths select leaves (see "Selecting leaves by
      path" in the README), or a callable ``params -> pytree of specs``.
    neuron_axes: only with ``granularity="neuron"``: which axes index neurons,
      an int or a tuple of ints for every leaf, a pytree of them selected by
      path, or a callable ``params -> pytree``; None (default) is each
      leaf's output axes as :func:`optax_neuronlr.model_layout` reads them:
      both head axes of a ``(d, heads, head_dim)`` query/key/value kernel
      and bias (``heads * head_dim`` neurons), else the last axis
      (Flax ``(in, out)`` kernels), with the stack and expert axes of a
      scanned or mixture-of-experts leaf (units per layer); ``0`` for PyTorch
      ``(out, in)`` weights; or a :class:`~optax_neuronlr.ModelLayout`
      (``nlr.model_layout(full_params, axis_names=...)``): its neuron axes,
      read by path, so that a wrapper's masked tree (``multi_transform``)
      keeps the full tree's layout. Under ``optax.inject_hyperparams`` list a
      callable here in ``static_args``.
    state_dtype: dtype of the statistics (a floating dtype), or None: float32
      for bf16/f16 leaves, else the leaf's own dtype.
    direction: an optax transform whose output the rates scale (e.g.
      ``optax.scale_by_adam()``); None scales the incoming gradient.
    leaf_info: static per-leaf values for :meth:`Rule.update_leaf` (as
      :attr:`LeafContext.info`): None, a pytree with the structure of the
      params (one value per leaf), or a callable ``params -> pytree``.
    axis_names: only with ``granularity="neuron"``: the model's logical axis
      names (``nn.get_partition_spec`` / ``nnx.get_partition_spec``, see
      :func:`optax_neuronlr.model_layout`), from which the default neuron
      axes are read.
    reduce: how each quantity of :meth:`Rule.observe` is reduced over a unit,
      ``"mean"`` or ``"sum"``; None (default): the rule's ``reduce``. A static
      option (under ``optax.inject_hyperparams`` a string stays static).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is
    ``rule.state_class()``.

  Raises:
    TypeError, ValueError: when the transform is built, for a rule whose
      declaration is wrong or a hyperparameter that is not a real scalar;
      at trace time (``init``, first trace of ``update``), for a method of
      the rule that returns other names, shapes or dtypes than declared. Each
      message names the rule, the method and the statistic.
  """
  if hyperparams is not None and not isinstance(hyperparams, Mapping):
    raise TypeError("hyperparams must be a dict {name: value} of the rule's "
                    f"hyperparameters, got {type(hyperparams).__name__}.")
  if isinstance(rule, Rule):  # declared defaults fill what is left out
    hyperparams = {**rule_checks.hyperparam_defaults(rule), **(hyperparams or {})}
  hyperparams = dict(hyperparams or {})
  _check_rule(rule, hyperparams)
  reduction = rule.reduce if reduce is None else validation.check_choice(
      "reduce", reduce, REDUCTIONS)
  if not callable(learning_rate):
    validation.check_rate("learning_rate", learning_rate)
  validation.check_clamps(min_lr, max_lr)
  validation.check_dtype("state_dtype", state_dtype)
  for name, value in (("granularity", granularity), ("leaf_info", leaf_info)):
    validation.check_static(name, value, example="nlr.scale_by_rule")
  default_axes = roles_layout.neuron_defaults(granularity, neuron_axes, axis_names)
  if isinstance(neuron_axes, roles_kinds.ModelLayout):
    neuron_axes = None
  units_lib.check_granularity(granularity, neuron_axes)
  if callable(granularity) and not units_lib.is_unit_spec(granularity):
    granularity = units_lib.WarnOnce(granularity)  # called on every trace
  is_global = isinstance(granularity, str) and granularity == "global"
  if is_global and _has_leaf_step(rule):
    raise ValueError(
        f"{rule.name} keeps per-leaf statistics {rule.leaf_stats} or refines its unit "
        "statistics per leaf (update_leaf); granularity='global' (one unit for the "
        "tree) is not supported for it.")
  if direction is not None:
    if not isinstance(direction, optax.GradientTransformation):
      raise TypeError(
          "direction must be an optax.GradientTransformation or None, got "
          f"{type(direction).__name__}."
      )
    direction = optax.with_extra_args_support(direction)
  state_cls = rule.state_class(is_global)
  names = rule.scalar_names()

  def lr_at(count):
    return learning_rate(count) if callable(learning_rate) else learning_rate

  def step_scalars(lr):
    return scalars(
        {**hyperparams, "learning_rate": lr, "min_lr": min_lr, "max_lr": max_lr}
    )

  def init_fn(params):
    layouts, treedef = units_lib.tree_layouts(params, granularity, neuron_axes,
                                               default_axes)
    hp = step_scalars(lr_at(jnp.zeros([], jnp.int32)))
    leaves = [_as_array(leaf) for leaf in treedef.flatten_up_to(params)]
    dtypes = [stat_dtype(leaf.dtype, state_dtype) for leaf in leaves]
    unit, elem = [], []
    leaf_paths = _paths(treedef)
    for layout, leaf, dtype, path in zip(layouts, leaves, dtypes, leaf_paths):
      zeros = jnp.zeros_like(leaf, dtype=dtype)
      unit_zeros = jnp.zeros([], dtype) if is_global else layout.sum(zeros, dtype)
      got = rule.init(unit_zeros, hp)
      rule_checks.check_stats(rule, "init", got, rule.unit_stats,
                              unit_zeros.shape, path, kind="unit statistics")
      unit.append(rule_checks.in_dtype(got, rule.unit_stats, dtype))
      if rule.element_stats:
        got = rule.init_elements(
            jnp.zeros_like(leaf, dtype=_element_dtype(leaf.dtype, dtype)), hp)
        rule_checks.check_stats(rule, "init_elements", got, rule.element_stats,
                                leaf.shape, path, kind="element statistics", real=False)
        elem.append(rule_checks.in_dtype(got, rule.element_stats,
                                         _element_dtype(leaf.dtype, dtype)))
      else:
        elem.append({})
    stats = {
        n: treedef.unflatten([_copy(s[n]) for s in unit]) for n in rule.unit_stats
    }
    stats.update({
        n: treedef.unflatten([_copy(s[n]) for s in elem]) for n in rule.element_stats
    })
    stats.update({
        n: treedef.unflatten([jnp.zeros([], d) for d in dtypes]) for n in rule.leaf_stats
    })
    if layout_channel.is_recording():
      layout_channel.record(
          state_cls, layout_channel.leaf_layouts(leaf_paths, layouts), is_global)
    return state_cls(
        count=jnp.zeros([], jnp.int32),
        applied=tuple(_copy(hp[n]) for n in names),
        direction_state=(
            optax.EmptyState() if direction is None else direction.init(params)
        ),
        **stats,
    )

  def update_fn(updates, state, params=None, **extra_args):
    if not isinstance(state, state_cls):
      raise TypeError(
          f"{rule.name}: update got a {type(state).__name__}, not the state "
          f"this transform's init builds ({state_cls.__name__})."
      )
    count = jnp.asarray(optax.safe_increment(state.count))
    hp = step_scalars(lr_at(state.count))
    prev_hp = dict(zip(names, state.applied))
    layouts, treedef = units_lib.tree_layouts(updates, granularity, neuron_axes,
                                               default_axes)
    _check_shapes(layouts, treedef, state, rule, is_global)
    grads = [_as_array(g) for g in treedef.flatten_up_to(updates)]
    leaf_paths = _paths(treedef)
    if direction is None:
      dirs, direction_state = grads, state.direction_state
    else:
      d, direction_state = direction.update(
          updates, state.direction_state, params, **extra_args
      )
      dirs = [_as_array(x) for x in treedef.flatten_up_to(d)]
    unit_old = {n: treedef.flatten_up_to(getattr(state, n)) for n in rule.unit_stats}
    leaf_old = {n: treedef.flatten_up_to(getattr(state, n)) for n in rule.leaf_stats}
    leaf_step = _has_leaf_step(rule)
    infos = _leaf_infos(leaf_info, updates, treedef) if leaf_step else None
    if rule.weights and params is None:
      raise weight_stats.no_params_error(rule)
    elem_old = {n: treedef.flatten_up_to(getattr(state, n)) for n in rule.element_stats}

    leaves: list[LeafStep] = []
    for i, (layout, g, d) in enumerate(zip(layouts, grads, dirs)):
      if unit_old:
        dtype = next(iter(unit_old.values()))[i].dtype
      elif elem_old:
        dtype = next(iter(elem_old.values()))[i].dtype
      else:
        dtype = stat_dtype(g.dtype, state_dtype)
      compute = jnp.promote_types(g.dtype, dtype)
      accumulate = jnp.promote_types(jnp.finfo(compute).dtype, jnp.float32)
      elements = {n: v[i] for n, v in elem_old.items()}
      gc = g.astype(compute)
      quantities = rule_checks.check_observed(
          rule, rule.observe(gc, d, elements, hp), g.shape, leaf_paths[i])
      quantities = tuple(_real(q) for q in quantities)
      if is_global:
        observed = tuple(layout.sum(q, accumulate) for q in quantities)
      else:
        observed = tuple(
            layout.reduce(q, accumulate, reduction).astype(dtype)
            for q in quantities
        )
      leaves.append(LeafStep(
          path=leaf_paths[i], layout=layout, grad=g, grad_compute=gc, direction=d,
          dtype=dtype, elements=elements, observed=observed))

    seen = weight_stats.for_update(
        rule, None if not rule.weights else treedef.flatten_up_to(params),
        [(leaf.layout, leaf.dtype) for leaf in leaves], is_global)

    def new_stats(old, observed, dtype, i=None):
      where = "(all leaves: granularity='global')" if i is None else leaves[i].path
      unit_shape = () if i is None else leaves[i].layout.unit_shape
      w = seen[0 if i is None else i]
      new = weight_stats.without(rule.update({**old, **w}, observed, hp, prev_hp, count), w)
      rule_checks.check_stats(rule, "update", new, rule.unit_stats, unit_shape, where,
                              kind="unit statistics")
      new = {n: jnp.asarray(new[n]).astype(dtype) for n in rule.unit_stats}
      if leaf_step:
        assert i is not None and infos is not None
        layout = leaves[i].layout
        context = LeafContext(leaves[i].path, layout.shape, layout.unit_shape,
                              layout.size, infos[i])
        merged = {**new, **{n: v[i] for n, v in leaf_old.items()}, **w}
        new_leaf = rule.update_leaf(merged, observed, hp, count, context)
        refined = {}
        if isinstance(new_leaf, dict):
          refined = {n: new_leaf[n] for n in rule.unit_stats if n in new_leaf}
          new_leaf = {n: x for n, x in new_leaf.items() if n not in refined}
          rule_checks.check_stats(rule, "update_leaf", {**new, **refined}, rule.unit_stats,
                                  unit_shape, where, kind="unit statistics")
        rule_checks.check_stats(rule, "update_leaf", new_leaf, rule.leaf_stats, (),
                                where, kind="leaf statistics")
        new.update({n: jnp.asarray(x).astype(dtype) for n, x in refined.items()})
        new.update({n: jnp.asarray(new_leaf[n]).astype(dtype) for n in rule.leaf_stats})
      rate = rule_checks.check_rate(rule, rule.rate(new, hp, count), unit_shape, where)
      return new, clamp(rate, hp).astype(dtype)

    if is_global and leaves:
      # One unit for the tree: every leaf holds a copy of its statistics.
      dtype = jnp.result_type(*[leaf.dtype for leaf in leaves])
      totals = tuple(t.astype(dtype) for t in _global_reduce(reduction, leaves))
      old = {n: v[0].astype(dtype) for n, v in unit_old.items()}
      global_stats, global_rate = new_stats(old, totals, dtype)

    outs, unit_new, elem_new = [], [], []
    for i, leaf in enumerate(leaves):
      if is_global:
        rate = global_rate.astype(leaf.dtype)
        new = {n: v.astype(leaf.dtype) for n, v in global_stats.items()}
      else:
        new, rate = new_stats({n: v[i] for n, v in unit_old.items()}, leaf.observed,
                              leaf.dtype, i)
      unit_new.append(new)
      outs.append(leaf.layout.scale(leaf.direction, rate).astype(leaf.grad.dtype))
      new_elements = rule.update_elements(
          leaf.elements, leaf.grad_compute, leaf.direction, hp, count)
      rule_checks.check_stats(rule, "update_elements", new_elements, rule.element_stats,
                              leaf.grad.shape, leaf.path, kind="element statistics",
                              real=False)
      elem_new.append({n: jnp.asarray(new_elements[n]).astype(leaf.elements[n].dtype)
                       for n in rule.element_stats})

    stats = {n: treedef.unflatten([s[n] for s in unit_new])
             for n in rule.unit_stats + rule.leaf_stats}
    stats.update(
        {n: treedef.unflatten([s[n] for s in elem_new]) for n in rule.element_stats}
    )
    new_state = state_cls(
        count=count,
        applied=tuple(hp[n] for n in names),
        direction_state=direction_state,
        **stats,
    )
    return treedef.unflatten(outs), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _has_leaf_step(rule: Rule) -> bool:
  """Whether :meth:`Rule.update_leaf` runs: the rule keeps leaf statistics or
  refines its unit statistics there."""
  return bool(rule.leaf_stats) or type(rule).update_leaf is not Rule.update_leaf


def _leaf_infos(leaf_info: Any, tree: Any, treedef) -> list[Any]:
  """One ``leaf_info`` value per leaf of ``tree``, in order."""
  if leaf_info is None:
    return [None] * treedef.num_leaves
  if callable(leaf_info):
    leaf_info = leaf_info(tree)
  try:
    return treedef.flatten_up_to(leaf_info)
  except (ValueError, TypeError) as e:
    raise ValueError(
        "leaf_info must have the structure of the params (one value per leaf): "
        f"{e}") from e


def _as_array(x: Any) -> Any:
  """Python and NumPy numbers as arrays (optax accepts ``{"w": 1.0}`` leaves)."""
  return x if hasattr(x, "dtype") and hasattr(x, "shape") else jnp.asarray(x)


def _global_reduce(
    reduction: str, leaves: list[LeafStep]) -> tuple[jax.Array, ...]:
  """Sums (or means) of each observed quantity over every element of the tree."""
  if not leaves:
    return ()
  totals: Optional[tuple[jax.Array, ...]] = None
  size = 0
  for leaf in leaves:
    size += math.prod(leaf.layout.shape)
    totals = leaf.observed if totals is None else tuple(
        a + b for a, b in zip(totals, leaf.observed)
    )
  assert totals is not None  # leaves is not empty
  if reduction == "mean":
    totals = tuple(t / max(size, 1) for t in totals)
  return totals
