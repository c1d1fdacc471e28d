"""Parity rows of the rules that see the weights: Nero, LARS and LAMB.

* ``nero`` and ``nero-unconstrained``: ``nlr.nero(0.01)`` against
  pytorch-optimizer 4.1.0's ``Nero(lr=0.01, foreach=False)`` (and both with
  ``constraints=False``), on the harness' MLP: PyTorch's ``(out, in)`` rows are
  the last axis of the Flax kernels, which ``nlr.nero``'s default neurons are.
  ``foreach=False``: the batched path keeps a zero-norm leaf's 0.01 scale as
  a float32 tensor, 2.2e-8 relative from float64's 0.01.
* ``lars-tensor``: ``nlr.lars(..., granularity="tensor")`` against
  ``optax.lars`` with weight decay, Nesterov momentum and both masks (decay and
  trust ratio on the kernels only); ``lars-tensor-default``: optax's defaults.
* ``lamb-tensor``: ``nlr.lamb(..., granularity="tensor")`` against
  ``optax.lamb`` with weight decay on the kernels and a cosine schedule.

The optax rows put optax on the reference side (a `JaxSide`).
All are exact: the differences are rounding (the rate is multiplied in
another order).
"""

from __future__ import annotations

from typing import Any

import jax
import optax

import optax_neuronlr as nlr
from optax_neuronlr.parity.harness import Case, JaxSide, TorchSide

PYTORCH_OPTIMIZER = "pytorch-optimizer 4.1.0"


def _kernels(params):
  """The masks of the optax rows: True on the kernels, False on the biases."""
  return jax.tree.map(lambda x: x.ndim > 1, params)


def _torch_nero(constraints: bool):
  def build(model):
    from pytorch_optimizer import Nero  # pylint: disable=g-import-not-at-top
    return Nero(model.parameters(), lr=0.01, beta=0.999, constraints=constraints,
                eps=1e-8, foreach=False)
  return build


_LARS: dict[str, Any] = dict(weight_decay=1e-2, weight_decay_mask=_kernels, trust_coefficient=0.02,
             eps=1e-9, trust_ratio_mask=_kernels, momentum=0.9, nesterov=True)
_LAMB_RATE = optax.cosine_decay_schedule(1e-2, 50)

CASES: dict[str, Case] = {c.name: c for c in (
    Case("nero", f"{PYTORCH_OPTIMIZER} Nero(lr=0.01, foreach=False)", "nlr.nero(0.01)",
         "exact", TorchSide(_torch_nero(True)), JaxSide(lambda p: nlr.nero(0.01))),
    Case("nero-unconstrained", f"{PYTORCH_OPTIMIZER} Nero(constraints=False, foreach=False)",
         "nlr.nero(0.01, constraints=False)", "exact",
         TorchSide(_torch_nero(False)),
         JaxSide(lambda p: nlr.nero(0.01, constraints=False))),
    Case("lars-tensor", "optax.lars(0.1, weight decay, masks, nesterov)",
         "nlr.lars(..., granularity='tensor')", "exact",
         JaxSide(lambda p: optax.lars(0.1, **_LARS)),
         JaxSide(lambda p: nlr.lars(0.1, **_LARS, granularity="tensor"))),
    Case("lars-tensor-default", "optax.lars(0.5)", "nlr.lars(0.5, granularity='tensor')",
         "exact", JaxSide(lambda p: optax.lars(0.5)),
         JaxSide(lambda p: nlr.lars(0.5, granularity="tensor"))),
    Case("lamb-tensor", "optax.lamb(cosine 1e-2, weight_decay=1e-2, mask=kernels)",
         "nlr.lamb(..., granularity='tensor')", "exact",
         JaxSide(lambda p: optax.lamb(_LAMB_RATE, weight_decay=1e-2, mask=_kernels)),
         JaxSide(lambda p: nlr.lamb(_LAMB_RATE, weight_decay=1e-2, mask=_kernels,
                                    granularity="tensor"))),
)}
"""The rows, by name, in table order."""

NAMES = tuple(CASES)
