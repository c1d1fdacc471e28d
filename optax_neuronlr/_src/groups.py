"""Differential learning rates: path labels and PyTorch-style param groups.

Built on ``optax.multi_transform`` (one transform per label) and
``optax.inject_hyperparams`` (hyperparameters kept in the state, so that they
can be read and changed at run time). References: ``001`` Example 2, ``002``
(``torch.optim.SGD([{'params': ..., 'lr': ...}, ...])``) and ``003`` (manual
``param_groups[i]['lr'] *= 0.9`` edits, training only part of a model).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import optax

from optax_neuronlr._src import paths as paths_lib
from optax_neuronlr._src import units as units_lib
from optax_neuronlr._src import validation
from optax_neuronlr._src.readers import unwrap_variables

LabelRules = Union[Mapping[str, Any], Sequence[tuple[str, Any]]]
ParamsSpec = Union[
    str, re.Pattern, Sequence[Union[str, re.Pattern]], Callable[[str, Any], bool]
]

FROZEN = "frozen"
# Entries of a group dict that are not hyperparameters.
_GROUP_KEYS = ("params", "name", "frozen")
# Arguments of optimizer factories that are never schedules, although they may
# be callables (a dtype class, a callable of params).
_STATIC_ARGS = ("neuron_axes", "state_dtype", "mu_dtype", "accumulator_dtype")


def _depth(path: str) -> int:
  """Number of keys in a ``"/"``-joined path."""
  return len(path.split("/")) if path else 0


def _map_paths(fn: Callable[[str, Any], Any], tree: Any) -> Any:
  """``fn(path, leaf)`` on every array leaf; None and MaskedNode keep their place."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: fn(units_lib.path_str(path), leaf), tree
  )


def _masked_paths(tree: Any) -> list[str]:
  """Paths of the ``optax.MaskedNode`` placeholders in ``tree``."""
  is_masked = lambda x: isinstance(x, optax.MaskedNode)
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_masked)[0]
  return [units_lib.path_str(p) for p, x in flat if is_masked(x)]


def _selects_masked(matcher: Callable[[str, Any], Any], path: str) -> bool:
  """Whether a group's matcher selects a masked-out leaf (a callable group that
  needs the leaf itself cannot tell, and counts as selecting it)."""
  try:
    return matcher(path, None) is not None
  except Exception:  # pylint: disable=broad-except
    return True


def path_labels(
    rules: LabelRules, default: Optional[Any] = None
) -> Callable[[Any], Any]:
  """Labels for ``optax.multi_transform`` from regular expressions on paths.

  Each leaf's path is its keys joined by ``"/"`` (``"backbone/Dense_0/kernel"``;
  list indices are numbers, and Flax NNX's ``.value`` is dropped). Leaves are
  selected by the package's one path rule (:mod:`optax_neuronlr._src.paths`): a
  rule selects a leaf when its regular expression matches the *whole* path or
  one of its ``"/"``-prefixes (``"backbone"`` selects every leaf below
  ``backbone``). The rule matching the longest prefix gives the label; among
  rules that match the same prefix, the first one.

  Args:
    rules: ``{regex: label}`` (in order) or a sequence of ``(regex, label)``;
      a regex is a str or a compiled ``re.Pattern``.
    default: label of leaves that match no rule; None makes them an error.

  Returns:
    ``params -> labels``, a tree shaped like ``params``; works on dicts,
    Flax linen params and NNX ``nnx.State``.

  Raises:
    ValueError: at construction for an invalid regular expression; when called,
      listing every path that matches no rule if there is no default.

  Example:
    >>> import optax, optax_neuronlr as nlr
    >>> tx = optax.multi_transform(
    ...     {"slow": optax.adam(1e-4), "fast": optax.adam(1e-3)},
    ...     nlr.path_labels({r"backbone/.*": "slow", r"head/.*": "fast"}))
  """
  items = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
  compiled = [(paths_lib.compile_selector(p, "path_labels"), label) for p, label in items]

  def labels(params: Any) -> Any:
    unmatched: list[str] = []

    def label_of(path: str, leaf: Any) -> Any:
      del leaf
      best, best_len = None, -1
      for regex, label in compiled:
        n = paths_lib.selects(regex, path)
        if n is not None and n > best_len:
          best, best_len = label, n
      if best_len < 0:
        unmatched.append(path)
        return default
      return best

    out = _map_paths(label_of, params)
    if unmatched and default is None:
      raise ValueError(
          f"path_labels: no rule matches the paths {unmatched}; add a rule or a "
          "default label."
      )
    return out

  return labels


