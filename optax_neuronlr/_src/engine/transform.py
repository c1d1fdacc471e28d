"""The engine itself: `scale_by_rule` runs a `Rule` per unit."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from optax_neuronlr._src import layout_channel
from optax_neuronlr._src import rule_checks
from optax_neuronlr._src import units as units_lib
from optax_neuronlr._src import validation
from optax_neuronlr._src import weight_stats
from optax_neuronlr._src.engine.dtypes import element_dtype
from optax_neuronlr._src.engine.dtypes import real_part
from optax_neuronlr._src.engine.dtypes import stat_dtype
from optax_neuronlr._src.engine.rule import REDUCTIONS
from optax_neuronlr._src.engine.rule import LeafContext
from optax_neuronlr._src.engine.rule import Rule
from optax_neuronlr._src.engine.rule import clamp
from optax_neuronlr._src.engine.rule import scalars
from optax_neuronlr._src.engine.step import LeafStep
from optax_neuronlr._src.engine.step import as_array
from optax_neuronlr._src.engine.step import check_shapes
from optax_neuronlr._src.engine.step import global_reduce
from optax_neuronlr._src.engine.step import has_leaf_step
from optax_neuronlr._src.engine.step import leaf_infos
from optax_neuronlr._src.engine.step import paths_of
from optax_neuronlr._src.roles import kinds as roles_kinds
from optax_neuronlr._src.roles import layout as roles_layout


def _copy(x: jax.Array) -> jax.Array:
  # init runs eagerly: a statistic built from a shared array (zeros, a
  # hyperparameter) must own its buffer, or donating the state fails.
  return jnp.array(x, copy=True)


def _check_rule(rule: Any, hyperparams: Mapping[str, Any]) -> None:
  if not isinstance(rule, Rule):
    raise TypeError(f"rule must be an nlr.Rule instance, got {type(rule).__name__}.")
  rule_checks.check_declaration(rule)
  rule_checks.check_hyperparams(rule, hyperparams)


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
    rule: the rule, an instance of a `Rule` subclass.
    learning_rate: base rate $\eta$, a number or an optax schedule of the step
      count; the rule reads it as ``hp["learning_rate"]``.
    hyperparams: the rule's numeric hyperparameters, ``{name: value}`` for
      the names in ``rule.hyperparams`` (those with a declared default may be
      left out); real scalars, checked as the package's own. A dict is one
      argument, which ``optax.inject_hyperparams`` cannot see into: only
      ``learning_rate``, ``min_lr`` and ``max_lr`` of ``scale_by_rule`` are
      injectable. For a rule whose hyperparameters change at run time, build
      its transform with `rule_transform`.
    min_lr: lower clamp of the per-unit rate, ``>= 0``.
    max_lr: upper clamp, ``>= min_lr`` (``inf``: none).
    granularity: the units. One of ``"element"`` (one rate per scalar
      parameter), ``"neuron"`` (one per output neuron, see ``neuron_axes``),
      ``"tensor"`` (one per leaf) and ``"global"`` (one for the whole tree);
      or per leaf: a unit spec (``"element"``, ``"neuron"``, ``"tensor"``,
      `Neurons`, `Blocks`), a
      pytree of specs whose paths select leaves (see "Selecting leaves by
      path" in the README), or a callable ``params -> pytree of specs``.
    neuron_axes: only with ``granularity="neuron"``: which axes index neurons,
      an int or a tuple of ints for every leaf, a pytree of them selected by
      path, or a callable ``params -> pytree``; None (default) is each
      leaf's output axes as `model_layout` reads them:
      both head axes of a ``(d, heads, head_dim)`` query/key/value kernel
      and bias (``heads * head_dim`` neurons), else the last axis
      (Flax ``(in, out)`` kernels), with the stack and expert axes of a
      scanned or mixture-of-experts leaf (units per layer); ``0`` for PyTorch
      ``(out, in)`` weights; or a `ModelLayout`
      (``nlr.model_layout(full_params, axis_names=...)``): its neuron axes,
      read by path, so that a wrapper's masked tree (``multi_transform``)
      keeps the full tree's layout. Under ``optax.inject_hyperparams`` list a
      callable here in ``static_args``.
    state_dtype: dtype of the statistics (a floating dtype), or None: float32
      for bf16/f16 leaves, else the leaf's own dtype.
    direction: an optax transform whose output the rates scale (e.g.
      ``optax.scale_by_adam()``); None scales the incoming gradient.
    leaf_info: static per-leaf values for `Rule.update_leaf` (as
      `LeafContext.info`): None, a pytree with the structure of the
      params (one value per leaf), or a callable ``params -> pytree``.
    axis_names: only with ``granularity="neuron"``: the model's logical axis
      names (``nn.get_partition_spec`` / ``nnx.get_partition_spec``, see
      `model_layout`), from which the default neuron
      axes are read.
    reduce: how each quantity of `Rule.observe` is reduced over a unit,
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
  if is_global and has_leaf_step(rule):
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
    leaves = [as_array(leaf) for leaf in treedef.flatten_up_to(params)]
    dtypes = [stat_dtype(leaf.dtype, state_dtype) for leaf in leaves]
    unit, elem = [], []
    leaf_paths = paths_of(treedef)
    for layout, leaf, dtype, path in zip(layouts, leaves, dtypes, leaf_paths):
      zeros = jnp.zeros_like(leaf, dtype=dtype)
      unit_zeros = jnp.zeros([], dtype) if is_global else layout.sum(zeros, dtype)
      got = rule.init(unit_zeros, hp)
      rule_checks.check_stats(rule, "init", got, rule.unit_stats,
                              unit_zeros.shape, path, kind="unit statistics")
      unit.append(rule_checks.in_dtype(got, rule.unit_stats, dtype))
      if rule.element_stats:
        got = rule.init_elements(
            jnp.zeros_like(leaf, dtype=element_dtype(leaf.dtype, dtype)), hp)
        rule_checks.check_stats(rule, "init_elements", got, rule.element_stats,
                                leaf.shape, path, kind="element statistics", real=False)
        elem.append(rule_checks.in_dtype(got, rule.element_stats,
                                         element_dtype(leaf.dtype, dtype)))
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
    check_shapes(layouts, treedef, state, rule, is_global)
    grads = [as_array(g) for g in treedef.flatten_up_to(updates)]
    leaf_paths = paths_of(treedef)
    if direction is None:
      dirs, direction_state = grads, state.direction_state
    else:
      d, direction_state = direction.update(
          updates, state.direction_state, params, **extra_args
      )
      dirs = [as_array(x) for x in treedef.flatten_up_to(d)]
    unit_old = {n: treedef.flatten_up_to(getattr(state, n)) for n in rule.unit_stats}
    leaf_old = {n: treedef.flatten_up_to(getattr(state, n)) for n in rule.leaf_stats}
    leaf_step = has_leaf_step(rule)
    infos = leaf_infos(leaf_info, updates, treedef) if leaf_step else None
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
      quantities = tuple(real_part(q) for q in quantities)
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
      totals = tuple(t.astype(dtype) for t in global_reduce(reduction, leaves))
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
