r"""Learned per-unit learning rates: hypergradient descent, as a rule (reference 001).

Reference 001 names "learned learning rates: the learning rates themselves are
treated as trainable parameters". Hypergradient descent (Baydin et al., ICLR
2018, "Online Learning Rate Adaptation with Hypergradient Descent") learns them
online: with $\theta_t = \theta_{t-1} - \alpha\, d_{t-1}$, the derivative of the
loss at step $t$ with respect to $\alpha$ is $-\langle g_t, d_{t-1}\rangle$, so
one gradient step on $\alpha$ adds $\beta \langle g_t, d_{t-1}\rangle$. The rule
keeps the previous direction per element and the rate per unit.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import jax.numpy as jnp
import optax

from optax_neuronlr._src import aliases
from optax_neuronlr._src import engine
from optax_neuronlr._src import validation


def _finite_or_zero(x):
  return jnp.where(jnp.isfinite(x), x, jnp.zeros_like(x))


@dataclasses.dataclass(frozen=True)
class Hypergradient(engine.Rule):
  """Baydin et al.'s hypergradient rule; ``multiplicative`` is static."""

  multiplicative: bool = False
  unit_stats = ("lr",)
  element_stats = ("prev_direction",)
  hyperparams = ("hyper_lr",)
  reduce = "sum"
  state_name = "HypergradientLRState"
  name = "hypergradient_lr"

  def init(self, zeros, hp):
    return {"lr": zeros + engine.clamp(hp["learning_rate"], hp).astype(zeros.dtype)}

  def observe(self, g, d, elements, hp):
    # Re<g, d> of complex leaves treats them as pairs of reals.
    prev = jnp.conj(elements["prev_direction"].astype(g.dtype))
    if self.multiplicative:
      return g * prev, g * jnp.conj(g), prev * jnp.conj(prev)
    return (g * prev,)

  def update(self, stats, observed, hp, prev_hp, count):
    eta, eta_prev = hp["learning_rate"], prev_hp["learning_rate"]
    follow = jnp.where(eta_prev > 0, eta / jnp.where(eta_prev > 0, eta_prev, 1), 1)
    alpha = stats["lr"] * follow.astype(stats["lr"].dtype)
    if self.multiplicative:
      dot, gg, dd = observed
      cosine = _finite_or_zero(dot / (jnp.sqrt(gg) * jnp.sqrt(dd)))
      new = alpha * (1 + hp["hyper_lr"] * jnp.clip(cosine, -1.0, 1.0))
    else:
      new = alpha + hp["hyper_lr"] * _finite_or_zero(observed[0])
    return {"lr": engine.clamp(new, hp)}

  def update_elements(self, elements, g, d, hp, count):
    return {"prev_direction": d}

  def rate(self, stats, hp, count):
    return stats["lr"]


HypergradientLRState = Hypergradient().state_class()


