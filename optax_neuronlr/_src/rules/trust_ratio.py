r"""LARS and LAMB with one trust ratio per unit: per layer, or per output neuron.

LARS (You, Gitman and Ginsburg, 2017, "Large Batch Training of Convolutional
Networks", arXiv:1708.03888) and LAMB (You et al., 2020, "Large Batch
Optimization for Deep Learning: Training BERT in 76 minutes",
arXiv:1904.00962) scale each layer's step by a *trust ratio*, the norm of
the layer's weights over the norm of its update. Here the ratio is one per
unit of any granularity: with $w_U$ and $d_U$ the weights and the direction
(the weight-decayed gradient for LARS, the weight-decayed Adam step for LAMB)
of unit $U$,

$$
\tau_U = \begin{cases}
  \dfrac{c\, \|w_U\|}{\|d_U\| + \epsilon} & \|w_U\| > 0 \text{ and } \|d_U\| > 0, \\
  1 & \text{otherwise},
\end{cases}
\qquad r_U = \eta_t\, \tau_U ,
$$

(norms floored at ``min_norm``, as ``optax.scale_by_trust_ratio``).
``granularity="tensor"`` is optax's ``lars`` / ``lamb`` exactly (one ratio
per leaf); ``"neuron"`` gives every output neuron its own ratio, so a neuron
whose weights are small relative to its gradient moves by a correspondingly
small step whatever its layer's other neurons do; vectors (biases, norm
scales: leaves whose neurons hold one element) keep one ratio per leaf there,
since a ratio per element stalls any element that crosses zero (its own norm
is the numerator). `TrustRatio` is a
`Rule` that reads the weights' norms
(``weights=("norm",)``), so `learning_rates` shows the
applied $r_U$ per unit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Union

import jax
import jax.numpy as jnp
import optax

from optax_neuronlr._src import engine
from optax_neuronlr._src import units as units_lib
from optax_neuronlr._src import validation

MaskOrFn = Union[Any, Callable[[Any], Any]]


@dataclasses.dataclass(frozen=True)
class TrustRatio(engine.Rule):
  r"""The rate $\eta\, \tau_U$, $\tau_U = c \|w_U\| / (\|d_U\| + \epsilon)$
  (1 where either norm is 0; a non-finite ratio keeps the last one).

  Unit statistic ``trust_ratio`` ($\tau_U$ of the last update, 1 at
  ``init``); the direction's squared norm is observed with ``reduce="sum"``
  and the weights' norm comes from the engine (``weights=("norm",)``).
  """

  unit_stats = ("trust_ratio",)
  weights = ("norm",)
  hyperparams = {"trust_coefficient": 1.0, "eps": 0.0, "min_norm": 0.0}
  reduce = "sum"
  state_name = "ScaleByTrustRatioState"
  name = "trust_ratio"

  def check_hyperparams(self, values):
    validation.check_range("trust_coefficient", values["trust_coefficient"], low=0.0,
                           low_open=True, allow_none=True)
    validation.check_range("eps", values["eps"], low=0.0, allow_none=True)
    validation.check_range("min_norm", values["min_norm"], low=0.0, allow_none=True)

  def init(self, zeros, hp):
    return {"trust_ratio": zeros + jnp.ones([], zeros.dtype)}

  def observe(self, g, d, elements, hp):
    return (engine.abs_sq(d.astype(g.dtype)),)

  def update(self, stats, observed, hp, prev_hp, count):
    floor = hp["min_norm"]
    w_norm = stats["weight_norm"]
    d_norm = jnp.sqrt(observed[0])
    w_norm = jnp.where(w_norm <= floor, floor, w_norm).astype(w_norm.dtype)
    d_norm = jnp.where(d_norm <= floor, floor, d_norm).astype(d_norm.dtype)
    ratio = hp["trust_coefficient"] * w_norm / (d_norm + hp["eps"])
    zero = jnp.logical_or(w_norm == 0, d_norm == 0)
    ratio = jnp.where(zero, jnp.ones([], ratio.dtype), ratio)
    # A non-finite ratio (overflowing weights) keeps the last one; this also
    # makes the update read the old statistic, so that a donated state buffer
    # is reused (jit drops unused inputs, and their donation with them).
    return {"trust_ratio": jnp.where(jnp.isfinite(ratio), ratio, stats["trust_ratio"])}

  def rate(self, stats, hp, count):
    return hp["learning_rate"] * stats["trust_ratio"]


ScaleByTrustRatioState = TrustRatio().state_class()


def neuron_units(neuron_axes: Any = None) -> Callable[[Any], Any]:
  """``granularity="neuron"`` of the trust ratio: a callable ``params ->
  unit specs``, one unit per output neuron of each leaf whose neurons hold
  more than one element (``neuron_axes``, else the model layout's output
  axes), one per leaf for the others (vectors, 0-d leaves)."""
  units_lib.check_granularity("neuron", neuron_axes)

  def specs(tree):
    layouts, treedef = units_lib.tree_layouts(tree, "neuron", neuron_axes)
    return treedef.unflatten([
        units_lib.Neurons(layout.keep_axes) if layout.size > 1 and layout.keep_axes
        else "tensor" for layout in layouts])

  return specs


def scale_by_trust_ratio(
    learning_rate: optax.ScalarOrSchedule,
    trust_coefficient: float = 1.0,
    eps: float = 0.0,
    min_norm: float = 0.0,
    min_lr: float = 0.0,
    max_lr: float = math.inf,
    *,
    granularity: Any = "tensor",
    neuron_axes: Any = None,
    state_dtype: Any = None,
    direction: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Scales the direction by $\eta_t \tau_U$, one trust ratio per unit.

  With the default ``granularity="tensor"`` and ``learning_rate=1.0`` it is
  ``optax.scale_by_trust_ratio(min_norm, trust_coefficient, eps)``. The
  engine's arguments (``min_lr``, ``max_lr``, ``granularity``,
  ``neuron_axes``, ``state_dtype``, ``direction``) are
  `scale_by_rule`'s, with the engine's units:
  ``"neuron"`` gives vectors one ratio per element (`lars` and
  `lamb` pass `neuron_units` instead, one per leaf for vectors).

  Args:
    learning_rate: $\eta$, a number ``>= 0`` or a schedule.
    trust_coefficient: $c$, ``> 0``.
    eps: added to the direction's norm, ``>= 0``.
    min_norm: floor of both norms, ``>= 0``.
    min_lr: lower clamp of $r_U$.
    max_lr: upper clamp of $r_U$.
    granularity: the units (see `scale_by_rule`).
    neuron_axes: the neurons with ``granularity="neuron"``.
    state_dtype: dtype of ``trust_ratio``.
    direction: an optax transform whose output is scaled (None: the updates).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    ``ScaleByTrustRatioState``; its ``update`` needs ``params``.
  """
  return engine.scale_by_rule(
      TrustRatio(), learning_rate,
      {"trust_coefficient": trust_coefficient, "eps": eps, "min_norm": min_norm},
      min_lr=min_lr, max_lr=max_lr, granularity=granularity, neuron_axes=neuron_axes,
      state_dtype=state_dtype, direction=direction)


