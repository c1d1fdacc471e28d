"""What the engine checks of a `Rule` and what it returns.

A rule is user code run inside `scale_by_rule`; a
mistake in it must end in an error that names the rule, the method and the
statistic, never in an update of the wrong shape or a statistic silently read
the wrong way. Three kinds of checks:

* the declaration, when the transform is built (`check_declaration`):
  ``unit_stats``, ``element_stats``, ``leaf_stats`` and ``hyperparams`` are
  tuples of distinct identifiers (``hyperparams`` may be a dict of defaults),
  no hyperparameter takes an engine scalar's name, ``reduce`` is ``"mean"``
  or ``"sum"``, ``weights`` names statistics the engine computes (and no
  declared statistic is named like one, ``weight_<name>``), the rule is
  hashable;
* the hyperparameter values, when the transform is built
  (`check_hyperparams`): real scalars, as the package's own (no
  strings, bools, None, lists, complex numbers or NaN), then the rule's own
  `check_hyperparams`;
* what each method returns, at trace time (`check_stats`,
  `check_observed`, `check_rate`): the declared names, the
  expected shapes, real dtypes where the engine keeps real statistics.

The docs page "Writing a rule" lists each check with the error it raises.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from optax_neuronlr._src import validation
from optax_neuronlr._src.weight_stats import PREFIX as WEIGHT_PREFIX
from optax_neuronlr._src.weight_stats import WEIGHT_STATS

ENGINE_SCALARS = ("learning_rate", "min_lr", "max_lr")
REDUCTIONS = ("mean", "sum")
# Keyword arguments of scale_by_rule and of the transforms rule_transform
# builds: a hyperparameter or option may not take these names.
ENGINE_ARGS = ENGINE_SCALARS + (
    "granularity", "neuron_axes", "state_dtype", "direction", "leaf_info", "reduce",
    "axis_names")
_RESERVED_STATS = ("count", "applied", "direction_state")
_DECLARED = ("unit_stats", "element_stats", "leaf_stats")


def _names(rule: Any, attr: str) -> tuple[str, ...]:
  """A declared tuple of names, checked: a tuple/list of identifiers."""
  value = getattr(rule, attr)
  if isinstance(value, Mapping) and attr == "hyperparams":
    value = tuple(value)
  if isinstance(value, str):
    raise TypeError(
        f"{rule.name}.{attr} must be a tuple of names, got the string {value!r}: "
        f"write {attr} = ({value!r},).")
  if not isinstance(value, (tuple, list)):
    raise TypeError(
        f"{rule.name}.{attr} must be a tuple of names, got {type(value).__name__}.")
  for name in value:
    if not isinstance(name, str) or not name.isidentifier():
      raise TypeError(
          f"{rule.name}.{attr} must hold names (identifiers), got {name!r}.")
  return tuple(value)


def hyperparam_names(rule: Any) -> tuple[str, ...]:
  """The rule's hyperparameter names, in declared order."""
  return _names(rule, "hyperparams")


def hyperparam_defaults(rule: Any) -> dict[str, Any]:
  """Defaults declared with ``hyperparams = {name: default}`` (else none)."""
  value = rule.hyperparams
  return dict(value) if isinstance(value, Mapping) else {}


