"""PyTorch reference optimizers for the reference documents' update rules.

Each class restates, in this project's own code, the update rule that one
reference document gives as PyTorch code; none of the documents' code is copied.
Rules use the documents' own order of operations and constants, so that the
parity harness can compare our JAX transforms with them step by step.

Per element ``i`` of a parameter with gradient ``g``:

* `GradMagnitudeRate` (``000_9458a9ec8aeb2db5.txt``, Example 1):
  ``lr_i <- clip(lr_i + alpha*|g_i|)``, starting at ``lr``; ``p_i -= lr_i*g_i``.
* `GradHistoryRate` (``000``, Example 2):
  ``v_i <- beta*v_i + (1-beta)*|g_i|``; ``lr_i = clip(lr * 1/(v_i + 1e-8))``.
* `SignConsistencyRate` (``000``, Example 3): as Example 2, times
  ``(1 + |c_i|)`` with ``c_i <- sign_memory*c_i + (1-sign_memory)*sign(g_i)``.
* `UniformRateSGD` (``001_3fa4abcb782b6d4d.txt``, Example 1):
  ``p -= group_lr * g`` for every tensor: plain SGD.
* `FactorPowerSGD` (``001``, Example 2): ``p_k -= lr * factor**k * g_k``,
  ``k`` counting the tensors that have a gradient (the code: a layer's weight
  and bias count separately), or the param group (the text's "layer index").
* `DivideByClippedNorm` (``001``, Example 3, what its code computes):
  ``p -= lr * g / ||clip(g)||``, an ``Adam`` subclass that never runs Adam.
* `ClipThenAdam` (``001``, Example 3, what its text says): clip the
  gradients' global norm, then an Adam step.
* `HypergradientSGD` (``001``'s text, "learned learning rates", which
  it gives no code for): SGD-HD of Baydin et al. (ICLR 2018), one rate for all
  parameters, ``alpha <- alpha + beta * <g_t, g_{t-1}>``; ``p -= alpha * g_t``.
* `SeparateOptimizers` (``004_07f92684a478e55a.txt``, Example 1): one
  optimizer per variable group, stepped together.

``clip`` is the clamp to ``[min_lr, max_lr]`` of the document's code.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any, Optional

import torch

Closure = Optional[Callable[[], Any]]


def _loss_of(closure: Closure) -> Any:
  if closure is None:
    return None
  with torch.enable_grad():
    return closure()


def _with_grads(optimizer: torch.optim.Optimizer):
  """``(group, param)`` for every parameter that has a gradient, in order."""
  for group in optimizer.param_groups:
    for p in group["params"]:
      if p.grad is not None:
        yield group, p


class _ElementRateOptimizer(torch.optim.Optimizer):
  """``p <- p - rate * g`` with one rate per element, given by ``_rate``."""

  def _rate(self, state: dict, grad: torch.Tensor, group: dict) -> torch.Tensor:
    raise NotImplementedError

  @torch.no_grad()
  def step(self, closure: Closure = None) -> Any:
    loss = _loss_of(closure)
    for group, p in _with_grads(self):
      p.sub_(self._rate(self.state[p], p.grad, group) * p.grad)
    return loss


class GradMagnitudeRate(_ElementRateOptimizer):
  """000 Example 1: each element's rate accumulates ``alpha * |g|``, clamped.

  The document's text says a small gradient raises the rate and a large one
  lowers it; its code (and this class) adds ``alpha * |g|``, so rates only grow.
  """

  def __init__(self, params: Iterable, lr: float = 1e-3, alpha: float = 0.01,
               min_lr: float = 1e-6, max_lr: float = 1.0):
    super().__init__(params, dict(lr=lr, alpha=alpha, min_lr=min_lr, max_lr=max_lr))

  def _rate(self, state, grad, group):
    if "rate" not in state:
      state["rate"] = torch.full_like(grad, group["lr"])
    grown = state["rate"] + group["alpha"] * grad.abs()
    state["rate"] = grown.clamp(group["min_lr"], group["max_lr"])
    return state["rate"]


class GradHistoryRate(_ElementRateOptimizer):
  """000 Example 2: rate ``lr / (EMA of |g| + 1e-8)``, clamped; no bias correction.

  Subclasses multiply the rate by a per-element boost (`_boost`).
  """

  EPS = 1e-8  # the document's constant

  def __init__(self, params: Iterable, lr: float = 1e-3, beta: float = 0.9,
               min_lr: float = 1e-6, max_lr: float = 1.0, **extra: float):
    super().__init__(params, dict(lr=lr, beta=beta, min_lr=min_lr, max_lr=max_lr, **extra))

  def _boost(self, state: dict, grad: torch.Tensor, group: dict) -> Any:
    del state, grad, group
    return 1.0

  def _rate(self, state, grad, group):
    beta = group["beta"]
    ema = state.get("abs_ema", torch.zeros_like(grad))
    state["abs_ema"] = beta * ema + (1 - beta) * grad.abs()
    inverse = torch.reciprocal(state["abs_ema"] + self.EPS) * self._boost(state, grad, group)
    return (group["lr"] * inverse).clamp(group["min_lr"], group["max_lr"])


class SignConsistencyRate(GradHistoryRate):
  """000 Example 3: Example 2's rate times ``1 + |EMA of sign(g)|``."""

  def __init__(self, params: Iterable, lr: float = 1e-3, beta: float = 0.9,
               sign_memory: float = 0.9, min_lr: float = 1e-6, max_lr: float = 1.0):
    super().__init__(params, lr=lr, beta=beta, min_lr=min_lr, max_lr=max_lr,
                     sign_memory=sign_memory)

  def _boost(self, state, grad, group):
    memory = group["sign_memory"]
    ema = state.get("sign_ema", torch.zeros_like(grad))
    state["sign_ema"] = memory * ema + (1 - memory) * grad.sign()
    return 1 + state["sign_ema"].abs()