def _matcher(spec: ParamsSpec, what: str) -> Callable[[str, Any], Optional[int]]:
  """``(path, leaf) -> `` the length of the prefix that a group's ``"params"``
  selects (None: not selected); a callable selects the whole path."""
  if callable(spec):
    return lambda path, leaf: _depth(path) if spec(path, leaf) else None
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
  compiled = [paths_lib.compile_selector(p, what) for p in patterns]

  def selected(path: str, leaf: Any) -> Optional[int]:
    del leaf
    found = [paths_lib.selects(r, path) for r in compiled]
    return max((n for n in found if n is not None), default=None)

  return selected


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
  {"params": model.part2.parameters(), "lr": 1e-2}], momentum=0.9)`` becomes::

    nlr.param_groups(optax.sgd, [
        {"params": r"part1/.*", "learning_rate": 1e-3},
        {"params": r"part2/.*", "learning_rate": 1e-2},
    ], momentum=0.9)

  Each group runs ``optax.inject_hyperparams(optimizer)(**defaults,
  **overrides)`` on its leaves (``optax.multi_transform``), so its values can be
  read with :func:`get_hyperparams` and changed with :func:`set_hyperparams`.

  Groups select leaves by the package's one path rule
  (:mod:`optax_neuronlr._src.paths`): a pattern selects a leaf when it matches
  the leaf's whole ``"/"``-joined path or one of its prefixes, so ``"backbone"``
  (a PyTorch-style sub-module) and ``"backbone/.*"`` both select every leaf
  below ``backbone``. A leaf selected by several groups goes to the one whose
  pattern matches the longest prefix (``"backbone/head"`` beats
  ``"backbone"``); two groups matching the same prefix are an error, as a
  parameter in two groups is in PyTorch.

  PyTorch's "everything else" group (``[{"params": model.head.parameters(),
  "lr": 1e-2}, {"params": rest_of_model}]``) is the group that ``rest``
  names; it may leave ``"params"`` out::

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
  are named ``"<outer>/<inner>"`` by :func:`get_hyperparams` and
  :func:`set_hyperparams`.

  Args:
    optimizer: an optax-style factory (``optax.sgd``, ``optax.adam``,
      ``nlr.grad_history_lr``, or a ``functools.partial`` of one, ...).
    groups: dicts with ``"params"`` (a regular expression on the
      ``"/"``-joined path, as a str or a compiled ``re.Pattern``, a list of
      them, or ``callable(path, leaf) -> bool``), an optional ``"name"``
      (default ``"group_<i>"``) and overrides of the factory's arguments
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
    A :class:`ParamGroups`: an ``optax.GradientTransformationExtraArgs``
    that also keeps these arguments, so that groups can be added, dropped or
    reset during training (:func:`~optax_neuronlr.add_param_group`,
    :func:`~optax_neuronlr.drop_param_group`,
    :func:`~optax_neuronlr.reset_param_group`).

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
  names, matchers, described, transforms = [], [], [], {}
  static = tuple(a for a in _STATIC_ARGS if a in signature.parameters)
  for i, group in enumerate(groups):
    if not isinstance(group, Mapping):
      raise TypeError(
          f"param group {i} must be a dict with a 'params' entry, got {group!r}."
      )
    name = _group_name(group.get("name", f"group_{i}"), i)
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
      transforms[name] = _injected(optimizer, static, kwargs)
    names.append(name)
    matchers.append(_matcher(group["params"], f"param group {i} ({name!r})"))
    described.append(_describe_group(i, name, group["params"]))

  if rest == "freeze":
    transforms[FROZEN] = optax.set_to_zero()
  elif rest != "error" and rest not in names:
    raise ValueError(
        f"rest must be 'error', 'freeze' or a group name {names}, got {rest!r}."
    )

  def labels(params: Any) -> Any:
    unclaimed, doubly, paths = [], [], []
    counts = [0] * len(names)
    outranked = [False] * len(names)

    def label_of(path: str, leaf: Any) -> str:
      paths.append(path)
      lengths = [m(path, leaf) for m in matchers]
      best = max((n for n in lengths if n is not None), default=None)
      if best is None:
        unclaimed.append(path)
        return FROZEN if rest == "freeze" else rest
      claimed = [i for i, n in enumerate(lengths) if n == best]
      if len(claimed) > 1:
        doubly.append(f"{path} ({', '.join(names[i] for i in claimed)})")
      for i, n in enumerate(lengths):
        if n is not None and i not in claimed:
          outranked[i] = True
      counts[claimed[0]] += 1
      return names[claimed[0]]

    out = _map_paths(label_of, params)
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
    for i, m in enumerate(matchers):
      if not counts[i] and any(_selects_masked(m, p) for p in masked):
        counts[i] = 1
    empty = [
        d + (" (a more specific group takes every leaf it selects)" if o else "")
        for d, n, o in zip(described, counts, outranked) if not n
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
      rest=rest, allow_empty=allow_empty, names=tuple(names), labels=labels)