def scale_by_hypergradient_lr(
    learning_rate: optax.ScalarOrSchedule,
    hyper_lr: float,
    min_lr: float = 0.0,
    max_lr: float = math.inf,
    *,
    multiplicative: bool = False,
    granularity: Any = "global",
    neuron_axes: Any = None,
    axis_names: Any = None,
    state_dtype: Any = None,
    direction: Optional[optax.GradientTransformation] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Learns per-unit rates of any direction by hypergradient descent.

  With $g_t$ the gradient and $d_t$ the direction's output ($g_t$ by default,
  SGD-HD; ``optax.scale_by_adam()``: Adam-HD), per unit:

  $$
  h_t = \sum_{\text{unit}} g_t \odot d_{t-1}, \qquad
  \alpha_t = \mathrm{clip}\big(\alpha_{t-1} + \beta\, h_t\big), \qquad
  u_t = \alpha_t\, d_t,
  $$

  with $d_0 = 0$ and $\alpha_0 = \mathrm{clip}(\eta_0)$, so the first step
  uses the initial rate. $-h_t$ is the derivative of the loss at step $t$ with
  respect to the unit's rate (Baydin et al., 2018): the rate grows while
  successive directions agree with the gradient and shrinks when they oppose
  it. ``multiplicative=True`` is the paper's multiplicative rule, whose step
  does not depend on the scale of the gradients:

  $$
  \alpha_t = \mathrm{clip}\Big(\alpha_{t-1}\,\big(1 + \beta\,
      \frac{h_t}{\|g_t\|\,\|d_{t-1}\|}\big)\Big)
  $$

  (norms over the unit; no change where a norm is zero or overflows).

  The learned rate follows the base rate: when $\eta$ changes (a schedule,
  or ``optax.inject_hyperparams`` / `set_hyperparams`,
  e.g. reference 003's ``lr *= 0.9``), every unit's rate is multiplied by
  $\eta_t / \eta_{t-1}$ before the hypergradient step. A non-finite $h_t$
  (gradients near the float range's end) leaves the rate unchanged.

  ``min_lr``, ``max_lr``, ``granularity``, ``neuron_axes``, ``axis_names``, ``state_dtype``
  and ``direction``: the engine's shared arguments, see
  `scale_by_rule`.

  Args:
    learning_rate: the initial rate $\eta_0$, a number or an optax schedule
      (see above), ``>= 0``.
    hyper_lr: the hypergradient step $\beta$, ``>= 0`` (the paper uses e.g.
      ``1e-3`` for SGD-HD and ``1e-7`` for Adam-HD with one global rate).
      $h_t$ is a *sum* over the unit, so the same ``hyper_lr`` moves a
      per-neuron or per-element rate far less than the global one; scale it
      up for finer units, or use ``multiplicative=True``.
    multiplicative: the multiplicative rule (a static option).
    granularity: the units; ``"global"`` (one rate for the whole model, the
      paper's form) by default.
    state_dtype: dtype of the rates and of the stored direction.
    direction: the step direction; None: the gradient (SGD-HD).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` returning ``+alpha * d``.
  """
  if isinstance(learning_rate, optax.GradientTransformation):
    raise TypeError(
        "learning_rate is an optax transform: since 0.2 the direction is the "
        "keyword argument `direction=` (hypergradient_lr(learning_rate, "
        "hyper_lr, direction=...)), as for every rule."
    )
  validation.check_range("hyper_lr", hyper_lr, low=0.0)
  rule = Hypergradient(validation.check_flag("multiplicative", multiplicative))
  return engine.scale_by_rule(
      rule, learning_rate, {"hyper_lr": hyper_lr}, min_lr=min_lr,
      max_lr=max_lr, granularity=granularity, neuron_axes=neuron_axes, axis_names=axis_names,
      state_dtype=state_dtype, direction=direction,
  )


hypergradient_lr = aliases.negated(
    scale_by_hypergradient_lr, "hypergradient_lr",
    """Hypergradient descent on any direction: `scale_by_hypergradient_lr`, negated.

    ``optax.chain(scale_by_hypergradient_lr(...), optax.scale(-1.0))`` with the
    same arguments; ``direction=`` gives the step direction (default: the
    gradient).

    Example:
      >>> import optax, optax_neuronlr as nlr
      >>> tx = nlr.hypergradient_lr(1e-3, hyper_lr=1e-7,
      ...                           direction=optax.scale_by_adam())
    """)

sgd_hd = aliases.negated(
    scale_by_hypergradient_lr, "sgd_hd",
    """SGD-HD (Baydin et al., 2018, Algorithm 2): SGD with a learned rate.

    `hypergradient_lr` with the gradient as direction
    ($h_t = \\langle g_t, g_{t-1} \\rangle$); the same arguments.

    Example:
      >>> import optax_neuronlr as nlr
      >>> tx = nlr.sgd_hd(1e-2, hyper_lr=1e-3)
    """)


def _check_adam(args: dict[str, Any]) -> None:
  validation.check_beta("b1", args["b1"])
  validation.check_beta("b2", args["b2"])
  validation.check_range("eps", args["eps"], low=0.0)
  validation.check_dtype("mu_dtype", args["mu_dtype"])


adam_hd = aliases.with_direction(
    hypergradient_lr, optax.scale_by_adam, ("b1", "b2", "eps"), "adam_hd",
    """Adam-HD (Baydin et al., 2018, Algorithm 3): Adam with a learned rate.

    `hypergradient_lr` with ``direction=optax.scale_by_adam(b1, b2,
    eps, mu_dtype=mu_dtype)``: $h_t$ is the dot product of the gradient with
    Adam's previous bias-corrected direction
    $\\hat m / (\\sqrt{\\hat v} + \\epsilon)$. Takes the arguments of
    `scale_by_hypergradient_lr` (but ``direction``), Adam's ``b1``,
    ``b2``, ``eps`` (all bindable by ``optax.inject_hyperparams``) and the
    keyword ``mu_dtype``, the dtype of Adam's stored first moment (optax's;
    list it in ``static_args`` under ``inject_hyperparams``).

    Example:
      >>> import optax_neuronlr as nlr
      >>> tx = nlr.adam_hd(1e-3, hyper_lr=1e-7)
    """,
    check=_check_adam, direction_kwonly=("mu_dtype",))
