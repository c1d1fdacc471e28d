"""Building aliases from ``scale_by_*`` transforms without re-declaring arguments.

optax builds variants with ``functools.partial`` and a docstring of their own
(``optax.nadam = functools.partial(optax.adam, nesterov=True)``). The aliases
here do the same for the package's one sign convention: an alias is its
``scale_by_*`` transform chained with ``optax.scale(-1.0)``, with the same
signature, so that ``optax.inject_hyperparams`` binds every hyperparameter.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Optional

import optax


def _named(fn: Callable, name: str, doc: str, module: str, sig: inspect.Signature):
  fn.__name__ = fn.__qualname__ = name
  fn.__doc__ = doc
  fn.__module__ = module
  fn.__signature__ = sig
  return fn


def negated(
    scale_by: Callable[..., optax.GradientTransformation], name: str, doc: str
) -> Callable[..., optax.GradientTransformationExtraArgs]:
  """``name(...) = optax.chain(scale_by(...), optax.scale(-1.0))``, same signature."""
  sig = inspect.signature(scale_by)

  def alias(*args, **kwargs):
    return optax.chain(scale_by(*args, **kwargs), optax.scale(-1.0))

  return _named(alias, name, doc, scale_by.__module__, sig)


def with_direction(
    factory: Callable[..., optax.GradientTransformation],
    direction: Callable[..., optax.GradientTransformation],
    direction_args: Sequence[str],
    name: str,
    doc: str,
    direction_defaults: Optional[dict[str, Any]] = None,
    check: Optional[Callable[[dict[str, Any]], None]] = None,
    direction_kwonly: Sequence[str] = (),
) -> Callable[..., optax.GradientTransformationExtraArgs]:
  """``factory`` with ``direction=direction(**direction_args)`` built inside.

  The new function takes ``factory``'s arguments except ``direction``, plus
  ``direction_args`` (placed after the factory's required arguments, with
  ``direction``'s defaults), so that ``optax.inject_hyperparams`` can bind and
  change them too (``adam_hd``'s ``b1``, ``b2``, ``eps``). ``check`` validates
  the direction's arguments at construction. ``direction_kwonly`` are more
  arguments of ``direction``, keyword-only (appended last, so that adding one
  never shifts a positional argument; e.g. ``mu_dtype``).
  """
  base = inspect.signature(factory)
  dir_sig = inspect.signature(direction)
  defaults = dict(direction_defaults or {})
  required, optional, keyword = [], [], []
  for p in base.parameters.values():
    if p.name == "direction":
      continue
    if p.kind is not p.POSITIONAL_OR_KEYWORD:
      keyword.append(p)
    else:
      (required if p.default is p.empty else optional).append(p)
  extra = []
  for arg in direction_args:
    default = defaults.get(arg, dir_sig.parameters[arg].default)
    extra.append(inspect.Parameter(arg, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                   default=default))
  for arg in direction_kwonly:
    keyword.append(inspect.Parameter(arg, inspect.Parameter.KEYWORD_ONLY,
                                     default=defaults.get(arg, dir_sig.parameters[arg].default)))
  sig = base.replace(parameters=required + extra + optional + keyword)

  def built(*args, **kwargs):
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    values = dict(bound.arguments)
    dir_kwargs = {a: values.pop(a) for a in (*direction_args, *direction_kwonly)}
    if check is not None:
      check(dir_kwargs)
    return factory(**values, direction=direction(**dir_kwargs))

  return _named(built, name, doc, factory.__module__, sig)