class ParamGroups(optax.GradientTransformationExtraArgs):
  """The transformation :func:`param_groups` returns, with the groups it was
  built from (PyTorch's ``optimizer.param_groups``).

  It is an ``optax.GradientTransformationExtraArgs`` (an ``optax.multi_transform``
  with one label per group) that also carries its construction arguments, so
  that a group can be added or removed later: :meth:`with_group`,
  :meth:`without_group`, and, with the state carried over,
  :func:`~optax_neuronlr.add_param_group` and
  :func:`~optax_neuronlr.drop_param_group`.

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
  """

  def __new__(cls, init, update, *, optimizer=None, groups=(), defaults=None,
              rest="error", allow_empty=False, names=(), labels=None):
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
    return self

  def _rebuilt(self, groups: Sequence[Mapping[str, Any]], rest: str) -> "ParamGroups":
    return param_groups(self.optimizer, groups, rest=rest,
                        allow_empty=self.allow_empty, **self.defaults)

  def with_group(self, group: Mapping[str, Any]) -> "ParamGroups":
    """The same groups plus ``group`` (a dict as in :func:`param_groups`; its
    default name is ``"group_<i>"``, ``i`` its position). Hyperparameters it
    does not set take this optimizer's ``defaults``, as PyTorch's
    ``add_param_group`` fills them from the optimizer's defaults. A group of
    the name of a frozen group replaces it (unfreezes it)."""
    if not isinstance(group, Mapping):
      raise TypeError(f"group must be a dict with a 'params' entry, got {group!r}.")
    group = dict(group)
    group.setdefault("name", f"group_{len(self.groups)}")
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
        groups.append(group)
      elif freeze:
        groups.append({"params": group.get("params", []), "name": name, "frozen": True})
    rest = "freeze" if name == self.rest and not freeze else self.rest
    return self._rebuilt(groups, rest)


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


_INJECT_STATES = tuple(
    getattr(optax, name)
    for name in ("InjectHyperparamsState", "InjectStatefulHyperparamsState")
    if hasattr(optax, name)
)


def _widest_float(tree: Any) -> Optional[jnp.dtype]:
  """The promotion of the float dtypes of ``tree``'s leaves (None if none).

  bfloat16 with float16 gives float32, where optax's ``tree.dtype(params,
  "highest")`` raises.
  """
  dtype = None
  for leaf in jax.tree.leaves(tree):
    leaf_dtype = jnp.dtype(getattr(leaf, "dtype", jnp.result_type(leaf)))
    if jnp.issubdtype(leaf_dtype, jnp.floating):
      dtype = leaf_dtype if dtype is None else jnp.promote_types(dtype, leaf_dtype)
  return None if dtype is None else jax.dtypes.canonicalize_dtype(dtype)


