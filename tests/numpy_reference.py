"""Independent NumPy implementations of reference 000's rules, for the tests.

Written from the documented math, one leaf at a time, without the library's
unit machinery: a unit's elements are gathered with ``moveaxis``/``reshape``.
Everything is computed in float64.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _units(x: np.ndarray, granularity: str, axis: int) -> tuple[np.ndarray, tuple]:
  """``(n_units, unit_size)`` view of ``x`` and the shape of the unit array."""
  if granularity == "element":
    return x.reshape(-1, 1), x.shape
  if granularity == "tensor" or x.ndim == 0:
    return x.reshape(1, -1), ()
  moved = np.moveaxis(x, axis, 0)
  return moved.reshape(moved.shape[0], -1), (x.shape[axis],)


def unit_mean(x: np.ndarray, granularity: str, axis: int = -1) -> np.ndarray:
  view, shape = _units(x, granularity, axis)
  return view.mean(axis=1).reshape(shape)


def expand(rate: np.ndarray, like: np.ndarray, granularity: str, axis: int = -1):
  """Per-unit values back to the shape of ``like``."""
  if granularity == "element":
    return rate.reshape(like.shape)
  if granularity == "tensor" or like.ndim == 0:
    return np.full(like.shape, float(rate))
  shape = [1] * like.ndim
  shape[axis] = like.shape[axis]
  return np.broadcast_to(rate.reshape(shape), like.shape)


class Leaf:
  """One leaf's rule state; ``step(g, eta)`` returns the per-element rate."""

  def __init__(self, rule: str, shape, granularity: str, axis: int, hp: dict,
               eta0: float):
    self.rule, self.granularity, self.axis, self.hp = rule, granularity, axis, hp
    unit_shape = _units(np.zeros(shape), granularity, axis)[1]
    self.lr = np.full(unit_shape, eta0)
    self.v = np.zeros(unit_shape)
    self.c = np.zeros(unit_shape)
    self.prev_eta = eta0
    self.t = 0
    self.unit_rate = None

  def step(self, g: np.ndarray, eta: float) -> np.ndarray:
    hp = self.hp
    self.t += 1
    m = unit_mean(np.abs(g), self.granularity, self.axis)
    lo, hi = hp["min_lr"], hp["max_lr"]
    if self.rule == "magnitude":
      self.lr = np.clip(self.lr + (eta - self.prev_eta) + hp["alpha"] * m, lo, hi)
      rate = self.lr
    else:
      b = hp["beta"]
      self.v = b * self.v + (1 - b) * m
      v = self.v / (1 - b**self.t) if hp.get("bias_correction") else self.v
      rate = eta / (v + hp["eps"])
      if self.rule == "sign":
        bs = hp["sign_beta"]
        s = unit_mean(np.sign(g), self.granularity, self.axis)
        self.c = bs * self.c + (1 - bs) * s
        c = self.c / (1 - bs**self.t) if hp.get("bias_correction") else self.c
        rate = rate * (1 + np.abs(c))
      rate = np.clip(rate, lo, hi)
    self.prev_eta = eta
    self.unit_rate = rate
    return expand(rate, g, self.granularity, self.axis)


def run(
    rule: str,
    params: dict[str, np.ndarray],
    grad_fn: Callable[[dict, int], dict],
    steps: int,
    granularity: str,
    hp: dict,
    eta: Callable[[int], float],
    axis: int = -1,
) -> tuple[dict, dict]:
  """Runs ``steps`` SGD steps ``p -= rate * g``; returns params and unit rates.

  ``params`` is a flat dict of leaves; ``eta(k)`` is the base rate at update k
  (0-based), ``grad_fn(params, k)`` the gradient at update k.
  """
  params = {k: np.asarray(v, np.float64) for k, v in params.items()}
  leaves = {
      k: Leaf(rule, v.shape, granularity, axis, hp, eta(0))
      for k, v in params.items()
  }
  for k in range(steps):
    grads = grad_fn(params, k)
    for name, g in grads.items():
      params[name] = params[name] - leaves[name].step(g, eta(k)) * g
  return params, {k: leaf.unit_rate for k, leaf in leaves.items()}
