"""Warnings that name the user's line, and one warning per optimizer.

A guess that changes the math is never silent: the optimizers built on
`model_layout` warn once (per optimizer, at ``init``)
when the layout guessed a leaf by its shape or kept a leaf out of its
method. `OnceWarner` keeps the leaves already named, and
`user_stacklevel` points the warning at the first frame outside this
package, optax, jax and flax (the user's ``tx.init(params)`` or
``nnx.Optimizer(...)`` line).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _library_dirs() -> tuple[str, ...]:
  dirs = [_PACKAGE_DIR]
  for name in ("optax", "jax", "flax"):
    file = getattr(sys.modules.get(name), "__file__", None)
    if file:
      dirs.append(os.path.dirname(os.path.abspath(file)))
  return tuple(d + os.sep for d in dirs)


def user_stacklevel() -> int:
  """The ``stacklevel`` at which ``warnings.warn``, called by our caller, names
  the first frame outside this package, optax, jax and flax."""
  skip = _library_dirs()
  frame, level = sys._getframe(1), 1  # pylint: disable=protected-access
  while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(skip):
    frame, level = frame.f_back, level + 1
  return level


class OnceWarner:
  """Warns about each path at most once (one warner per optimizer)."""

  def __init__(self):
    self._named: set[str] = set()

  def new(self, paths: Iterable[str]) -> list[str]:
    """The paths not named before, now marked as named."""
    fresh = [p for p in paths if p not in self._named]
    self._named.update(fresh)
    return fresh

  def warn(self, paths: Iterable[str], message: str) -> bool:
    """Warns ``message`` if any of ``paths`` is new; returns whether it did."""
    if not self.new(paths):
      return False
    warnings.warn(message, UserWarning, stacklevel=user_stacklevel())
    return True


GUESS_FIX = ("pass the model's axis names, axis_names=nn.get_partition_spec(variables)"
             "['params'] (linen) or nnx.get_partition_spec(nnx.state(model, nnx.Param)) (NNX), "
             "to read them from the model instead (nlr.model_layout(params).table() shows "
             "every leaf)")


def guess_message(who: str, roles: Iterable) -> str:
  """A warning naming the leaves whose role a shape guess decided."""
  roles = list(roles)
  what = []
  if any(r.batch_axes for r in roles):
    what.append("stack or expert axes (one matrix and one set of units per layer)")
  if any(r.kind == "head" for r in roles):
    what.append("the output head")
  listing = ", ".join(f"'{r.path}' {r.shape}" for r in roles)
  return (f"{who} found {' and '.join(what)} by shape alone for {len(roles)} leaves: "
          f"{listing}. If that is right, nothing to do; else {GUESS_FIX}.")


def changed_by_guess(role) -> bool:
  """Whether a shape guess changed a leaf's math beyond the plain reading: a stack
  or expert axis found by shape, or the output head found by shape."""
  return role.source == "shape" and (bool(role.batch_axes) or role.kind == "head")