class UniformRateSGD(torch.optim.SGD):
  """001 Example 1: every tensor steps by its group's rate, ``p -= lr * g``.

  The document calls this a per-parameter rate, but no rate is kept per
  parameter: it is plain SGD (the step counter it keeps is never read).
  """

  @torch.no_grad()
  def step(self, closure: Closure = None) -> Any:
    loss = _loss_of(closure)
    for group, p in _with_grads(self):
      self.state[p]["step"] = self.state[p].get("step", 0) + 1
      p.sub_(group["lr"] * p.grad)
    return loss


class FactorPowerSGD(torch.optim.SGD):
  """001 Example 2: ``p_k -= lr * factor**k * g_k``.

  ``count="tensor"`` is the document's code: ``k`` runs over the tensors that
  have a gradient, so a layer's weight and bias get different rates (weight
  ``2j``, bias ``2j + 1`` in an MLP). ``count="group"`` is its text's "layer
  index": ``k`` is the param group, one group per layer. As in the code, the
  base rate is the first group's ``lr``.
  """

  def __init__(self, params: Iterable, lr: float, factor: float, count: str = "tensor"):
    if count not in ("tensor", "group"):
      raise ValueError(f"count must be 'tensor' or 'group', got {count!r}.")
    super().__init__(params, lr=lr)
    self.factor, self.count = factor, count

  @torch.no_grad()
  def step(self, closure: Closure = None) -> Any:
    loss = _loss_of(closure)
    base = self.param_groups[0]["lr"]
    tensor_index = 0
    for group_index, group in enumerate(self.param_groups):
      for p in group["params"]:
        if p.grad is None:
          continue
        k = tensor_index if self.count == "tensor" else group_index
        p.sub_(base * self.factor**k * p.grad)
        tensor_index += 1
    return loss