def check_declaration(rule: Any) -> None:
  """Checks a rule's class attributes; raises TypeError / ValueError."""
  stats = {attr: _names(rule, attr) for attr in _DECLARED}
  hyper = hyperparam_names(rule)
  every = [n for names in stats.values() for n in names]
  for name in every:
    if every.count(name) > 1:
      raise TypeError(f"{rule.name}: the statistic name {name!r} is declared twice "
                      f"({', '.join(f'{a}={v}' for a, v in stats.items())}).")
    if name in _RESERVED_STATS:
      raise TypeError(f"{rule.name}: {name!r} is a field of every rule state "
                      f"({', '.join(_RESERVED_STATS)}); name the statistic otherwise.")
  for name in hyper:
    if hyper.count(name) > 1:
      raise TypeError(f"{rule.name}.hyperparams names {name!r} twice.")
    if name in ENGINE_ARGS:
      raise TypeError(
          f"{rule.name}.hyperparams may not name {name!r}: the engine owns "
          f"{', '.join(ENGINE_ARGS)} and would overwrite it. Read the engine's "
          "value as hp['learning_rate'] (or min_lr/max_lr), or rename yours.")
  if rule.reduce not in REDUCTIONS:
    raise ValueError(
        f"{rule.name}.reduce must be one of {REDUCTIONS}, got {rule.reduce!r}.")
  weights = _names(rule, "weights")
  for name in weights:
    if name not in WEIGHT_STATS:
      raise ValueError(
          f"{rule.name}.weights names {name!r}, which the engine does not compute; "
          f"choose among {WEIGHT_STATS}.")
    if weights.count(name) > 1:
      raise TypeError(f"{rule.name}.weights names {name!r} twice.")
  clash = [n for n in every if n.startswith(WEIGHT_PREFIX)]
  if clash:
    raise TypeError(
        f"{rule.name}: the statistic {clash[0]!r} takes the prefix {WEIGHT_PREFIX!r}, "
        "which is kept for the weight statistics the engine passes in; rename it.")
  if stats["leaf_stats"] and not stats["unit_stats"]:
    raise TypeError(f"{rule.name}: leaf_stats need at least one unit statistic.")
  try:
    hash(rule)
  except TypeError as e:
    raise TypeError(
        f"{rule.name} must be hashable: declare it @dataclasses.dataclass(frozen=True)."
    ) from e


def check_hyperparams(rule: Any, hyperparams: Mapping[str, Any]) -> None:
  """The values for the rule's hyperparameters: exactly its names, each a real
  scalar (concrete or traced), not NaN; then the rule's own check."""
  given, wanted = set(hyperparams), set(hyperparam_names(rule))
  if given != wanted:
    raise ValueError(
        f"{rule.name} takes the hyperparameters {sorted(wanted)}; got "
        f"{sorted(given)} (missing {sorted(wanted - given)}, unknown "
        f"{sorted(given - wanted)}).")
  values = {}
  for name, value in hyperparams.items():
    label = f"{rule.name} hyperparameter {name!r}"
    if isinstance(value, (list, tuple, dict)):
      raise TypeError(
          f"{label} must be a real scalar, got a {type(value).__name__} "
          f"{validation._describe(value)}: one value for the whole rule "
          "(per-unit values are statistics, not hyperparameters).")
    validation.check_precision(label, value)
    number = validation.concrete_number(label, value, what="a real scalar")
    if number is not None and math.isnan(float(number)):
      raise ValueError(f"{label} must be a number, got NaN.")
    values[name] = number
  rule.check_hyperparams(values)


def _describe_shape(x: Any) -> str:
  return str(tuple(jnp.shape(x)))


def check_stats(rule: Any, method: str, got: Any, names: tuple[str, ...],
                shape: tuple[int, ...], where: str, *, kind: str,
                real: bool = True) -> None:
  """``got`` (what ``rule.method`` returned for one leaf) is a dict with exactly
  ``names``, each an array of ``shape`` (real unless ``real`` is False)."""
  if not names:
    return
  who = f"{rule.name}.{method}()"
  if not isinstance(got, Mapping):
    raise TypeError(
        f"{who} must return a dict {{name: array}} of its {kind} {names}, got "
        f"{type(got).__name__} (leaf '{where}').")
  missing = [n for n in names if n not in got]
  unknown = [n for n in got if n not in names]
  if missing or unknown:
    hint = " (misspelt?)" if missing and unknown else ""
    raise ValueError(
        f"{who} must return exactly its {kind} {names}; it returned "
        f"{tuple(got)}: missing {tuple(missing)}, unknown {tuple(unknown)}{hint} "
        f"(leaf '{where}').")
  for name in names:
    value = got[name]
    if not hasattr(value, "shape") and not isinstance(value, (int, float)):
      raise TypeError(f"{who} returned {type(value).__name__} for the statistic "
                      f"{name!r} (leaf '{where}'); it must be an array.")
    if tuple(jnp.shape(value)) != tuple(shape):
      raise ValueError(
          f"{who} returned the statistic {name!r} with shape "
          f"{_describe_shape(value)}, expected {tuple(shape)} (the {kind} of leaf "
          f"'{where}' keep the shape they were initialised with).")
    if real and jnp.iscomplexobj(value):
      raise TypeError(
          f"{who} returned a complex array for the statistic {name!r} (leaf "
          f"'{where}'); {kind} are real: take jnp.abs or jnp.real first.")