def _hyperparam_dtype(tree: Any) -> jnp.dtype:
  """The widest float dtype of ``tree``'s leaves, and at least float32.

  ``optax.inject_hyperparams`` otherwise stores the hyperparameters in the
  params' widest dtype, which rounds ``min_lr = 1e-6`` and Adam's ``b2 =
  0.999`` (to 1.0: a NaN bias correction) in bfloat16, and fails on trees that
  mix bfloat16 and float16 leaves.
  """
  widest = _widest_float(tree)
  dtype = jnp.dtype(jnp.float32) if widest is None else jnp.promote_types(
      jnp.float32, widest)
  return jax.dtypes.canonicalize_dtype(dtype)


def _cast_like(tree: Any, like: Any) -> Any:
  """``tree`` with each float array cast to the dtype of ``like``'s leaf."""

  def cast(new, old):
    old_dtype = getattr(old, "dtype", None)
    if (old_dtype is None or getattr(new, "dtype", old_dtype) == old_dtype
        or not jnp.issubdtype(old_dtype, jnp.inexact)):
      return new
    return new.astype(old_dtype)

  if jax.tree.structure(tree) != jax.tree.structure(like):
    return tree
  return jax.tree.map(cast, tree, like)


def _unwrapped(optimizer: Callable[..., Any]) -> Callable[..., Any]:
  """The function under ``functools.partial`` layers and ``functools.wraps``."""
  seen = 0
  while seen < 100:
    seen += 1
    if isinstance(optimizer, functools.partial):
      optimizer = optimizer.func
    elif getattr(optimizer, "__wrapped__", None) is not None:
      optimizer = optimizer.__wrapped__
    else:
      break
  return optimizer


def _casts_own_scalars(optimizer: Callable[..., Any]) -> bool:
  """This library's factories cast their hyperparameters to their statistics'
  dtype themselves; optax's own keep the dtype they are given. Partials of a
  factory (``functools.partial(nlr.grad_history_lr, beta=0.5)``) count as it."""
  return getattr(_unwrapped(optimizer), "__module__", "").startswith("optax_neuronlr")


def _injected(
    optimizer: Callable[..., optax.GradientTransformation],
    static: tuple[str, ...],
    kwargs: Mapping[str, Any],
) -> optax.GradientTransformationExtraArgs:
  """``optax.inject_hyperparams(optimizer)(**kwargs)``, hyperparameters kept in
  :func:`_hyperparam_dtype` of the tree (never half precision).

  This library's factories cast their hyperparameters to their statistics'
  dtype themselves. For other optimizers (optax's own), whose arithmetic takes
  the dtype of the hyperparameter arrays, the updates are cast back to the
  incoming updates' dtypes and the inner state to its previous dtypes: as with
  the plain optimizer, whose Python-float hyperparameters are weakly typed,
  bfloat16 params keep bfloat16 updates and moments, and a jitted step never
  retraces.
  """
  ours = _casts_own_scalars(optimizer)

  def make(tree):
    return optax.inject_hyperparams(
        optimizer, static_args=static, hyperparam_dtype=_hyperparam_dtype(tree),
    )(**kwargs)

  def init_fn(params):
    return make(params).init(params)

  def update_fn(updates, state, params=None, **extra_args):
    new, new_state = make(updates).update(updates, state, params, **extra_args)
    if not ours:
      new = _cast_like(new, updates)
      new_state = new_state._replace(
          inner_state=_cast_like(new_state.inner_state, state.inner_state))
    return new, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def is_inject_state(x: Any) -> bool:
  """True for the state of ``optax.inject_hyperparams`` (either class)."""
  return isinstance(x, _INJECT_STATES)