class DivideByClippedNorm(torch.optim.Adam):
  """001 Example 3 as its code computes it: ``p -= lr * g / ||clip(g)||``.

  Per tensor: the gradient is saved, the tensor's own gradient is clipped to
  norm ``clip_norm`` by ``torch.nn.utils.clip_grad_norm_`` (which multiplies it
  by ``min(clip_norm / (||g|| + 1e-6), 1)``), and the step divides the *saved*
  gradient by the *clipped* gradient's norm. Adam's moments are never used. So:

  * ``||g|| + 1e-6 > clip_norm``: the step is ``-(lr / clip_norm) *
    (1 + 1e-6/||g||) * g``, plain SGD on the unclipped gradient;
  * otherwise: ``-lr * g / ||g||``, a step of length ``lr`` however small ``g``.

  The step length is thus about ``lr * max(1, ||g|| / clip_norm)``: nothing is
  bounded, and small gradients are scaled up. The document calls
  ``addcdiv_(value, t1, t2)``, an overload that torch 2.13 still runs (with a
  deprecation warning, see `deprecated_addcdiv_matches`); the keyword
  form used here computes the same.
  """

  def __init__(self, params: Iterable, lr: float, clip_norm: float = 1.0):
    super().__init__(params, lr=lr)
    self.clip_norm = clip_norm

  @torch.no_grad()
  def step(self, closure: Closure = None) -> Any:
    loss = _loss_of(closure)
    for group, p in _with_grads(self):
      saved = p.grad.clone()
      torch.nn.utils.clip_grad_norm_(p, self.clip_norm)
      p.addcdiv_(saved, torch.linalg.vector_norm(p.grad), value=-group["lr"])
    return loss


class ClipThenAdam(torch.optim.Adam):
  """001 Example 3 as its text describes it: clip the gradients, then Adam.

  ``torch.nn.utils.clip_grad_norm_`` on all parameters (their global norm),
  then ``torch.optim.Adam.step``.
  """

  def __init__(self, params: Iterable, lr: float, clip_norm: float = 1.0, **adam: Any):
    super().__init__(params, lr=lr, **adam)
    self.clip_norm = clip_norm

  @torch.no_grad()
  def step(self, closure: Closure = None) -> Any:
    torch.nn.utils.clip_grad_norm_([p for _, p in _with_grads(self)], self.clip_norm)
    return super().step(closure)


class HypergradientSGD(torch.optim.Optimizer):
  """SGD-HD (Baydin et al., 2018, Algorithm 2): one learned rate ``alpha``.

  Each step, with ``g_t`` the gradients and ``g_{t-1}`` the previous ones (zero
  at the first step): ``alpha <- alpha + hyper_lr * sum_p <g_t, g_{t-1}>``
  over all parameters, then ``p -= alpha * g_t``. ``self.rate`` is ``alpha``.
  """

  def __init__(self, params: Iterable, lr: float, hyper_lr: float):
    super().__init__(params, dict(lr=lr, hyper_lr=hyper_lr))
    self.rate = lr

  @torch.no_grad()
  def step(self, closure: Closure = None) -> Any:
    loss = _loss_of(closure)
    params = [p for _, p in _with_grads(self)]
    agreement = sum(float(torch.sum(p.grad * self.state[p]["previous"]))
                    for p in params if "previous" in self.state[p])
    self.rate += self.defaults["hyper_lr"] * agreement
    for p in params:
      p.sub_(self.rate * p.grad)
      self.state[p]["previous"] = p.grad.clone()
    return loss


class SeparateOptimizers:
  """004 Example 1: several optimizers, each over its own variables, stepped together."""

  def __init__(self, *optimizers: torch.optim.Optimizer):
    self.optimizers = optimizers

  @property
  def param_groups(self) -> list[dict]:
    return [g for o in self.optimizers for g in o.param_groups]

  def zero_grad(self) -> None:
    for o in self.optimizers:
      o.zero_grad()

  def step(self) -> None:
    for o in self.optimizers:
      o.step()


def deprecated_addcdiv_matches() -> bool:
  """Whether the installed torch still runs ``Tensor.addcdiv_(value, t1, t2)``.

  001 Example 3 calls this positional overload, deprecated since PyTorch 1.5.
  Returns True when it runs and equals ``addcdiv_(t1, t2, value=value)``, False
  when the installed torch rejects it.
  """
  t1 = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
  t2 = torch.tensor(4.0, dtype=torch.float64)
  want = torch.zeros(3, dtype=torch.float64).addcdiv_(t1, t2, value=-0.5)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", UserWarning)
      got = torch.zeros(3, dtype=torch.float64).addcdiv_(-0.5, t1, t2)  # pyright: ignore[reportCallIssue]
  except TypeError:
    return False
  return bool(torch.equal(got, want))
