"""Differential learning rates: path labels and PyTorch-style param groups.

Built on ``optax.multi_transform`` (one transform per label) and
``optax.inject_hyperparams`` (hyperparameters kept in the state, so that they
can be read and changed at run time). References: ``001`` Example 2, ``002``
(``torch.optim.SGD([{'params': ..., 'lr': ...}, ...])``) and ``003`` (manual
``param_groups[i]['lr'] *= 0.9`` edits, training only part of a model).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import optax

from optax_neuronlr._src import units as units_lib
from optax_neuronlr._src.inspect import unwrap_variables

LabelRules = Union[Mapping[str, Any], Sequence[tuple[str, Any]]]
ParamsSpec = Union[str, Sequence[str], Callable[[str, Any], bool]]

FROZEN = "frozen"
# Arguments of optimizer factories that are never schedules, although they may
# be callables (a dtype class, a callable of params).
_STATIC_ARGS = ("neuron_axes", "state_dtype", "mu_dtype", "accumulator_dtype")


def _compile(pattern: str, what: str) -> re.Pattern:
  try:
    return re.compile(pattern)
  except re.error as e:
    raise ValueError(f"{what}: invalid regular expression {pattern!r}: {e}.") from e


def _map_paths(fn: Callable[[str, Any], Any], tree: Any) -> Any:
  """``fn(path, leaf)`` on every array leaf; None and MaskedNode keep their place."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: fn(units_lib.path_str(path), leaf), tree
  )


def path_labels(
    rules: LabelRules, default: Optional[Any] = None
) -> Callable[[Any], Any]:
  """Labels for ``optax.multi_transform`` from regular expressions on paths.

  Each leaf's path is its keys joined by ``"/"`` (``"backbone/Dense_0/kernel"``;
  list indices are numbers, and Flax NNX's ``.value`` is dropped). The first
  rule whose regular expression matches the *whole* path gives the label.

  Args:
    rules: ``{regex: label}`` (in order) or a sequence of ``(regex, label)``.
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
  compiled = [(_compile(p, "path_labels"), label) for p, label in items]

  def labels(params: Any) -> Any:
    unmatched: list[str] = []

    def label_of(path: str, leaf: Any) -> Any:
      del leaf
      for regex, label in compiled:
        if regex.fullmatch(path):
          return label
      unmatched.append(path)
      return default

    out = _map_paths(label_of, params)
    if unmatched and default is None:
      raise ValueError(
          f"path_labels: no rule matches the paths {unmatched}; add a rule or a "
          "default label."
      )
    return out

  return labels


def _matcher(spec: ParamsSpec, name: str) -> Callable[[str, Any], bool]:
  if callable(spec):
    return spec
  patterns = [spec] if isinstance(spec, str) else list(spec)
  compiled = [_compile(p, f"param group {name!r}") for p in patterns]
  return lambda path, leaf: any(r.fullmatch(path) for r in compiled)


def _hyperparams_of(
    group: Mapping[str, Any], name: str, signature: inspect.Signature
) -> dict[str, Any]:
  """A group's hyperparameter overrides, ``lr`` read as ``learning_rate``."""
  values = {k: v for k, v in group.items() if k not in ("params", "name")}
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
    **defaults: Any,
) -> optax.GradientTransformationExtraArgs:
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
  As in PyTorch, a parameter may belong to one group only.

  Args:
    optimizer: an optax-style factory (``optax.sgd``, ``optax.adam``,
      ``nlr.grad_history_lr``, ...).
    groups: dicts with ``"params"`` (a regex on the ``"/"``-joined path, a list
      of them, or ``callable(path, leaf) -> bool``), an optional ``"name"``
      (default ``"group_<i>"``) and overrides of the factory's arguments
      (``"lr"`` is accepted for ``"learning_rate"``).
    rest: what happens to leaves no group claims: ``"error"`` (raise, listing
      them), ``"freeze"`` (zero updates, in a group named ``"frozen"``), or the
      name of a group that takes them.
    **defaults: arguments of ``optimizer`` shared by every group.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Raises:
    ValueError: for unknown hyperparameter names, invalid regexes, duplicate
      group names or a bad ``rest`` (at construction); for leaves claimed by
      two groups or, with ``rest="error"``, by none (at init).
  """
  signature = inspect.signature(optimizer)
  defaults = _hyperparams_of(defaults, "defaults", signature)
  names, matchers, transforms = [], [], {}
  static = tuple(a for a in _STATIC_ARGS if a in signature.parameters)
  for i, group in enumerate(groups):
    if "params" not in group:
      raise ValueError(f"param group {i} has no 'params' entry.")
    name = str(group.get("name", f"group_{i}"))
    if name in transforms or name == FROZEN and rest == "freeze":
      raise ValueError(f"param group name {name!r} is used twice.")
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
    matchers.append(_matcher(group["params"], name))

  if rest == "freeze":
    transforms[FROZEN] = optax.set_to_zero()
  elif rest != "error" and rest not in names:
    raise ValueError(
        f"rest must be 'error', 'freeze' or a group name {names}, got {rest!r}."
    )

  def labels(params: Any) -> Any:
    unclaimed, doubly = [], []

    def label_of(path: str, leaf: Any) -> str:
      claimed = [n for n, m in zip(names, matchers) if m(path, leaf)]
      if len(claimed) > 1:
        doubly.append(f"{path} ({', '.join(claimed)})")
      if claimed:
        return claimed[0]
      unclaimed.append(path)
      return FROZEN if rest == "freeze" else rest

    out = _map_paths(label_of, params)
    if doubly:
      raise ValueError(f"parameters appear in more than one group: {doubly}.")
    if unclaimed and rest == "error":
      raise ValueError(
          f"no param group claims {unclaimed}; add a group, or pass rest='freeze' "
          "or rest=<group name>."
      )
    return out

  return optax.multi_transform(transforms, labels)


_INJECT_STATES = tuple(
    getattr(optax, name)
    for name in ("InjectHyperparamsState", "InjectStatefulHyperparamsState")
    if hasattr(optax, name)
)


def _hyperparam_dtype(tree: Any) -> jnp.dtype:
  """The widest float dtype of ``tree``'s leaves, and at least float32.

  ``optax.inject_hyperparams`` otherwise stores the hyperparameters in the
  params' widest dtype, which rounds ``min_lr = 1e-6`` to bfloat16 and fails
  on trees that mix bfloat16 and float16 leaves.
  """
  dtype = jnp.dtype(jnp.float32)
  for leaf in jax.tree.leaves(tree):
    leaf_dtype = jnp.dtype(getattr(leaf, "dtype", jnp.result_type(leaf)))
    if jnp.issubdtype(leaf_dtype, jnp.floating):
      dtype = jnp.promote_types(dtype, leaf_dtype)
  return jax.dtypes.canonicalize_dtype(dtype)


def _casts_own_scalars(optimizer: Callable[..., Any]) -> bool:
  """This library's factories cast their hyperparameters to their statistics'
  dtype themselves; optax's own keep the dtype they are given."""
  return getattr(optimizer, "__module__", "").startswith("optax_neuronlr")


