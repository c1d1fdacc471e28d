"""Selecting parameter leaves by path: the one rule used across the package.

Every leaf of a parameter tree has a *path*, the keys from the root joined by
``/``: ``"encoder/layers/0/kernel"``. A Flax NNX variable's trailing ``.value``
is dropped, so a parameter has the same path in an ``nnx.State`` and in a tree
of arrays.

A *selector* is a regular expression. It selects a leaf when it matches
(`re.fullmatch`) the leaf's whole path or one of its ``/``-prefixes:
``"encoder"`` selects every leaf below ``encoder``, ``".*/kernel"`` every
kernel, ``"encoder/layers/0/kernel"`` one leaf. When several selectors of one
mapping select a leaf, the one matching the longest prefix wins; two that match
the same prefix are an error. A pytree given for a parameter tree (for example
``{"encoder": 0, "decoder": {"out": -1}}``) is read as the selectors of its
flattened paths (``"encoder"``, ``"decoder/out"``), so a value given for a
sub-tree covers all its leaves.

This rule is shared by ``neuron_axes`` and ``granularity`` pytrees,
`scale_by_leaf`, `param_groups`,
`path_labels`, Adam-mini's ``overrides``, the ``head``
of `scale_sgd` and `model_layout`,
`RateRecorder`, `plot` and
`state_shardings`.

This module's one job is that rule; every selector of the package goes
through it: `Selector` (one selector, or several acting as one),
`Selection` (the one lookup among several, ties an error) and
`PathTable` (exact paths first, for pytrees mirroring the params).
`path_str` is the one way to spell a leaf's path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Optional, TypeVar, Union

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


def depth(path: str) -> int:
  """Number of keys in a ``"/"``-joined path (0 for the root, ``""``)."""
  return len(path.split("/")) if path else 0


def selects(selector: re.Pattern, path: str) -> Optional[int]:
  """Length (in keys) of the longest prefix of ``path`` that ``selector`` matches."""
  for prefix in prefixes(path):
    if selector.fullmatch(prefix):
      return depth(prefix)
  return None


Predicate = Callable[[str, Any], bool]


class Selector:
  """One selector, compiled: what it selects of a path, by the package's rule.

  ``Selector(regex, where)`` is one selector (a str or a compiled
  ``re.Pattern``). `any_of` makes several act as one (a param group's
  list of patterns: the longest prefix any of them matches counts), and
  `predicate` wraps a ``(path, leaf) -> bool`` that selects the whole
  path or nothing.

  Attributes:
    key: what the selector was given as (for messages).
  """

  def __init__(self, selector: Any, where: str):
    self.key = selector
    self._patterns = (compile_selector(selector, where),)
    self._predicate: Optional[Predicate] = None

  @classmethod
  def any_of(cls, selectors: Iterable[Any], where: str, key: Any = None) -> "Selector":
    """Several selectors acting as one: the longest prefix any of them matches."""
    self = cls.__new__(cls)
    self.key = key
    self._patterns = tuple(compile_selector(s, where) for s in selectors)
    self._predicate = None
    return self

  @classmethod
  def predicate(cls, fn: Predicate, key: Any = None) -> "Selector":
    """``fn(path, leaf) -> bool`` as a selector of the whole path."""
    self = cls.__new__(cls)
    self.key = fn if key is None else key
    self._patterns = ()
    self._predicate = fn
    return self

  def depth(self, path: str, leaf: Any = None) -> Optional[int]:
    """Keys in the longest prefix of ``path`` selected (None: not selected)."""
    if self._predicate is not None:
      return depth(path) if self._predicate(path, leaf) else None
    found = (selects(p, path) for p in self._patterns)
    return max((n for n in found if n is not None), default=None)

  def selects(self, path: str, leaf: Any = None) -> bool:
    """Whether the selector selects ``path`` (the path or a prefix of it)."""
    return self.depth(path, leaf) is not None

  def __repr__(self) -> str:
    return f"Selector({self.key!r})"


def _describe(key: Any) -> Any:
  """A selector's key for messages: a compiled pattern as its source."""
  if isinstance(key, Selector):
    key = key.key
  return key.pattern if isinstance(key, re.Pattern) else key


