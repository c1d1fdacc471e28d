"""A printable table of where every parameter went in an optimizer.

For each parameter leaf: its path and shape, its ``multi_transform`` /
``param_groups`` label, the transform that governs it, its granularity and
number of rate units, and its base rate, read from the optimizer state. Large
training codebases log such a table at start-up, so that a wrong regex or a
forgotten group shows at a glance.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, NamedTuple, Optional

import jax
import numpy as np
import optax

from optax_neuronlr._src import engine
from optax_neuronlr._src import paths as paths_lib
from optax_neuronlr._src import rate_sources as sources_lib
from optax_neuronlr._src import rule_state
from optax_neuronlr._src.hyperparams import is_inject_state
from optax_neuronlr._src.readers import leaf_paths
from optax_neuronlr._src.readers import unwrap_variables

_PARTITION = getattr(optax.transforms, "PartitionState", ())


class LayoutRow(NamedTuple):
  """One parameter leaf of `optimizer_layout`."""

  path: str
  shape: tuple[int, ...]
  group: str
  strategy: str
  granularity: str
  units: int
  base_rate: Optional[float]


@dataclasses.dataclass(frozen=True)
class OptimizerLayout:
  """Rows of `optimizer_layout`; ``str()`` gives the aligned table."""

  rows: tuple[LayoutRow, ...]

  def __str__(self) -> str:
    header = ("path", "shape", "group", "strategy", "granularity", "units", "base rate")
    cells = [header] + [
        (r.path, "x".join(map(str, r.shape)) or "()", r.group, r.strategy,
         r.granularity, str(r.units) if r.units else "-",
         "-" if r.base_rate is None else f"{r.base_rate:.3g}")
        for r in self.rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@dataclasses.dataclass
class _Context:
  group: str = "-"
  base_rate: Optional[float] = None


def _scalar(x: Any) -> Optional[float]:
  try:
    return float(np.asarray(x).ravel()[0]) if np.size(x) else None
  except (TypeError, ValueError):
    return None


def _granularity(shape: tuple, unit_shape: tuple, is_global: bool) -> str:
  """The kind of units, read from a leaf's shape and its units' shape."""
  if is_global:
    return "global"
  if tuple(unit_shape) == tuple(shape):
    return "element"
  if not unit_shape:
    return "tensor"
  it = iter(shape)
  if all(any(u == s for s in it) for u in unit_shape):
    return "neuron"
  return "blocks"


def _optax_name(state_class: type) -> str:
  """The optax transform that keeps a state: ``ScaleByAdamState`` ->
  ``scale_by_adam``, ``TraceState`` -> ``trace`` (optax names states after
  their transforms)."""
  name = state_class.__name__.removesuffix("State")
  return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _rule_name(rule: Any, granularity: str) -> str:
  """The rule's name; Adam-mini with one unit per element is Adam (what
  ``scale_sgd``, ``muon`` and ``adam_mini`` give biases and norm scales)."""
  if rule.name == "adam_mini" and granularity == "element":
    return "adam"
  return rule.name


class _Walker:
  """Walks an optax state and fills one row per parameter path."""

  def __init__(self, shapes: dict[str, tuple[int, ...]]):
    self.shapes = shapes
    self.rows: dict[str, LayoutRow] = {}
    self.stateless_groups: list[str] = []

  def add(self, path: str, ctx: _Context, strategy: str, granularity: str,
          units: int, base_rate: Optional[float]) -> None:
    if path in self.shapes and path not in self.rows:
      self.rows[path] = LayoutRow(path, self.shapes[path], ctx.group, strategy,
                                  granularity, units, base_rate)

  def rate_state(self, state: Any, ctx: _Context) -> None:
    rule = rule_state.rule_of(state)
    rates = engine.rates_of(state)
    is_global = getattr(type(state), "is_global", False)
    base = _scalar(rule_state.applied_scalars(state)["learning_rate"])
    for p, r in jax.tree_util.tree_flatten_with_path(rates)[0]:
      path = paths_lib.path_str(p)
      shape = self.shapes.get(path, ())
      granularity = _granularity(shape, np.shape(r), is_global)
      self.add(path, ctx, _rule_name(rule, granularity), granularity,
               int(np.size(r)), base if base is not None else ctx.base_rate)

  def param_subtree(self, tree: Any) -> list[str]:
    """Param paths of ``tree`` if it is shaped like (part of) the params."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    paths = [paths_lib.path_str(p) for p, _ in flat]
    ok = flat and all(
        p in self.shapes and tuple(np.shape(x)) == self.shapes[p]
        for p, (_, x) in zip(paths, flat)
    )
    return paths if ok else []

  def walk(self, node: Any, ctx: _Context) -> None:
    if node is None or isinstance(node, optax.MaskedNode):
      return
    if rule_state.is_rule_state(node):
      self.rate_state(node, ctx)
    elif is_inject_state(node):
      rate = node.hyperparams.get("learning_rate", None)
      self.walk(node.inner_state, dataclasses.replace(
          ctx, base_rate=_scalar(rate) if rate is not None else ctx.base_rate))
    elif _PARTITION and isinstance(node, _PARTITION):
      for label, inner in node.inner_states.items():
        if not jax.tree.leaves(inner):
          self.stateless_groups.append(str(label))
        self.walk(inner, dataclasses.replace(ctx, group=str(label)))
    elif isinstance(node, tuple) and hasattr(node, "_fields"):
      for value in node:
        paths = self.param_subtree(value)
        for p in paths:
          self.add(p, ctx, _optax_name(type(node)), "-", 0, ctx.base_rate)
        if not paths:
          self.walk(value, ctx)
    elif isinstance(node, (tuple, list)):
      for value in node:
        self.walk(value, ctx)
    elif isinstance(node, dict):
      for value in node.values():
        self.walk(value, ctx)