def _alias_units(granularity: Any, neuron_axes: Any) -> tuple[Any, Any]:
  """LARS/LAMB's ``granularity="neuron"``: `neuron_units`."""
  if isinstance(granularity, str) and granularity == "neuron":
    return neuron_units(neuron_axes), None
  return granularity, neuron_axes


def _complement(mask: MaskOrFn) -> MaskOrFn:
  """The leaves a mask (a bool, a pytree of bools or a callable) leaves out."""
  def flip(tree):
    return jax.tree.map(lambda m: not m, tree)
  if callable(mask):
    return lambda params: flip(mask(params))
  return flip(mask)


def lars(
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn = True,
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    trust_ratio_mask: MaskOrFn = True,
    momentum: float = 0.9,
    nesterov: bool = False,
    *,
    granularity: Any = "neuron",
    neuron_axes: Any = None,
    state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""LARS (You et al., 2017) with one trust ratio per unit.

  With $d_t = g_t + \lambda w_{t-1}$ (decay on the leaves of
  ``weight_decay_mask``) and $\tau_U$ the unit's trust ratio on the leaves of
  ``trust_ratio_mask`` (1 elsewhere):

  $$
  m_t = \mu\, m_{t-1} + \eta_t \tau_U d_t, \qquad w_t = w_{t-1} - m_t
  $$

  (Nesterov: $w_t = w_{t-1} - (\mu m_t + \eta_t \tau_U d_t)$). The arguments
  before ``granularity`` are ``optax.lars``'s, and ``granularity="tensor"``
  equals ``optax.lars`` to rounding (``python -m optax_neuronlr.parity --case
  lars-tensor``); the default, ``"neuron"``, keeps one ratio per output neuron.

  Args:
    learning_rate: $\eta$, a number ``>= 0`` or a schedule.
    weight_decay: $\lambda$, ``>= 0``, or a schedule.
    weight_decay_mask: the leaves that decay: True, a pytree of bools or a
      callable ``params -> pytree`` (as optax).
    trust_coefficient: $c$, ``> 0``.
    eps: added to the direction's norm, ``>= 0``.
    trust_ratio_mask: the leaves that get a trust ratio (as optax); the others
      step at $\eta_t$ (an ``optax.masked`` branch beside the rule, so
      `learning_rates` shows None for them).
    momentum: $\mu$, in ``[0, 1)``.
    nesterov: Nesterov momentum.
    granularity: the units of the trust ratio: ``"neuron"`` (one per output
      neuron of each matrix, one per leaf for vectors: `neuron_units`),
      ``"tensor"`` (optax's), ``"element"``, ``"global"`` or unit specs (see
      `scale_by_rule`).
    neuron_axes: the neurons with ``granularity="neuron"``.
    state_dtype: dtype of the per-unit trust ratios.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its ``update`` needs ``params``.
  """
  validation.check_rate("learning_rate", learning_rate)
  validation.check_rate("weight_decay", weight_decay)
  validation.check_range("momentum", momentum, low=0.0, high=1.0, high_open=True)
  validation.check_flag("nesterov", nesterov)
  granularity, neuron_axes = _alias_units(granularity, neuron_axes)
  trust = scale_by_trust_ratio(
      learning_rate, trust_coefficient, eps, granularity=granularity,
      neuron_axes=neuron_axes, state_dtype=state_dtype)
  if trust_ratio_mask is not True:
    trust = optax.chain(
        optax.masked(trust, trust_ratio_mask),
        optax.masked(optax.scale_by_learning_rate(learning_rate, flip_sign=False),
                     _complement(trust_ratio_mask)))
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
      trust,
      optax.trace(decay=momentum, nesterov=nesterov),
      optax.scale(-1.0),
  )


def lamb(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    granularity: Any = "neuron",
    neuron_axes: Any = None,
    state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""LAMB (You et al., 2020) with one trust ratio per unit.

  With $a_t$ Adam's bias-corrected step $\hat m_t / (\sqrt{\hat v_t +
  \epsilon_{root}} + \epsilon)$ and $d_t = a_t + \lambda w_{t-1}$ (decay on
  the leaves of ``mask``):

  $$
  w_t = w_{t-1} - \eta_t\, \tau_U\, d_t, \qquad
  \tau_U = \|w_U\| / \|d_U\| \ (1 \text{ where either is } 0).
  $$

  The arguments before ``granularity`` are ``optax.lamb``'s, and
  ``granularity="tensor"`` equals ``optax.lamb`` to rounding (``python -m
  optax_neuronlr.parity --case lamb-tensor``); the default, ``"neuron"``,
  keeps one ratio per output neuron.

  Args:
    learning_rate: $\eta$, a number ``>= 0`` or a schedule.
    b1: Adam's first-moment decay, in ``[0, 1)``.
    b2: Adam's second-moment decay, in ``[0, 1)``.
    eps: Adam's $\epsilon$, ``>= 0``.
    eps_root: Adam's $\epsilon_{root}$, ``>= 0``.
    weight_decay: $\lambda$, ``>= 0``, or a schedule.
    mask: the leaves that decay: None (all), a pytree of bools or a callable.
    granularity: the units of the trust ratio: ``"neuron"`` (one per output
      neuron of each matrix, one per leaf for vectors: `neuron_units`),
      ``"tensor"`` (optax's), ``"element"``, ``"global"`` or unit specs (see
      `scale_by_rule`).
    neuron_axes: the neurons with ``granularity="neuron"``.
    state_dtype: dtype of the per-unit trust ratios.

  Returns:
    An ``optax.GradientTransformationExtraArgs``: the trust-ratio rule with
    Adam and the weight decay as its ``direction`` (their states in its
    ``direction_state``), then ``optax.scale(-1)``; its ``update`` needs
    ``params``.
  """
  validation.check_rate("learning_rate", learning_rate)
  validation.check_beta("b1", b1)
  validation.check_beta("b2", b2)
  validation.check_range("eps", eps, low=0.0)
  validation.check_range("eps_root", eps_root, low=0.0)
  validation.check_rate("weight_decay", weight_decay)
  granularity, neuron_axes = _alias_units(granularity, neuron_axes)
  direction = optax.chain(
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
      optax.add_decayed_weights(weight_decay, mask=mask))
  return optax.chain(
      scale_by_trust_ratio(learning_rate, granularity=granularity,
                           neuron_axes=neuron_axes, state_dtype=state_dtype,
                           direction=direction),
      optax.scale(-1.0),
  )
