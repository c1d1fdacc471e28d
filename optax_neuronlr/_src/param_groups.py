"""PyTorch-style parameter groups: `param_groups` and `ParamGroups`.

The one job of this module is building the transformation of a list of group
dicts (``torch.optim.SGD([{'params': ..., 'lr': ...}, ...])``, references
``002`` and ``003``): one ``optax.inject_hyperparams`` transform per group
(`hyperparams`), run by ``optax.multi_transform``
on the leaves each group selects by the package's path rule
(`paths`), and the group edits of
`ParamGroups` (`with_group`,
`without_group`) that return a new transformation.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import jax
import optax

from optax_neuronlr._src import hyperparams as hyperparams_lib
from optax_neuronlr._src import paths as paths_lib
from optax_neuronlr._src import validation

ParamsSpec = Union[
    str, re.Pattern, Sequence[Union[str, re.Pattern]], Callable[[str, Any], bool]
]

FROZEN = "frozen"
# Entries of a group dict that are not hyperparameters.
_GROUP_KEYS = ("params", "name", "frozen")
# Arguments of optimizer factories that are never schedules, although they may
# be callables (a dtype class, a callable of params).
_STATIC_ARGS = ("neuron_axes", "state_dtype", "mu_dtype", "ns_dtype", "accumulator_dtype")


def _masked_paths(tree: Any) -> list[str]:
  """Paths of the ``optax.MaskedNode`` placeholders in ``tree``."""
  is_masked = lambda x: isinstance(x, optax.MaskedNode)
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_masked)[0]
  return [paths_lib.path_str(p) for p, x in flat if is_masked(x)]


def _selects_masked(selector: paths_lib.Selector, path: str) -> bool:
  """Whether a group's selector selects a masked-out leaf (a callable group that
  needs the leaf itself cannot tell, and counts as selecting it)."""
  try:
    return selector.selects(path, None)
  except Exception:  # pylint: disable=broad-except
    return True


def _selector(spec: ParamsSpec, what: str) -> paths_lib.Selector:
  """A group's ``"params"`` as one selector: a pattern, several (the longest
  prefix any of them matches), or a callable ``(path, leaf) -> bool`` that
  selects the whole path."""
  if callable(spec):
    return paths_lib.Selector.predicate(spec)
  if isinstance(spec, (str, re.Pattern)):
    patterns = [spec]
  elif isinstance(spec, Sequence) or isinstance(spec, (set, frozenset)):
    patterns = list(spec)
  else:
    raise TypeError(
        f"{what}: 'params' must be a regular expression on the '/'-joined "
        "parameter path (a str or a compiled re.Pattern), a list of them, or "
        f"a callable (path, leaf) -> bool; got {spec!r} ({type(spec).__name__})."
    )
  return paths_lib.Selector.any_of(patterns, what, key=spec)


def _describe_group(index: int, name: str, spec: Any) -> str:
  """``param group 1 ('head', params='haed/.*')``, for messages."""
  if isinstance(spec, re.Pattern):
    spec = spec.pattern
  elif callable(spec):
    spec = getattr(spec, "__name__", type(spec).__name__)
  return f"param group {index} ({name!r}, params={spec!r})"


def _hyperparams_of(
    group: Mapping[str, Any], name: str, signature: inspect.Signature
) -> dict[str, Any]:
  """A group's hyperparameter overrides, ``lr`` read as ``learning_rate``."""
  values = {k: v for k, v in group.items() if k not in _GROUP_KEYS}
  if "lr" in values and "lr" not in signature.parameters:
    values["learning_rate"] = values.pop("lr")
  unknown = sorted(set(values) - set(signature.parameters))
  if unknown:
    raise ValueError(
        f"param group {name!r}: unknown hyperparameters {unknown}; the optimizer "
        f"takes {list(signature.parameters)}."
    )
  return values