def _recorded_rates(opt_state: Any) -> dict[str, float]:
  """The rate each leaf's recorded or injected rate source gives it (the
  readers' `rate_sources`: Muon's and the AdamW leaves' rates of ``muon`` and
  ``normuon``, ``record_learning_rate``, an injected group rate)."""
  out: dict[str, float] = {}
  for source in sources_lib.rate_sources(opt_state):
    if source.kind == "rule":
      continue
    for keys, rates, _, _ in source.per_leaf():
      rate = _scalar(rates)
      if rate is not None:
        out.setdefault(paths_lib.path_str(keys), rate)
  return out


def optimizer_layout(opt_state: optax.OptState, params: optax.Params) -> OptimizerLayout:
  """Where each parameter went: group, strategy, granularity, units, rate.

  Args:
    opt_state: the optimizer's state (any nesting of optax states, or an
      ``nnx.Optimizer``'s ``opt_state``).
    params: the parameters (arrays or ``jax.ShapeDtypeStruct``).

  Returns:
    An `OptimizerLayout`; ``print(...)`` shows one row per leaf. The
    strategy is a function name throughout: the rule's (``grad_history_lr``,
    ``normuon``, ``neuron_norm``; ``adam`` for Adam-mini with one unit per
    element, which is Adam), else the optax transform whose state holds the
    leaf's statistics (``scale_by_adam`` for ``ScaleByAdamState``, ``trace``
    for momentum);
    ``granularity`` is ``element``, ``neuron``, ``blocks``, ``tensor`` or
    ``global``, read from the shapes of the leaf and its units;
    ``units`` counts the leaf's rate units; ``base rate`` is the rule's
    ``learning_rate`` of the last step, else the rate the leaf's chain
    recorded (`record_learning_rate`: Muon's and the AdamW leaves' rates
    in ``muon`` and ``normuon``), else the group's injected
    ``learning_rate``. A leaf whose transform keeps no state
    (e.g. a frozen group) shows the one stateless group's label if there is
    exactly one, else ``-``.

  Example:
    >>> import jax.numpy as jnp, optax, optax_neuronlr as nlr
    >>> params = {"body": {"kernel": jnp.ones((3, 4))}, "head": {"kernel": jnp.ones((4, 2))}}
    >>> tx = nlr.param_groups(nlr.grad_history_lr, [
    ...     {"params": "body/.*", "learning_rate": 1e-4},
    ...     {"params": "head/.*", "learning_rate": 1e-3}], granularity="neuron")
    >>> print(nlr.optimizer_layout(tx.init(params), params))  # doctest: +SKIP
  """
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  paths = leaf_paths(params)  # Raises when two leaves share a path.
  shapes = {p: tuple(np.shape(x)) for p, (_, x) in zip(paths, flat)}
  walker = _Walker(shapes)
  walker.walk(unwrap_variables(opt_state), _Context())
  fallback = walker.stateless_groups[0] if len(walker.stateless_groups) == 1 else "-"
  recorded = _recorded_rates(opt_state)

  def row(path: str, shape: tuple[int, ...]) -> LayoutRow:
    # A rule's row keeps the rule's own rate; every other row takes the rate
    # the readers find for its leaf (innermost first), else its group's.
    r = walker.rows.get(path, LayoutRow(path, shape, fallback, "stateless", "-", 0, None))
    if r.granularity in ("-", "stateless"):
      r = r._replace(base_rate=recorded.get(path, r.base_rate))
    return r

  return OptimizerLayout(tuple(row(p, shape) for p, shape in shapes.items()))