class Match(NamedTuple):
  """How the selectors of a `Selection` select one path.

  Attributes:
    depth: keys in the longest prefix selected; None if no selector selects
      the path.
    winners: indices of the entries that select it at ``depth``, in order
      (more than one: a tie).
    depths: every entry's depth (None: it does not select the path).
  """

  depth: Optional[int]
  winners: tuple[int, ...]
  depths: tuple[Optional[int], ...]


class Selection:
  """Values keyed by selectors; ``lookup(path)`` applies the package's rule.

  The one lookup of the package: the entry whose selector selects the longest
  prefix of a path gives its value; two entries selecting the same longest
  prefix are an error.

  Args:
    table: ``{selector: value}``, or a sequence of ``(selector, value)`` pairs
      (where a selector may appear twice); a selector is a regex (a str or a
      compiled ``re.Pattern``) or a `Selector`.
    where: what the selectors are, for messages (``"path_labels"``).
  """

  def __init__(self, table: Union[Mapping[Any, V], Sequence[tuple[Any, V]]], where: str):
    self.where = where
    items = list(table.items()) if isinstance(table, Mapping) else list(table)
    self.entries = [
        (k if isinstance(k, Selector) else Selector(k, where), k, v) for k, v in items
    ]

  def match(self, path: str, leaf: Any = None) -> Match:
    """Every entry's depth for ``path``, and the entries that select it longest."""
    depths = tuple(s.depth(path, leaf) for s, _, _ in self.entries)
    best = max((n for n in depths if n is not None), default=None)
    winners: tuple[int, ...] = () if best is None else tuple(i for i, n in enumerate(depths) if n == best)
    return Match(best, winners, depths)

  def lookup(self, path: str, default: Any = KeyError, leaf: Any = None) -> Any:
    """The value of the entry selecting the longest prefix of ``path``.

    Args:
      path: a leaf's ``"/"``-joined path.
      default: returned where no selector selects the path; without it, that is
        an error.
      leaf: the leaf, for selectors made with `Selector.predicate`.

    Raises:
      ValueError: where no selector selects the path (and no ``default``), or
        two select the same longest prefix, naming both and the path.
    """
    found = self.match(path, leaf)
    if not found.winners:
      if default is KeyError:
        known = [_describe(k) for _, k, _ in self.entries]
        raise ValueError(
            f"{self.where} selects nothing for leaf '{path}' (selectors: "
            f"{known[:8]}{' ...' if len(known) > 8 else ''})."
        )
      return default
    if len(found.winners) > 1:
      first, second = (self.entries[i][1] for i in found.winners[:2])
      raise ValueError(
          f"{self.where}: leaf '{path}' is selected equally by {first!r} and "
          f"{second!r}; make one of them more specific."
      )
    return self.entries[next(iter(found.winners))][2]

  def unused(self, paths: Sequence[str]) -> list[Any]:
    """Selectors that select none of ``paths``."""
    return [
        key for selector, key, _ in self.entries
        if not any(selector.selects(p) for p in paths)
    ]


class PathTable:
  """Values keyed by leaf paths or by selectors (``scale_by_leaf``'s multipliers).

  A key equal to a leaf's path gives its value outright, so a pytree mirroring
  the params never has its keys read as regular expressions (a path such as
  ``"conv(1)/kernel"`` is not a valid one, and ``"a.b"`` would also select
  ``"a_b"``). Any other leaf is looked up by the rule (`Selection`),
  built the first time one is needed.
  """

  def __init__(self, table: Mapping[str, V], where: str):
    self.table = dict(table)
    self.where = where
    self._selection: Optional[Selection] = None

  def lookup(self, path: str, default: Any = KeyError) -> Any:
    """The value of ``path``: its own key, else `Selection.lookup`."""
    if path in self.table:
      return self.table[path]
    if self._selection is None:
      self._selection = Selection(self.table, self.where)
    return self._selection.lookup(path, default)


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


def map_with_paths(fn: Callable[[str, Any], Any], tree: Any) -> Any:
  """``fn(path, leaf)`` on every array leaf; None and MaskedNode keep their place."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: fn(path_str(path), leaf), tree
  )


def leaf_paths(tree: Any) -> list[str]:
  """Paths of the leaves of ``tree``, in flattening order."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [path_str(p) for p, _ in flat]
