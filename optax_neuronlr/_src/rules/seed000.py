r"""The three neuron-specific rules of reference 000, on the public engine.

Each is a short `Rule`; `scale_by_rule`
supplies units, clamps, schedules, dtypes and ``direction``. Notation, per unit
$i$ at step $t$: $m_t$ the unit's mean $|g_t|$, $s_t$ its mean
$\mathrm{sign}(g_t)$, $\eta_t$ the base rate (a number or a schedule at step
$t - 1$), $\mathrm{clip}$ the clamp to $[\mathrm{min\_lr}, \mathrm{max\_lr}]$.

Reference: ``000_9458a9ec8aeb2db5.txt`` ("How can I implement a dynamic
neuron-specific learning rate in PyTorch?"), Examples 1-3.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from optax_neuronlr._src import aliases
from optax_neuronlr._src import engine
from optax_neuronlr._src import validation


def _ema(old: jax.Array, new: jax.Array, beta: jax.Array) -> jax.Array:
  return beta * old + (1 - beta) * new


def _debias(ema: jax.Array, beta: jax.Array, on: bool, count: jax.Array) -> jax.Array:
  return ema / (1 - beta**count) if on else ema


@dataclasses.dataclass(frozen=True)
class GradMagnitude(engine.Rule):
  """000 Example 1: a rate per unit that grows by ``alpha`` times ``m``."""

  unit_stats = ("lr",)
  hyperparams = ("alpha",)
  state_name = "ScaleByGradMagnitudeLRState"
  name = "grad_magnitude_lr"

  def init(self, zeros, hp):
    return {"lr": zeros + hp["learning_rate"].astype(zeros.dtype)}

  def observe(self, g, d, elements, hp):
    return (jnp.abs(g),)

  def update(self, stats, observed, hp, prev_hp, count):
    shift = hp["learning_rate"] - prev_hp["learning_rate"]
    lr = stats["lr"] + shift + hp["alpha"] * observed[0]
    return {"lr": engine.clamp(lr, hp)}

  def rate(self, stats, hp, count):
    return stats["lr"]


@dataclasses.dataclass(frozen=True)
class GradHistory(engine.Rule):
  """000 Example 2: a rate inversely proportional to an EMA of ``m``."""

  bias_correction: bool = False
  unit_stats = ("grad_ema",)
  hyperparams = ("beta", "eps")
  state_name = "ScaleByGradHistoryLRState"
  name = "grad_history_lr"

  def observe(self, g, d, elements, hp):
    return (jnp.abs(g),)

  def update(self, stats, observed, hp, prev_hp, count):
    return {"grad_ema": _ema(stats["grad_ema"], observed[0], hp["beta"])}

  def rate(self, stats, hp, count):
    v = _debias(stats["grad_ema"], hp["beta"], self.bias_correction, count)
    return hp["learning_rate"] * (1.0 / (v + hp["eps"]))


@dataclasses.dataclass(frozen=True)
class SignConsistency(engine.Rule):
  """000 Example 3: Example 2 times ``1 + |EMA of the mean sign|``."""

  bias_correction: bool = False
  unit_stats = ("grad_ema", "sign_ema")
  hyperparams = ("beta", "sign_beta", "eps")
  state_name = "ScaleBySignConsistencyLRState"
  name = "sign_consistency_lr"

  def observe(self, g, d, elements, hp):
    return jnp.abs(g), jnp.sign(g)

  def update(self, stats, observed, hp, prev_hp, count):
    return {
        "grad_ema": _ema(stats["grad_ema"], observed[0], hp["beta"]),
        "sign_ema": _ema(stats["sign_ema"], observed[1], hp["sign_beta"]),
    }

  def rate(self, stats, hp, count):
    v = _debias(stats["grad_ema"], hp["beta"], self.bias_correction, count)
    s = _debias(stats["sign_ema"], hp["sign_beta"], self.bias_correction, count)
    return hp["learning_rate"] * (1.0 / (v + hp["eps"]) * (1 + jnp.abs(s)))


ScaleByGradMagnitudeLRState = GradMagnitude().state_class()
ScaleByGradHistoryLRState = GradHistory().state_class()
ScaleBySignConsistencyLRState = SignConsistency().state_class()

def scale_by_grad_magnitude_lr(
    learning_rate: optax.ScalarOrSchedule,
    alpha: float = 0.01,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    *,
    granularity: Any = "element",
    neuron_axes: Any = None,
    axis_names: Any = None,
    state_dtype: Any = None,
    direction: Optional[optax.GradientTransformation] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Per-unit rates that grow with the gradient magnitude (000, Example 1).

  Each unit keeps its own rate, starting at $\eta_0$; every step adds
  $\alpha$ times the unit's mean absolute gradient, then clamps:

  $$
  \mathrm{lr}_{i,t} = \mathrm{clip}\big(\mathrm{lr}_{i,t-1}
      + (\eta_t - \eta_{t-1}) + \alpha\, m_{i,t}\big), \qquad
  u_{i,t} = \mathrm{lr}_{i,t}\, d_{i,t}.
  $$

  With a constant ``learning_rate`` the shift $\eta_t - \eta_{t-1}$ is zero and
  the rule is the reference code step for step; with a schedule (or a rate
  changed through ``optax.inject_hyperparams``) every unit's rate follows the
  change of the base rate, on top of what it has accumulated.

  Text versus code: the reference's *text* says a small gradient raises the
  rate and a large one lowers it; its *code* adds $\alpha |g|$, so the rate
  only grows, fastest where gradients are large. This transform follows the
  code (a test pins that direction). Over a long run every unit drifts up to
  ``max_lr``: keep ``max_lr`` modest.

  ``min_lr``, ``max_lr``, ``granularity``, ``neuron_axes``, ``axis_names``, ``state_dtype``
  and ``direction``: the engine's shared arguments, see
  `scale_by_rule`.

  Args:
    learning_rate: initial (base) rate $\eta$, a number or an optax schedule.
    alpha: growth per unit of mean absolute gradient, ``>= 0``.
    granularity: the units; ``"element"``, the default, is the reference's.
    state_dtype: dtype of the per-unit rates.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` returning ``+lr * d``.
  """
  validation.check_range("alpha", alpha, low=0.0)
  return engine.scale_by_rule(
      GradMagnitude(), learning_rate, {"alpha": alpha}, min_lr=min_lr,
      max_lr=max_lr, granularity=granularity, neuron_axes=neuron_axes, axis_names=axis_names,
      state_dtype=state_dtype, direction=direction,
  )


