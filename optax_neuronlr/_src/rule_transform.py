"""A rule's own ``scale_by_*`` transform, with real keyword arguments.

`scale_by_rule` takes a rule's hyperparameters as a
dict, which ``optax.inject_hyperparams`` cannot see: it binds a factory's
*arguments*. `rule_transform` builds, from a rule class, a factory whose
signature lists the rule's hyperparameters (with the defaults the rule
declares), its static options (the dataclass fields) and the engine's
arguments, exactly like the package's own ``scale_by_*`` transforms. So a
user's rule gets ``inject_hyperparams``, ``optax.tree_utils.tree_set`` and
construction-time validation the same way the built-in rules do.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import Any, Optional, Union

import jax
import optax

from optax_neuronlr._src import aliases
from optax_neuronlr._src import engine
from optax_neuronlr._src import rule_checks

_P = inspect.Parameter


def _rule_class(rule: Union[type, engine.Rule]) -> type:
  cls = rule if isinstance(rule, type) else type(rule)
  if not issubclass(cls, engine.Rule):
    raise TypeError(f"rule must be an nlr.Rule subclass (or instance), got {cls!r}.")
  return cls


def _option_defaults(rule: Union[type, engine.Rule]) -> dict[str, Any]:
  """The rule's static options (dataclass fields) with their defaults; an
  instance's own values are the defaults when an instance is given."""
  cls = _rule_class(rule)
  if not dataclasses.is_dataclass(cls):
    return {}
  out = {}
  for f in dataclasses.fields(cls):
    if not isinstance(rule, type):
      out[f.name] = getattr(rule, f.name)
    elif f.default is not dataclasses.MISSING:
      out[f.name] = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
      out[f.name] = f.default_factory()  # type: ignore[misc]
    else:
      out[f.name] = _P.empty
  return out


def _signature(cls: type, options: dict[str, Any]) -> inspect.Signature:
  names = rule_checks.hyperparam_names(cls)
  defaults = rule_checks.hyperparam_defaults(cls)
  clash = sorted(set(options) & (set(names) | set(rule_checks.ENGINE_ARGS)))
  if clash:
    raise TypeError(
        f"{cls.__name__}: the static options {clash} take the name of a "
        "hyperparameter or of an engine argument; rename them.")
  required = [_P(n, _P.POSITIONAL_OR_KEYWORD) for n in names if n not in defaults]
  optional = [_P(n, _P.POSITIONAL_OR_KEYWORD, default=defaults[n])
              for n in names if n in defaults]
  params = [
      _P("learning_rate", _P.POSITIONAL_OR_KEYWORD, annotation="optax.ScalarOrSchedule"),
      *required, *optional,
      _P("min_lr", _P.POSITIONAL_OR_KEYWORD, default=0.0),
      _P("max_lr", _P.POSITIONAL_OR_KEYWORD, default=math.inf),
  ]
  params += [_P(n, _P.KEYWORD_ONLY, default=d) for n, d in options.items()]
  params += [
      _P("reduce", _P.KEYWORD_ONLY, default=cls.reduce),
      _P("granularity", _P.KEYWORD_ONLY, default="element"),
      _P("neuron_axes", _P.KEYWORD_ONLY, default=None),
      _P("state_dtype", _P.KEYWORD_ONLY, default=None),
      _P("direction", _P.KEYWORD_ONLY, default=None),
      _P("leaf_info", _P.KEYWORD_ONLY, default=None),
      _P("axis_names", _P.KEYWORD_ONLY, default=None),
  ]
  return inspect.Signature(
      params, return_annotation="optax.GradientTransformationExtraArgs")


def _check_option(cls: type, name: str, value: Any) -> None:
  """Static options select code at trace time: never arrays or tracers."""
  if isinstance(value, jax.Array) or hasattr(value, "aval"):
    raise TypeError(
        f"{cls.__name__} option {name!r} is static (a Python value), got an array "
        f"{value!r}. Under optax.inject_hyperparams list it in static_args, e.g. "
        f"optax.inject_hyperparams(scale_by_..., static_args=({name!r},)).")


