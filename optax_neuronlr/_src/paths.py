"""Selecting parameter leaves by path: the one rule used across the package.

Every leaf of a parameter tree has a *path*, the keys from the root joined by
``/``: ``"encoder/layers/0/kernel"``. A Flax NNX variable's trailing ``.value``
is dropped, so a parameter has the same path in an ``nnx.State`` and in a tree
of arrays.

A *selector* is a regular expression. It selects a leaf when it matches
(:func:`re.fullmatch`) the leaf's whole path or one of its ``/``-prefixes:
``"encoder"`` selects every leaf below ``encoder``, ``".*/kernel"`` every
kernel, ``"encoder/layers/0/kernel"`` one leaf. When several selectors of one
mapping select a leaf, the one matching the longest prefix wins; two that match
the same prefix are an error. A pytree given for a parameter tree (for example
``{"encoder": 0, "decoder": {"out": -1}}``) is read as the selectors of its
flattened paths (``"encoder"``, ``"decoder/out"``), so a value given for a
sub-tree covers all its leaves.

This rule is shared by ``neuron_axes`` and ``granularity`` pytrees,
:func:`optax_neuronlr.scale_by_leaf`, :func:`optax_neuronlr.param_groups`,
:class:`optax_neuronlr.RateRecorder`, :mod:`optax_neuronlr.plot` and
:func:`optax_neuronlr.state_shardings`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, TypeVar

import jax

V = TypeVar("V")


def path_str(path: Sequence[Any]) -> str:
  """``'a/b/0'`` for a JAX key path (a trailing NNX ``.value`` dropped)."""
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
    path = path[:-1]
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def prefixes(path: str) -> list[str]:
  """``"a/b/c"`` -> ``["a/b/c", "a/b", "a", ""]``, longest first."""
  parts = path.split("/") if path else []
  return ["/".join(parts[:i]) for i in range(len(parts), -1, -1)]


def compile_selector(selector: Any, where: str) -> re.Pattern:
  """A selector as a compiled regular expression, or a clear TypeError."""
  if isinstance(selector, re.Pattern):
    return selector
  if not isinstance(selector, str):
    raise TypeError(
        f"{where}: a path pattern must be a regular expression (a str or a "
        f"compiled re.Pattern), got {selector!r} ({type(selector).__name__})."
    )
  try:
    return re.compile(selector)
  except re.error as e:
    raise ValueError(f"{where}: invalid regular expression {selector!r}: {e}.") from e


def selects(selector: re.Pattern, path: str) -> Optional[int]:
  """Length (in keys) of the longest prefix of ``path`` that ``selector`` matches."""
  for prefix in prefixes(path):
    if selector.fullmatch(prefix):
      return len(prefix.split("/")) if prefix else 0
  return None


class Selection:
  """Values keyed by selectors; ``lookup(path)`` applies the package's rule."""

  def __init__(self, table: Mapping[Any, V], where: str):
    self.where = where
    self.entries = [
        (compile_selector(k, where), k, v) for k, v in table.items()
    ]

  def lookup(self, path: str, default: Any = KeyError) -> Any:
    best, best_len, tied = None, -1, []
    for pattern, key, value in self.entries:
      n = selects(pattern, path)
      if n is None:
        continue
      if n > best_len:
        best, best_len, tied = (key, value), n, []
      elif n == best_len:
        tied.append(key)
    if best is None:
      if default is KeyError:
        known = [k if isinstance(k, str) else k.pattern for _, k, _ in self.entries]
        raise ValueError(
            f"{self.where} selects nothing for leaf '{path}' (selectors: "
            f"{known[:8]}{' ...' if len(known) > 8 else ''})."
        )
      return default
    if tied:
      raise ValueError(
          f"{self.where}: leaf '{path}' is selected equally by {best[0]!r} and "
          f"{tied[0]!r}; make one of them more specific."
      )
    return best[1]

  def unused(self, paths: Sequence[str]) -> list[Any]:
    """Selectors that select none of ``paths``."""
    return [
        key for pattern, key, _ in self.entries
        if not any(selects(pattern, p) is not None for p in paths)
    ]


def from_pytree(
    tree: Any, is_value: Callable[[Any], bool], where: str
) -> Selection:
  """The selectors of a pytree of values: each value keyed by its path.

  Dict keys are read as selectors (so ``{"dense.*": 0}`` works); deeper
  nesting joins keys with ``/``.
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_value)
  table = {}
  for p, v in flat:
    table[path_str(p)] = v
  return Selection(table, where)


def leaf_paths(tree: Any) -> list[str]:
  """Paths of the leaves of ``tree``, in flattening order."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [path_str(p) for p, _ in flat]