def param_groups(
    optimizer: Callable[..., optax.GradientTransformation],
    groups: Sequence[Mapping[str, Any]],
    *,
    rest: str = "error",
    allow_empty: bool = False,
    **defaults: Any,
) -> "ParamGroups":
  """PyTorch-style parameter groups, each with its own hyperparameters.

  ``torch.optim.SGD([{"params": model.part1.parameters(), "lr": 1e-3},
  {"params": model.part2.parameters(), "lr": 1e-2}], momentum=0.9)`` becomes:

    nlr.param_groups(optax.sgd, [
        {"params": r"part1/.*", "learning_rate": 1e-3},
        {"params": r"part2/.*", "learning_rate": 1e-2},
    ], momentum=0.9)

  Each group runs ``optax.inject_hyperparams(optimizer)(**defaults,
  **overrides)`` on its leaves (``optax.multi_transform``), so its values can be
  read with `get_hyperparams` and changed with `set_hyperparams`.

  Groups select leaves by the package's one path rule
  (`optax_neuronlr._src.paths`): a pattern selects a leaf when it matches
  the leaf's whole ``"/"``-joined path or one of its prefixes, so ``"backbone"``
  (a PyTorch-style sub-module) and ``"backbone/.*"`` both select every leaf
  below ``backbone``. A leaf selected by several groups goes to the one whose
  pattern matches the longest prefix (``"backbone/head"`` beats
  ``"backbone"``); two groups matching the same prefix are an error, as a
  parameter in two groups is in PyTorch.

  PyTorch's "everything else" group (``[{"params": model.head.parameters(),
  "lr": 1e-2}, {"params": rest_of_model}]``) is the group that ``rest``
  names; it may leave ``"params"`` out:

    nlr.param_groups(optax.adam, [
        {"params": "head", "learning_rate": 1e-2},
        {"name": "base"},
    ], rest="base", learning_rate=1e-3)

  (A catch-all pattern ``".*"`` would not do: it matches every leaf's whole
  path, the longest prefix there is, so it would take the head's leaves too.)

  A group that claims no leaf (a typo, or a group every leaf of which goes to
  a more specific one) is an error at ``init``: with ``rest="freeze"`` it
  would silently freeze the parameters it meant to train. Generic code that
  applies one list of groups to many different trees passes
  ``allow_empty=True``.

  ``optimizer`` may itself build param groups (e.g. a function of
  ``learning_rate`` returning ``nlr.param_groups(...)``): the nested groups
  are named ``"<outer>/<inner>"`` by `get_hyperparams` and
  `set_hyperparams`.

  Args:
    optimizer: an optax-style factory (``optax.sgd``, ``optax.adam``,
      ``nlr.grad_history_lr``, or a ``functools.partial`` of one, ...).
    groups: dicts with ``"params"`` (a regular expression on the
      ``"/"``-joined path, as a str or a compiled ``re.Pattern``, a list of
      them, or ``callable(path, leaf) -> bool``), an optional ``"name"``
      (default ``"group_<i>"``, ``i`` its position; the next free
      ``"group_<k>"`` where another group has that name) and overrides of
      the factory's arguments
      (``"lr"`` is accepted for ``"learning_rate"``); ``"frozen": True``
      makes a group of parameters that get zero updates and keep no state
      (PyTorch: leaving them out of the optimizer).
    rest: what happens to leaves no group claims: ``"error"`` (raise, listing
      them), ``"freeze"`` (zero updates, in a group named ``"frozen"``), or the
      name of a group that takes them (that group may leave ``"params"`` out:
      PyTorch's "everything else" group).
    allow_empty: accept groups that claim no leaf of the tree (they are then
      unused) instead of raising.
    **defaults: arguments of ``optimizer`` shared by every group.

  Returns:
    A `ParamGroups`: an ``optax.GradientTransformationExtraArgs``
    that also keeps these arguments, so that groups can be added, dropped or
    reset during training (`add_param_group`,
    `drop_param_group`,
    `reset_param_group`).

  Raises:
    TypeError: for ``groups`` that are not a list of dicts, or a ``"params"``
      entry that is not a pattern, a list of patterns or a callable (at
      construction).
    ValueError: for unknown hyperparameter names, invalid regexes, duplicate
      group names or a bad ``rest`` (at construction); for leaves selected
      equally by two groups, with ``rest="error"`` by none, and for a group
      that claims no leaf unless ``allow_empty`` (at init).
  """
  allow_empty = validation.check_flag("allow_empty", allow_empty)
  if isinstance(groups, (str, bytes, Mapping)) or not isinstance(groups, Sequence):
    raise TypeError(
        "groups must be a list of dicts, each with a 'params' entry, got "
        f"{groups!r}."
    )
  signature = inspect.signature(optimizer)
  defaults = _hyperparams_of(defaults, "defaults", signature)
  names, selectors, described, transforms = [], [], [], {}
  static = tuple(a for a in _STATIC_ARGS if a in signature.parameters)
  default_names = _default_names(groups)
  for i, group in enumerate(groups):
    if not isinstance(group, Mapping):
      raise TypeError(
          f"param group {i} must be a dict with a 'params' entry, got {group!r}."
      )
    name = _group_name(group.get("name", default_names[i]), i)
    if "params" not in group:
      if name != rest:
        raise ValueError(
            f"param group {i} has no 'params' entry; only the group that rest= "
            "names (PyTorch's 'everything else') may leave it out.")
      group = {**group, "params": []}  # It takes the leaves no group claims.
    if name in transforms or name == FROZEN and rest == "freeze":
      raise ValueError(f"param group name {name!r} is used twice.")
    if validation.check_flag(f"param group {name!r}: 'frozen'", group.get("frozen", False)):
      hyperparams = sorted(set(group) - set(_GROUP_KEYS))
      if hyperparams:
        raise ValueError(
            f"param group {name!r} is frozen and sets {hyperparams}: a frozen "
            "group takes no hyperparameters.")
      transforms[name] = optax.set_to_zero()
    else:
      kwargs = {**defaults, **_hyperparams_of(group, name, signature)}
      missing = [
          p.name for p in signature.parameters.values()
          if p.default is inspect.Parameter.empty
          and p.kind is not p.VAR_KEYWORD and p.name not in kwargs
      ]
      if missing:
        raise ValueError(f"param group {name!r} does not set {missing}.")
      optimizer(**kwargs)  # Validates the Python numbers before they become arrays.
      transforms[name] = hyperparams_lib.injected(optimizer, static, kwargs)
    names.append(name)
    selectors.append(_selector(group["params"], f"param group {i} ({name!r})"))
    described.append(_describe_group(i, name, group["params"]))

  if rest == "freeze":
    transforms[FROZEN] = optax.set_to_zero()
  elif rest != "error" and rest not in names:
    raise ValueError(
        f"rest must be 'error', 'freeze' or a group name {names}, got {rest!r}."
    )

  selection = paths_lib.Selection(list(zip(selectors, names)), "param_groups")
  frozen_groups = {n for n, g in zip(names, groups) if g.get("frozen", False)}

  def owners(params: Any) -> dict[str, Any]:
    held: dict[str, Any] = {}

    def owner_of(path: str, leaf: Any) -> Any:
      found = selection.match(path, leaf)
      if found.depth is None:
        name = rest if rest in names else None
      else:
        name = names[found.winners[0]]
      held[path] = None if name in frozen_groups else name
      return leaf

    paths_lib.map_with_paths(owner_of, params)
    return held

  def labels(params: Any) -> Any:
    unclaimed, doubly, paths = [], [], []
    counts = [0] * len(names)
    outranked = [False] * len(names)

    def label_of(path: str, leaf: Any) -> str:
      paths.append(path)
      found = selection.match(path, leaf)
      if found.depth is None:
        unclaimed.append(path)
        return FROZEN if rest == "freeze" else rest
      claimed = found.winners
      if len(claimed) > 1:
        doubly.append(f"{path} ({', '.join(names[i] for i in claimed)})")
      for i, n in enumerate(found.depths):
        if n is not None and i not in claimed:
          outranked[i] = True
      first = next(iter(claimed))
      counts[first] += 1
      return names[first]

    out = paths_lib.map_with_paths(label_of, params)
    if doubly:
      raise ValueError(
          "parameters selected by more than one group through the same prefix "
          f"(otherwise the longest matching prefix wins): {doubly}."
      )
    if rest in names:
      counts[names.index(rest)] += len(unclaimed)
    # optax.masked / optax.partition hand a narrowed tree (MaskedNode where a
    # leaf is masked out) and optax.tree.map_params a placeholder without
    # leaves: a group that selects a masked-out leaf, or any group of a tree
    # without leaves, is not a typo.
    masked = _masked_paths(params)
    if not paths:
      counts = [1] * len(names)
    for i, selector in enumerate(selectors):
      if not counts[i] and any(_selects_masked(selector, p) for p in masked):
        counts[i] = 1
    empty = [
        d + (" (a more specific group takes every leaf it selects)" if o else "")
        + (" (it is the rest= group: the other groups claim every leaf; a group "
           "added with with_group or add_param_group may not take them all)"
           if name == rest else "")
        for d, n, o, name in zip(described, counts, outranked, names) if not n
    ]
    if empty and not allow_empty:
      raise ValueError(
          f"{'; '.join(empty)} claims no parameter. A pattern selects the "
          "leaves whose '/'-joined path it matches in full, or a prefix of "
          f"it; the paths are {paths[:6]}{' ...' if len(paths) > 6 else ''}. "
          "Pass allow_empty=True to allow groups that claim nothing."
          + (" A catch-all pattern such as '.*' matches every full path, the "
             "longest prefix, so it outranks every other group: for PyTorch's "
             "'everything else' group, leave its 'params' out and name it in "
             "rest=, e.g. [{'params': 'head', 'lr': 1e-2}, {'name': 'base'}], "
             "rest='base'." if any(outranked) else "")
      )
    if unclaimed and rest == "error":
      raise ValueError(
          f"no param group claims {unclaimed}; add a group, or pass rest='freeze' "
          "or rest=<group name>."
      )
    return out

  tx = optax.multi_transform(transforms, labels)
  return ParamGroups(
      tx.init, tx.update, optimizer=optimizer,
      groups=tuple(dict(g) for g in groups), defaults=dict(defaults),
      rest=rest, allow_empty=allow_empty, names=tuple(names), labels=labels,
      owners=owners)