def _doc(cls: type, name: str, alias: bool) -> str:
  names = rule_checks.hyperparam_names(cls)
  # Markdown, as every docstring of the package (help() shows it as written).
  what = "chained with `optax.scale(-1.0)`, an optimizer" if alias else "returning `+rate * d`"
  return (
      f"`{cls.__name__}` run by `optax_neuronlr.scale_by_rule`, {what}.\n\n"
      f"Built by `optax_neuronlr.rule_transform`. Arguments: `learning_rate` "
      f"(a number or schedule), the rule's hyperparameters {names} (numbers; each can "
      "be changed at run time through `optax.inject_hyperparams`), `min_lr` and "
      "`max_lr` (the clamp), the rule's static options (its dataclass fields), and "
      "the engine's `reduce`, `granularity`, `neuron_axes`, `state_dtype`, "
      "`direction`, `leaf_info` and `axis_names` (see `optax_neuronlr.scale_by_rule`).\n\n"
      f"{inspect.getdoc(cls) or ''}")


def _snake(name: str) -> str:
  out = []
  for i, c in enumerate(name):
    if c.isupper() and i and (not name[i - 1].isupper()
                              or (i + 1 < len(name) and name[i + 1].islower())):
      out.append("_")
    out.append(c.lower())
  return "".join(out)


def rule_transform(
    rule: Union[type, engine.Rule],
    *,
    name: Optional[str] = None,
    alias: bool = False,
) -> Callable[..., optax.GradientTransformationExtraArgs]:
  r"""A ``scale_by_*`` factory for a rule, with the rule's hyperparameters as arguments.

  For ``class InverseRMS(nlr.Rule)`` with ``hyperparams = {"beta": 0.9}`` and a
  static option ``centered: bool = False`` (a dataclass field),
  ``rule_transform(InverseRMS)`` is

  ```text
  scale_by_inverse_rms(learning_rate, beta=0.9, min_lr=0.0, max_lr=inf, *,
                       centered=False, reduce="mean", granularity="element",
                       neuron_axes=None, state_dtype=None, direction=None,
                       leaf_info=None, axis_names=None)
  ```

  which builds ``nlr.scale_by_rule(InverseRMS(centered=...), learning_rate,
  {"beta": beta}, min_lr=..., ...)``. Hyperparameters declared without a
  default (``hyperparams = ("beta",)``) are required arguments, placed first.
  Because every hyperparameter is an argument,
  ``optax.inject_hyperparams(scale_by_inverse_rms)(1e-3, beta=0.9)`` makes
  ``beta`` (as well as ``learning_rate``, ``min_lr`` and ``max_lr``) a value
  of the state that ``optax.tree_utils.tree_set`` changes between steps, and
  every value is validated when the transform is built, as for the package's
  own transforms.

  Args:
    rule: a `Rule` subclass, or an instance whose
      options become the defaults.
    name: the factory's ``__name__``; default ``scale_by_<rule in
      snake_case>`` (``<rule>`` with ``alias=True``).
    alias: return the optimizer, the transform chained with
      ``optax.scale(-1.0)`` (the package's sign convention), instead of the
      ``scale_by_*`` transform.

  Returns:
    The factory, with an ``inspect.signature`` that lists its arguments.

  Raises:
    TypeError: for a rule whose declaration the engine rejects (see the docs
      page "Writing a rule"), or static options named like an argument.
  """
  cls = _rule_class(rule)
  options = _option_defaults(rule)
  default_rule = cls if isinstance(rule, type) else rule
  probe = default_rule if not isinstance(default_rule, type) else None
  if probe is None and all(v is not _P.empty for v in options.values()):
    probe = cls(**options)
  if probe is not None:
    rule_checks.check_declaration(probe)
  sig = _signature(cls, options)
  hyper = rule_checks.hyperparam_names(cls)

  def scale_by(*args, **kwargs):
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    values = dict(bound.arguments)
    for key in options:
      _check_option(cls, key, values[key])
    built = cls(**{key: values.pop(key) for key in options})
    hp = {key: values.pop(key) for key in hyper}
    lr = values.pop("learning_rate")
    return engine.scale_by_rule(built, lr, hp, **values)

  base = _snake(cls.__name__)
  fn_name = name or ("scale_by_" + base)
  if alias:
    return aliases.negated(
        aliases._named(scale_by, "scale_by_" + base, _doc(cls, base, False),
                       cls.__module__, sig),
        name or base, _doc(cls, base, True))
  return aliases._named(scale_by, fn_name, _doc(cls, base, False), cls.__module__, sig)
