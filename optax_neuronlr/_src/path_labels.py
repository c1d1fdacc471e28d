"""Label functions for ``optax.multi_transform`` from selectors on paths.

The one job of this module is `path_labels`: ``params -> `` a tree of
labels, each leaf's label given by the package's path rule
(`optax_neuronlr._src.paths.Selection`). Reference ``001`` Example 2
(one optimizer per part of a model).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, Union

from optax_neuronlr._src import paths as paths_lib

LabelRules = Union[Mapping[str, Any], Sequence[tuple[str, Any]]]

# What a lookup returns for a leaf that no rule selects.
_UNMATCHED = object()


def path_labels(
    rules: LabelRules, default: Optional[Any] = None
) -> Callable[[Any], Any]:
  """Labels for ``optax.multi_transform`` from regular expressions on paths.

  Each leaf's path is its keys joined by ``"/"`` (``"backbone/Dense_0/kernel"``;
  list indices are numbers, and Flax NNX's ``.value`` is dropped). Leaves are
  selected by the package's one path rule (`optax_neuronlr._src.paths`): a
  rule selects a leaf when its regular expression matches the *whole* path or
  one of its ``"/"``-prefixes (``"backbone"`` selects every leaf below
  ``backbone``). The rule matching the longest prefix gives the label; two
  rules that match the same longest prefix are an error.

  Args:
    rules: ``{regex: label}`` or a sequence of ``(regex, label)``; a regex is a
      str or a compiled ``re.Pattern``.
    default: label of leaves that match no rule; None makes them an error.

  Returns:
    ``params -> labels``, a tree shaped like ``params``; works on dicts,
    Flax linen params and NNX ``nnx.State``.

  Raises:
    ValueError: at construction for an invalid regular expression; when called,
      for a leaf that two rules select through the same prefix (naming both
      and the leaf), and, listing every path that matches no rule, if there is
      no default.

  Example:
    >>> import optax, optax_neuronlr as nlr
    >>> tx = optax.multi_transform(
    ...     {"slow": optax.adam(1e-4), "fast": optax.adam(1e-3)},
    ...     nlr.path_labels({r"backbone/.*": "slow", r"head/.*": "fast"}))
  """
  items = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
  selection = paths_lib.Selection(items, "path_labels")

  def labels(params: Any) -> Any:
    unmatched: list[str] = []

    def label_of(path: str, leaf: Any) -> Any:
      del leaf
      label = selection.lookup(path, default=_UNMATCHED)
      if label is _UNMATCHED:
        unmatched.append(path)
        return default
      return label

    out = paths_lib.map_with_paths(label_of, params)
    if unmatched and default is None:
      raise ValueError(
          f"path_labels: no rule matches the paths {unmatched}; add a rule or a "
          "default label."
      )
    return out

  return labels