def _injected(
    optimizer: Callable[..., optax.GradientTransformation],
    static: tuple[str, ...],
    kwargs: Mapping[str, Any],
) -> optax.GradientTransformationExtraArgs:
  """``optax.inject_hyperparams(optimizer)(**kwargs)``.

  For this library's factories the hyperparameters are kept in
  :func:`_hyperparam_dtype` of the tree (never half precision); other
  optimizers keep optax's default (the params' widest dtype), so that their
  own states keep the params' dtype.
  """
  ours = _casts_own_scalars(optimizer)

  def make(tree):
    return optax.inject_hyperparams(
        optimizer, static_args=static,
        hyperparam_dtype=_hyperparam_dtype(tree) if ours else None,
    )(**kwargs)

  def init_fn(params):
    return make(params).init(params)

  def update_fn(updates, state, params=None, **extra_args):
    return make(updates).update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def is_inject_state(x: Any) -> bool:
  """True for the state of ``optax.inject_hyperparams`` (either class)."""
  return isinstance(x, _INJECT_STATES)


def _group_name(path: Sequence[Any]) -> str:
  """The ``multi_transform`` label above a state, else ``"default"``."""
  keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
  for i in range(len(keys) - 1, 0, -1):
    if keys[i - 1] == "inner_states":
      return str(keys[i])
  return "default"


def _inject_states(opt_state: Any) -> list[tuple[str, Any]]:
  flat, _ = jax.tree_util.tree_flatten_with_path(opt_state, is_leaf=is_inject_state)
  return [(_group_name(p), s) for p, s in flat if is_inject_state(s)]


def get_hyperparams(opt_state: Any) -> dict[str, dict[str, jax.Array]]:
  """``{group name: {hyperparameter: value}}`` of every injected group.

  Groups are those of :func:`param_groups` (or any ``optax.multi_transform``
  label whose transform is wrapped in ``optax.inject_hyperparams``); a bare
  ``inject_hyperparams`` state is the group ``"default"``. Jittable.
  """
  return {
      name: dict(unwrap_variables(state).hyperparams)
      for name, state in _inject_states(opt_state)
  }


def set_hyperparams(opt_state: Any, group: Optional[str] = None, **values: Any) -> Any:
  """A new state with hyperparameters of one group (or all) replaced.

  Each value is a number, an array, or a callable ``old -> new``: seed 003's
  ``for g in optimizer.param_groups: g['lr'] *= 0.9`` is
  ``set_hyperparams(state, learning_rate=lambda v: v * 0.9)``. The new value
  keeps the old one's dtype, so a jitted step does not retrace. Jittable.
  A hyperparameter given as a schedule is re-evaluated by the next update,
  which overrides what is set here.

  Args:
    opt_state: a state of :func:`param_groups` or of any optax state holding
      ``optax.inject_hyperparams`` states.
    group: the group to change; None changes every group.
    **values: hyperparameter name -> new value or ``old -> new``.

  Returns:
    The new state (the input is not modified).

  Raises:
    ValueError: for an unknown group or hyperparameter name.
  """
  found = _inject_states(opt_state)
  names = sorted({n for n, _ in found})
  if not found:
    raise ValueError(
        "opt_state holds no optax.inject_hyperparams state: build the optimizer "
        "with nlr.param_groups or optax.inject_hyperparams."
    )
  if group is not None and group not in names:
    raise ValueError(f"unknown group {group!r}; the state has groups {names}.")

  def replace(path, node):
    if not is_inject_state(node):
      return node
    if group is not None and _group_name(path) != group:
      return node
    unknown = sorted(set(values) - set(node.hyperparams))
    if unknown:
      raise ValueError(
          f"unknown hyperparameters {unknown}; group {_group_name(path)!r} has "
          f"{sorted(node.hyperparams)}."
      )
    hyperparams = dict(node.hyperparams)
    for key, value in values.items():
      old = unwrap_variables(hyperparams[key])
      new = value(old) if callable(value) else value
      hyperparams[key] = jnp.asarray(new, jnp.asarray(old).dtype)
    return node._replace(hyperparams=hyperparams)

  return jax.tree_util.tree_map_with_path(replace, opt_state, is_leaf=is_inject_state)