# Naming the injected states of an optimizer state.
#
# A state's *components* are the multi_transform labels ("label", key) and the
# positions in chains and other tuples ("index", i) on its path from the root,
# through the inner states of enclosing injected states. Its name is its labels
# joined by "/" ("default" without any); where two states would share a name
# (two injected transforms in one chain), each is named by all its components
# instead ("0", "1", "1/head").

Components = tuple[tuple[str, str], ...]


def _components(path: Sequence[Any]) -> Components:
  out = []
  for prev, key in zip((None, *path[:-1]), path):
    if isinstance(key, jax.tree_util.SequenceKey):
      out.append(("index", str(key.idx)))
    elif getattr(prev, "name", None) == "inner_states" and hasattr(key, "key"):
      out.append(("label", str(key.key)))
  return tuple(out)


def _collect(opt_state: Any, above: Components = ()) -> list[tuple[Components, Any]]:
  """Every injected state, outer before inner, with its components."""
  found = []
  flat, _ = jax.tree_util.tree_flatten_with_path(opt_state, is_leaf=is_inject_state)
  for path, node in flat:
    if is_inject_state(node):
      components = above + _components(path)
      found.append((components, node))
      found.extend(_collect(node.inner_state, components))
  return found


def _names(found: Sequence[tuple[Components, Any]]) -> dict[Components, str]:
  """Unique names of the states in ``found`` (see the comment above)."""
  short = {c: "/".join(v for k, v in c if k == "label") or "default" for c, _ in found}
  taken = [n for n in short.values()]
  names = {}
  for c, _ in found:
    if taken.count(short[c]) == 1:
      names[c] = short[c]
    else:
      names[c] = "/".join(v for _, v in c) or "default"
  if len(set(names.values())) < len(names):  # A label that looks like an index.
    names = {c: "/".join(f"{k}:{v}" for k, v in c) or "default" for c, _ in found}
  return names


def _inject_states(opt_state: Any) -> list[tuple[str, Any]]:
  found = _collect(opt_state)
  names = _names(found)
  return [(names[c], s) for c, s in found]


def get_hyperparams(opt_state: Any) -> dict[str, dict[str, jax.Array]]:
  """``{group name: {hyperparameter: value}}`` of every injected group.

  Groups are those of :func:`param_groups` (or any ``optax.multi_transform``
  label whose transform is wrapped in ``optax.inject_hyperparams``), named by
  their label; a bare ``inject_hyperparams`` state is the group ``"default"``.
  Groups nested in a group's optimizer are named ``"<outer>/<inner>"``. Where
  two states would get the same name (e.g. two ``inject_hyperparams``
  transforms in one ``optax.chain``), each is named by its position instead:
  ``"0"``, ``"1"`` (and ``"1/head"`` for the group ``head`` of a
  ``param_groups`` at position 1). Jittable.
  """
  return {
      name: dict(unwrap_variables(state).hyperparams)
      for name, state in _inject_states(opt_state)
  }


def _new_value(key: str, old: Any, value: Any, where: str) -> jax.Array:
  """``value`` (or ``value(old)``) as a scalar of ``old``'s dtype, checked."""
  old = unwrap_variables(old)
  new = value(old) if callable(value) else value
  name = f"{key} of group {where!r}"
  dtype = jnp.asarray(old).dtype
  if jnp.issubdtype(dtype, jnp.integer):
    validation.check_int(name, new, low=-(2**31))
  else:
    validation.concrete_number(name, new, what="a real scalar")
  return jnp.asarray(new, dtype)


def _check_clamps(hyperparams: Mapping[str, Any], where: str) -> None:
  """``min_lr <= max_lr`` where both are concrete (not traced)."""
  if "min_lr" not in hyperparams or "max_lr" not in hyperparams:
    return
  try:
    validation.check_clamps(hyperparams["min_lr"], hyperparams["max_lr"])
  except ValueError as e:
    raise ValueError(f"group {where!r}: {e}") from None


