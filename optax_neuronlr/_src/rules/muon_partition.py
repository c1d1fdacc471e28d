"""Which leaves Muon and NorMuon train, through which matrix views, decided once.

`muon_plan` reads a parameter tree once: every leaf's role (from
`model_layout`, the model's ``axis_names=``, or a
``layout=`` computed from the full tree), whether it is a hidden matrix
(``hidden=``, else the layout), its checked `MatrixView`
(``matrices=``, else the layout's) and whether AdamW decays it. The
optimizers then read the plan by path, never the layout of a part of the
tree: inside ``optax.partition`` the AdamW part sees the hidden leaves
masked, and inside a user's ``optax.multi_transform`` / ``optax.masked`` the
optimizer sees only its own leaves (the others are ``optax.MaskedNode``,
skipped). Because a layout read from a part of the tree can differ from the
full tree's (a head found as the embedding's transpose is not found once the
embedding sits in another group), pass ``layout=nlr.model_layout(full_params)``
there.

A plan computed from shapes alone (a leaf whose role the layout guessed from
its shape, a hidden leaf without a view, or no hidden matrix at all) is
reported by one warning per optimizer, at ``init``, naming the leaves and the
arguments that say it for sure.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any, Optional

import jax
import numpy as np
import optax

from optax_neuronlr._src import model_layout as layout_lib
from optax_neuronlr._src import paths as paths_lib
from optax_neuronlr._src import user_warnings
from optax_neuronlr._src import validation
from optax_neuronlr._src.roles import axis_names as axis_names_lib
from optax_neuronlr._src.roles import kinds
from optax_neuronlr._src.roles import matrix_views
from optax_neuronlr._src.roles.views import MatrixView
from optax_neuronlr._src.rules import moments

HIDDEN = "hidden"
ADAMW = "adamw"
_PLAIN = MatrixView((0,), (1,))  # optax's default view of a 2-D leaf


@dataclasses.dataclass(frozen=True)
class MuonLeaf:
  """One leaf of a `MuonPlan`.

  Attributes:
    path: the leaf's path.
    shape: its shape.
    hidden: whether Muon / NorMuon train it (else AdamW).
    view: its checked matrix view (hidden leaves), else None.
    weight_decay: whether AdamW's decoupled decay applies to it.
    guess: why its treatment is a guess from shapes ("" when it is not).
  """

  path: str
  shape: tuple[int, ...]
  hidden: bool
  view: Optional[MatrixView]
  weight_decay: bool
  guess: str = ""


@dataclasses.dataclass(frozen=True)
class MuonPlan:
  """Every leaf's `MuonLeaf`, read by path.

  Attributes:
    leaves: one entry per array leaf of the tree it was made from.
    masked: whether that tree held ``optax.MaskedNode`` (a part of a tree).
    given_layout: whether the roles came from a ``layout=`` argument.
  """

  leaves: tuple[MuonLeaf, ...]
  masked: bool = False
  given_layout: bool = False

  def by_path(self) -> dict[str, MuonLeaf]:
    return {l.path: l for l in self.leaves}

  def tree(self, tree: Any, attribute: str) -> Any:
    """A tree shaped like ``tree`` (the plan's tree or a masked part of it)
    with ``attribute`` of each leaf's entry, read by path."""
    table = self.by_path()
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return treedef.unflatten(
        [getattr(table[paths_lib.path_str(p)], attribute) for p, _ in flat])

  def labels(self, tree: Any) -> Any:
    """``"hidden"`` or ``"adamw"`` per leaf of ``tree``."""
    return jax.tree.map(lambda h: HIDDEN if h else ADAMW, self.tree(tree, "hidden"))


def _shape(x: Any) -> tuple[int, ...]:
  return tuple(int(s) for s in np.shape(x)) if not hasattr(x, "shape") else tuple(x.shape)


def has_masked_nodes(tree: Any) -> bool:
  """Whether ``tree`` is a part of a tree (``optax.MaskedNode`` in place of leaves)."""
  nodes = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
  return any(isinstance(x, optax.MaskedNode) for x in nodes)


def check_layout(layout: Any, axis_names: Any, axis_roles: Any = None) -> None:
  """Construction-time checks of ``layout``, ``axis_names`` and ``axis_roles``."""
  axis_names_lib.check_axis_names(axis_names)
  axis_names_lib.check_axis_roles(axis_roles)
  if layout is not None and not isinstance(layout, kinds.ModelLayout):
    raise TypeError(
        "layout must be None or the ModelLayout of the full parameter tree "
        f"(nlr.model_layout(params)), got {type(layout).__name__} {layout!r}.")
  if layout is not None and axis_names is not None:
    raise ValueError(
        "give axis_names= either to the optimizer or to the layout it is given, not "
        "both: layout=nlr.model_layout(params, axis_names=...).")


def _roles(tree: Any, paths: list[str], shapes: list[tuple[int, ...]], layout: Any,
           axis_names: Any, axis_roles: Any, who: str) -> list[kinds.LeafRole]:
  if layout is None:
    return list(layout_lib.model_layout(tree, axis_names=axis_names,
                                        axis_roles=axis_roles).leaves)
  table = layout.by_path()
  roles = []
  for path, shape in zip(paths, shapes):
    role = table.get(path)
    if role is None:
      raise ValueError(
          f"{who}: layout= has no leaf '{path}'; give the layout of the whole parameter "
          "tree the optimizer trains (nlr.model_layout(params)).")
    if tuple(role.shape) != tuple(shape):
      raise ValueError(
          f"{who}: layout= describes leaf '{path}' with shape {role.shape}, but the "
          f"optimizer's leaf has shape {shape}.")
    roles.append(role)
  return roles


def _hidden_flags(tree: Any, paths: list[str], hidden: Any, who: str) -> list[bool]:
  """``hidden`` (a bool for a bare array, a pytree of bools or a callable) per leaf."""
  if callable(hidden):
    hidden = hidden(tree)
  bare = len(paths) == 1 and paths[0] == "" and jax.tree_util.treedef_is_leaf(
      jax.tree.structure(tree))
  if isinstance(hidden, (bool, np.bool_)) and not bare:
    raise TypeError(
        "hidden must be None, a pytree of bools with the structure of the params (a "
        "bool for a bare array), or a callable params -> such a pytree; got the bare "
        f"bool {hidden!r} for a tree of {len(paths)} leaves. "
        + validation._static_hint("hidden", f"nlr.{who}"))  # pylint: disable=protected-access
  flat = jax.tree_util.tree_flatten_with_path(
      hidden, is_leaf=lambda x: isinstance(x, (bool, np.bool_)))[0]
  table = {}
  for path, value in flat:
    where = paths_lib.path_str(path)
    if not isinstance(value, (bool, np.bool_)):
      raise TypeError(f"hidden: expected a bool for leaf '{where}', got "
                      f"{type(value).__name__} {value!r}. "
                      + validation._static_hint("hidden", f"nlr.{who}"))  # pylint: disable=protected-access
    table[where] = bool(value)
  missing = [p for p in paths if p not in table]
  if missing:
    raise ValueError(
        "hidden must be None, a pytree of bools with the structure of the params, or a "
        f"callable params -> such a pytree; it has no entry for the leaves {missing}.")
  return [table[p] for p in paths]


def _guess(role: kinds.LeafRole, hidden_given: bool, is_hidden: bool, view_given: bool,
           fallback: bool) -> str:
  """Why a leaf's treatment is a guess from shapes ("" if it is not)."""
  if fallback:
    return "hidden without a matrix view: its last axis read as the output"
  if role.source != kinds.SHAPE or role.matrix is None:
    return ""
  if hidden_given and (not is_hidden or view_given or role.matrix == _PLAIN):
    return ""  # the user's choice, or a plain (in, out) matrix the user marked hidden
  return role.reason or "read by its shape"


def muon_plan(
    tree: Any, *, hidden: Any = None, matrices: Any = None, layout: Any = None,
    axis_names: Any = None, axis_roles: Any = None, every_leaf: bool = False,
    who: str = "muon",
) -> MuonPlan:
  """The `MuonPlan` of ``tree`` (see the module docstring).

  Args:
    tree: the params (or updates) the optimizer is given; ``optax.MaskedNode``
      entries are skipped.
    hidden: None (the layout's hidden matrices), a bool (a bare array), a
      pytree of bools or a callable ``tree -> pytree``.
    matrices: None, a view, a pytree of views (None: the layout's), or a
      callable ``tree -> pytree``.
    layout: None, or the `ModelLayout` of the full
      tree, read by path.
    axis_names: the model's logical axis names (see
      `model_layout`).
    axis_roles: more axis names for the vocabulary.
    every_leaf: every leaf is a matrix (``scale_by_muon``): a leaf with no
      view is an error rather than AdamW's.
    who: the optimizer's name, for messages.
  """
  check_layout(layout, axis_names)
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  paths = [paths_lib.path_str(p) for p, _ in flat]
  shapes = [_shape(x) for _, x in flat]
  lookup = None if matrices is None else matrix_views.view_lookup(matrices, tree)
  givens = [None if lookup is None else lookup(p) for p in paths]
  # A view given for a leaf says it is a matrix (optax's convention); one view
  # for every leaf only says how the hidden leaves are seen.
  per_leaf = lookup is not None and not getattr(lookup, "single", False)
  if every_leaf and all(v is not None for v in givens):
    roles: list[Any] = [None] * len(paths)  # every view given: no layout to read
  else:
    roles = _roles(tree, paths, shapes, layout, axis_names, axis_roles, who)
  if every_leaf:
    flags = [True] * len(paths)
  elif hidden is None:
    flags = [r.hidden or (per_leaf and v is not None) for r, v in zip(roles, givens)]
  else:
    flags = _hidden_flags(tree, paths, hidden, who)
  leaves, missing = [], []
  for path, shape, role, is_hidden, given in zip(paths, shapes, roles, flags, givens):
    view, fallback = None, False
    if role is None:  # every view given (no layout read)
      assert given is not None
      leaves.append(MuonLeaf(path, shape, True, matrix_views.check_view(given, shape, path),
                             False))
      continue
    if is_hidden:
      view = given if given is not None else role.matrix
      if view is None and every_leaf:
        missing.append(f"'{path}' {shape}")
        continue
      if view is None:
        if len(shape) < 2:
          raise ValueError(f"hidden: leaf '{path}' of shape {shape} is not a matrix; "
                           "hidden leaves need two or more dimensions.")
        view, fallback = matrix_views.fallback_view(shape), True
      view = matrix_views.check_view(view, shape, path)
    stated = hidden is not None or every_leaf or (per_leaf and given is not None)
    guess = _guess(role, stated, is_hidden, given is not None,
                   fallback)
    leaves.append(MuonLeaf(path, shape, is_hidden, view, role.weight_decay, guess))
  if missing:
    raise ValueError(
        f"scale_by_{who}: no matrix view for the leaves {', '.join(missing)}; Muon "
        "orthogonalises matrices only. Use nlr.muon / nlr.normuon (AdamW on such "
        "leaves), select the matrices with optax.partition or optax.masked, or give "
        "matrices=.")
  return MuonPlan(tuple(leaves), has_masked_nodes(tree), layout is not None)


def plan_warning(plan: MuonPlan, who: str, hidden_given: bool) -> Optional[str]:
  """The one warning a plan deserves, or None."""
  fix = ("Say it with axis_names= (the model's logical axis names, e.g. "
         "nn.get_partition_spec(variables)['params'] or nnx.get_partition_spec(state)), "
         f"hidden= (which leaves {who} trains) or matrices= (their matrix views).")
  if plan.masked and not plan.given_layout:
    fix += (" Inside optax.multi_transform / optax.masked the optimizer sees only its "
            "part of the tree: pass layout=nlr.model_layout(full_params).")
  guessed = [l for l in plan.leaves if l.guess]
  parts = []
  if plan.masked and not plan.given_layout and not hidden_given and plan.leaves:
    parts.append(
        f"nlr.{who} is given a part of the parameter tree (optax.MaskedNode in place of "
        "the other leaves: inside optax.multi_transform, optax.partition or "
        "optax.masked); its layout, read from that part alone, can differ from the "
        "whole model's (an output head found as the embedding's transpose is not "
        "found when the embedding is elsewhere).")
  if guessed:
    listing = "; ".join(
        f"'{l.path}' {l.shape} -> {'Muon' if l.hidden else 'AdamW'} ({l.guess})"
        for l in guessed)
    parts.append(f"nlr.{who}: the layout was guessed from shapes for {len(guessed)} "
                 f"leaves: {listing}.")
  if plan.leaves and not hidden_given and not any(l.hidden for l in plan.leaves):
    parts.append(f"nlr.{who}: no leaf is a hidden matrix, so every leaf "
                 f"({', '.join(repr(l.path) for l in plan.leaves[:8])}"
                 f"{', ...' if len(plan.leaves) > 8 else ''}) trains with AdamW.")
  if not parts:
    return None
  return " ".join(parts) + " " + fix


class PlanCache:
  """One optimizer's plans, one per tree signature (paths and shapes), and its
  one warning: computed at ``init`` or at the first trace of ``update``,
  warned about at the first ``init`` only (never per step or per trace)."""

  def __init__(self, who: str, hidden_given: bool, **options: Any):
    self.who = who
    self.hidden_given = hidden_given
    self.options = options
    self._plans: dict[Any, MuonPlan] = {}
    self._warned = False

  def __call__(self, tree: Any) -> MuonPlan:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    key = (tuple((paths_lib.path_str(p), _shape(x)) for p, x in flat),
           has_masked_nodes(tree))
    plan = self._plans.get(key)
    if plan is None:
      plan = muon_plan(tree, who=self.who, **self.options)
      self._plans[key] = plan
    return plan

  def report(self, tree: Any) -> MuonPlan:
    plan = self(tree)
    if not self._warned:
      self._warned = True
      message = plan_warning(plan, self.who, self.hidden_given)
      if message:
        warnings.warn(message, UserWarning, stacklevel=user_warnings.user_stacklevel())
    return plan


def partitioned(
    hidden_tx: Callable[[Callable[[Any], Any]], optax.GradientTransformation],
    adamw_tx: Callable[[Callable[[Any], Any]], optax.GradientTransformation],
    *, hidden: Any, matrices: Any, layout: Any, axis_names: Any, axis_roles: Any,
    who: str,
) -> optax.GradientTransformationExtraArgs:
  """``optax.partition`` of ``hidden_tx(views)`` on the hidden leaves and
  ``adamw_tx(decay_mask)`` elsewhere, every choice read by path from one
  `MuonPlan` of the tree the optimizer is given."""
  validation.check_static("hidden", hidden, example=f"nlr.{who}")
  validation.check_static("matrices", matrices, example=f"nlr.{who}")
  check_layout(layout, axis_names, axis_roles)
  plans = PlanCache(who, hidden is not None, hidden=hidden, matrices=matrices,
                    layout=layout, axis_names=axis_names, axis_roles=axis_roles)

  def inner(plan: MuonPlan) -> optax.GradientTransformation:
    return optax.partition(
        {HIDDEN: hidden_tx(lambda t: plan.tree(t, "view")),
         ADAMW: adamw_tx(lambda t: plan.tree(t, "weight_decay"))},
        plan.labels)

  def init_fn(params):
    return inner(plans.report(params)).init(params)

  def update_fn(updates, state, params=None, **extra_args):
    new, new_state = inner(plans(updates)).update(updates, state, params, **extra_args)
    return moments.keep_dtypes(new, updates, new_state, state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def normuon_labels(params: Any, hidden: Any = None, *, axis_names: Any = None,
                   axis_roles: Any = None, layout: Any = None) -> Any:
  """``"hidden"`` or ``"adamw"`` per leaf: who trains it in `muon` and
  `normuon`.

  Args:
    params: the parameter tree (arrays, ``jax.ShapeDtypeStruct`` or an NNX
      state; a bare array is one leaf).
    hidden: None: the hidden matrices of `model_layout`
      (attention, MLP and recurrent kernels; 2-D leaves of trees without Flax
      names; not embeddings, the output head, norm scales or biases); a
      pytree of bools shaped like the params (a bool for a bare array); or a
      callable ``params -> pytree of bools`` (``optax.masked``'s convention).
    axis_names: the model's logical axis names (see
      `model_layout`).
    axis_roles: more axis names for the vocabulary.
    layout: the full tree's `ModelLayout`, read by path.

  Returns:
    A pytree of strings shaped like the params.
  """
  plan = muon_plan(params, hidden=hidden, layout=layout, axis_names=axis_names,
                   axis_roles=axis_roles)
  return plan.labels(params)