def scale_by_grad_history_lr(
    learning_rate: optax.ScalarOrSchedule,
    beta: float = 0.9,
    eps: float = 1e-8,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    *,
    bias_correction: bool = False,
    granularity: Any = "element",
    neuron_axes: Any = None,
    axis_names: Any = None,
    state_dtype: Any = None,
    direction: Optional[optax.GradientTransformation] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Per-unit rates from an EMA of the gradient magnitude (000, Example 2).

  $$
  v_{i,t} = \beta\, v_{i,t-1} + (1 - \beta)\, m_{i,t}, \qquad
  \mathrm{lr}_{i,t} = \mathrm{clip}\Big(\eta_t \cdot
      \frac{1}{\hat v_{i,t} + \epsilon}\Big), \qquad
  u_{i,t} = \mathrm{lr}_{i,t}\, d_{i,t},
  $$

  with $v_0 = 0$ and $\hat v_t = v_t$ (the reference), or
  $\hat v_t = v_t / (1 - \beta^t)$ with ``bias_correction=True``.

  Known weak spots of the reference defaults: without bias correction the
  first step's rate is about $10 \eta / |g|$, and with ``max_lr=1.0`` the
  rate of small-gradient units sits at ``max_lr`` (plain SGD at rate 1). Use
  ``bias_correction=True`` and a ``max_lr`` suited to the model, and watch the
  clamp fractions of `rate_summary`.

  ``min_lr``, ``max_lr``, ``granularity``, ``neuron_axes``, ``axis_names``, ``state_dtype``
  and ``direction``: the engine's shared arguments, see
  `scale_by_rule`.

  Args:
    learning_rate: base rate $\eta$, a number or an optax schedule.
    beta: EMA decay in ``[0, 1)``.
    eps: added to the EMA before inverting, ``> 0``.
    bias_correction: divide the EMA by $1 - \beta^t$ (not in the reference);
      a static option.
    state_dtype: dtype of the EMA.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` returning ``+lr * d``.
  """
  validation.check_beta("beta", beta)
  validation.check_range("eps", eps, low=0.0, low_open=True)
  rule = GradHistory(validation.check_flag("bias_correction", bias_correction))
  return engine.scale_by_rule(
      rule, learning_rate, {"beta": beta, "eps": eps}, min_lr=min_lr,
      max_lr=max_lr, granularity=granularity, neuron_axes=neuron_axes, axis_names=axis_names,
      state_dtype=state_dtype, direction=direction,
  )


def scale_by_sign_consistency_lr(
    learning_rate: optax.ScalarOrSchedule,
    beta: float = 0.9,
    sign_beta: float = 0.9,
    eps: float = 1e-8,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    *,
    bias_correction: bool = False,
    granularity: Any = "element",
    neuron_axes: Any = None,
    axis_names: Any = None,
    state_dtype: Any = None,
    direction: Optional[optax.GradientTransformation] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Per-unit rates from gradient magnitude and sign consistency (000, Ex. 3).

  $$
  v_{i,t} = \beta v_{i,t-1} + (1-\beta) m_{i,t}, \qquad
  c_{i,t} = \beta_s c_{i,t-1} + (1-\beta_s) s_{i,t},
  $$

  $$
  \mathrm{lr}_{i,t} = \mathrm{clip}\Big(\eta_t \cdot
      \frac{1}{\hat v_{i,t} + \epsilon}\,(1 + |\hat c_{i,t}|)\Big), \qquad
  u_{i,t} = \mathrm{lr}_{i,t}\, d_{i,t},
  $$

  with $v_0 = c_0 = 0$; $\hat v, \hat c$ are the EMAs themselves (the
  reference) or divided by $1 - \beta^t$ and $1 - \beta_s^t$ with
  ``bias_correction=True``. $|c|$ near 1 means the unit's gradient kept its
  sign (up to twice the rate of `scale_by_grad_history_lr`); near 0, that
  it oscillated. At neuron granularity $s$ is the mean sign over the fan-in.
  The reference calls ``sign_beta`` ``sign_memory``.

  ``min_lr``, ``max_lr``, ``granularity``, ``neuron_axes``, ``axis_names``, ``state_dtype``
  and ``direction``: the engine's shared arguments, see
  `scale_by_rule`.

  Args:
    learning_rate: base rate $\eta$, a number or an optax schedule.
    beta: decay of the magnitude EMA, in ``[0, 1)``.
    sign_beta: decay of the sign EMA, in ``[0, 1)``.
    eps: added to the magnitude EMA before inverting, ``> 0``.
    bias_correction: debias both EMAs as Adam does (not in the reference); a
      static option.
    state_dtype: dtype of the EMAs.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` returning ``+lr * d``.
  """
  validation.check_beta("beta", beta)
  validation.check_beta("sign_beta", sign_beta)
  validation.check_range("eps", eps, low=0.0, low_open=True)
  rule = SignConsistency(validation.check_flag("bias_correction", bias_correction))
  return engine.scale_by_rule(
      rule, learning_rate, {"beta": beta, "sign_beta": sign_beta, "eps": eps},
      min_lr=min_lr, max_lr=max_lr, granularity=granularity,
      neuron_axes=neuron_axes, axis_names=axis_names, state_dtype=state_dtype, direction=direction,
  )


grad_magnitude_lr = aliases.negated(
    scale_by_grad_magnitude_lr, "grad_magnitude_lr",
    """Optimizer of 000 Example 1: `scale_by_grad_magnitude_lr`, negated.

    ``optax.chain(scale_by_grad_magnitude_lr(...), optax.scale(-1.0))``, with
    the same arguments.

    Example:
      >>> import optax_neuronlr as nlr
      >>> tx = nlr.grad_magnitude_lr(1e-3, alpha=0.01, granularity="neuron")
    """)

grad_history_lr = aliases.negated(
    scale_by_grad_history_lr, "grad_history_lr",
    """Optimizer of 000 Example 2: `scale_by_grad_history_lr`, negated.

    ``optax.chain(scale_by_grad_history_lr(...), optax.scale(-1.0))``, with
    the same arguments.

    Example:
      >>> import optax_neuronlr as nlr
      >>> tx = nlr.grad_history_lr(1e-3, bias_correction=True, max_lr=0.1)
    """)

sign_consistency_lr = aliases.negated(
    scale_by_sign_consistency_lr, "sign_consistency_lr",
    """Optimizer of 000 Example 3: `scale_by_sign_consistency_lr`, negated.

    ``optax.chain(scale_by_sign_consistency_lr(...), optax.scale(-1.0))``,
    with the same arguments.

    Example:
      >>> import optax, optax_neuronlr as nlr
      >>> tx = nlr.sign_consistency_lr(1e-3, granularity="neuron",
      ...                              direction=optax.scale_by_adam())
    """)