def set_hyperparams(opt_state: Any, group: Optional[str] = None, **values: Any) -> Any:
  """A new state with hyperparameters of one group (or all) replaced.

  Each value is a scalar (a number or a 0-d array) or a callable ``old ->
  new``: seed 003's ``for g in optimizer.param_groups: g['lr'] *= 0.9`` is
  ``set_hyperparams(state, learning_rate=lambda v: v * 0.9)``. The new value
  keeps the old one's dtype, so a jitted step does not retrace. Jittable.
  A hyperparameter given as a schedule is re-evaluated by the next update,
  which overrides what is set here. Group names are those of
  :func:`get_hyperparams`.

  Args:
    opt_state: a state of :func:`param_groups` or of any optax state holding
      ``optax.inject_hyperparams`` states.
    group: the group to change; None changes every group that has the given
      hyperparameters.
    **values: hyperparameter name -> new value or ``old -> new``.

  Returns:
    The new state (the input is not modified).

  Raises:
    ValueError: for an unknown group or hyperparameter name, a value that is
      not a scalar, a fractional value of an integer hyperparameter,
      ``min_lr > max_lr`` (where both are concrete), or a value set on a group
      whose nested groups hold the same hyperparameter (the outer value would
      not reach them: set ``"<outer>/<inner>"``, or use ``group=None``).
    TypeError: for a value that is not a number (a string, None, a bool).
  """
  found = _collect(opt_state)
  if not found:
    raise ValueError(
        "opt_state holds no optax.inject_hyperparams state: build the optimizer "
        "with nlr.param_groups or optax.inject_hyperparams."
    )
  names = _names(found)
  known = sorted(names.values())
  if group is not None:
    if group not in known:
      raise ValueError(f"unknown group {group!r}; the state has groups {known}.")
    _check_not_shadowed(found, names, group, values)
  elif not any(set(values) <= set(s.hyperparams) for _, s in found):
    raise ValueError(
        f"unknown hyperparameters {sorted(values)}; the groups have "
        f"{ {names[c]: sorted(s.hyperparams) for c, s in found} }."
    )

  def replace(node: Any, name: str) -> Any:
    if group is None and not set(values) <= set(node.hyperparams):
      return node  # Another kind of group (e.g. a nested one without them).
    unknown = sorted(set(values) - set(node.hyperparams))
    if unknown:
      raise ValueError(
          f"unknown hyperparameters {unknown}; group {name!r} has "
          f"{sorted(node.hyperparams)}."
      )
    hyperparams = dict(node.hyperparams)
    for key, value in values.items():
      hyperparams[key] = _new_value(key, hyperparams[key], value, name)
    if {"min_lr", "max_lr"} & set(values):
      _check_clamps(unwrap_variables(hyperparams), name)
    return node._replace(hyperparams=hyperparams)

  def walk(tree: Any, above: Components) -> Any:
    def visit(path, node):
      if not is_inject_state(node):
        return node
      components = above + _components(path)
      node = node._replace(inner_state=walk(node.inner_state, components))
      name = names[components]
      return replace(node, name) if group in (None, name) else node

    return jax.tree_util.tree_map_with_path(visit, tree, is_leaf=is_inject_state)

  return walk(opt_state, ())


def _check_not_shadowed(
    found: Sequence[tuple[Components, Any]],
    names: Mapping[Components, str],
    group: str,
    values: Mapping[str, Any],
) -> None:
  """Setting an outer group's value that its nested groups hold is an error:
  each nested injected state keeps its own copy, so the new value would be
  reported by :func:`get_hyperparams` and change nothing."""
  outer = next(c for c, _ in found if names[c] == group)
  shadowed = sorted(
      names[c] for c, s in found
      if len(c) > len(outer) and c[:len(outer)] == outer
      and set(values) & set(s.hyperparams)
  )
  if shadowed:
    raise ValueError(
        f"group {group!r} holds nested groups {shadowed} with their own "
        f"{sorted(set(values))}: the value set on {group!r} would not reach "
        f"them. Set the nested groups (group={shadowed[0]!r}, ...) or pass "
        "group=None to set every group."
    )