class ParamGroups(optax.GradientTransformationExtraArgs):
  """The transformation `param_groups` returns, with the groups it was
  built from (PyTorch's ``optimizer.param_groups``).

  It is an ``optax.GradientTransformationExtraArgs`` (an ``optax.multi_transform``
  with one label per group) that also carries its construction arguments, so
  that a group can be added or removed later: `with_group`,
  `without_group`, and, with the state carried over,
  `add_param_group` and
  `drop_param_group`.

  Attributes:
    optimizer: the factory every group runs.
    groups: the group dicts, in order (copies).
    defaults: the keyword arguments shared by every group.
    rest: where leaves that no group claims go.
    allow_empty: whether groups that claim no leaf are accepted.
    names: the groups' names (the ``optax.multi_transform`` labels).
    labels: ``params -> `` a tree of group names shaped like ``params`` (the
      group each leaf goes to; ``"frozen"`` for leaves ``rest="freeze"``
      freezes).
    owners: ``params -> {path: group name or None}``: the group that holds
      each leaf (None for leaves no group holds: frozen, or unclaimed under
      ``rest="error"``), without the checks of ``labels``; what
      `add_param_group` compares to find parameters
      that would move.
  """

  optimizer: Any
  groups: tuple[dict[str, Any], ...]
  defaults: dict[str, Any]
  rest: str
  allow_empty: bool
  names: tuple[str, ...]
  labels: Any
  owners: Any

  def __new__(cls, init, update, *, optimizer=None, groups=(), defaults=None,
              rest="error", allow_empty=False, names=(), labels=None, owners=None):
    # Keyword defaults let copy.copy, deepcopy and pickle rebuild the tuple
    # first and restore the attributes from ``__dict__`` after.
    self = super().__new__(cls, init, update)
    self.optimizer = optimizer
    self.groups = groups
    self.defaults = {} if defaults is None else defaults
    self.rest = rest
    self.allow_empty = allow_empty
    self.names = names
    self.labels = labels
    self.owners = owners
    return self

  def _rebuilt(self, groups: Sequence[Mapping[str, Any]], rest: str) -> "ParamGroups":
    return param_groups(self.optimizer, groups, rest=rest,
                        allow_empty=self.allow_empty, **self.defaults)

  def with_group(self, group: Mapping[str, Any]) -> "ParamGroups":
    """The same groups plus ``group`` (a dict as in `param_groups`; its
    default name is ``"group_<i>"``, ``i`` its position, or the next free
    ``"group_<k>"`` where a group already has that name). Hyperparameters it
    does not set take this optimizer's ``defaults``, as PyTorch's
    ``add_param_group`` fills them from the optimizer's defaults. A group of
    the name of a frozen group replaces it (unfreezes it)."""
    if not isinstance(group, Mapping):
      raise TypeError(f"group must be a dict with a 'params' entry, got {group!r}.")
    group = dict(group)
    if "name" not in group:
      group["name"] = _free_name(set(self.names), len(self.groups))
    name = _group_name(group["name"], len(self.groups))
    groups = list(self.groups)
    if name in self.names and groups[self.names.index(name)].get("frozen", False):
      groups[self.names.index(name)] = group  # Unfreezes a frozen group.
    else:
      groups.append(group)
    return self._rebuilt(groups, self.rest)

  def without_group(self, name: str, *, freeze: bool = False) -> "ParamGroups":
    """The same groups without the group ``name``.

    With ``freeze=True`` the group stays, frozen (``{"params": ...,
    "frozen": True}``: zero updates, no state), for parameters that stay in the
    model. Where ``rest`` names the dropped group, the leaves that no group
    claims are frozen from now on (``rest="freeze"``).
    """
    if name not in self.names:
      raise ValueError(f"unknown param group {name!r}; the groups are {list(self.names)}.")
    groups = []
    for group, group_name in zip(self.groups, self.names):
      if group_name != name:
        # Named as now: a default "group_<i>" follows the position, which moves.
        groups.append({**group, "name": group_name})
      elif freeze:
        groups.append({"params": group.get("params", []), "name": name, "frozen": True})
    rest = "freeze" if name == self.rest and not freeze else self.rest
    return self._rebuilt(groups, rest)