def check_observed(rule: Any, got: Any, shape: tuple[int, ...], where: str) -> tuple:
  """What ``observe`` returned: a tuple of arrays shaped like the leaf."""
  who = f"{rule.name}.observe()"
  if isinstance(got, jax.Array) or hasattr(got, "shape"):
    raise TypeError(
        f"{who} must return a tuple of arrays (one per observed quantity), got "
        f"an array of shape {_describe_shape(got)} (leaf '{where}'): write "
        "`return (x,)`.")
  if not isinstance(got, (tuple, list)):
    raise TypeError(f"{who} must return a tuple of arrays, got "
                    f"{type(got).__name__} (leaf '{where}').")
  for i, q in enumerate(got):
    if tuple(jnp.shape(q)) != tuple(shape):
      raise ValueError(
          f"{who} returned quantity {i} with shape {_describe_shape(q)} for leaf "
          f"'{where}' of shape {tuple(shape)}: each observed quantity is per "
          "element (the engine reduces it over each unit).")
  return tuple(got)


def in_dtype(got: Any, names: tuple[str, ...], dtype: Any) -> dict[str, jax.Array]:
  """The statistics ``names`` of ``got`` (checked by `check_stats`) in
  the statistics' ``dtype``.

  ``init`` may build a statistic from a Python number or an integer or bool
  array (``jnp.full(shape, 1)``); kept as such, the state would stay integer
  and every later update, cast back to the state's dtype, would truncate (an
  EMA of 0.9 * 1 stays 0). A complex element statistic (of a real leaf) stays
  complex, in the complex dtype of ``dtype``'s precision.
  """
  out = {}
  for name in names:
    value = jnp.asarray(got[name])
    target = jnp.dtype(dtype)
    if jnp.iscomplexobj(value) and not jnp.issubdtype(target, jnp.complexfloating):
      target = jnp.promote_types(target, jnp.complex64)
    out[name] = value.astype(target)
  return out


def check_rate(rule: Any, rate: Any, unit_shape: Optional[tuple[int, ...]],
               where: str) -> jax.Array:
  """``rate`` is a real array or number that broadcasts to the units' shape
  without growing it (``unit_shape`` None: any shape); returns it as an array."""
  who = f"{rule.name}.rate()"
  if rate is None:
    raise TypeError(
        f"{who} returned None for leaf '{where}' (a missing `return`?); it must "
        "return the rate, an array of one value per unit or a scalar.")
  if isinstance(rate, (bool, np.bool_)) or not (
      isinstance(rate, (jax.Array, np.ndarray, np.generic, int, float, complex))):
    raise TypeError(
        f"{who} returned {validation._describe(rate)} for leaf '{where}'; it must "
        "return the rate, an array of one value per unit or a scalar.")
  if jnp.iscomplexobj(rate):
    raise TypeError(f"{who} returned a complex rate for leaf '{where}'; rates are real.")
  dtype = jnp.result_type(rate)
  if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
    raise TypeError(
        f"{who} returned a rate of dtype {dtype} for leaf '{where}'; rates are real "
        "numbers (a float array).")
  shape = tuple(jnp.shape(rate))
  if unit_shape is None:
    return jnp.asarray(rate)
  try:
    fits = jnp.broadcast_shapes(shape, tuple(unit_shape)) == tuple(unit_shape)
  except ValueError:
    fits = False
  if not fits:
    raise ValueError(
        f"{who} returned shape {shape} for leaf '{where}', whose units have shape "
        f"{tuple(unit_shape)}: a rate is one value per unit (that shape, or one "
        "that broadcasts to it, such as a scalar).")
  return jnp.asarray(rate)