def _free_name(taken: set, start: int) -> str:
  """The first of ``group_<start>``, ``group_<start + 1>``, ... not in ``taken``."""
  k = start
  while f"group_{k}" in taken:
    k += 1
  return f"group_{k}"


def _default_names(groups: Sequence[Any]) -> list[Any]:
  """The name of each unnamed group: ``group_<i>``, ``i`` its position, or,
  where another group is named so, the next free ``group_<k>`` (``k`` from
  the number of groups on); None for the groups that have a name."""
  named = {g["name"] for g in groups if isinstance(g, Mapping) and "name" in g
           and isinstance(g["name"], str)}
  unnamed = [i for i, g in enumerate(groups) if isinstance(g, Mapping) and "name" not in g]
  taken = named | {f"group_{i}" for i in unnamed}
  out: list[Any] = [None] * len(groups)
  for i in unnamed:
    out[i] = f"group_{i}"
    if out[i] in named:
      out[i] = _free_name(taken, len(groups))
      taken.add(out[i])
  return out


def _group_name(name: Any, i: int) -> str:
  """A group's name: a non-empty str without ``"/"`` (the separator of nested
  ``optax.multi_transform`` labels in ``reset=`` and ``rebuild_state``)."""
  if not isinstance(name, str) or not name:
    raise TypeError(f"param group {i}: 'name' must be a non-empty str, got {name!r}.")
  if "/" in name:
    raise ValueError(
        f"param group {i}: 'name' {name!r} contains '/', which separates nested "
        "group labels (reset=['outer/inner']); use another character, e.g. "
        f"{name.replace('/', '.')!r}.")
  return name

